"""Synthetic screening-mammography datasets in the real EMBED and RSNA on-disk formats.

``generate(out, n_patients, ...)`` writes::

    out/embed/EMBED_OpenData_metadata.csv   one row per image (EMBED columns, incl. ROI_coords)
    out/embed/EMBED_OpenData_clinical.csv   one row per finding (side L/R/B), exam-level fields
    out/embed/AWS_Open_Data_Clinical_Legend.csv  code meanings in the published legend's format
                                            (BOM, "Discription" header, padded cells, extra headers)
    out/embed/images/<empi>/<acc>/<n>.dcm   16-bit MG DICOMs (anon_dicom_path is relative to out/embed)
    out/rsna/train.csv                      RSNA Kaggle columns, disjoint patients
    out/rsna/train_images/<patient>/<image>.dcm
    out/synth_summary.json                  arguments and counts

Exams are sampled per patient from a fixed scenario list (negative, bilateral benign
calcifications, screening recall of a mass or calcifications, multi-finding, probably benign,
suspicious, highly suggestive, known cancer). The assessment letters, legend codes and pathology
(cancer) of the clinical rows follow from what is drawn, and each finding is drawn in every view of
its breast. Each patient is rendered from its own seed sequence ``(seed, cohort, index)``, so the
output does not depend on the number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlearn.errors import ConfigError
from medlearn.io.dicom_write import write_dicom_mg
from medlearn.mama.data.legend import write_published_legend
from medlearn.mama.data.synth_image import Breast, Finding, render_view
from medlearn.mama.data.tables import (
    CLINICAL_COLUMNS,
    CLINICAL_OPTIONAL,
    METADATA_COLUMNS,
    RSNA_COLUMNS,
)

log = logging.getLogger(__name__)

# name, photometric, bits stored, rescale intercept (modality = stored + intercept), models
MANUFACTURERS = (
    ("HOLOGIC, Inc.", "MONOCHROME2", 12, 0.0, ("Selenia Dimensions", "Lorad Selenia")),
    ("GE MEDICAL SYSTEMS", "MONOCHROME1", 12, 0.0, ("Senographe Essential", "Senographe Pristina")),
    ("SIEMENS", "MONOCHROME2", 12, 100.0, ("Mammomat Inspiration",)),
    ("FUJIFILM Corporation", "MONOCHROME1", 10, 0.0, ("ASPIRE Cristalle",)),
)
RACES = (
    ("African American  or Black", 0.42),
    ("Caucasian or White", 0.40),
    ("Asian", 0.07),
    ("Native Hawaiian or Other Pacific Islander", 0.01),
    ("American Indian or Alaskan Native", 0.01),
    ("Unknown, Unavailable or Unreported", 0.09),
)
ETHNICITIES = (("Non-Hispanic or Latino", 0.86), ("Hispanic or Latino", 0.05), ("Unknown", 0.09))
DENSITY_P = (0.10, 0.42, 0.38, 0.10)
SCREEN_SCENARIOS = (
    ("negative", 0.58),
    ("benign_bilateral", 0.10),
    ("recall_mass", 0.14),
    ("recall_calc", 0.10),
    ("multi", 0.08),
)
DIAG_SCENARIOS = (
    ("negative", 0.15),
    ("benign", 0.15),
    ("probably_benign", 0.20),
    ("suspicious", 0.25),
    ("malignant", 0.17),
    ("known_cancer", 0.08),
)
SHAPE_CODE = {"round": "R", "oval": "O", "irregular": "X"}
MORPH_CODE = {"punctate": "P", "pleomorphic": "K", "fine_linear": "F", "coarse": "Q"}  # EMBED legend codes
DISTRI_CODE = {"grouped": "G", "segmental": "S", "linear": "L", "diffuse": "D"}
VIEW_SIZE_MM = 300.0  # detector height; width is 0.8 of it
LEGEND_NAME = "AWS_Open_Data_Clinical_Legend.csv"
# legend rows of headers the reports do not use (ours; the published legend has about 90 such headers)
EXTRA_LEGEND_ROWS = (
    ("side", "Side of the finding", "L", "left"),
    ("side", "Side of the finding", "R", "right"),
    ("side", "Side of the finding", "B", "both"),
    ("numfind", "Index of the finding, counted from 1 within an exam", "", ""),
    ("desc", "Study description, as entered at the site", "", ""),
)


@dataclass(frozen=True)
class SynthConfig:
    """Arguments of :func:`generate` (see there)."""

    n_patients: int = 20
    n_rsna_patients: int | None = None
    seed: int = 0
    long_side: int = 2000
    workers: int = 1
    rsna_cancer_rate: float = 0.15
    rsna_jpeg2000: float = 0.5
    conspicuity: float = (
        1.0  # findings' visibility (synth_image.render_view); > 1 for low-resolution benchmarks
    )
    density: int | None = None  # every EMBED patient's BI-RADS density (1-4); None: the population mix


def _choice(rng: np.random.Generator, options: tuple) -> str:
    names = [o[0] for o in options]
    p = np.array([o[1] for o in options], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _position(rng: np.random.Generator) -> dict[str, float]:
    return {"depth": rng.uniform(0.25, 0.8), "ml": rng.uniform(-0.8, 0.8), "si": rng.uniform(-0.7, 0.8)}


def _mass(rng: np.random.Generator, shape: str, margin: str, density: str) -> Finding:
    return Finding(
        "mass",
        size_mm=rng.uniform(8, 26),
        shape=shape,
        margin=margin,
        density=density,
        seed=int(rng.integers(2**31)),
        **_position(rng),
    )


def _calc(rng: np.random.Generator, morphology: str, distribution: str) -> Finding:
    return Finding(
        "calc",
        size_mm=rng.uniform(6, 16),
        morphology=morphology,
        distribution=distribution,
        seed=int(rng.integers(2**31)),
        **_position(rng),
    )


def _row(side: str, asses: str, finding: Finding | None = None, severity: float | None = None) -> dict:
    row: dict[str, Any] = {"side": side, "asses": asses, "path_severity": severity}
    if finding is not None and finding.kind == "mass":
        row.update(massshape=SHAPE_CODE[finding.shape], massdens=finding.density)
    elif finding is not None:
        row.update(calcfind=MORPH_CODE[finding.morphology], calcdistri=DISTRI_CODE[finding.distribution])
    return row


def sample_exam_findings(
    rng: np.random.Generator, scenario: str
) -> tuple[dict[str, list[Finding]], list[dict[str, Any]]]:
    """Findings per breast and the clinical rows (side, asses, codes, path_severity) of one exam.

    Every clinical row's letter and codes describe findings that are drawn in that breast.
    """
    drawn: dict[str, list[Finding]] = {"L": [], "R": []}
    rows: list[dict[str, Any]] = []
    side = "L" if rng.random() < 0.5 else "R"
    other = "R" if side == "L" else "L"

    def other_rows() -> None:  # the breast without findings: its own N row or a bilateral one
        rows.append(_row(other if rng.random() < 0.6 else "B", "N"))

    if scenario == "negative":
        rows.append(_row("B", "N"))
    elif scenario == "benign_bilateral":
        for s in ("L", "R"):
            drawn[s].append(_calc(rng, "coarse", "diffuse"))
        rows.append(_row("B", "B", drawn["L"][0]))
    elif scenario in ("recall_mass", "recall_calc"):
        if scenario == "recall_mass":
            f = _mass(
                rng,
                str(rng.choice(["round", "oval", "irregular"])),
                "obscured",
                str(rng.choice(["=", "+", "-"])),
            )
        else:
            f = _calc(rng, str(rng.choice(["punctate", "pleomorphic"])), "grouped")
        drawn[side].append(f)
        rows.append(_row(side, "A", f))
        other_rows()
    elif scenario == "multi":  # a recalled mass and benign calcifications in the same breast
        f1 = _mass(rng, "oval", "obscured", "=")
        f2 = _calc(rng, "punctate", "grouped")
        drawn[side] += [f1, f2]
        rows += [_row(side, "A", f1), _row(side, "B", f2)]
        other_rows()
    elif scenario == "benign":
        f = _mass(rng, "oval", "circumscribed", "0")
        drawn[side].append(f)
        rows.append(_row(side, "B", f))
        other_rows()
    elif scenario == "probably_benign":
        f = _mass(rng, "oval", "circumscribed", str(rng.choice(["=", "-"])))
        drawn[side].append(f)
        rows.append(_row(side, "P", f))
        other_rows()
    elif scenario == "suspicious":
        cancer = rng.random() < 0.4
        if rng.random() < 0.5:
            f = _mass(rng, "irregular", "obscured", str(rng.choice(["=", "+"])))
        else:
            f = _calc(rng, "pleomorphic", "grouped")
        drawn[side].append(f)
        rows.append(_row(side, "S", f, float(rng.choice([0, 1])) if cancer else 4.0))
        other_rows()
    elif scenario in ("malignant", "known_cancer"):
        letter = "M" if scenario == "malignant" else "K"
        f = _mass(rng, "irregular", "spiculated", "+")
        drawn[side].append(f)
        rows.append(_row(side, letter, f, 0.0))
        if rng.random() < 0.4:
            g = _calc(rng, "fine_linear", str(rng.choice(["segmental", "linear"])))
            drawn[side].append(g)
            rows.append(_row(side, letter, g, 1.0))
        other_rows()
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return drawn, rows


def _to_counts(
    img: np.ndarray, bits: int, photometric: str, intercept: float = 0.0
) -> tuple[np.ndarray, tuple[float, float]]:
    """[0, 1] image -> stored detector counts (MONOCHROME1 stores inverted values), and the window
    (centre, width) in modality units (stored + ``intercept``) covering the tissue."""
    top = 2**bits - 1
    counts = np.round(30 + img * (0.9 * top - 30)).astype(np.uint16)
    tissue = img[img > 0.1]
    lo, hi = np.percentile(tissue, [1, 99.5]) if tissue.size else (0.1, 1.0)
    lo_c, hi_c = 30 + lo * (0.9 * top - 30), 30 + hi * (0.9 * top - 30)
    center, width = (lo_c + hi_c) / 2, max(hi_c - lo_c, 2.0)
    if photometric == "MONOCHROME1":
        counts = (top - counts).astype(np.uint16)
        center = top - center
    return counts, (round(float(center + intercept), 1), round(float(width), 1))


def _image_shape(long_side: int) -> tuple[tuple[int, int], float]:
    h = int(long_side)
    return (h, max(int(round(0.8 * h)), 8)), VIEW_SIZE_MM / h


def _views_for_exam(
    rng: np.random.Generator, diagnostic: bool, unilateral: str | None
) -> list[tuple[str, str, str]]:
    """(laterality, view, image type) triples of one exam."""
    sides = [unilateral] if unilateral else ["R", "L"]
    views = [(s, v, "2D") for s in sides for v in ("CC", "MLO")]
    u = rng.random()
    if u < 0.08 and len(views) > 2:
        views.pop(int(rng.integers(len(views))))  # a missing view
    elif u < 0.16:
        views.append((str(rng.choice(sides)), "XCCL", "2D"))  # an extra view
    if not diagnostic and rng.random() < 0.1:  # tomosynthesis exam: synthetic 2D (cview) copies
        views += [(s, v, "cview") for s, v, _ in views[:2]]
    return views


def _embed_patient(args: tuple[int, int, int, Path, float, int | None]) -> tuple[list[dict], list[dict]]:
    seed, index, long_side, root, conspicuity, fixed_density = args
    rng = np.random.default_rng([seed, 1, index])
    empi = str(10_000_000 + index)
    age0 = float(rng.integers(40, 80))
    race, eth = _choice(rng, RACES), _choice(rng, ETHNICITIES)
    dens = int(rng.choice(4, p=DENSITY_P)) + 1  # drawn either way: the other draws stay the same
    dens = dens if fixed_density is None else int(fixed_density)
    manu = MANUFACTURERS[int(rng.integers(len(MANUFACTURERS)))]
    depth_mm, height_mm = rng.uniform(90, 160), rng.uniform(150, 230)
    shape, spacing = _image_shape(long_side)
    meta_rows, clin_rows = [], []
    for e in range(int(rng.integers(1, 4))):
        acc = str(6_000_000_000 + index * 10 + e)
        diagnostic = rng.random() < 0.25
        scenario = _choice(rng, DIAG_SCENARIOS if diagnostic else SCREEN_SCENARIOS)
        drawn, rows = sample_exam_findings(rng, scenario)
        unilateral = None
        if diagnostic and rng.random() < 0.4:
            sides_with = [s for s in ("L", "R") if drawn[s]]
            unilateral = sides_with[0] if sides_with else str(rng.choice(["L", "R"]))
            rows = [r for r in rows if r["side"] in (unilateral, "B")] or [_row(unilateral, "N")]
        if diagnostic:
            desc = {"L": "MG Diagnostic Left", "R": "MG Diagnostic Right"}.get(
                unilateral or "", "MG Diagnostic Mammo Bilateral"
            )
        else:
            desc = "MG Screening Bilateral"
        age = age0 + e
        for r in rows:
            clin_rows.append(
                {
                    "empi_anon": empi,
                    "acc_anon": acc,
                    "tissueden": dens,
                    "age_at_study": age,
                    "RACE_DESC": race,
                    "ETHNIC_GROUP_DESC": eth,
                    "desc": desc,
                    **r,
                }
            )
        breasts = {
            s: Breast(s, dens, depth_mm, height_mm, tuple(drawn[s]), seed=int(rng.integers(2**31)))
            for s in ("L", "R")
        }
        views = _views_for_exam(rng, diagnostic, unilateral)
        if diagnostic:  # a spot-magnification view of the first finding
            with_f = [s for s in ("L", "R") if drawn[s] and (unilateral in (None, s))]
            if with_f:
                views.append((with_f[0], "CC", "spot"))
        for n, (lat, view, kind) in enumerate(views):
            img_rng = np.random.default_rng([seed, 2, index, e, n])
            img, boxes = render_view(
                breasts[lat], view, shape, spacing, img_rng, marker=img_rng.random() < 0.5,
                conspicuity=conspicuity,
            )  # fmt: skip
            spot = kind == "spot"
            if spot:
                img, boxes = _magnify(img, boxes)
            counts, window = _to_counts(img, manu[2], manu[1], manu[3])
            rel = Path("images") / empi / acc / f"{n}.dcm"
            write_dicom_mg(
                root / rel,
                counts,
                laterality=lat,
                view=view,
                photometric=manu[1],
                window=window,
                pixel_spacing=(spacing / (1.8 if spot else 1.0),) * 2,
                manufacturer=manu[0],
                bits_stored=manu[2],
                rescale=(1.0, manu[3]),
                uid_seed=f"embed-{seed}-{empi}-{acc}-{n}",
                extra={
                    "PatientID": empi,
                    "AccessionNumber": acc[-16:],
                    "StudyDescription": desc,
                    "ManufacturerModelName": str(manu[4][index % len(manu[4])]),
                    "BodyPartExamined": "BREAST",
                    "PatientAge": f"{int(age):03d}Y",
                    "PatientSex": "F",
                },
            )
            rois = [list(b) for b in boxes if b is not None]
            meta_rows.append(
                {
                    "empi_anon": empi,
                    "acc_anon": acc,
                    "anon_dicom_path": rel.as_posix(),
                    "StudyDescription": desc,
                    "FinalImageType": "cview" if kind == "cview" else "2D",
                    "ImageLateralityFinal": lat,
                    "ViewPosition": view,
                    "spot_mag": 1.0 if spot else np.nan,
                    "ROI_coords": json.dumps(rois) if rois else "",
                    "num_roi": len(rois),
                    "Manufacturer": manu[0],
                    "PhotometricInterpretation": manu[1],
                    "Rows": shape[0],
                    "Columns": shape[1],
                }
            )
    return meta_rows, clin_rows


def _magnify(img: np.ndarray, boxes: list) -> tuple[np.ndarray, list]:
    """A 1.8x magnified field around the first ROI (spot-magnification view)."""
    from skimage.transform import resize

    h, w = img.shape
    b = next((bb for bb in boxes if bb is not None), None)
    cy, cx = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) if b else (h / 2, w / 2)
    ch, cw = int(h / 1.8), int(w / 1.8)
    y0 = int(np.clip(cy - ch / 2, 0, h - ch))
    x0 = int(np.clip(cx - cw / 2, 0, w - cw))
    out = resize(img[y0 : y0 + ch, x0 : x0 + cw], (h, w), order=1, anti_aliasing=False).astype(np.float32)
    sy, sx = h / ch, w / cw
    new = []
    for bb in boxes:
        if bb is None:
            new.append(None)
            continue
        y_0, x_0 = max((bb[0] - y0) * sy, 0), max((bb[1] - x0) * sx, 0)
        y_1, x_1 = min((bb[2] - y0) * sy, h - 1), min((bb[3] - x0) * sx, w - 1)
        new.append((int(y_0), int(x_0), int(y_1), int(x_1)) if y_1 > y_0 and x_1 > x_0 else None)
    return out, new


def _rsna_patient(args: tuple[int, int, int, Path, float, float]) -> list[dict]:
    seed, index, long_side, root, cancer_rate, j2k_rate = args
    rng = np.random.default_rng([seed, 3, index])
    pid = str(50_000 + index)
    site = int(rng.integers(1, 3))
    manu = MANUFACTURERS[int(rng.integers(len(MANUFACTURERS)))]
    machine = int(rng.choice([21, 29, 48, 49, 93, 170, 190, 197, 210, 216]))
    dens = int(rng.choice(4, p=DENSITY_P)) + 1
    age = float(rng.integers(40, 85))
    cancer = rng.random() < cancer_rate
    side = "L" if rng.random() < 0.5 else "R"
    drawn: dict[str, list[Finding]] = {"L": [], "R": []}
    benign_biopsy = False
    if cancer:
        drawn[side].append(
            _mass(rng, "irregular", "spiculated", "+")
            if rng.random() < 0.7
            else _calc(rng, "fine_linear", "segmental")
        )
    elif rng.random() < 0.1:
        drawn[side].append(_mass(rng, "oval", "circumscribed", "="))
        benign_biopsy = True
    shape, spacing = _image_shape(long_side)
    compress = rng.random() < j2k_rate and min(shape) >= 32
    rows = []
    depth_mm, height_mm = rng.uniform(90, 160), rng.uniform(150, 230)
    breasts = {
        s: Breast(s, dens, depth_mm, height_mm, tuple(drawn[s]), seed=int(rng.integers(2**31)))
        for s in ("L", "R")
    }
    for n, (lat, view) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]):
        breast = breasts[lat]
        img_rng = np.random.default_rng([seed, 4, index, n])
        img, _ = render_view(breast, view, shape, spacing, img_rng)
        counts, window = _to_counts(img, manu[2], manu[1], manu[3])
        image_id = str(100_000_000 + index * 10 + n)
        write_dicom_mg(
            root / "train_images" / pid / f"{image_id}.dcm",
            counts,
            laterality=lat,
            view=view,
            photometric=manu[1],
            window=window,
            pixel_spacing=(spacing, spacing),
            manufacturer=manu[0],
            bits_stored=manu[2],
            rescale=(1.0, manu[3]),
            compression="jpeg2000" if compress else None,
            uid_seed=f"rsna-{seed}-{pid}-{n}",
            extra={"PatientID": pid, "BodyPartExamined": "BREAST"},
        )
        is_cancer = int(cancer and lat == side)
        birads = (
            np.nan
            if site == 2
            else (0.0 if is_cancer or (benign_biopsy and lat == side) else float(rng.choice([1, 2])))
        )
        rows.append(
            {
                "site_id": site,
                "patient_id": pid,
                "image_id": image_id,
                "laterality": lat,
                "view": view,
                "age": age,
                "cancer": is_cancer,
                "biopsy": int((cancer or benign_biopsy) and lat == side),
                "invasive": int(is_cancer and rng.random() < 0.8),
                "BIRADS": birads,
                "implant": 0,
                "density": "ABCD"[dens - 1] if site == 1 else "",
                "machine_id": machine,
                "difficult_negative_case": bool(benign_biopsy and lat == side),
            }
        )
    return rows


def _run(func, jobs: list, workers: int, desc: str) -> list:
    from medlearn.engine.progress import Progress

    out = []
    with Progress(len(jobs), desc) as bar:
        if workers <= 1:
            for job in jobs:
                out.append(func(job))
                bar.update()
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for res in pool.imap(func, jobs, chunksize=1):
                    out.append(res)
                    bar.update()
    return out


def generate(out: str | Path, cfg: SynthConfig) -> dict[str, Any]:
    """Write a synthetic EMBED + RSNA dataset under ``out`` (layout in the module docstring).

    Returns a summary dict (counts of patients, exams, images, findings, cancers).
    """
    if cfg.n_patients < 1 or (cfg.n_rsna_patients is not None and cfg.n_rsna_patients < 0):
        raise ConfigError(
            f"synth needs >= 1 EMBED patient and >= 0 RSNA patients, got {cfg.n_patients}, {cfg.n_rsna_patients}"
        )
    if cfg.long_side < 32:
        raise ConfigError(f"synth long_side must be >= 32 pixels, got {cfg.long_side}")
    if not cfg.conspicuity > 0:
        raise ConfigError(f"synth conspicuity must be > 0, got {cfg.conspicuity}")
    if cfg.density is not None and cfg.density not in (1, 2, 3, 4):
        raise ConfigError(f"synth density must be 1, 2, 3 or 4 (BI-RADS a-d), got {cfg.density}")
    out = Path(out)
    embed, rsna = out / "embed", out / "rsna"
    embed.mkdir(parents=True, exist_ok=True)
    (rsna / "train_images").mkdir(parents=True, exist_ok=True)
    n_rsna = cfg.n_rsna_patients if cfg.n_rsna_patients is not None else max(cfg.n_patients // 2, 1)
    res = _run(
        _embed_patient,
        [(cfg.seed, i, cfg.long_side, embed, cfg.conspicuity, cfg.density) for i in range(cfg.n_patients)],
        cfg.workers,
        "synth EMBED",
    )
    meta = pd.DataFrame([r for m, _ in res for r in m])
    clin = pd.DataFrame([r for _, c in res for r in c])
    for col in (*METADATA_COLUMNS, "spot_mag", "ROI_coords"):
        if col not in meta.columns:
            meta[col] = ""
    for col in (*CLINICAL_COLUMNS, *CLINICAL_OPTIONAL):
        if col not in clin.columns:
            clin[col] = np.nan
    meta.to_csv(embed / "EMBED_OpenData_metadata.csv", index=False)
    clin.to_csv(embed / "EMBED_OpenData_clinical.csv", index=False)
    write_published_legend(embed / LEGEND_NAME, extra_rows=EXTRA_LEGEND_ROWS)
    rres = _run(
        _rsna_patient,
        [(cfg.seed, i, cfg.long_side, rsna, cfg.rsna_cancer_rate, cfg.rsna_jpeg2000) for i in range(n_rsna)],
        cfg.workers,
        "synth RSNA",
    )
    train = pd.DataFrame([r for rows in rres for r in rows], columns=list(RSNA_COLUMNS))
    train.to_csv(rsna / "train.csv", index=False)
    summary = {
        "seed": cfg.seed,
        "long_side": cfg.long_side,
        "embed": {
            "patients": cfg.n_patients,
            "exams": int(meta["acc_anon"].nunique()),
            "images": len(meta),
            "finding_rows": int(clin["side"].ne("B").sum()),
            "asses_counts": {k: int(v) for k, v in clin["asses"].value_counts().items()},
        },
        "rsna": {"patients": n_rsna, "images": len(train), "cancer_images": int(train["cancer"].sum())},
    }
    (out / "synth_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("synthetic data written to %s: %s", out, summary)
    return summary
