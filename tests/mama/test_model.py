"""MamaModel: outputs, trainable-parameter accounting, late-phase freezing, config validation, retrieval."""

from __future__ import annotations

import math

import pytest
import torch

from medlearn.config import load_config
from medlearn.errors import ConfigError
from medlearn.mama.config import MamaConfig
from medlearn.mama.eval.retrieval import retrieval_topk
from medlearn.mama.modeling.model import MamaModel, count_trainable

try:
    from tests.mama.pt_fakes import TINY
except ImportError:  # tests/mama collected as a plain folder
    from pt_fakes import TINY


@pytest.fixture(scope="module")
def tiny() -> tuple[MamaModel, MamaConfig]:
    cfg = load_config(MamaConfig, TINY)
    torch.manual_seed(0)
    return MamaModel(cfg.model, cfg.loss), cfg


def test_trainable_parameters_are_lora_image_and_heads(tiny):
    model, cfg = tiny
    model.set_late_phase(True)
    counts = count_trainable(model)
    r, d = cfg.model.text.lora_r, 32
    assert counts["lora"] == 2 * r * (d + 3 * d)  # two GPT-2 blocks, c_attn d -> 3d
    img = model.image.backbone
    frozen = {"layernorm.weight", "layernorm.bias", "embeddings.mask_token"}
    assert counts["image"] == sum(p.numel() for n, p in img.named_parameters() if n not in frozen)
    h = cfg.model.heads
    proj = (32 + 1) * h.embed_dim * 2
    local = 2 * ((32 + 1) * h.local_hidden + 2 * h.local_hidden + (h.local_hidden + 1) * h.local_dim)
    ii = 32 * 32 + 2 * 32 + 32 * h.ii_dim + 2 * h.ii_dim  # no Linear biases (each is followed by a BN)
    assert counts["heads"] == proj + local + ii + 2  # + two logit scales
    assert counts["other"] == 0
    base = [n for n, p in model.text.named_parameters() if p.requires_grad and "lora_" not in n]
    assert base == []
    # an unfrozen text-base weight is reported under "other", with its size
    wpe = next(p for n, p in model.text.named_parameters() if n.endswith("wpe.weight"))
    wpe.requires_grad_(True)
    try:
        assert count_trainable(model)["other"] == wpe.numel() > 0
    finally:
        wpe.requires_grad_(False)


def test_local_heads_frozen_before_late_phase(tiny):
    model, _ = tiny
    model.set_late_phase(False)
    local = model.heads.local_parameters()
    assert local and not any(p.requires_grad for p in local)
    assert model.heads.img_proj.weight.requires_grad and model.heads.logit_scale.requires_grad
    model.set_late_phase(True)
    assert all(p.requires_grad for p in local)


def test_forward_outputs_and_initial_temperature(tiny):
    model, cfg = tiny
    model.train()
    enc = model.tokenizer(["Breast composition: dense. Findings: mass.", "Findings: none."] * 2)
    imgs = torch.randn(4, 3, 32, 32)
    out = model(
        imgs, enc["input_ids"], enc["attention_mask"], extra_images=torch.randn(4, 3, 32, 32), late=True
    )
    e = cfg.model.heads.embed_dim
    assert out["img"].shape == out["txt"].shape == out["img_extra"].shape == (4, e)
    torch.testing.assert_close(out["img"].norm(dim=-1), torch.ones(4))
    assert out["patches"].shape == (4, 16, cfg.model.heads.local_dim)
    s = cfg.model.text.max_sentences  # fixed slots: no shape depends on the reports
    assert out["sentences"].shape[:2] == out["sentence_mask"].shape == (4, s)
    assert out["sentence_mask"].tolist() == [[True, True] + [False] * (s - 2), [True] + [False] * (s - 1)] * 2
    assert out["sentences"][:, 2:].abs().sum() == 0 and out["sentences"][1, 1].abs().sum() == 0
    assert out["scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert model.heads.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    early = model(imgs, enc["input_ids"], enc["attention_mask"], late=False)
    assert set(early) == {"img", "txt", "scale"}


def test_logit_scale_clamp_and_the_reference_without_it():
    cfg = load_config(MamaConfig, TINY)
    clamped = MamaModel(cfg.model, cfg.loss)  # loss.max_logit_scale: 100 (CLIP)
    free = MamaModel(cfg.model, load_config(MamaConfig, TINY, ["loss.max_logit_scale=0"]).loss)  # reference
    for m in (clamped, free):
        with torch.no_grad():
            m.heads.logit_scale.fill_(5.0)  # exp(5) = 148.4 > 100
    assert clamped._scale(clamped.heads.logit_scale).item() == pytest.approx(100.0)
    assert free._scale(free.heads.logit_scale).item() == pytest.approx(math.exp(5.0))


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.text.pooling=cls", "pooling"),
        ("loss.gather=sometimes", "gather"),
        ("data.batch_size=1", "batch_size"),
        ("loss.sla_chunk=0", "sla_chunk"),
        ("model.text.kind=decoder", "kind"),
        ("model.heads.ii_batchnorm=global", "ii_batchnorm"),
        ("model.heads.sentence_batchnorm=none", "sentence_batchnorm"),
        ("model.image.patch_tokens=cls", "patch_tokens"),
        ("loss.typo=1", "typo"),
        ("loss.clip=false", "late_loss"),
    ],
)
def test_config_rejects_bad_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(MamaConfig, TINY, [override])


def test_all_loss_terms_off_is_an_error():
    with pytest.raises(ConfigError, match="every loss term"):
        load_config(
            MamaConfig,
            TINY,
            ["loss.clip=false", "loss.nt_xent=false", "loss.clip_extra=false", "loss.sla=false"],
        )


def test_retrieval_topk_hand_case():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    txt = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    # image 0 ranks texts (2, 0, 1): top-1 wrong, top-2 right; image 1 ranks (1, 0, 2): right;
    # image 2 ranks (0, 1, 2): wrong at top-1 and top-2
    res = retrieval_topk(img, txt, ks=(1, 2))
    assert res["i2t_top1"] == pytest.approx(1 / 3)
    assert res["i2t_top2"] == pytest.approx(2 / 3)
    # reports 0 and 2 are identical: images 0 and 2 now retrieve a correct report at top-1
    res = retrieval_topk(img, txt, keys=torch.tensor([5, 6, 5]), ks=(1,))
    assert res["i2t_top1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="paired"):
        retrieval_topk(img, txt[:2])


def test_cli_has_working_verbs_only():
    from medlearn.cli import build_parser

    parser = build_parser()
    mama = parser._subparsers._group_actions[0].choices["mama"]
    verbs = set(mama._subparsers._group_actions[0].choices)
    assert {"synth", "prepare", "train", "export"} <= verbs
    args = parser.parse_args(["mama", "train", "--config", str(TINY), "train.max_steps=2"])
    assert callable(args.func) and args.overrides == ["train.max_steps=2"]
