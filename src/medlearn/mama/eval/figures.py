"""Figures and report sections of MaMA evaluation: confusion matrices, ROC curves, result tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlearn.report import save_figure

CLASS_NAMES = {
    "birads": [f"BI-RADS {k}" for k in range(7)],
    "density": ["A (fatty)", "B (scattered)", "C (heterog.)", "D (extreme)"],
    "cancer": ["no cancer", "cancer"],
}


def plot_confusion(cm: Sequence[Sequence[int]], names: Sequence[str], title: str, path: str | Path) -> Path:
    """Row-normalised confusion matrix (counts printed in the cells) as a PNG."""
    import matplotlib.pyplot as plt

    m = np.asarray(cm, dtype=float)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(m)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.6 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(m[i, j])}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xticks(range(k), list(names)[:k], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), list(names)[:k], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


ONE_CLASS = "test split has one class: AUC and ROC undefined"


def plot_roc(y: Any, probs: Any, names: Sequence[str], title: str, path: str | Path) -> Path:
    """ROC curves: the positive class for binary tasks, one-vs-rest per class otherwise."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y).astype(int)
    p = np.asarray(probs, dtype=float)
    fig, ax = plt.subplots(figsize=(4, 4))
    classes = [1] if p.shape[1] == 2 else list(range(p.shape[1]))
    drawn = 0
    for k in classes:
        pos = y == k
        if not pos.any() or pos.all():
            continue
        fpr, tpr, _ = roc_curve(pos.astype(int), p[:, k])
        ax.plot(fpr, tpr, label=f"{names[k]} (AUC {roc_auc_score(pos.astype(int), p[:, k]):.3f})")
        drawn += 1
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    if drawn:
        ax.legend(fontsize=7, loc="lower right")
    else:  # every label is the same class: no ROC exists
        ax.text(0.5, 0.5, ONE_CLASS, ha="center", va="center", fontsize=9, transform=ax.transAxes)
    return save_figure(fig, path)


def summary_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flat table rows ``subset, level, n, balanced_accuracy, auc, ...`` from ``evaluate`` results."""
    rows = []
    for subset, levels in results["metrics"].items():
        for level, m in levels.items():
            row = {"mode": results["mode"], "task": results["task"], "subset": subset, "level": level}
            for key, v in m.items():
                if isinstance(v, (int, float)) or v is None:
                    row[key] = v
                elif key.endswith("_ci95") and v is not None:
                    row[key] = f"[{v[0]:.3f}, {v[1]:.3f}]" if v[0] is not None else ""
            rows.append(row)
    return rows


def write_figures(
    results: Mapping[str, Any], y: Any, probs: Any, subset_masks: Mapping[str, Any], out_dir: str | Path
) -> list[tuple[Path, str]]:
    """Confusion matrix and ROC PNGs per subset; returns (path, caption) pairs."""
    out_dir = Path(out_dir)
    names = CLASS_NAMES.get(results["task"], [str(k) for k in range(np.asarray(probs).shape[1])])
    figs = []
    tag = f"{results['mode']} {results['task']}"
    for subset, mask in subset_masks.items():
        m = results["metrics"][subset]["image"]
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            continue
        cm = plot_confusion(
            m["confusion_matrix"], names, f"{tag}, {subset} test", out_dir / f"confusion_{subset}.png"
        )
        figs.append((cm, f"confusion matrix, {tag}, {subset} test (n={int(mask.sum())})"))
        roc = plot_roc(
            np.asarray(y)[mask],
            np.asarray(probs)[mask],
            names,
            f"{tag}, {subset} test",
            out_dir / f"roc_{subset}.png",
        )
        figs.append((roc, f"ROC, {tag}, {subset} test"))
    return figs


def add_eval_section(
    section: Any, results: Mapping[str, Any], figures: Sequence[tuple[Path, str]] = ()
) -> Any:
    """Append a result table and the figures of one evaluation to a report :class:`Section`."""
    rows = summary_rows(results)
    keep = ("subset", "level", "n", "balanced_accuracy", "balanced_accuracy_ci95", "auc", "auc_ci95",
            "sensitivity", "specificity", "specificity_at_80_sensitivity", "pf1")  # fmt: skip
    section.table(
        [{k: r[k] for k in keep if k in r} for r in rows],
        caption=f"{results['mode']} {results['task']}: test metrics (95% bootstrap CIs)",
    )
    for path, caption in figures:
        section.image(path, caption, width=320)
    return section
