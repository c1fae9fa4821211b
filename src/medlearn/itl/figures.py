"""Figures of an ITL run: R-matrix heatmap, per-site Dice across phases, prediction overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medlearn.report import save_figure


def plot_r_matrix(r: np.ndarray, sites: list[str], path: str | Path, title: str = "") -> Path:
    """Heatmap of R (T, T): rows = after phase i, columns = site j, values = Dice."""
    import matplotlib.pyplot as plt

    r = np.asarray(r)
    fig, ax = plt.subplots(figsize=(1.1 * len(sites) + 2, 0.9 * r.shape[0] + 1.5))
    im = ax.imshow(r, vmin=0, vmax=1, cmap="viridis")
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            ax.text(
                j,
                i,
                f"{r[i, j]:.2f}",
                ha="center",
                va="center",
                color="w" if r[i, j] < 0.6 else "k",
                fontsize=8,
            )
    ax.set_xticks(range(len(sites)), sites, rotation=30)
    ax.set_yticks(range(r.shape[0]), [f"after {sites[i]}" for i in range(r.shape[0])])
    ax.set_xlabel("evaluated site")
    ax.set_title(title or "Dice R[i, j]")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_site_curves(
    rows: list[dict[str, float]], sites: list[str], path: str | Path, title: str = ""
) -> Path:
    """Dice of every site (lines) after each phase (x axis); ``rows[i][site]``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(rows))
    for s in rows[0]:
        ax.plot(x, [r[s] for r in rows], marker="o", label=s, linestyle="--" if s not in sites else "-")
    ax.set_xticks(x, [f"{i}:{sites[i]}" for i in range(len(rows))])
    ax.set_ylim(0, 1)
    ax.set_xlabel("phase (site trained)")
    ax.set_ylabel("Dice")
    ax.set_title(title or "per-site Dice across phases (dashed: held out)")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def plot_overlays(items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """One panel per item ``(title, image (S, S), truth (S, S), prediction (S, S))``: green truth, red prediction."""
    import matplotlib.pyplot as plt

    n = max(1, len(items))
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.6))
    axes = np.atleast_1d(axes)
    for ax, (title, img, gt, pred) in zip(axes, items):
        ax.imshow(img.T, cmap="gray", origin="lower")
        if gt.any():
            ax.contour(gt.T, levels=[0.5], colors="lime", linewidths=0.8)
        if pred.any():
            ax.contour(pred.T, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return save_figure(fig, path)
