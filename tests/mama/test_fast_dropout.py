"""CPU dropout masks four to a random draw (``model.text.fast_dropout``) and length-grouped encoding
(``model.text.length_groups``): the same distribution and the same features as the plain paths."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

from medlearn.errors import ConfigError
from medlearn.mama.config import MamaConfig, TextTowerConfig, validate
from medlearn.mama.modeling.dropout import (
    FAST_SDPA,
    FastDropout,
    _attention_probs_dropout,
    fast_dropout_attention,
    keep_mask,
    use_fast_dropout,
)
from medlearn.mama.modeling.text_tower import TextTower, length_runs

GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 96}
BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 96}  # fmt: skip
REPORTS = [
    "Procedure reported: screening. Breast composition: dense; Findings: none.",
    "Reason: screening.",
    "Findings: a mass in the upper outer quadrant; no calcification. Impression: benign. BI-RADS 2.",
    "Density: fatty. Findings: none.",
    "Reason: diagnostic; follow-up of a prior finding. Findings: stable mass. Impression: probably benign.",
]


def _binomial_ok(count: int, n: int, q: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * q) <= sigmas * math.sqrt(n * q * (1 - q))


@pytest.mark.parametrize("p", [0.1, 0.37, 0.5])
def test_keep_mask_drops_with_the_quantised_probability_and_scales_to_keep_the_mean(p):
    torch.manual_seed(0)
    n = 1 << 20
    keep, scale = keep_mask((n,), p)
    q = round(p * 65536) / 65536  # the drop probability, p on the 2^-16 grid
    assert keep.dtype == torch.bool and keep.shape == (n,)
    assert _binomial_ok(int((~keep).sum()), n, q)
    assert scale == pytest.approx(1 / (1 - q), rel=1e-12)
    assert abs(q - p) <= 2**-17


def test_keep_mask_elements_are_independent_within_one_random_draw():
    """Four mask elements share each 64-bit draw: their 16 joint patterns must be equally likely at p = 0.5."""
    torch.manual_seed(1)
    keep, _ = keep_mask((1 << 18, 4), 0.5)
    codes = (keep.long() * torch.tensor([1, 2, 4, 8])).sum(dim=1)
    counts = torch.bincount(codes, minlength=16).numpy()
    assert stats.chisquare(counts).pvalue > 1e-4
    # and across draws (elements 3 and 4 come from different words)
    flat = keep.reshape(-1)
    pairs = (flat[3:-1:4].long() * 2 + flat[4::4].long()).bincount(minlength=4).numpy()
    assert stats.chisquare(pairs).pvalue > 1e-4


def test_fast_dropout_module_matches_dropout_semantics():
    drop = FastDropout(0.25)
    x = torch.full((64, 1024), 3.0, requires_grad=True)
    drop.eval()
    assert drop(x) is x
    drop.train()
    torch.manual_seed(2)
    y = drop(x)
    scale = 65536 / (65536 - 16384)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 3.0 * scale))
    assert _binomial_ok(int((~kept).sum()), x.numel(), 0.25)
    y.sum().backward()  # d(sum)/dx = the scaled mask
    torch.testing.assert_close(x.grad, kept.float() * scale)
    assert FastDropout(0.0).train()(x) is x


def test_use_fast_dropout_swaps_every_plain_dropout_and_keeps_p():
    net = torch.nn.Sequential(
        torch.nn.Dropout(0.1),
        torch.nn.ModuleDict({"default": torch.nn.Dropout(0.3), "other": torch.nn.Identity()}),
        torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.2, inplace=True)),
    )
    assert use_fast_dropout(net) == 3
    drops = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    assert all(type(m) is FastDropout for m in drops)
    assert sorted(m.p for m in drops) == [0.1, 0.2, 0.3]
    assert net[2][1].inplace


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_without_drops_equals_torch_sdpa(mask_kind):
    """p below 2^-17 rounds to no drop at all, so the composed attention must equal torch's SDPA."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64) for _ in range(3))
    allowed = torch.rand(2, 1, 7, 7, generator=g) > 0.3
    allowed |= torch.eye(7, dtype=torch.bool)
    mask = {"none": None, "bool": allowed,
            "additive": torch.zeros(2, 1, 7, 7, dtype=torch.float64).masked_fill(~allowed, -1e9)}[mask_kind]  # fmt: skip
    out = _attention_probs_dropout(q, k, v, mask, 0.3, 1e-6)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(out, ref)


