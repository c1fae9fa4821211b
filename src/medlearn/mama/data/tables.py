"""Readers for EMBED tables (metadata, clinical, legend) and the RSNA ``train.csv``.

Both readers return the same *per-image table* (one row per 2D image, columns ``IMAGE_COLUMNS``),
which ``prepare`` extends with the cached image path and the split, and which the report builder
and the Dataset read. Column names of the raw exports follow the datasets' documentation.

Row-selection rule (EMBED has one clinical row per finding): for an image of exam ``acc_anon`` and
laterality L/R, the candidates are the exam's clinical rows whose ``side`` equals the laterality;
when there is none, the rows with ``side`` B; when there is none either, every row of the exam
(``fallback="exam"``, the reference). ``fallback="none"`` follows the EMBED README instead: an empty
``side`` counts as bilateral, and an image without a same-side or bilateral row gets no row (it is
dropped). Among the candidates the highest BI-RADS row is kept, except that the BI-RADS-0 row is
kept when every candidate is 0-2 and one of them is 0. Rows whose ``asses`` is not a BI-RADS letter
rank last. (The reference takes the arg-max over the valid letters but indexes the unfiltered rows,
so an invalid letter shifts its choice to a wrong row; we do not reproduce that bug.)

Procedure reason (as the reference): a StudyDescription containing "screen" is screening, else one
containing "diag" is diagnostic; images whose description has neither are dropped.

EMBED conventions (its README): ``side`` L/R/B or empty; ``asses`` letters A N B P S M K (BI-RADS
0-6); ``tissueden`` 1-4 = BI-RADS A-D and 5 = normal male (no density label); ``FinalImageType``
2D, cview (C-view) ...: only 2D is kept; ``spot_mag`` 1 for spot/magnification views, else 0 or
empty; ``ROI_coords`` boxes ``[ymin, xmin, ymax, xmax]`` in DICOM pixels, nested in lists or tuples.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medlearn.errors import DataError
from medlearn.mama.data.csv_tables import read_csv_checked, validate_columns
from medlearn.mama.data.legend import (  # noqa: F401 - LEGEND_COLUMNS, legend_table re-exported
    DEFAULT_LEGEND,
    LEGEND_COLUMNS,
    legend_table,
    read_legend,
)

log = logging.getLogger(__name__)

METADATA_COLUMNS = (
    "empi_anon",
    "acc_anon",
    "anon_dicom_path",
    "StudyDescription",
    "FinalImageType",
    "ImageLateralityFinal",
    "ViewPosition",
)
METADATA_OPTIONAL = ("spot_mag", "ROI_coords")
CLINICAL_COLUMNS = ("empi_anon", "acc_anon", "side", "asses", "tissueden")
CLINICAL_OPTIONAL = (
    "massshape",
    "massdens",
    "calcfind",
    "calcdistri",
    "age_at_study",
    "RACE_DESC",
    "ETHNIC_GROUP_DESC",
    "path_severity",
)
RSNA_COLUMNS = (
    "site_id",
    "patient_id",
    "image_id",
    "laterality",
    "view",
    "age",
    "cancer",
    "biopsy",
    "invasive",
    "BIRADS",
    "implant",
    "density",
    "machine_id",
    "difficult_negative_case",
)

# EMBED assessment letter -> BI-RADS category number.
ASSES_TO_BIRADS = {"A": 0, "N": 1, "B": 2, "P": 3, "S": 4, "M": 5, "K": 6}
BIRADS_TO_ASSES = {v: k for k, v in ASSES_TO_BIRADS.items()}
# EMBED path_severity: 0 invasive cancer, 1 non-invasive cancer, 2 high risk, 3 borderline,
# 4 benign, 5 negative, 6 non-breast cancer.
CANCER_SEVERITIES = (0, 1)
CLINICAL_FALLBACKS = ("exam", "none")
RSNA_DENSITY = {"A": 0, "B": 1, "C": 2, "D": 3}

# Columns of the per-image table (readers -> prepare -> Dataset). Integers use -1 for unknown.
IMAGE_COLUMNS = (
    "image_id",  # str, unique, filesystem safe
    "patient_id",  # str (EMBED empi_anon, RSNA patient_id)
    "exam_id",  # str (EMBED acc_anon; RSNA: patient_id, one exam per patient)
    "source",  # "embed" | "rsna"
    "dicom_path",  # str, relative to the dataset's DICOM root (or absolute)
    "laterality",  # "L" | "R"
    "view",  # "CC", "MLO", ...
    "study_description",  # str or "" (EMBED StudyDescription)
    "image_type",  # "2D"
    "age",  # float or NaN
    "race",  # str or ""
    "ethnicity",  # str or ""
    "asses",  # EMBED letter or ""
    "tissueden",  # float 1-5 or NaN
    "massshape",
    "massdens",
    "calcfind",
    "calcdistri",  # legend codes or ""
    "path_severity",  # float or NaN
    "birads",  # int 0-6, -1 unknown
    "density",  # int 0-3 (A-D), -1 unknown / male
    "cancer",  # int 0/1, -1 unknown
    "roi_coords",  # str: "[[ymin, xmin, ymax, xmax], ...]" in DICOM pixels, "" if none
)


def find_embed_tables(embed_dir: str | Path) -> dict[str, Path]:
    """Locate the metadata, clinical and (optional) legend CSVs in ``embed_dir`` or its sub-folders.

    Names are matched case-insensitively: ``*metadata*.csv``, ``*clinical*.csv`` (not a legend) and
    ``*legend*.csv`` (one with "clinical" in its name first, e.g. the published
    ``AWS_Open_Data_Clinical_Legend.csv``); only two folder levels are searched (not the DICOM tree).
    With several candidates the first in sorted order is used and the choice is logged.
    """
    embed_dir = Path(embed_dir)
    if not embed_dir.is_dir():
        raise DataError(f"{embed_dir}: EMBED folder not found")
    csvs = sorted(p for p in [*embed_dir.glob("*"), *embed_dir.glob("*/*")] if p.suffix.lower() == ".csv")
    found = {}
    for key in ("metadata", "clinical", "legend"):
        hits = [
            p for p in csvs if key in p.name.lower() and (key == "legend" or "legend" not in p.name.lower())
        ]
        if key == "legend":
            hits.sort(key=lambda p: "clinical" not in p.name.lower())  # stable: sorted order otherwise
        if not hits:
            if key != "legend":
                raise DataError(f"{embed_dir}: no *{key}*.csv table found (searched two folder levels)")
            continue
        if len(hits) > 1:
            log.info(
                "EMBED %s table: using %s (also found %s)", key, hits[0].name, [h.name for h in hits[1:]]
            )
        found[key] = hits[0]
    return found


def _birads_of(asses: pd.Series) -> pd.Series:
    return asses.fillna("").str.strip().str.upper().map(ASSES_TO_BIRADS)


def _to_float(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce")


def procedure_reason(description: object) -> str:
    """``screening`` if the StudyDescription contains "screen", else ``diagnostic`` if it contains
    "diag" (case-insensitive), else "" (the reference drops such images)."""
    text = description.lower() if isinstance(description, str) else ""
    return "screening" if "screen" in text else "diagnostic" if "diag" in text else ""


def select_clinical_rows(clinical: pd.DataFrame, fallback: str = "exam") -> pd.DataFrame:
    """One clinical row per (acc_anon, laterality) following the module's row-selection rule.

    Args:
        clinical: clinical rows (``acc_anon``, ``side``, ``asses`` and any other columns).
        fallback: ``exam`` (reference: side, else B, else every row of the exam) or ``none``
            (side, else B or empty side, else no row).
    Returns:
        the clinical columns plus ``laterality`` ("L"/"R"), at most one row per (exam, laterality).
    """
    if fallback not in CLINICAL_FALLBACKS:
        raise ValueError(f"fallback={fallback!r}: expected one of {CLINICAL_FALLBACKS}")
    c = clinical.reset_index(drop=True).copy()
    c["_row"] = np.arange(len(c))
    side = c["side"].fillna("").str.strip().str.upper()
    c["_birads"] = _birads_of(c["asses"])
    bilateral = side.isin(["B"] if fallback == "exam" else ["B", ""])
    parts = []
    for lat in ("L", "R"):
        parts += [
            c[side == lat].assign(laterality=lat, _prio=0),
            c[bilateral].assign(laterality=lat, _prio=1),
        ]
        if fallback == "exam":
            parts.append(c.assign(laterality=lat, _prio=2))
    cand = pd.concat(parts, ignore_index=True)
    if cand.empty:
        return cand.drop(columns=["_row", "_prio", "_birads"])
    best = cand.groupby(["acc_anon", "laterality"])["_prio"].transform("min")
    cand = cand[cand["_prio"] == best].copy()
    b = cand["_birads"].fillna(-1)
    keys = [cand["acc_anon"], cand["laterality"]]
    all_low = b.groupby(keys).transform("max").le(2)
    has_zero = (b == 0).groupby(keys).transform("max").astype(bool)
    score = b.where(~(all_low & has_zero), (b == 0).astype(float) * 100.0)
    cand["_score"] = score
    cand = cand.sort_values(["acc_anon", "laterality", "_score", "_row"], ascending=[True, True, False, True])
    sel = cand.drop_duplicates(["acc_anon", "laterality"], keep="first")
    return sel.drop(columns=["_row", "_prio", "_birads", "_score"]).reset_index(drop=True)


def _safe_ids(paths: pd.Series) -> pd.Series:
    stems = paths.map(lambda p: Path(str(p)).stem)
    if stems.is_unique:
        return stems
    return paths.map(lambda p: str(p).strip("/").replace("/", "_").replace("\\", "_").rsplit(".", 1)[0])


def merge_embed(
    metadata: pd.DataFrame,
    clinical: pd.DataFrame,
    *,
    strip_prefix: str = "",
    exclude_spot_mag: bool = False,
    clinical_fallback: str = "exam",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Per-image table from EMBED metadata + clinical rows (2D images only).

    Args:
        metadata: ``EMBED_OpenData_metadata*.csv`` as strings.
        clinical: ``EMBED_OpenData_clinical*.csv`` as strings.
        strip_prefix: removed from the start of ``anon_dicom_path`` (e.g. a site's NAS mount).
        exclude_spot_mag: also drop spot-compression / magnification views (off: reference keeps 2D).
        clinical_fallback: row selection without a same-side or B row, ``exam`` (reference) or
            ``none`` (module docstring).
    Returns:
        (table with ``IMAGE_COLUMNS``, counts of dropped images by reason).
    """
    validate_columns(metadata, METADATA_COLUMNS, "EMBED metadata")
    validate_columns(clinical, CLINICAL_COLUMNS, "EMBED clinical")
    dropped: dict[str, int] = {}
    md = metadata.copy()
    is2d = md["FinalImageType"].fillna("").str.strip().str.upper() == "2D"
    dropped["not_2d"] = int((~is2d).sum())
    md = md[is2d]
    if exclude_spot_mag and "spot_mag" in md.columns:
        spot = _to_float(md["spot_mag"]).fillna(0) > 0
        dropped["spot_mag"] = int(spot.sum())
        md = md[~spot]
    md = md.assign(laterality=md["ImageLateralityFinal"].fillna("").str.strip().str.upper())
    bad_lat = ~md["laterality"].isin(["L", "R"])
    dropped["no_laterality"] = int(bad_lat.sum())
    md = md[~bad_lat]
    cl = clinical.copy()
    for col in CLINICAL_OPTIONAL:
        if col not in cl.columns:
            cl[col] = np.nan
    keep_cols = [
        "acc_anon",
        "laterality",
        *[c for c in CLINICAL_COLUMNS + CLINICAL_OPTIONAL if c not in ("empi_anon", "acc_anon")],
    ]
    sel = select_clinical_rows(cl[[*CLINICAL_COLUMNS, *CLINICAL_OPTIONAL]], clinical_fallback)[keep_cols]
    merged = md.merge(sel, on=["acc_anon", "laterality"], how="left", indicator=True)
    no_row = merged["_merge"] == "left_only"
    dropped["no_clinical_row"] = int(no_row.sum())
    merged = merged[~no_row]
    procedure = merged["StudyDescription"].fillna("").str.strip()
    birads = _birads_of(merged["asses"])
    tissueden = _to_float(merged["tissueden"])
    miss_proc = procedure == ""
    no_reason = (procedure.map(procedure_reason) == "") & ~miss_proc
    miss_dens = tissueden.isna() & ~miss_proc & ~no_reason
    miss_bir = birads.isna() & ~miss_proc & ~no_reason & ~miss_dens
    dropped["missing_procedure"] = int(miss_proc.sum())
    dropped["not_screening_or_diagnostic"] = int(no_reason.sum())
    dropped["missing_density"] = int(miss_dens.sum())
    dropped["missing_birads"] = int(miss_bir.sum())
    keep = ~(miss_proc | no_reason | miss_dens | miss_bir)
    m = merged[keep].reset_index(drop=True)
    birads, tissueden = birads[keep].reset_index(drop=True), tissueden[keep].reset_index(drop=True)
    sev = _to_float(m["path_severity"])
    paths = m["anon_dicom_path"].fillna("").astype(str)
    if strip_prefix:
        paths = paths.map(lambda p: p[len(strip_prefix) :].lstrip("/") if p.startswith(strip_prefix) else p)
    dens = tissueden.where(tissueden.between(1, 4)) - 1
    out = pd.DataFrame(
        {
            "image_id": _safe_ids(paths).to_numpy(),
            "patient_id": m["empi_anon"].astype(str),
            "exam_id": m["acc_anon"].astype(str),
            "source": "embed",
            "dicom_path": paths,
            "laterality": m["laterality"],
            "view": m["ViewPosition"].fillna("").str.strip().str.upper(),
            "study_description": m["StudyDescription"].fillna("").str.strip(),
            "image_type": "2D",
            "age": _to_float(m["age_at_study"]),
            "race": m["RACE_DESC"].fillna("").astype(str),
            "ethnicity": m["ETHNIC_GROUP_DESC"].fillna("").astype(str),
            "asses": m["asses"].fillna("").str.strip().str.upper(),
            "tissueden": tissueden,
            "massshape": m["massshape"].fillna("").astype(str).str.strip(),
            "massdens": m["massdens"].fillna("").astype(str).str.strip(),
            "calcfind": m["calcfind"].fillna("").astype(str).str.strip(),
            "calcdistri": m["calcdistri"].fillna("").astype(str).str.strip(),
            "path_severity": sev,
            "birads": birads.astype(int),
            "density": dens.fillna(-1).astype(int),
            "cancer": np.where(sev.isna(), -1, sev.isin(CANCER_SEVERITIES).astype(int)),
            "roi_coords": m["ROI_coords"].fillna("").astype(str) if "ROI_coords" in m.columns else "",
        }
    )
    for reason, n in dropped.items():
        if n:
            log.info("EMBED: dropped %d image(s): %s", n, reason)
    return out[list(IMAGE_COLUMNS)], dropped


