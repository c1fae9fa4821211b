"""Zero-shot scoring on a toy model with a known answer, prompts per class, and the linear probe."""

import math

import numpy as np
import pytest
import torch

from medlearn.engine import EngineConfig, build_accelerator
from medlearn.mama.data.report_text import RSNA_PROMPTS, ReportBuilder
from medlearn.mama.eval import zero_shot as Z
from medlearn.mama.eval.linear_probe import (
    BalancedBatches,
    ProbeConfig,
    predict_head,
    train_probe_on_features,
)

PHRASES = ("almost entirely fatty", "scattered areas", "heterogeneously dense", "extremely dense")


class ToyEncoder:
    """Image embedding = one-hot of the class written in pixel (0, 0, 0); text = one-hot of the density phrase."""

    logit_scale = 10.0

    def __init__(self):
        self.text_calls = 0

    def encode_images(self, images):
        k = images[:, 0, 0, 0].round().long()
        return torch.nn.functional.one_hot(k, 4).float() * 3.0  # norm must not matter

    def encode_texts(self, texts):
        self.text_calls += len(texts)
        out = torch.zeros(len(texts), 4)
        for i, t in enumerate(texts):
            hits = [k for k, p in enumerate(PHRASES) if p in t]
            assert len(hits) == 1, t
            out[i, hits[0]] = 1.0
        return out


def _row(i):
    return {
        "image_id": f"im{i}",
        "study_description": "MG Screening Bilateral",
        "asses": "N",
        "tissueden": 2,
        "age": 50.0 + i,
        "race": "White",
        "ethnicity": "Hispanic or Latino",
        "laterality": "L" if i % 2 else "R",
        "view": "CC",
        "image_type": "2D",
    }


def test_zero_shot_logits_is_scale_times_cosine():
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    lg = Z.zero_shot_logits(v, t, 5.0)
    torch.testing.assert_close(lg, torch.tensor([[5.0, 0.0], [5 / math.sqrt(2), 5 / math.sqrt(2)]]))
    per_image = t.expand(2, 2, 2)
    torch.testing.assert_close(Z.zero_shot_logits(v, per_image, 5.0), lg)
    with pytest.raises(ValueError, match="per-image prompts"):
        Z.zero_shot_logits(v, t.expand(3, 2, 2), 1.0)


def test_prompts_per_class_contain_own_meta_and_class_tail():
    rb = ReportBuilder()
    rows = [_row(0), _row(1)]
    prompts = Z.prompts_for_rows(rows, "density", rb)
    assert [len(p) for p in prompts] == [4, 4]
    for row, plist in zip(rows, prompts):
        for k, p in enumerate(plist):
            assert f"age {int(row['age'])}" in p  # own unmasked meta
            assert "unknown" not in p
            assert PHRASES[k] in p and sum(ph in p for ph in PHRASES) == 1
    birads = Z.prompts_for_rows(rows, "birads", rb)[0]
    assert len(birads) == 7
    assert all(f"BI-RADS Category {k}" in p for k, p in enumerate(birads))
    cancer = Z.prompts_for_rows(rows, "cancer", rb)
    assert cancer == [list(RSNA_PROMPTS)] * 2
    with pytest.raises(ValueError, match="zero-shot task"):
        Z.prompts_for_rows(rows, "age", rb)


def test_run_zero_shot_toy_model_known_answer():
    rb = ReportBuilder()
    n = 12
    labels = torch.arange(n) % 4
    images = torch.zeros(n, 3, 4, 4)
    images[:, 0, 0, 0] = labels.float()
    rows = {f"im{i}": _row(i % 3) | {"image_id": f"im{i}"} for i in range(n)}
    batches = [
        {"image": images[s], "image_id": [f"im{i}" for i in range(n)[s]], "labels": {"density": labels[s]}}
        for s in (slice(0, 5), slice(5, 12))
    ]
    enc = ToyEncoder()
    out = Z.run_zero_shot(enc, batches, rows, "density", rb)
    np.testing.assert_array_equal(out["probs"].argmax(1), labels.numpy())
    np.testing.assert_array_equal(out["labels"], labels.numpy())
    # logits: scale x cos = 10 for the true class, 0 otherwise
    expected = 10.0 * np.eye(4)[labels.numpy()]
    np.testing.assert_allclose(out["logits"], expected, atol=1e-5)
    e = np.exp(10.0)
    np.testing.assert_allclose(out["probs"].max(1), e / (e + 3), rtol=1e-5)
    # 3 distinct metas x 4 classes: each distinct prompt is encoded once
    assert enc.text_calls == 12


