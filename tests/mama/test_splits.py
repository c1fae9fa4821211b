"""Patient-level splits (no leakage, seeded) and balanced-test counts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medlearn.errors import ConfigError, DataError
from medlearn.mama.data.splits import balanced_test_subset, patient_split, write_splits


def _table(n_patients=500, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, n_patients)
    pats = np.repeat([f"p{i}" for i in range(n_patients)], counts)
    return pd.DataFrame({"patient_id": pats, "image_id": [f"i{k}" for k in range(len(pats))]})


def test_no_patient_leakage_and_fractions():
    t = _table()
    split = patient_split(t, seed=3)
    per_patient = split.groupby(t["patient_id"]).nunique()
    assert (per_patient == 1).all()
    n_pat = t["patient_id"].nunique()
    pat_split = split.groupby(t["patient_id"]).first().value_counts()
    assert pat_split["train"] == round(0.7 * n_pat) and pat_split["val"] == round(0.8 * n_pat) - round(
        0.7 * n_pat
    )
    assert patient_split(t, seed=3).equals(split)
    assert not patient_split(t, seed=4).equals(split)
    # independent of row order
    shuffled = t.sample(frac=1.0, random_state=1)
    assert patient_split(shuffled, seed=3).sort_index().equals(split)


def test_bad_fractions_and_columns():
    with pytest.raises(ConfigError, match="fractions"):
        patient_split(_table(10), fractions=(0.5, 0.5, 0.5))
    with pytest.raises(DataError, match="patient_id"):
        patient_split(pd.DataFrame({"x": [1]}))


def test_balanced_test_counts(tmp_path):
    labels = np.array([0] * 5000 + [1] * 1000 + [2] * 50 + [-1] * 30)
    t = pd.DataFrame(
        {
            "label": labels,
            "patient_id": [f"p{i}" for i in range(len(labels))],
            "image_id": [f"i{i}" for i in range(len(labels))],
        }
    )
    sub = balanced_test_subset(t, "label")
    counts = sub["label"].value_counts().to_dict()
    assert counts == {0: 500, 1: max(math.ceil(0.1 * 1000), 200), 2: 50}
    assert sub.index.is_unique
    assert balanced_test_subset(t, "label").equals(sub)  # seed 42 default
    assert not balanced_test_subset(t, "label", seed=1).equals(sub)
    t["split"] = "test"
    n = write_splits(t, tmp_path, {"lab": "label"})
    assert n == {"lab": 750}
    assert len(pd.read_csv(tmp_path / "balanced_test_lab.csv")) == 750
    assert len(pd.read_csv(tmp_path / "splits.csv")) == len(t)
