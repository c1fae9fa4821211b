"""Patient-level splits (seeded, written to disk) and the "balanced test" subset.

The reference splits unseeded; here the split is a pure function of the patient ids and the seed,
and is written next to the prepared data so every later run reads the same one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from medlearn.errors import ConfigError
from medlearn.mama.data.tables import validate_columns

SPLITS = ("train", "val", "test")


def patient_split(
    table: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0
) -> pd.Series:
    """Split name ("train" / "val" / "test") for every row, with all images of a patient together.

    Patients are sorted, shuffled with ``seed``, and cut at round(0.7 N) and round(0.8 N) (for the
    default fractions). Returns a Series aligned with ``table.index``.
    """
    validate_columns(table, ["patient_id"], "per-image table (split)")
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ConfigError(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    patients = np.array(sorted(table["patient_id"].astype(str).unique()))
    order = np.random.default_rng(seed).permutation(len(patients))
    n = len(patients)
    cut1 = int(round(fractions[0] * n))
    cut2 = int(round((fractions[0] + fractions[1]) * n))
    names = np.empty(n, dtype=object)
    names[order[:cut1]] = "train"
    names[order[cut1:cut2]] = "val"
    names[order[cut2:]] = "test"
    lookup = dict(zip(patients, names))
    return table["patient_id"].astype(str).map(lookup).rename("split")


def balanced_test_subset(table: pd.DataFrame, label_col: str, seed: int = 42) -> pd.DataFrame:
    """Per class ``max(ceil(10% of class), 200)`` images (all of them if fewer), drawn with ``seed``.

    Rows with label -1 (unknown) are ignored. Pass the test split's rows. Returns the chosen rows
    (original index kept), ordered by class then by original position.
    """
    validate_columns(table, [label_col], "per-image table (balanced test)")
    rng = np.random.default_rng(seed)
    parts = []
    labels = table[label_col].astype(int)
    for cls in sorted(labels[labels >= 0].unique()):
        idx = np.flatnonzero((labels == cls).to_numpy())
        k = min(idx.size, max(int(math.ceil(0.1 * idx.size)), 200))
        parts.append(np.sort(rng.choice(idx, size=k, replace=False)))
    chosen = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    return table.iloc[chosen]


def write_splits(
    table: pd.DataFrame, out_dir: str | Path, label_cols: dict[str, str], seed: int = 42
) -> dict[str, int]:
    """Write ``splits.csv`` (image_id, patient_id, split) and ``balanced_test_<name>.csv`` per label.

    Args:
        table: per-image table with a ``split`` column.
        label_cols: ``{file name part: label column}``, e.g. ``{"birads": "birads"}``.
    Returns:
        number of images in each balanced subset.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    validate_columns(table, ["image_id", "patient_id", "split"], "per-image table (write splits)")
    table[["image_id", "patient_id", "split"]].to_csv(out / "splits.csv", index=False)
    counts = {}
    test = table[table["split"] == "test"]
    for name, col in label_cols.items():
        sub = balanced_test_subset(test, col, seed=seed)
        sub[["image_id", "patient_id", col]].to_csv(out / f"balanced_test_{name}.csv", index=False)
        counts[name] = len(sub)
    return counts