class _Attn(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def test_fast_attention_is_causal_and_repeats_grouped_keys_like_sdpa():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, 6, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 6, 8, generator=g, dtype=torch.float64) for _ in range(2))
    module = _Attn().train()
    out, weights = fast_dropout_attention(module, q, k, v, None, dropout=1e-6, scaling=None)
    assert weights is None and out.shape == (2, 6, 4, 8)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), is_causal=True
    )
    torch.testing.assert_close(out, ref.transpose(1, 2))


def test_fast_attention_drops_probabilities_with_the_right_rate_and_scale():
    """With v = identity the output is the dropped, rescaled probability matrix itself."""
    g = torch.Generator().manual_seed(5)
    n = 64
    q, k = (torch.randn(4, 4, n, 16, generator=g) for _ in range(2))
    v = torch.eye(n).expand(4, 4, n, n)
    torch.manual_seed(6)
    out = _attention_probs_dropout(q, k, v, None, 0.25, 0.2)
    probs = torch.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1)
    kept = out != 0
    scale = 65536 / (65536 - round(0.2 * 65536))
    torch.testing.assert_close(out[kept], probs[kept] * scale)
    assert _binomial_ok(int((~kept).sum()), out.numel(), round(0.2 * 65536) / 65536)


@pytest.mark.parametrize("arch", [BERT, GPT2])
def test_fast_dropout_tower_equals_the_plain_tower_in_evaluation_and_trains(arch):
    common = dict(name="random", arch=arch, max_length=96, gradient_checkpointing=False)
    plain = TextTower(TextTowerConfig(**common, fast_dropout=False)).eval()
    fast = TextTower(TextTowerConfig(**common, fast_dropout=True)).eval()
    assert fast.base_model().config._attn_implementation == FAST_SDPA
    assert plain.base_model().config._attn_implementation == "sdpa"
    assert any(type(m) is FastDropout for m in fast.modules())
    assert not any(type(m) is FastDropout for m in plain.modules())
    enc = plain.tokenizer(REPORTS)
    with torch.no_grad():
        a, b = plain(enc["input_ids"], enc["attention_mask"]), fast(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(a.pooled, b.pooled)
    torch.testing.assert_close(a.sentences, b.sentences)
    fast.train()
    torch.manual_seed(0)
    c, d = (fast(enc["input_ids"], enc["attention_mask"]).pooled for _ in range(2))
    assert not torch.equal(c, d)  # dropout is on
    c.sum().backward()
    grads = [p.grad for p in fast.parameters() if p.requires_grad]
    assert grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads)


