"""Masked-image pre-training of the image tower: the patch maths against explicit definitions, the
mask reaching the tower, and a tiny run on synthetic EMBED-format data (DICOM -> prepare -> dataset)
whose exported folder loads as ``model.image.name``, with exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tests.harness import assert_same_weights, run_cli, weights

from medlearn.engine import read_metrics
from medlearn.errors import ConfigError
from medlearn.mama.config import ImagePretrainConfig, ImageTowerConfig
from medlearn.mama.image_pretrain import (
    MaskedImageModel,
    masked_patch_loss,
    patch_targets,
    patchify,
    pretrain_image,
    random_patch_mask,
    reconstruction_loss,
)
from medlearn.mama.modeling.image_tower import ImageTower

try:
    from tests.mama.pt_fakes import tiny_config, write_prepared
except ImportError:  # tests/mama collected as a plain folder
    from pt_fakes import tiny_config, write_prepared

STEPS = ("train.max_steps=8", "train.val_every=4", "engine.ckpt_every=2", "data.batch_size=8")


def test_patchify_matches_explicit_crops():
    images = torch.randn(2, 3, 16, 24)
    p = 8
    out = patchify(images, p)
    assert out.shape == (2, 6, p * p * 3)
    k = 0
    for gy in range(2):  # row-major over the grid, as the tower's patch embedding flattens it
        for gx in range(3):
            crop = (
                images[:, :, gy * p : (gy + 1) * p, gx * p : (gx + 1) * p].permute(0, 2, 3, 1).reshape(2, -1)
            )
            torch.testing.assert_close(out[:, k], crop)
            k += 1
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 3, 10, 16), 8)


def test_random_patch_mask_counts_and_determinism():
    m1 = random_patch_mask(5, 16, 0.4, torch.Generator().manual_seed(3))
    m2 = random_patch_mask(5, 16, 0.4, torch.Generator().manual_seed(3))
    assert m1.dtype == torch.bool and m1.shape == (5, 16)
    assert m1.sum(1).tolist() == [round(0.4 * 16)] * 5
    assert torch.equal(m1, m2)
    assert len({tuple(r.tolist()) for r in m1}) > 1  # rows draw their own patches
    assert random_patch_mask(2, 4, 0.01, torch.Generator().manual_seed(0)).sum(1).tolist() == [1, 1]


def test_patch_targets_standardise_each_patch_like_numpy():
    x = torch.randn(2, 5, 12, dtype=torch.float64) * 3 + 1
    ref = (x.numpy() - x.numpy().mean(-1, keepdims=True)) / np.sqrt(x.numpy().var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(patch_targets(x, True).numpy(), ref, rtol=1e-12)
    assert patch_targets(x, False) is x


def test_masked_patch_loss_hand_computed():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])  # per-patch MSE 1, 2, 0
    mask = torch.tensor([[True, False, True]])
    assert masked_patch_loss(pred, target, mask, "all").item() == pytest.approx(1.0)
    assert masked_patch_loss(pred, target, mask, "masked").item() == pytest.approx(0.5)


def test_reconstruction_loss_follows_the_config_like_numpy():
    """``loss_patches`` and ``normalise_targets`` against a numpy computation of the same definition."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 3, 8, 16))
    pred = rng.normal(size=(2, 2, 8 * 8 * 3))
    mask = np.array([[True, False], [False, False]])
    cells = [
        images[b, :, :, 8 * k : 8 * (k + 1)].transpose(1, 2, 0).reshape(-1)
        for b in range(2)
        for k in range(2)
    ]
    raw = np.stack(cells).reshape(2, 2, -1)
    std = (raw - raw.mean(-1, keepdims=True)) / np.sqrt(raw.var(-1, keepdims=True) + 1e-6)
    for loss_patches, norm in (("all", True), ("all", False), ("masked", True), ("masked", False)):
        target = std if norm else raw
        per_patch = ((pred - target) ** 2).mean(-1)
        expected = per_patch.mean() if loss_patches == "all" else per_patch[mask].mean()
        cfg = ImagePretrainConfig(loss_patches=loss_patches, normalise_targets=norm)
        got = reconstruction_loss(torch.tensor(pred), torch.tensor(images), torch.tensor(mask), 8, cfg)
        assert got.item() == pytest.approx(expected, rel=1e-6), (loss_patches, norm)


