"""CLI round trips of ``mama evaluate`` and ``mama predict`` on synthetic files (tiny random model)."""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from medlearn.config import load_config
from medlearn.engine import Checkpointer, prepare_run_dir
from medlearn.errors import DataError
from medlearn.io.dicom_write import write_dicom_mg
from medlearn.mama.cli_eval import add_eval_verbs
from medlearn.mama.config import MamaConfig
from medlearn.mama.modeling.model import MamaModel

TINY = Path(__file__).resolve().parents[2] / "configs" / "mama" / "tiny.yaml"


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="medlearn mama")
    add_eval_verbs(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint in the training loop's layout (weights + LoRA adapter + run config), random weights."""
    run = tmp_path_factory.mktemp("mama") / "run"
    cfg = load_config(MamaConfig, TINY, [f"train.out={run}"])
    prepare_run_dir(run, cfg, 0)
    torch.manual_seed(0)
    model = MamaModel(cfg.model, cfg.loss)
    path = Checkpointer(run / "checkpoints").save(
        1, {"image": model.image, "heads": model.heads}, tag="final"
    )
    model.text.lm.save_pretrained(str(path / "text_adapter"))
    return path


def _mammo(rng, h=48, w=40):
    img = rng.integers(0, 200, (h, w))
    img[8:40, 4:30] += 3000  # bright "tissue" for the Otsu crop
    return img.astype(np.uint16)


def test_predict_cli_round_trip_with_corrupt_file(tmp_path, checkpoint):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    for pid, lat, view in [("p1", "L", "CC"), ("p1", "L", "MLO"), ("p1", "R", "CC"), ("p2", "L", "CC")]:
        write_dicom_mg(src / pid / f"{lat}_{view}.dcm", _mammo(rng), laterality=lat, view=view, bits_stored=12,
                       extra={"PatientID": pid})  # fmt: skip
    (src / "p2" / "broken.dcm").write_bytes(b"this is not a DICOM file" * 10)
    from PIL import Image

    Image.fromarray((_mammo(rng) // 16).astype(np.uint8)).save(src / "p3.png")
    out = tmp_path / "preds.csv"
    rc = _run_cli(["predict", str(src), "--checkpoint", str(checkpoint), "--task", "density", "--out", str(out),
                   "--heatmaps", str(tmp_path / "hm")])  # fmt: skip
    assert rc == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 6
    bad = df[df["status"] == "error"]
    assert list(bad["image_id"]) == ["broken"] and "broken.dcm" in bad["error"].iloc[0]
    ok = df[df["status"] == "ok"]
    probs = ok[["p_A", "p_B", "p_C", "p_D"]].astype(float).to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert set(ok["pred"]) <= {"A", "B", "C", "D"}
    assert sorted(ok.loc[ok["laterality"] != "", "patient_id"]) == ["p1", "p1", "p1", "p2"]
    breast = pd.read_csv(tmp_path / "preds_breast.csv")
    assert len(breast) == 3  # p1 L (2 views), p1 R, p2 L
    p1l = (
        ok[(ok["patient_id"] == "p1") & (ok["laterality"] == "L")][["p_A", "p_B", "p_C", "p_D"]]
        .astype(float)
        .max()
    )
    row = breast[(breast["patient_id"] == "p1") & (breast["laterality"] == "L")]
    np.testing.assert_allclose(
        row[["p_A", "p_B", "p_C", "p_D"]].to_numpy()[0], (p1l / p1l.sum()).to_numpy(), rtol=1e-5
    )
    assert int(row["n_views"].iloc[0]) == 2
    assert len(list((tmp_path / "hm").glob("*.png"))) == 5


def test_predict_all_bad_returns_error_code_and_strict_raises(tmp_path, checkpoint):
    (tmp_path / "a.dcm").write_bytes(b"\x00" * 300)
    out = tmp_path / "p.csv"
    assert (
        _run_cli(
            [
                "predict",
                str(tmp_path / "a.dcm"),
                "--checkpoint",
                str(checkpoint),
                "--task",
                "cancer",
                "--out",
                str(out),
            ]
        )
        == 1
    )
    with pytest.raises(DataError, match="a.dcm"):
        _run_cli(
            [
                "predict",
                str(tmp_path / "a.dcm"),
                "--checkpoint",
                str(checkpoint),
                "--task",
                "cancer",
                "--out",
                str(out),
                "--strict",
            ]
        )
    with pytest.raises(DataError, match="does not exist"):
        _run_cli(
            [
                "predict",
                str(tmp_path),
                "--checkpoint",
                str(tmp_path / "nope"),
                "--task",
                "cancer",
                "--out",
                str(out),
            ]
        )


def _prepared(tmp_path, rng, n=40):
    """A prepared folder (table.csv + PNG images) where density is visible as image brightness."""
    from medlearn.mama.data.prepare import save_image

    rows = []
    for i in range(n):
        split = "train" if i < 24 else "test"
        d = i % 4
        img = np.full((40, 32), 0.05, np.float32)
        img[4:36, 4:28] = 0.2 + 0.2 * d + 0.02 * rng.standard_normal((32, 24))
        save_image(tmp_path / "images" / f"im{i}.png", img, 8, "png")
        rows.append({"image_id": f"im{i}", "patient_id": f"p{i // 2}", "exam_id": f"e{i // 2}", "source": "embed",
                     "image_path": f"images/im{i}.png", "laterality": "LR"[i % 2], "view": "CC", "split": split,
                     "study_description": "MG Screening Bilateral", "asses": "N", "tissueden": d + 1, "age": 50,
                     "birads": 1, "density": d, "cancer": -1, "roi_coords": ""})  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    return tmp_path


def test_evaluate_cli_linear_probe_writes_results(tmp_path, checkpoint):
    data = _prepared(tmp_path / "prep", np.random.default_rng(1))
    out = tmp_path / "eval"
    rc = _run_cli(["evaluate", "--mode", "linear-probe", "--task", "density", "--checkpoint", str(checkpoint),
                   "--data", str(data), "--out", str(out), "probe.steps=60", "probe.standardize=true", "probe.lr=0.05",
                   "n_boot=20"])  # fmt: skip
    assert rc == 0
    import json

    res = json.loads((out / "metrics.json").read_text())
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 16 and pred["in_balanced"].all()
    # metrics agree with scikit-learn on the written predictions
    p = pred[[f"p{k}" for k in range(4)]].to_numpy()
    assert res["metrics"]["full"]["image"]["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(pred["label"], p.argmax(1))
    )
    assert (out / "confusion_full.png").is_file() and (out / "roc_full.png").is_file()
    assert (out / "probe" / "checkpoints" / "final" / "model_classifier.safetensors").is_file()
    csv = pd.read_csv(out / "metrics.csv")
    assert set(csv["subset"]) == {"balanced", "full"}
    # the trained head is usable by predict
    img_dir = data / "images"
    rc = _run_cli(["predict", str(img_dir / "im30.png"), str(img_dir / "im31.png"), "--checkpoint", str(checkpoint),
                   "--task", "density", "--head", str(out), "--out", str(tmp_path / "pp.csv")])  # fmt: skip
    assert rc == 0
    pp = pd.read_csv(tmp_path / "pp.csv")
    ref = pred.set_index("image_id").loc[["im30", "im31"], [f"p{k}" for k in range(4)]].to_numpy()
    np.testing.assert_allclose(pp[["p_A", "p_B", "p_C", "p_D"]].to_numpy(), ref, atol=1e-4)


def test_evaluate_rejects_bad_mode_and_missing_data(tmp_path, checkpoint):
    from medlearn.errors import ConfigError
    from medlearn.mama.eval.evaluate import EvalConfig, evaluate

    with pytest.raises(ConfigError, match="mode"):
        EvalConfig(mode="knn")
    with pytest.raises(DataError, match="table.csv"):
        evaluate(
            EvalConfig(
                mode="zero-shot",
                task="density",
                checkpoint=str(checkpoint),
                data=str(tmp_path),
                out=str(tmp_path / "o"),
            )
        )


@pytest.mark.parametrize("mode", ["zero-shot", "finetune"])
def test_evaluate_zero_shot_and_finetune_metrics_match_predictions(tmp_path, checkpoint, mode):
    import json

    from medlearn.mama.eval.evaluate import EvalConfig, evaluate
    from medlearn.mama.eval.linear_probe import ProbeConfig

    data = _prepared(tmp_path / "prep", np.random.default_rng(2))
    cfg = EvalConfig(mode=mode, task="density", checkpoint=str(checkpoint), data=str(data), out=str(tmp_path / "e"),
                     n_boot=0, finetune=ProbeConfig(steps=3, batch_size=4, cache_features=False))  # fmt: skip
    res = evaluate(cfg)
    pred = pd.read_csv(tmp_path / "e" / "predictions.csv")
    p = pred[[f"p{k}" for k in range(4)]].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    full = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]["full"]["image"]
    assert full["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(pred["label"], p.argmax(1)))
    assert full == res["metrics"]["full"]["image"]
    if mode == "finetune":
        assert res["training"]["steps"] == 3


def test_demo_evaluate_fills_report_section(tmp_path, checkpoint):
    from medlearn.mama.eval.evaluate import demo_evaluate
    from medlearn.report import Report

    data = _prepared(tmp_path / "prep", np.random.default_rng(3))
    table = pd.read_csv(data / "table.csv")
    table["roi_coords"] = ["[[10, 8, 20, 16]]" if i % 3 == 0 else "" for i in range(len(table))]
    table["massshape"] = ["X" if i % 3 == 0 else "" for i in range(len(table))]
    table.to_csv(data / "table.csv", index=False)
    rep = Report("t")
    sec = rep.section("MaMA evaluation")
    res = demo_evaluate(checkpoint, data, tmp_path / "demo", sec, probe_steps=30, n_boot=10)
    assert set(res) >= {"zero_shot_bacc", "probe_bacc", "pointing_game", "n_pointing"}
    assert res["n_pointing"] == 6  # test rows 24..39 with i % 3 == 0
    assert 0.0 <= res["pointing_game"] <= 1.0
    html = rep.render()
    assert html.count("<img") == 4  # two confusion matrices + two heatmaps
    assert "pointing game" in html
