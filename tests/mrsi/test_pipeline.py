"""Evaluate / predict / CLI on a tiny trained run (data written to disk, read by the real loaders)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlearn.cli import main
from medlearn.config import load_config
from medlearn.errors import DataError
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.data import load_patient, mri_affine_from_map_affine
from medlearn.mrsi.evaluate import evaluate, load_generator
from medlearn.mrsi.predict import predict_file, zero_fill
from medlearn.mrsi.train import train

from .conftest import CONFIGS

RUN = ["data.metabolites=[NAA,tCho]", "model.base_width=2", "model.depth=2", "critic.n_blocks=2",
       "adversarial.n_critic=1", "train.epochs=1", "train.batch_size=4"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("mrsi_run") / "run"
    cfg = load_config(MRSIConfig, CONFIGS / "tiny.yaml", [f"data.root={tiny_root}", f"train.out={out}", *RUN])
    try:
        train(cfg)
    finally:
        torch.set_num_threads(before)
    return out


def test_evaluate_writes_tables_and_figures(tiny_run: Path, tmp_path: Path) -> None:
    summary = evaluate(tiny_run, tmp_path / "eval")
    for name in (
        "per_item.csv",
        "summary.csv",
        "summary.md",
        "summary.json",
        "psnr_vs_sharpness.png",
        "sr_grid_NAA.png",
        "lambda_sweep_NAA.png",  # one map across the evaluated lambdas (tiny: 0 and 1)
    ):
        assert (tmp_path / "eval" / name).is_file(), name
    import pandas as pd

    items = pd.read_csv(tmp_path / "eval" / "per_item.csv")
    cfg = load_config(MRSIConfig, tiny_run / "config.yaml")
    assert set(items["n"]) == set(cfg.eval.ns)
    assert set(items["method"]) == {"sr", "zero_filled", "bicubic"}
    assert np.isfinite(items["psnr"]).all() and (items["ssim"] <= 1).all()
    assert {r["lambda"] for r in summary["per_n_lambda"]} == set(cfg.eval.lambdas)
    assert summary["parameters"] > 0
    md = (tmp_path / "eval" / "summary.md").read_text()
    assert "| n | lambda | psnr | ssim |" in md


def _write_nifti_case(folder: Path, tiny_root: Path) -> tuple[Path, Path, Path, np.ndarray]:
    p = load_patient(tiny_root, "Patient1", metabolites=["NAA"])
    s, h, w = p.maps["NAA"].shape
    affine = np.array([[2.0, 0, 0, -10], [0, 2.5, 0, 5], [0, 0, 3.0, 1], [0, 0, 0, 1]])
    lr = np.stack([np.abs(np.fft.ifft2(np.fft.fft2(m) * _lowpass(h, 3))) for m in p.maps["NAA"]], -1)
    mri_aff = mri_affine_from_map_affine(affine)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr, aff in (("NAA", lr, affine), ("T1", p.t1, mri_aff), ("FLAIR", p.flair, mri_aff)):
        if arr.ndim == 4:  # (S, 3H, 3W, 3) slabs -> (3H, 3W, 3S)
            arr = arr.transpose(1, 2, 0, 3).reshape(arr.shape[1], arr.shape[2], -1)
        nib.save(nib.Nifti1Image(arr.astype(np.float32), aff), str(folder / f"{name}.nii.gz"))
        paths.append(folder / f"{name}.nii.gz")
    return paths[0], paths[1], paths[2], affine


def _lowpass(h: int, n: int) -> np.ndarray:
    f = np.fft.fftfreq(h) * h
    keep = (f >= -n) & (f <= n - 1)
    return (keep[:, None] & keep[None, :]).astype(float)


def test_predict_round_trip_keeps_geometry_and_units(tiny_run: Path, tiny_root: Path, tmp_path: Path) -> None:
    lr_path, t1, flair, affine = _write_nifti_case(tmp_path / "in", tiny_root)
    out = tmp_path / "SR.nii.gz"
    rc = main(["mrsi", "predict", "--checkpoint", str(tiny_run), "--map", str(lr_path), "--t1", str(t1),
               "--flair", str(flair), "--metabolite", "NAA", "--lowres-matrix", "6", "--sharpness", "0.05",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    img = nib.load(str(out))
    lr = nib.load(str(lr_path)).get_fdata()
    assert img.shape == lr.shape and np.allclose(img.affine, affine)
    sr = img.get_fdata()
    assert np.isfinite(sr).all() and sr.max() > 0
    # per-slice normalisation: the output is in the input's units (x10 in -> x10 out)
    gen, _ = load_generator(tiny_run)
    nib.save(nib.Nifti1Image((lr * 10).astype(np.float32), affine), str(tmp_path / "NAA10.nii.gz"))
    sr10 = predict_file(gen, tmp_path / "NAA10.nii.gz", t1, flair, tmp_path / "SR10.nii.gz", "NAA", 6, 0.05)
    assert np.allclose(nib.load(str(sr10)).get_fdata(), 10 * sr, rtol=1e-4, atol=1e-4 * sr.max())
    # batch mode over a folder of <met>.nii.gz
    maps = tmp_path / "maps"
    maps.mkdir()
    shutil.copy(lr_path, maps / "NAA.nii.gz")
    shutil.copy(lr_path, maps / "Cr+PCr.nii.gz")
    rc = main(["mrsi", "predict", "--checkpoint", str(tiny_run), "--map", str(maps), "--t1", str(t1),
               "--flair", str(flair), "--lowres-matrix", "6", "--out", str(tmp_path / "batch")])  # fmt: skip
    assert rc == 0 and sorted(p.name for p in (tmp_path / "batch").iterdir()) == [
        "Cr+PCr.nii.gz",
        "NAA.nii.gz",
    ]


def test_predict_bad_inputs(tiny_run: Path, tiny_root: Path, tmp_path: Path) -> None:
    lr_path, t1, flair, affine = _write_nifti_case(tmp_path / "in", tiny_root)
    gen, _ = load_generator(tiny_run)
    with pytest.raises(DataError, match="even"):
        predict_file(gen, lr_path, t1, flair, tmp_path / "o.nii.gz", "NAA", 7)
    with pytest.raises(DataError, match="unknown metabolite 'XYZ'"):
        predict_file(gen, lr_path, t1, flair, tmp_path / "o.nii.gz", "XYZ", 6)
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 2), np.float32), affine), str(bad))
    with pytest.raises(DataError, match="matches neither the MRI grid"):
        predict_file(gen, bad, t1, flair, tmp_path / "o.nii.gz", "NAA", 6)
    assert main(["mrsi", "predict", "--checkpoint", str(tmp_path / "nope"), "--map", str(lr_path), "--t1", str(t1),
                 "--flair", str(flair), "--metabolite", "NAA", "--lowres-matrix", "6", "--out", "x.nii.gz"]) == 2  # fmt: skip


def test_zero_fill_of_a_constant_is_constant() -> None:
    small = np.full((4, 4, 2), 3.0, np.float32)
    big = zero_fill(small, (12, 12))
    assert big.shape == (12, 12, 2) and np.allclose(big, 3.0, atol=1e-5)


def test_prepare_check_only_passes_then_reports_a_corrupt_file(
    tiny_root: Path, tmp_path: Path, capsys
) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    args = ["mrsi", "prepare", "--config", str(CONFIGS / "tiny.yaml"), "--check-only", f"data.root={root}"]
    assert main(args) == 0
    assert "dataset check passed" in capsys.readouterr().out
    bad = root / "Patient2" / "Met_filtered" / "Gln.npy"
    arr = np.load(bad)
    arr[0, 3, 3] = np.nan
    np.save(bad, arr)
    assert main(args) == 2
    out = capsys.readouterr().out
    assert "Patient2" in out and "Gln.npy" in out and "NaN" in out


def test_cli_train_writes_a_run(tiny_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_run"
    rc = main(["mrsi", "train", "--config", str(CONFIGS / "tiny.yaml"), f"data.root={tiny_root}", f"train.out={out}",
               *RUN, "adversarial.enabled=false", "train.max_steps=1"])  # fmt: skip
    assert rc == 0
    assert (out / "config.yaml").is_file() and json.loads((out / "env.json").read_text())["seed"] == 0
    assert main(["mrsi", "train", "--config", str(CONFIGS / "tiny.yaml"), "model.arch=nope"]) == 2


def test_cli_synth_then_prepare_on_the_nifti_layout(tmp_path: Path, capsys) -> None:
    out = tmp_path / "syn"
    assert main(["mrsi", "synth", "--out", str(out), "--patients", "2", "--hr-size", "16", "--slices", "1",
                 "--layouts", "nifti"]) == 0  # fmt: skip
    args = [
        "mrsi",
        "prepare",
        f"data.root={out / 'nifti'}",
        "data.n_val=0",
        "data.n_test=1",
        "data.k_folds=1",
    ]
    assert main(args) == 0
    assert "2 patients, 2 slices" in capsys.readouterr().out
    (out / "nifti" / "Patient2" / "FLAIR.nii.gz").unlink()
    assert main(args) == 2
    assert "FLAIR.nii.gz not found" in capsys.readouterr().out
