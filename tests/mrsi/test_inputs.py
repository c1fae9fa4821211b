"""Inputs a trained MRSI model refuses (sharpness outside the trained lambda range), evaluation
per split, and ``mrsi prepare`` checking the whole dataset (with and without ``--check-only``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlearn.cli import main
from medlearn.config import load_config
from medlearn.errors import ConfigError
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.data.verify import CHECK_CACHE, check_dataset
from medlearn.mrsi.evaluate import load_generator, trained_sharpness_range
from medlearn.mrsi.predict import check_sharpness, load_mrsi, predict_file, predict_folder
from medlearn.mrsi.splits import write_splits
from medlearn.mrsi.train import train

from .conftest import CONFIGS
from .test_pipeline import RUN, _write_nifti_case


@pytest.fixture(scope="module")
def run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mrsi_inputs") / "run"
    cfg = load_config(MRSIConfig, CONFIGS / "tiny.yaml", [f"data.root={tiny_root}", f"train.out={out}", *RUN,
                                                          "train.max_steps=1"])  # fmt: skip
    try:
        train(cfg)
    finally:
        torch.set_num_threads(before)
    return out


# ------------------------------------------------------------------------------------ sharpness
def test_trained_sharpness_range_follows_the_lambda_schedule():
    def cfg(*overrides: str) -> MRSIConfig:
        return load_config(MRSIConfig, CONFIGS / "tiny.yaml", list(overrides))

    assert trained_sharpness_range(cfg()) == (0.0, 1.0)  # U[0, 1] plus 10% zeros
    assert trained_sharpness_range(cfg("adversarial.lambda_low=0.02", "adversarial.zero_fraction=0")) == (
        0.02,
        pytest.approx(1.02),
    )
    assert trained_sharpness_range(cfg("adversarial.lambda_low=0.02")) == (0.0, pytest.approx(1.02))
    assert trained_sharpness_range(cfg("adversarial.lambda_span=0.1")) == (0.0, 0.1)  # the former default
    assert trained_sharpness_range(cfg("adversarial.fixed_lambda=0.05")) == (0.05, 0.05)
    assert trained_sharpness_range(cfg("adversarial.enabled=false")) == (0.0, 0.0)


def test_check_sharpness_hand_cases(caplog):
    assert check_sharpness(0.1, (0.0, 0.1)) == 0.1 and check_sharpness(0, (0.0, 0.1)) == 0.0
    assert check_sharpness(0.8, (0.7, 0.7 + 0.1)) == 0.8  # 0.7 + 0.1 = 0.7999999999999999: rounding only
    for bad in (0.11, -0.01):
        with pytest.raises(ConfigError, match=r"outside the lambda range .*\[0, 0\.1\]"):
            check_sharpness(bad, (0.0, 0.1))
    with pytest.raises(ConfigError, match="finite"):
        check_sharpness(float("nan"), None)
    assert check_sharpness(5.0, None) == 5.0  # no run config: nothing to compare with
    with caplog.at_level(logging.WARNING, logger="medlearn.mrsi.predict"):
        assert check_sharpness(0.5, (0.0, 0.1), allow_extrapolation=True) == 0.5
    assert "[0, 0.1]" in caplog.text


def test_predict_refuses_a_sharpness_outside_the_trained_range(run: Path, tiny_root: Path, tmp_path: Path):
    lr_path, t1, flair, _ = _write_nifti_case(tmp_path / "in", tiny_root)
    gen, _ = load_generator(run)
    assert gen.sharpness_range == (0.0, 1.0)
    out = tmp_path / "o.nii.gz"
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        predict_file(gen, lr_path, t1, flair, out, "NAA", 6, sharpness=1.5)
    assert not out.exists()
    maps = tmp_path / "maps"
    maps.mkdir()
    shutil.copy(lr_path, maps / "NAA.nii.gz")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        predict_folder(gen, maps, t1, flair, tmp_path / "batch", 6, sharpness=-0.2)
    predict_file(gen, lr_path, t1, flair, out, "NAA", 6, sharpness=1.5, allow_extrapolation=True)
    assert out.is_file()
    p = load_mrsi(run)
    lr = np.ones((16, 16, 2), np.float32)
    mri = np.ones((48, 48, 6), np.float32)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        p.super_resolve(lr, mri, mri, "NAA", lowres_matrix=6, sharpness=1.2)
    assert p.super_resolve(lr, mri, mri, "NAA", lowres_matrix=6, sharpness=0.1).shape == (16, 16, 2)
    args = ["mrsi", "predict", "--checkpoint", str(run), "--map", str(lr_path), "--t1", str(t1), "--flair",
            str(flair), "--metabolite", "NAA", "--lowres-matrix", "6", "--sharpness", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 2


# ------------------------------------------------------------------------------ eval per split
def test_evaluate_writes_one_folder_per_split(run: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    over = ["eval.ns=[3]", "eval.lambdas=[0.0]", "eval.max_items=2"]
    assert main(["mrsi", "evaluate", "--checkpoint", str(copy), *over]) == 0
    assert main(["mrsi", "evaluate", "--checkpoint", str(copy), "--split", "val", *over]) == 0
    for split in ("test", "val"):
        summary = json.loads((copy / "eval" / split / "summary.json").read_text())
        assert summary["split"] == split
    test_ids = json.loads((copy / "eval" / "test" / "summary.json").read_text())["patients"]
    val_ids = json.loads((copy / "eval" / "val" / "summary.json").read_text())["patients"]
    assert test_ids and val_ids and not set(test_ids) & set(val_ids)


# ------------------------------------------------------------------------------------- prepare
def _cfg(root: Path, *overrides: str) -> MRSIConfig:
    return load_config(MRSIConfig, CONFIGS / "tiny.yaml", [f"data.root={root}", *overrides])


def test_check_only_reads_everything_and_writes_nothing(tiny_root: Path, tmp_path: Path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    args = ["mrsi", "prepare", "--config", str(CONFIGS / "tiny.yaml"), f"data.root={root}"]
    assert main([*args, "--check-only", "--write-splits", str(root / "splits.json")]) == 0
    assert "4 patients, 8 slices" in capsys.readouterr().out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_prepare_caches_patients_that_passed_and_rereads_changed_ones(tiny_root: Path, tmp_path: Path):
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    cache = root / CHECK_CACHE
    first = check_dataset(_cfg(root), cache)
    assert first["errors"] == {} and first["cached"] == 0 and first["slices"] == 8 and cache.is_file()
    again = check_dataset(_cfg(root), cache)
    assert again["cached"] == 4 and again["slices"] == 8 and again["grids"] == [(16, 16)]
    bad = root / "Patient3" / "Met_filtered" / "NAA.npy"
    arr = np.load(bad)
    arr[0, 5, 5] = np.inf
    np.save(bad, arr)
    third = check_dataset(_cfg(root), cache)
    assert (
        third["cached"] == 3
        and set(third["errors"]) == {"Patient3"}
        and "NAA.npy" in third["errors"]["Patient3"]
    )
    assert (
        check_dataset(_cfg(root, "data.metabolites=[NAA]"), cache)["cached"] == 0
    )  # other options: no reuse
    assert check_dataset(_cfg(root), None)["errors"].keys() == {"Patient3"}


def test_a_splits_file_naming_missing_patients_is_reported(tiny_root: Path, tmp_path: Path):
    splits = write_splits(
        tmp_path / "splits.json",
        [{"train": ["Patient1", "Patient2"], "val": ["Patient9"], "test": ["Patient4"]}],
    )
    res = check_dataset(_cfg(tiny_root, f"data.splits_file={splits}", "data.k_folds=1"))
    assert "Patient9" in res["errors"]["<split>"] and "not found" in res["errors"]["<split>"]
    res = check_dataset(_cfg(tiny_root, "data.fold=5"))
    assert "data.fold=5" in res["errors"]["<split>"]
