"""Figures of an MRSI evaluation: HR / LR / SR grids across n and lambda, PSNR versus sharpness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlearn.mrsi.constants import METABOLITES
from medlearn.report import save_figure

__all__ = ["psnr_vs_sharpness", "sr_grid"]


def sr_grid(
    examples: Mapping[tuple[int, float], Mapping[str, Any]],
    metabolites: Sequence[str],
    out: str | Path,
    item: int = 0,
) -> list[Path]:
    """One PNG per metabolite: rows = n, columns = HR, LR (zero-filled), SR at each lambda.

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
        mid = METABOLITES.index(name) if name in METABOLITES else None
        first = examples[(ns[0], lams[0])]
        idx = [i for i, m in enumerate(first["met"]) if mid is not None and int(m) == mid]
        if not idx:
            continue
        i = idx[min(item, len(idx) - 1)]
        cols = 2 + len(lams)
        fig, axes = plt.subplots(len(ns), cols, figsize=(1.8 * cols, 1.8 * len(ns)), squeeze=False)
        vmax = float(first["hr"][i].max()) or 1.0
        for r, n in enumerate(ns):
            ex = examples[(n, lams[0])]
            panels = [("HR", ex["hr"][i]), (f"LR 2n={2 * n}", ex["lr"][i])]
            panels += [(f"SR lambda={lam:g}", examples[(n, lam)]["sr"][i]) for lam in lams]
            for c, (title, img) in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(np.asarray(img), cmap="jet", vmin=0, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=7)
                if c == 0:
                    ax.set_ylabel(f"n={n}", fontsize=7)
        fig.suptitle(f"{name}: HR / LR / SR across n and lambda", fontsize=9)
        paths.append(save_figure(fig, Path(out) / f"sr_grid_{name}.png"))
    return paths


def psnr_vs_sharpness(per_n: pd.DataFrame, path: str | Path, sharpness: str = "energy_outside") -> Path:
    """PSNR (y) against a sharpness measure (x), one point per lambda, one line per n."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for n, grp in per_n.groupby("n"):
        grp = grp.sort_values("lambda")
        ax.plot(grp[f"{sharpness}_mean"], grp["psnr_mean"], marker="o", label=f"n={n}")
        for _, r in grp.iterrows():
            ax.annotate(f"{r['lambda']:g}", (r[f"{sharpness}_mean"], r["psnr_mean"]), fontsize=6)
    ax.set_xlabel(f"sharpness: {sharpness} (mean)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR vs sharpness (labels: lambda)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