def test_fully_masked_input_ignores_the_pixels():
    cfg = ImageTowerConfig(
        name="random", image_size=16, gradient_checkpointing=False,
        arch={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
              "patch_size": 8, "num_register_tokens": 2},
    )  # fmt: skip
    model = MaskedImageModel(cfg).eval()
    a, b = torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16)
    full, none = torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(model(a, full), model(b, full))
        assert not torch.allclose(model(a, none), model(b, none))
        # masking one patch changes that patch's input only: the others' pixels still count
        one = torch.tensor([[True, False, False, False]])
        assert not torch.allclose(model(a, one), model(b, one))
    assert model(a, none).shape == (1, 4, 8 * 8 * 3)


def test_mask_ratio_out_of_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"image_pretrain\.mask_ratio must be in \(0, 1\)"):
        tiny_config(tmp_path, "image_pretrain.mask_ratio=1.0")
    assert ImagePretrainConfig().loss_patches == "all"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("mim_data"))


@pytest.fixture(scope="module")
def run_a(prepared, tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("mim_a"), *STEPS, f"data.prepared_dir={prepared}")
    return cfg, pretrain_image(cfg)


def test_pretraining_lowers_the_validation_loss_and_exports_a_loadable_tower(run_a):
    cfg, summary = run_a
    assert summary["step"] == 8 and summary["image_tower"]
    val = [m["val_mim_loss"] for m in read_metrics(f"{summary['run']}/metrics.jsonl") if "val_mim_loss" in m]
    assert len(val) == 3 and val[-1] < val[0] - 0.05, val
    # the exported folder is what model.image.name loads: same weights as the final checkpoint
    tower = ImageTower(ImageTowerConfig(name=summary["image_tower"], image_size=cfg.model.image.image_size))
    ckpt = load_file(f"{summary['final']}/model_mim.safetensors")
    state = tower.backbone.state_dict()
    backbone_keys = [k for k in ckpt if k.startswith("backbone.")]
    assert backbone_keys and len(backbone_keys) == len(state)
    for k in backbone_keys:
        torch.testing.assert_close(state[k.removeprefix("backbone.")], ckpt[k], msg=k)
    assert not any(k.startswith("pixel_head") for k in state)


def test_resume_continues_identically(run_a, prepared, tmp_path):
    _, summary_a = run_a
    export = tmp_path / "towers" / "mim"
    cfg = tiny_config(
        tmp_path, *STEPS, f"data.prepared_dir={prepared}", f"image_pretrain.export_dir={export}"
    )
    stopped = pretrain_image(cfg, stop_at=3)
    assert stopped["step"] == 3 and stopped["image_tower"] is None
    resumed = pretrain_image(cfg)
    assert resumed["step"] == 8
    assert resumed["image_tower"] == str(export) and (export / "model.safetensors").is_file()
    a = load_file(f"{summary_a['final']}/model_mim.safetensors")
    b = load_file(f"{resumed['final']}/model_mim.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], msg=k)


def test_two_processes_equal_one(prepared, tmp_path):
    """``medlearn mama pretrain-image`` under torchrun (2 gloo processes x 4 images) equals one process
    x 8 images: same items, same masks (drawn for the whole batch, each process takes its rows),
    gradients averaged by DDP. Tolerance as in ``test_ddp_train.py`` (float32 all-reduce order)."""
    common = ["mama", "pretrain-image", "--config", "tiny", f"data.prepared_dir={prepared}", "train.max_steps=3",
              "train.val_every=0", "engine.log_every=1"]  # fmt: skip
    run_cli([*common, f"train.out={tmp_path / 'one'}", "data.batch_size=8"], timeout=240)
    run_cli([*common, f"train.out={tmp_path / 'two'}", "data.batch_size=4"], nproc=2, timeout=240)

    def losses(run):
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        return {r["step"]: r["mim_loss"] for r in recs if "mim_loss" in r}

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step, value in one.items():
        assert two[step] == pytest.approx(value, rel=1e-4), step
    a, b = (weights(tmp_path / f / "checkpoints" / "final", "mim") for f in ("one", "two"))
    assert_same_weights(a, b, atol=5e-5)
    assert (tmp_path / "two" / "image_tower" / "config.json").is_file()
    assert not list((tmp_path / "two").glob(".image_tower*"))  # no temporary folder left behind