def test_fast_dropout_masks_replay_under_gradient_checkpointing():
    """Checkpointed layers recompute their forward in the backward: the same masks must come back."""
    common = dict(name="random", arch=BERT, max_length=96, lora_dropout=0.1)
    plain = TextTower(TextTowerConfig(**common, gradient_checkpointing=False)).train()
    ckpt = TextTower(TextTowerConfig(**common, gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    enc = plain.tokenizer(REPORTS)
    for tower in (plain, ckpt):
        torch.manual_seed(7)
        feats = tower(enc["input_ids"], enc["attention_mask"])
        (feats.pooled.square().sum() + feats.sentences.square().sum()).backward()
    named = dict(ckpt.named_parameters())
    for name, p in plain.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(named[name].grad, p.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lengths,groups", [([5, 9, 3, 10, 4], 2), ([7, 7, 7, 7], 3), ([3, 8, 1, 9, 2, 8, 5], 3), ([4], 3)])
def test_length_runs_pad_the_fewest_tokens(lengths, groups):
    """Against brute force over every split of the batch into at most ``groups`` sets."""
    runs = length_runs(lengths, groups)
    assert sorted(i for r in runs for i in r) == list(range(len(lengths)))
    cost = sum(len(r) * max(lengths[i] for i in r) for r in runs)
    best = min(
        sum(
            sum(1 for x in labels if x == g) * max((lengths[i] for i, x in enumerate(labels) if x == g), default=0)
            for g in range(groups)
        )
        for labels in itertools.product(range(groups), repeat=len(lengths))
    )
    assert cost == best
    assert len(runs) <= groups


def test_length_runs_hand_computed_case():
    # sorted lengths 3, 4, 5 | 9, 10: 3 x 5 + 2 x 10 = 35 padded tokens (one batch: 5 x 10 = 50)
    assert length_runs([5, 9, 3, 10, 4], 2) == [[2, 4, 0], [1, 3]]
    assert length_runs([7, 7, 7], 3) == [[0, 1, 2]]  # equal lengths: one run


@pytest.mark.parametrize("context", ["report", "sentence"])
@pytest.mark.parametrize("arch", [BERT, GPT2])
def test_length_groups_give_the_features_and_gradients_of_one_batch(arch, context):
    common = dict(name="random", arch=arch, max_length=96, gradient_checkpointing=False, lora_dropout=0.0,
                  sentence_context=context, padding="max_length")  # fmt: skip
    one = TextTower(TextTowerConfig(**common)).eval()
    grouped = TextTower(TextTowerConfig(**common, length_groups=3)).eval()
    grouped.load_state_dict(one.state_dict())
    enc = one.tokenizer(REPORTS)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape[1] == 96  # padded far beyond the longest report
    a, b = one(ids, mask), grouped(ids, mask)
    torch.testing.assert_close(b.pooled, a.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.sentences, a.sentences, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.sentence_mask, b.sentence_mask)
    (a.pooled.square().sum() + a.sentences.square().sum()).backward()
    (b.pooled.square().sum() + b.sentences.square().sum()).backward()
    named = dict(grouped.named_parameters())
    for name, p in one.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(named[name].grad, p.grad, atol=1e-5, rtol=1e-4)


def test_length_groups_are_validated():
    cfg = MamaConfig()
    cfg.model.text.length_groups = 0
    with pytest.raises(ConfigError, match="length_groups must be >= 1"):
        validate(cfg)
    cfg.model.text.length_groups, cfg.model.text.pooling = 2, "all_tokens"
    with pytest.raises(ConfigError, match="pooling=masked_mean"):
        validate(cfg)


def test_length_groups_refuse_a_tokenizer_that_pads_on_the_left(monkeypatch):
    import medlearn.mama.modeling.text_tower as tt

    real = tt.load_tokenizer

    def left(cfg):
        tok = real(cfg)
        tok.padding_side = "left"
        return tok

    monkeypatch.setattr(tt, "load_tokenizer", left)
    with pytest.raises(ConfigError, match="pads on the right"):
        TextTower(TextTowerConfig(name="random", arch=BERT, length_groups=2, gradient_checkpointing=False))
    TextTower(TextTowerConfig(name="random", arch=BERT, length_groups=1, gradient_checkpointing=False))


def test_off_cpu_both_paths_hand_over_to_torch(monkeypatch):
    """On any device but the CPU (here PyTorch's shape-only ``meta`` device) no fast mask is drawn."""
    import medlearn.mama.modeling.dropout as dropout

    def refuse(*args, **kwargs):
        raise AssertionError("keep_mask called off the CPU")

    monkeypatch.setattr(dropout, "keep_mask", refuse)
    x = torch.empty(2, 5, 8, device="meta")
    y = FastDropout(0.1).train()(x)
    assert y.device.type == "meta" and y.shape == x.shape
    q = torch.empty(2, 4, 5, 4, device="meta")
    k = v = torch.empty(2, 2, 5, 4, device="meta")  # two query heads per key head
    out, _ = fast_dropout_attention(_Attn().train(), q, k, v, None, dropout=0.1)
    assert out.device.type == "meta" and out.shape == (2, 5, 4, 4)
