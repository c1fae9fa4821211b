"""Figure of synthetic (or real EMBED) exams: the 4 standard views with the ROI boxes outlined.

Reads the files the way the pipeline does (EMBED metadata CSV + DICOM through ``medlearn.io``), so
the figure also serves as a visual check of a real download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medlearn.mama.data.prepare import dicom_to_unit
from medlearn.mama.data.tables import ASSES_TO_BIRADS, find_embed_tables, parse_roi_coords, read_csv_checked

VIEW_ORDER = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


def pick_exams(metadata: pd.DataFrame, n: int, clinical: pd.DataFrame | None = None) -> list[str]:
    """Up to ``n`` exams with all four 2D views: with ROIs first, then (given ``clinical``) one per
    assessment letter, highest BI-RADS first."""
    two_d = metadata[(metadata["FinalImageType"] == "2D") & metadata["spot_mag"].isna()]
    complete = [
        acc
        for acc, g in two_d.groupby("acc_anon", sort=False)
        if {(r.ImageLateralityFinal, r.ViewPosition) for r in g.itertuples()} >= set(VIEW_ORDER)
    ]
    with_roi = set(two_d.loc[two_d["ROI_coords"].fillna("").str.len() > 0, "acc_anon"])
    top: dict[str, int] = {}
    if clinical is not None:
        birads = clinical["asses"].map(ASSES_TO_BIRADS).fillna(-1)
        top = birads.groupby(clinical["acc_anon"]).max().astype(int).to_dict()
    complete.sort(key=lambda a: (a not in with_roi, -top.get(a, -1)))
    chosen, letters = [], set()
    for acc in complete:  # one exam per highest category while possible
        if top.get(acc, -1) not in letters:
            chosen.append(acc)
            letters.add(top.get(acc, -1))
    chosen += [a for a in complete if a not in chosen]
    return chosen[:n]


def exam_figure(embed_dir: str | Path, out_png: str | Path, n_exams: int = 2) -> Path:
    """Write a grid (one row per exam: RCC, LCC, RMLO, LMLO) with findings outlined in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medlearn.report import save_figure

    embed_dir = Path(embed_dir)
    found = find_embed_tables(embed_dir)
    meta = read_csv_checked(
        found["metadata"], ["acc_anon", "anon_dicom_path", "ImageLateralityFinal", "ViewPosition"]
    )
    clin = read_csv_checked(found["clinical"], ["acc_anon", "side", "asses", "tissueden"])
    meta["spot_mag"] = pd.to_numeric(meta["spot_mag"], errors="coerce") if "spot_mag" in meta else np.nan
    if "ROI_coords" not in meta:
        meta["ROI_coords"] = ""
    exams = pick_exams(meta, n_exams, clin)
    fig, axes = plt.subplots(len(exams), 4, figsize=(12, 4.2 * len(exams)), squeeze=False)
    for row, acc in enumerate(exams):
        g = meta[(meta["acc_anon"] == acc) & (meta["FinalImageType"] == "2D") & meta["spot_mag"].isna()]
        rows = clin[clin["acc_anon"] == acc]
        label = ", ".join(f"{s}:{a}" for s, a in zip(rows["side"], rows["asses"]))
        for col, (lat, view) in enumerate(VIEW_ORDER):
            ax = axes[row, col]
            r = g[(g["ImageLateralityFinal"] == lat) & (g["ViewPosition"] == view)].iloc[0]
            img = dicom_to_unit(embed_dir / r["anon_dicom_path"])
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            for y0, x0, y1, x1 in parse_roi_coords(r.get("ROI_coords", "")):
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.2))
            ax.set_title(
                f"{lat}{view}"
                + (f"  exam {acc}\n{label}, density {rows['tissueden'].iloc[0]}" if col == 0 else ""),
                fontsize=9,
            )
            ax.set_xticks(np.array([]))
            ax.set_yticks(np.array([]))
    fig.tight_layout()
    out = save_figure(fig, out_png)
    plt.close(fig)
    return out