def read_embed(
    embed_dir: str | Path,
    *,
    strip_prefix: str = "",
    exclude_spot_mag: bool = False,
    clinical_fallback: str = "exam",
) -> tuple[pd.DataFrame, dict[str, int], dict[str, dict[str, str]]]:
    """Read the EMBED tables under ``embed_dir``: (per-image table, dropped counts, legend).

    Options as in :func:`merge_embed`; without a legend file the legend is ``DEFAULT_LEGEND``.
    """
    found = find_embed_tables(embed_dir)
    metadata = read_csv_checked(found["metadata"], METADATA_COLUMNS)
    clinical = read_csv_checked(found["clinical"], CLINICAL_COLUMNS)
    legend = read_legend(found["legend"]) if "legend" in found else dict(DEFAULT_LEGEND)
    table, dropped = merge_embed(
        metadata,
        clinical,
        strip_prefix=strip_prefix,
        exclude_spot_mag=exclude_spot_mag,
        clinical_fallback=clinical_fallback,
    )
    return table, dropped, legend


def read_rsna(train_csv: str | Path, *, images_dir: str = "train_images") -> pd.DataFrame:
    """Per-image table from RSNA ``train.csv``; DICOMs at ``<images_dir>/<patient>/<image>.dcm``."""
    df = read_csv_checked(train_csv, RSNA_COLUMNS)
    pid, iid = df["patient_id"].astype(str), df["image_id"].astype(str)
    birads = _to_float(df["BIRADS"])
    cancer = _to_float(df["cancer"])
    return pd.DataFrame(
        {
            "image_id": (pid + "_" + iid).to_numpy(),
            "patient_id": pid,
            "exam_id": pid,
            "source": "rsna",
            "dicom_path": images_dir + "/" + pid + "/" + iid + ".dcm",
            "laterality": df["laterality"].fillna("").str.strip().str.upper(),
            "view": df["view"].fillna("").str.strip().str.upper(),
            "study_description": "",
            "image_type": "2D",
            "age": _to_float(df["age"]),
            "race": "",
            "ethnicity": "",
            "asses": birads.map(lambda b: BIRADS_TO_ASSES.get(int(b), "") if b == b else ""),
            "tissueden": df["density"].map(lambda d: RSNA_DENSITY.get(str(d).strip(), np.nan) + 1),
            "massshape": "",
            "massdens": "",
            "calcfind": "",
            "calcdistri": "",
            "path_severity": np.nan,
            "birads": birads.fillna(-1).astype(int),
            "density": df["density"].map(lambda d: RSNA_DENSITY.get(str(d).strip(), -1)).astype(int),
            "cancer": cancer.fillna(-1).astype(int),
            "roi_coords": "",
        }
    )[list(IMAGE_COLUMNS)]


def _flatten(value: object) -> list[object]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def parse_roi_coords(text: str) -> list[tuple[int, int, int, int]]:
    """``ROI_coords`` text -> list of ``(ymin, xmin, ymax, xmax)`` boxes; "" (or an empty list) -> [].

    Any nesting of lists or tuples is accepted (``[[y, x, y, x], ...]``, ``((y, x, y, x),)``, the
    datathon files' ``[[[y, x, y, x]]]``): the numbers are read in order, four per box.
    """
    if not isinstance(text, str) or not text.strip():
        return []
    try:
        numbers = _flatten(ast.literal_eval(text.strip()))
    except (ValueError, SyntaxError) as exc:
        raise DataError(f"ROI_coords {text!r}: not a list of boxes") from exc
    if len(numbers) % 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        raise DataError(f"ROI_coords {text!r}: expected groups of four numbers (ymin, xmin, ymax, xmax)")
    vals = [int(round(float(v))) for v in numbers]  # type: ignore[arg-type]
    return [tuple(vals[i : i + 4]) for i in range(0, len(vals), 4)]  # type: ignore[misc]
