"""Patient-level k-fold splits: sizes, no leakage, partition of test sets, JSON round trip."""

from __future__ import annotations

import json

import pytest

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.splits import kfold_patient_splits, read_splits, write_splits

IDS = [f"Patient{i}" for i in range(1, 16)]


def test_reference_split_sizes_and_no_leakage():
    folds = kfold_patient_splits(IDS, k=5, n_val=3, n_test=3, seed=0)
    assert len(folds) == 5
    for fold in folds:
        assert [len(fold[r]) for r in ("train", "val", "test")] == [9, 3, 3]
        roles = [set(fold[r]) for r in ("train", "val", "test")]
        assert set.union(*roles) == set(IDS)
        assert not (roles[0] & roles[1]) and not (roles[0] & roles[2]) and not (roles[1] & roles[2])
    tests = [p for fold in folds for p in fold["test"]]
    assert sorted(tests) == sorted(IDS)  # the 5 test sets partition the 15 patients


def test_seeded_and_seed_dependent():
    assert kfold_patient_splits(IDS, seed=3) == kfold_patient_splits(IDS, seed=3)
    assert kfold_patient_splits(IDS, seed=3) != kfold_patient_splits(IDS, seed=4)


def test_more_folds_than_blocks_wraps_but_keeps_folds_clean():
    ids = [f"p{i}" for i in range(7)]
    folds = kfold_patient_splits(ids, k=4, n_val=1, n_test=2, seed=1)
    for fold in folds:
        assert len(fold["test"]) == 2 and len(fold["val"]) == 1 and len(fold["train"]) == 4
        assert len(set(fold["train"]) | set(fold["val"]) | set(fold["test"])) == 7
    # first three test blocks are disjoint (3 * 2 <= 7)
    first = [p for fold in folds[:3] for p in fold["test"]]
    assert len(set(first)) == 6


def test_bad_arguments():
    with pytest.raises(ConfigError, match="unique"):
        kfold_patient_splits(["a", "a", "b", "c"], k=2, n_val=1, n_test=1)
    with pytest.raises(ConfigError, match="training patient"):
        kfold_patient_splits(["a", "b", "c"], k=2, n_val=1, n_test=2)
    with pytest.raises(ConfigError, match="k >= 1"):
        kfold_patient_splits(IDS, k=0)


def test_json_round_trip(tmp_path):
    folds = kfold_patient_splits(IDS, seed=2)
    path = write_splits(tmp_path / "sub" / "splits.json", folds)
    assert read_splits(path) == folds
    assert json.loads(path.read_text())["folds"][0]["test"] == folds[0]["test"]


def test_read_rejects_leakage_and_bad_files(tmp_path):
    leaky = [{"train": ["a", "b"], "val": ["c"], "test": ["a"]}]
    path = tmp_path / "leak.json"
    path.write_text(json.dumps({"folds": leaky}))
    with pytest.raises(DataError, match="'a' is in both 'train' and 'test'"):
        read_splits(path)
    path.write_text(json.dumps({"folds": [{"train": ["a"], "test": ["b"]}]}))
    with pytest.raises(DataError, match="keys"):
        read_splits(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_splits(path)
    with pytest.raises(DataError, match="not found"):
        read_splits(tmp_path / "missing.json")
    with pytest.raises(DataError, match="both"):
        write_splits(tmp_path / "w.json", leaky)
