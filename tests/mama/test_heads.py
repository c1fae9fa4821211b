"""MaMA heads: the BatchNorm statistics of the image-image and sentence heads, computed by hand."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from medlearn.mama.config import HeadsConfig
from medlearn.mama.modeling.heads import MamaHeads, row_batch_norm

EPS = 1e-5  # nn.BatchNorm1d default


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _bn(h: np.ndarray, weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> np.ndarray:
    """Training-mode batch norm over the rows of h (biased variance), then the optional affine map."""
    y = (h - h.mean(0)) / np.sqrt(h.var(0) + EPS)
    return y if weight is None else y * weight + bias


def _randomise_affine(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d) and m.affine:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))


def _heads(**kw) -> MamaHeads:
    torch.manual_seed(0)
    heads = MamaHeads(6, 5, HeadsConfig(embed_dim=4, local_hidden=7, local_dim=3, ii_dim=3, **kw)).train()
    _randomise_affine(heads, 1)
    return heads


def _ii_by_hand(heads: MamaHeads, x: np.ndarray) -> np.ndarray:
    lin1, bn1, _, lin2, bn2 = heads.ii_head.net
    h = np.maximum(_bn(x @ _np(lin1.weight).T, _np(bn1.weight), _np(bn1.bias)), 0.0)
    return _bn(h @ _np(lin2.weight).T, _np(bn2.weight), _np(bn2.bias))


def test_image_image_head_has_no_bias_and_normalises_each_view():
    heads = _heads()
    assert heads.ii_head.net[0].bias is None and heads.ii_head.net[3].bias is None
    g = torch.Generator().manual_seed(2)
    anchors, extras = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g) * 3 + 1
    z1, z2 = heads.image_image(anchors, extras)
    np.testing.assert_allclose(_np(z1), _ii_by_hand(heads, _np(anchors)), atol=1e-5)
    np.testing.assert_allclose(_np(z2), _ii_by_hand(heads, _np(extras)), atol=1e-5)
    # joint: one batch of 2B (a different result, since the views' statistics differ)
    joint = _heads(ii_batchnorm="joint")
    j1, j2 = joint.image_image(anchors, extras)
    both = _ii_by_hand(joint, np.concatenate([_np(anchors), _np(extras)]))
    np.testing.assert_allclose(np.concatenate([_np(j1), _np(j2)]), both, atol=1e-5)
    assert not np.allclose(_np(j1), _np(z1), atol=1e-3)


def _token_head_by_hand(heads: MamaHeads, x: np.ndarray) -> np.ndarray:
    lin1, bn1, _, lin2, _ = heads.txt_local.net
    h = x @ _np(lin1.weight).T + _np(lin1.bias)
    h = np.maximum(_bn(h, _np(bn1.weight), _np(bn1.bias)), 0.0)
    return _bn(h @ _np(lin2.weight).T + _np(lin2.bias))  # last BN without affine


SENT_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)


def _sentences() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 5, generator=g) + torch.tensor([0.0, 2.0, -1.0])[:, None, None]
    return x * SENT_MASK.unsqueeze(-1)


def test_sentence_head_normalises_over_each_reports_sentences():
    heads = _heads(sentence_batchnorm="per_report")
    x = _sentences()
    out = heads.sentence_local(x, SENT_MASK)
    for b in range(3):
        n = int(SENT_MASK[b].sum())
        np.testing.assert_allclose(_np(out[b, :n]), _token_head_by_hand(heads, _np(x[b, :n])), atol=1e-5)
        assert out[b, n:].abs().sum() == 0
    # batch: one set of statistics over the 9 valid sentences
    batch = _heads(sentence_batchnorm="batch")
    out_b = batch.sentence_local(x, SENT_MASK)
    np.testing.assert_allclose(
        _np(out_b[SENT_MASK]), _token_head_by_hand(batch, _np(x[SENT_MASK])), atol=1e-5
    )


def test_row_batch_norm_running_stats_match_one_call_per_report():
    """The running statistics equal those of nn.BatchNorm1d called on each report in turn."""
    heads = _heads(sentence_batchnorm="per_report")
    seq = copy.deepcopy(heads.txt_local.net)
    x = _sentences()
    heads.sentence_local(x, SENT_MASK)
    for b in range(3):
        seq(x[b, SENT_MASK[b]])
    for ours, ref in ((heads.txt_local.net[1], seq[1]), (heads.txt_local.net[4], seq[4])):
        torch.testing.assert_close(ours.running_mean, ref.running_mean)
        torch.testing.assert_close(ours.running_var, ref.running_var)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    # evaluation uses the running statistics: same as the library module in eval mode
    heads.eval()
    seq.eval()
    out = heads.sentence_local(x, SENT_MASK)
    torch.testing.assert_close(out[SENT_MASK], seq(x[SENT_MASK]))


def test_row_batch_norm_cumulative_momentum_and_single_token_rows():
    bn = nn.BatchNorm1d(2, momentum=None).train()
    ref = copy.deepcopy(bn)
    x = torch.tensor([[[1.0, 2.0], [3.0, -2.0], [0.0, 0.0]], [[5.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    y = row_batch_norm(x, mask, bn)
    # row 0: channel means (2, 0), biased variances (1, 4) -> (-1, 1) and (1, -1); row 1 has one sentence -> 0
    torch.testing.assert_close(y[0, :2], torch.tensor([[-1.0, 1.0], [1.0, -1.0]]), atol=1e-4, rtol=0)
    assert y[1].abs().sum() == 0 and y[0, 2].abs().sum() == 0
    ref(x[0, :2])  # only rows with >= 2 tokens update the running statistics
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_row_batch_norm_keeps_the_input_dtype(dtype):
    bn = nn.BatchNorm1d(3).train()
    x = torch.randn(2, 4, 3).to(dtype)
    assert row_batch_norm(x, torch.ones(2, 4, dtype=torch.bool), bn).dtype == dtype


def test_batch_sentence_norm_without_boolean_indexing_matches_batchnorm_on_valid_rows():
    """sentence_batchnorm=batch: outputs and running statistics equal nn.BatchNorm1d on the valid sentences."""
    heads = _heads(sentence_batchnorm="batch")
    ref = copy.deepcopy(heads.txt_local.net)
    x = _sentences()
    out = heads.sentence_local(x, SENT_MASK)
    expected = ref(x[SENT_MASK])  # torch's own BatchNorm over the 9 valid sentences (train mode)
    torch.testing.assert_close(out[SENT_MASK], expected, atol=1e-5, rtol=1e-5)
    assert out[~SENT_MASK].abs().sum() == 0
    for mine, theirs in zip(heads.txt_local.net, ref):
        if isinstance(mine, nn.BatchNorm1d):
            torch.testing.assert_close(mine.running_mean, theirs.running_mean)
            torch.testing.assert_close(mine.running_var, theirs.running_var)
            assert int(mine.num_batches_tracked) == int(theirs.num_batches_tracked) == 1


def test_sentence_states_fixed_slots_by_hand():
    from medlearn.mama.modeling.text_tower import sentence_states

    hidden = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
    is_sep = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out, mask = sentence_states(hidden, is_sep, max_sentences=4)
    assert out.shape == (2, 4, 2) and mask.tolist() == [
        [True, True, True, False],
        [True, False, False, False],
    ]
    torch.testing.assert_close(out[0, :3], hidden[0, [1, 3, 4]])
    torch.testing.assert_close(out[1, 0], hidden[1, 0])
    assert out[0, 3].abs().sum() == 0 and out[1, 1:].abs().sum() == 0
    cut, cut_mask = sentence_states(hidden, is_sep, max_sentences=2)  # separators after the 2nd are ignored
    torch.testing.assert_close(cut[0], hidden[0, [1, 3]])
    assert cut_mask.tolist() == [[True, True], [True, False]]
    longest, longest_mask = sentence_states(hidden, is_sep, max_sentences=0)  # former behaviour: S = 3
    assert longest.shape == (2, 3, 2) and longest_mask.sum() == 4
    # the gradient reaches exactly the separator states
    h = hidden.clone().requires_grad_(True)
    sentence_states(h, is_sep, 4)[0].sum().backward()
    torch.testing.assert_close(h.grad[..., 0], is_sep.float())
