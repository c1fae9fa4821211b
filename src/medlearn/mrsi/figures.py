"""Figures of an MRSI evaluation: HR / LR / SR grids across n and lambda, one map across the lambda
sweep, PSNR versus sharpness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlearn.mrsi.constants import METABOLITES
from medlearn.report import save_figure

__all__ = ["lambda_sweep", "psnr_vs_sharpness", "sr_grid"]


def _pick(examples: Mapping[tuple[int, float], Mapping[str, Any]], name: str, item: int) -> int | None:
    """Index in the first evaluation batch of the ``item``-th map of metabolite ``name`` (None if absent)."""
    first = examples[min(examples)]
    mid = METABOLITES.index(name) if name in METABOLITES else None
    idx = [i for i, m in enumerate(first["met"]) if mid is not None and int(m) == mid]
    return idx[min(item, len(idx) - 1)] if idx else None


def sr_grid(
    examples: Mapping[tuple[int, float], Mapping[str, Any]],
    metabolites: Sequence[str],
    out: str | Path,
    item: int = 0,
) -> list[Path]:
    """One PNG per metabolite: rows = n, columns = HR, LR (zero-filled), SR at each lambda.

    Column headers name what every row shows (the row label carries n and the acquired matrix 2n).

    Args:
        examples: ``{(n, lambda): {"hr": (B, H, W), "lr": (B, H, W), "sr": (B, H, W), "met": (B,)}}``
            from the first evaluation batch of each (n, lambda).
        metabolites: names to draw (a metabolite absent from the batch is skipped).
        out: folder for ``sr_grid_<met>.png``.
    """
    import matplotlib.pyplot as plt

    ns = sorted({k[0] for k in examples})
    lams = sorted({k[1] for k in examples})
    paths = []
    for name in metabolites:
        i = _pick(examples, name, item)
        if i is None:
            continue
        first = examples[(ns[0], lams[0])]
        cols = 2 + len(lams)
        fig, axes = plt.subplots(len(ns), cols, figsize=(1.8 * cols, 1.8 * len(ns) + 0.4), squeeze=False)
        vmax = float(first["hr"][i].max()) or 1.0
        titles = ["HR", "LR (zero-filled)"] + [f"SR, lambda={lam:g}" for lam in lams]
        for r, n in enumerate(ns):
            ex = examples[(n, lams[0])]
            panels = [ex["hr"][i], ex["lr"][i]] + [examples[(n, lam)]["sr"][i] for lam in lams]
            for c, img in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(np.asarray(img), cmap="jet", vmin=0, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(titles[c], fontsize=7)
                if c == 0:
                    ax.set_ylabel(f"n={n} (2n={2 * n})", fontsize=7)
        fig.suptitle(f"{name}: HR / LR / SR across n and lambda", fontsize=9)
        paths.append(save_figure(fig, Path(out) / f"sr_grid_{name}.png"))
    return paths


def lambda_sweep(
    examples: Mapping[tuple[int, float], Mapping[str, Any]],
    name: str,
    out: str | Path,
    n: int | None = None,
    item: int = 0,
) -> Path | None:
    """One map across the lambda sweep, side by side: HR, LR, SR at each lambda (top row) and
    SR(lambda) - SR(lowest lambda) on a symmetric scale (bottom row), at one n (default: the
    smallest, i.e. the largest upscaling).  ``None`` when metabolite ``name`` is not in the batch.
    """
    import matplotlib.pyplot as plt

    i = _pick(examples, name, item)
    if i is None:
        return None
    n = min(k[0] for k in examples) if n is None else n
    lams = sorted(lam for k_n, lam in examples if k_n == n)
    ex0 = examples[(n, lams[0])]
    vmax = float(ex0["hr"][i].max()) or 1.0
    diffs = [np.asarray(examples[(n, lam)]["sr"][i]) - np.asarray(ex0["sr"][i]) for lam in lams]
    dmax = max(float(np.abs(d).max()) for d in diffs) or 1.0
    cols = 2 + len(lams)
    fig, axes = plt.subplots(2, cols, figsize=(1.8 * cols, 4.0), squeeze=False)
    top = [("HR", ex0["hr"][i]), (f"LR (2n={2 * n})", ex0["lr"][i])]
    top += [(f"SR, lambda={lam:g}", examples[(n, lam)]["sr"][i]) for lam in lams]
    for c, (title, img) in enumerate(top):
        axes[0, c].imshow(np.asarray(img), cmap="jet", vmin=0, vmax=vmax)
        axes[0, c].set_title(title, fontsize=7)
    for c, (lam, d) in enumerate(zip(lams, diffs), start=2):
        axes[1, c].imshow(d, cmap="coolwarm", vmin=-dmax, vmax=dmax)
        axes[1, c].set_title(f"SR({lam:g}) - SR({lams[0]:g})", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[1, :2]:
        ax.axis("off")
    axes[1, 0].text(0, 0.5, f"difference scale\n+-{dmax:.3g}", fontsize=7, transform=axes[1, 0].transAxes)
    fig.suptitle(f"{name}: one map across the sharpness knob lambda (n={n})", fontsize=9)
    return save_figure(fig, Path(out) / f"lambda_sweep_{name}.png")


def psnr_vs_sharpness(per_n: pd.DataFrame, path: str | Path, sharpness: str = "energy_outside") -> Path:
    """PSNR (y) against a sharpness measure (x): one line (colour) per n, one marker shape per lambda.

    Lambda is told by the marker (second legend), not by text labels next to the points, which
    overlapped when the points of a line lay close together.
    """
    import matplotlib.pyplot as plt

    markers = "osD^vP*Xh<>p"
    lams = sorted(per_n["lambda"].unique())
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    lines = []
    for n, grp in per_n.groupby("n"):
        grp = grp.sort_values("lambda")
        (line,) = ax.plot(grp[f"{sharpness}_mean"], grp["psnr_mean"], "-", label=f"n={n}")
        lines.append(line)
        for k, lam in enumerate(lams):
            r = grp[grp["lambda"] == lam]
            ax.plot(r[f"{sharpness}_mean"], r["psnr_mean"], markers[k % len(markers)], color=line.get_color(),
                    markersize=5)  # fmt: skip
    ax.set_xlabel(f"sharpness: {sharpness} (mean)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR vs sharpness per n and lambda", fontsize=9)
    first = ax.legend(handles=lines, fontsize=7, loc="upper right", title="n", title_fontsize=7)
    ax.add_artist(first)
    handles = [plt.Line2D([], [], color="k", marker=markers[k % len(markers)], linestyle="", markersize=5,
                          label=f"{lam:g}") for k, lam in enumerate(lams)]  # fmt: skip
    ax.legend(handles=handles, fontsize=7, loc="lower left", title="lambda", title_fontsize=7)
    return save_figure(fig, path)