def test_balanced_batches_are_balanced_and_reproducible():
    labels = np.array([0] * 90 + [1] * 10)
    b = BalancedBatches(labels, 2000, seed=1)
    idx = b.batch(0).numpy()
    frac1 = (labels[idx] == 1).mean()
    assert 0.45 < frac1 < 0.55
    assert torch.equal(b.batch(5), BalancedBatches(labels, 2000, seed=1).batch(5))
    assert not torch.equal(b.batch(5), b.batch(6))
    plain = BalancedBatches(labels, 2000, seed=1, balanced=False).batch(0).numpy()
    assert (labels[plain] == 1).mean() < 0.2


def _separable(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[4.0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0], [0, 0, 4.0, 0, 0]])
    x = centers[y] + 0.5 * torch.randn(n, 5, generator=g)
    return x, y


def test_linear_probe_perfect_on_separable_features(tmp_path):
    x, y = _separable(90, 0)
    xt, yt = _separable(60, 1)
    acc = build_accelerator(EngineConfig(device="cpu", tensorboard=False))
    cfg = ProbeConfig(steps=150, batch_size=32, lr=0.05, warmup_steps=10)
    head, info = train_probe_on_features(x, y, 3, cfg, acc, tmp_path / "probe")
    assert info["steps"] == 150 and (tmp_path / "probe/checkpoints/final").is_dir()
    assert (predict_head(head, x).argmax(1) == y.numpy()).all()
    assert (predict_head(head, xt).argmax(1) == yt.numpy()).all()


def test_linear_probe_resume_matches_uninterrupted(tmp_path):
    x, y = _separable(60, 2)
    cfg = ProbeConfig(steps=40, batch_size=16, lr=0.05, warmup_steps=5)
    acc = build_accelerator(EngineConfig(device="cpu", tensorboard=False))
    whole, _ = train_probe_on_features(x, y, 3, cfg, acc, tmp_path / "a", seed=3)

    # an interrupted run: the first attempt stops after its step-20 checkpoint
    import medlearn.mama.eval.linear_probe as LP

    real = LP.feature_batches

    def crashing(*a, **k):
        make = real(*a, **k)

        def gen(start):
            for i, b in enumerate(make(start)):
                if start == 0 and i == 21:
                    raise RuntimeError("killed")
                yield b

        return gen

    LP.feature_batches = crashing
    try:
        with pytest.raises(RuntimeError, match="killed"):
            train_probe_on_features(x, y, 3, cfg, acc, tmp_path / "b", seed=3, ckpt_every=20)
        resumed, info = train_probe_on_features(x, y, 3, cfg, acc, tmp_path / "b", seed=3, ckpt_every=20)
    finally:
        LP.feature_batches = real
    assert info["start_step"] == 20
    torch.testing.assert_close(resumed.fc.weight, whole.fc.weight)


def test_probe_config_rejects_bad_values():
    from medlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="probe.steps"):
        ProbeConfig(steps=0)
    with pytest.raises(ConfigError, match="probe.lr"):
        ProbeConfig(lr=-1.0)


def test_probe_reuses_checkpoint_only_for_same_recipe_and_data(tmp_path):
    x, y = _separable(30, 4)
    acc = build_accelerator(EngineConfig(device="cpu", tensorboard=False))
    cfg = ProbeConfig(steps=10, batch_size=8, lr=0.05, warmup_steps=2)
    _, first = train_probe_on_features(x, y, 3, cfg, acc, tmp_path)
    _, same = train_probe_on_features(x, y, 3, cfg, acc, tmp_path)
    assert first["start_step"] == 0 and same["start_step"] == 10  # finished run reused
    _, other_recipe = train_probe_on_features(
        x, y, 3, ProbeConfig(steps=12, batch_size=8, lr=0.05), acc, tmp_path
    )
    assert other_recipe["start_step"] == 0 and other_recipe["steps"] == 12
    y2 = y.clone()
    y2[0] = (y2[0] + 1) % 3
    _, other_data = train_probe_on_features(
        x, y2, 3, ProbeConfig(steps=12, batch_size=8, lr=0.05), acc, tmp_path
    )
    assert other_data["start_step"] == 0
