"""MaMA losses against straightforward numpy/loop definitions, chunking, simulated ranks, gating."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medlearn.mama.config import LossConfig
from medlearn.mama.modeling.losses import (
    clip_loss,
    mama_loss,
    nt_xent_loss,
    report_keys,
    sentence_keys,
    shared_sentences,
    sla_loss,
    sla_scores,
    soft_max_pool,
    soft_targets,
)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _np_ce_rows(logits: np.ndarray, target_cols: list[int]) -> float:
    """Mean over rows of -log softmax(row)[target] (plain loops)."""
    total = 0.0
    for i, row in enumerate(logits):
        m = row.max()
        lse = m + np.log(np.sum(np.exp(row - m)))
        total += lse - row[target_cols[i]]
    return total / len(logits)


def test_clip_loss_matches_numpy_both_ways():
    img, txt = _unit(6, 5, seed=0), _unit(6, 5, seed=1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    a, b = img.numpy(), txt.numpy()
    s = scale.item()
    ref = _np_ce_rows(s * a @ b.T, list(range(6))) + _np_ce_rows(s * b @ a.T, list(range(6)))
    assert clip_loss(img, txt, scale).item() == pytest.approx(ref, rel=1e-6)


def test_clip_loss_simulated_ranks_equal_whole_batch():
    img, txt = _unit(8, 4, seed=2), _unit(8, 4, seed=3)
    scale = torch.tensor(5.0, dtype=torch.float64)
    whole = clip_loss(img, txt, scale)
    halves = [slice(0, 4), slice(4, 8)]
    parts = [clip_loss(img[s], txt[s], scale, img, txt, rank=r) for r, s in enumerate(halves)]
    torch.testing.assert_close(torch.stack(parts).mean(), whole)


def _np_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = i + n if i < n else i - n
        denom = sum(np.exp(z[i] @ z[k] / t) for k in range(2 * n) if k != i)
        total += -np.log(np.exp(z[i] @ z[pos] / t) / denom)
    return total / (2 * n)


def test_nt_xent_matches_numpy_loop_and_ranks():
    g = torch.Generator().manual_seed(4)
    z1, z2 = (
        torch.randn(6, 3, generator=g, dtype=torch.float64),
        torch.randn(6, 3, generator=g, dtype=torch.float64),
    )
    ref = _np_nt_xent(z1.numpy(), z2.numpy(), 0.5)
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(ref, rel=1e-6)
    parts = [
        nt_xent_loss(z1[s], z2[s], 0.5, z1, z2, rank=r) for r, s in enumerate([slice(0, 3), slice(3, 6)])
    ]
    assert torch.stack(parts).mean().item() == pytest.approx(ref, rel=1e-6)


def _loop_sla(p: np.ndarray, s: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ni, nt = len(p), len(s)
    t2i, i2t = np.zeros((ni, nt)), np.zeros((ni, nt))
    for n in range(ni):
        for j in range(nt):
            sents = s[j][mask[j]]
            sim = p[n] @ sents.T  # (P, S_j)
            t2i[n, j] = np.mean([sim[:, k].max() for k in range(sim.shape[1])])
            i2t[n, j] = np.mean([sim[q, :].max() for q in range(sim.shape[0])])
    return t2i, i2t


def _sla_inputs(n: int = 5, p: int = 7, s: int = 4, e: int = 3):
    patches, sents = _unit(n, p, e, seed=5), _unit(n, s, e, seed=6)
    mask = torch.tensor(
        [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool
    )
    return patches, sents * mask.unsqueeze(-1), mask


def test_sla_scores_match_loops():
    patches, sents, mask = _sla_inputs()
    t2i, i2t = sla_scores(patches, sents, mask, chunk=2)
    ref_t2i, ref_i2t = _loop_sla(patches.numpy(), sents.numpy(), mask.numpy())
    np.testing.assert_allclose(t2i.numpy(), ref_t2i, rtol=1e-10)
    np.testing.assert_allclose(i2t.numpy(), ref_i2t, rtol=1e-10)


def test_sla_loss_matches_numpy_ce():
    patches, sents, mask = _sla_inputs()
    scale = torch.tensor(3.0, dtype=torch.float64)
    lt, li = sla_loss(patches, sents, mask, scale, chunk=3)
    ref_t2i, ref_i2t = _loop_sla(patches.numpy(), sents.numpy(), mask.numpy())
    idx = list(range(5))
    exp_t = _np_ce_rows(3 * ref_t2i, idx) + _np_ce_rows(3 * ref_t2i.T, idx)
    exp_i = _np_ce_rows(3 * ref_i2t, idx) + _np_ce_rows(3 * ref_i2t.T, idx)
    assert lt.item() == pytest.approx(exp_t, rel=1e-8)
    assert li.item() == pytest.approx(exp_i, rel=1e-8)
    one_way, none = sla_loss(patches, sents, mask, scale, chunk=3, symmetric=False)
    assert none is None and one_way.item() == pytest.approx(exp_t, rel=1e-8)


def _np_smooth_max(x: np.ndarray, t: float) -> float:
    """t * log(mean(exp(x / t))), written out."""
    return float(t * np.log(np.mean(np.exp(np.asarray(x) / t))))


def _loop_sla_smooth(p: np.ndarray, s: np.ndarray, mask: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    ni, nt = len(p), len(s)
    t2i, i2t = np.zeros((ni, nt)), np.zeros((ni, nt))
    for n in range(ni):
        for j in range(nt):
            sim = p[n] @ s[j][mask[j]].T  # (P, S_j)
            t2i[n, j] = np.mean([_np_smooth_max(sim[:, k], t) for k in range(sim.shape[1])])
            i2t[n, j] = np.mean([_np_smooth_max(sim[q, :], t) for q in range(sim.shape[0])])
    return t2i, i2t


def test_soft_max_pool_between_mean_and_max():
    x = torch.tensor([[0.1, 0.5, -0.2, 0.4]], dtype=torch.float64)
    assert soft_max_pool(x, 1, 0.3).item() == pytest.approx(_np_smooth_max(x[0].numpy(), 0.3), rel=1e-12)
    assert soft_max_pool(x, 1, 1e-4).item() == pytest.approx(0.5, abs=1e-3)  # -> max
    assert soft_max_pool(x, 1, 1e4).item() == pytest.approx(0.2, abs=1e-4)  # -> mean
    assert soft_max_pool(torch.full((2, 5), 0.7, dtype=torch.float64), 1, 0.1).tolist() == pytest.approx([0.7, 0.7])
    valid = torch.tensor([[True, False, True, False]])  # masked entries do not count
    assert soft_max_pool(x, 1, 0.3, valid).item() == pytest.approx(_np_smooth_max([0.1, -0.2], 0.3), rel=1e-12)
    g = x.clone().requires_grad_(True)
    soft_max_pool(g, 1, 0.3).sum().backward()  # the gradient reaches every entry: softmax(x / t)
    np.testing.assert_allclose(g.grad[0].numpy(), np.exp(x[0].numpy() / 0.3) / np.exp(x[0].numpy() / 0.3).sum())


def test_sla_logsumexp_pool_matches_loops_and_numpy_ce():
    patches, sents, mask = _sla_inputs()
    t2i, i2t = sla_scores(patches, sents, mask, chunk=2, pool="logsumexp", temperature=0.2)
    ref_t2i, ref_i2t = _loop_sla_smooth(patches.numpy(), sents.numpy(), mask.numpy(), 0.2)
    np.testing.assert_allclose(t2i.numpy(), ref_t2i, rtol=1e-10)
    np.testing.assert_allclose(i2t.numpy(), ref_i2t, rtol=1e-10)
    scale = torch.tensor(3.0, dtype=torch.float64)
    lt, li = sla_loss(patches, sents, mask, scale, chunk=3, pool="logsumexp", temperature=0.2)
    idx = list(range(5))
    assert lt.item() == pytest.approx(_np_ce_rows(3 * ref_t2i, idx) + _np_ce_rows(3 * ref_t2i.T, idx), rel=1e-8)
    assert li.item() == pytest.approx(_np_ce_rows(3 * ref_i2t, idx) + _np_ce_rows(3 * ref_i2t.T, idx), rel=1e-8)
    cold = sla_scores(patches, sents, mask, pool="logsumexp", temperature=1e-5)  # -> the reference max
    for a, b in zip(cold, sla_scores(patches, sents, mask)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="pool must be 'max' or 'logsumexp', got 'mean'"):
        sla_scores(patches, sents, mask, pool="mean")


def test_sla_chunked_equals_unchunked_values_and_gradients():
    patches, sents, mask = _sla_inputs(n=5)
    results = []
    for chunk in (1, 2, 5):
        p = patches.clone().requires_grad_(True)
        s = sents.clone().requires_grad_(True)
        lt, li = sla_loss(p, s, mask, torch.tensor(4.0, dtype=torch.float64), chunk=chunk)
        (lt + li).backward()
        results.append(((lt + li).detach(), p.grad.clone(), s.grad.clone()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_soft_targets_for_identical_reports():
    keys = report_keys(["a.", "b.", "a.", "c."])
    assert keys[0] == keys[2] and keys[0] != keys[1]
    tgt = soft_targets(keys, keys).numpy()
    np.testing.assert_allclose(tgt[0], [0.5, 0, 0.5, 0])
    np.testing.assert_allclose(tgt[1], [0, 1, 0, 0])
    img, txt = _unit(4, 3, seed=7), _unit(4, 3, seed=8)
    s = 2.0
    loss = clip_loss(img, txt, torch.tensor(s, dtype=torch.float64), targets=torch.from_numpy(tgt)).item()
    ref = 0.0
    for logits in (s * img.numpy() @ txt.numpy().T, s * txt.numpy() @ img.numpy().T):
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        ref += -(tgt * logp).sum(axis=1).mean()
    assert loss == pytest.approx(ref, rel=1e-8)


def _outputs(b: int = 4, seed: int = 9) -> dict[str, torch.Tensor]:
    patches, sents, mask = _sla_inputs(n=b)
    return {
        "img": _unit(b, 3, seed=seed), "txt": _unit(b, 3, seed=seed + 1), "img_extra": _unit(b, 3, seed=seed + 2),
        "ii1": _unit(b, 3, seed=seed + 3), "ii2": _unit(b, 3, seed=seed + 4), "scale": torch.tensor(10.0),
        "patches": patches, "sentences": sents, "sentence_mask": mask, "local_scale": torch.tensor(6.0),
    }  # fmt: skip


def test_mama_loss_gating_and_weights():
    out = _outputs(b=5)
    cfg = LossConfig(w_clip=1.0, w_nt_xent=0.5, w_clip_extra=2.0, w_sla=3.0)
    early = mama_loss(out, cfg, late=False)
    assert set(early) == {"clip", "loss"}
    late = mama_loss(out, cfg, late=True)
    assert set(late) == {"clip", "clip_extra", "nt_xent", "sla_t2i", "sla_i2t", "loss"}
    expected = (
        clip_loss(out["img"], out["txt"], out["scale"])
        + 2.0 * clip_loss(out["img_extra"], out["txt"], out["scale"])
        + 0.5 * nt_xent_loss(out["ii1"], out["ii2"], 0.5)
        + 3.0 * sum(sla_loss(out["patches"], out["sentences"], out["sentence_mask"], out["local_scale"]))
    )
    assert late["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    # text->image only (the reference's symmetric_local=False): the i2t term (numpy above) drops out
    one_way = mama_loss(out, LossConfig(w_clip=1.0, w_nt_xent=0.5, w_clip_extra=2.0, w_sla=3.0, sla_symmetric=False), late=True)
    assert "sla_i2t" not in one_way
    ref_t2i, ref_i2t = _loop_sla(*(t.detach().numpy() for t in (out["patches"], out["sentences"], out["sentence_mask"])))
    scale = float(out["local_scale"])
    idx = list(range(5))
    i2t_term = _np_ce_rows(scale * ref_i2t, idx) + _np_ce_rows(scale * ref_i2t.T, idx)
    assert late["loss"].item() - one_way["loss"].item() == pytest.approx(3.0 * i2t_term, rel=1e-5)
    # logsumexp pooling reaches mama_loss: its SLA terms are the smooth-max loops' (numpy above)
    cfg_lse = LossConfig(w_clip=1.0, w_nt_xent=0.5, w_clip_extra=2.0, w_sla=3.0, sla_pool="logsumexp", sla_pool_temperature=0.2)
    soft = mama_loss(out, cfg_lse, late=True)
    st2i, si2t = _loop_sla_smooth(*(t.detach().numpy() for t in (out["patches"], out["sentences"], out["sentence_mask"])), 0.2)
    assert soft["sla_t2i"].item() == pytest.approx(_np_ce_rows(scale * st2i, idx) + _np_ce_rows(scale * st2i.T, idx), rel=1e-5)
    assert soft["sla_i2t"].item() == pytest.approx(_np_ce_rows(scale * si2t, idx) + _np_ce_rows(scale * si2t.T, idx), rel=1e-5)
    only_clip = mama_loss(out, LossConfig(nt_xent=False, clip_extra=False, sla=False), late=True)
    assert set(only_clip) == {"clip", "loss"}


# ---------------------------------------------------------------- sentences shared between reports
def test_sentence_keys_follow_the_towers_sentence_slots():
    from transformers import AutoTokenizer

    from medlearn.mama.modeling.text_tower import ReportTokenizer, minilm_dir, sentence_states

    rt = ReportTokenizer(AutoTokenizer.from_pretrained(str(minilm_dir())), "encoder", 64)
    reports = [
        "Breast composition: dense. There is an oval mass. Impressions: benign.",
        "Breast composition: fatty. There is an oval mass. Impressions: benign.",
        "Breast composition: dense. Findings: none.",
    ]
    batch = rt(reports)
    keys = sentence_keys(batch["input_ids"], batch["attention_mask"], rt.sep_id)
    is_sep = (batch["input_ids"] == rt.sep_id) & batch["attention_mask"].bool()
    _, slot_mask = sentence_states(torch.zeros(3, batch["input_ids"].shape[1], 1), is_sep)
    assert keys.shape == slot_mask.shape
    assert torch.equal(keys != 0, slot_mask)  # one key per sentence slot of the tower
    # the same words in the same slot or another slot give the same key; other words another key
    assert keys[0, 1] == keys[1, 1] and keys[0, 2] == keys[1, 2]
    assert keys[0, 0] == keys[2, 0] and keys[0, 0] != keys[1, 0]
    assert len({int(k) for k in keys[2, :2]} & {int(k) for k in keys[1]}) == 0
    shared = shared_sentences(keys, 4)  # one slot more than any report has
    expected = torch.zeros(3, 3, 4, dtype=torch.bool)
    expected[1, 0, 1] = expected[1, 0, 2] = expected[0, 1, 1] = expected[0, 1, 2] = True  # mass, impressions
    expected[2, 0, 0] = expected[0, 2, 0] = True  # "dense"
    assert torch.equal(shared, expected)


def _loop_sla_loss_detached(p: torch.Tensor, s: torch.Tensor, mask: torch.Tensor, shared: torch.Tensor, scale: float):
    """Both SLA terms from explicit loops; similarities of shared (k, i, j) taken from detached copies."""
    n = len(p)
    t2i = [[None] * n for _ in range(n)]
    i2t = [[None] * n for _ in range(n)]
    for k in range(n):
        for i in range(n):
            cols = []
            for j in range(s.shape[1]):
                if not mask[i, j]:
                    continue
                pk, sij = (p[k].detach(), s[i, j].detach()) if shared[k, i, j] else (p[k], s[i, j])
                cols.append(pk @ sij)  # (P,)
            sim = torch.stack(cols, dim=1)  # (P, S_i)
            t2i[k][i] = torch.stack([sim[:, c].max() for c in range(sim.shape[1])]).mean()
            i2t[k][i] = torch.stack([sim[q, :].max() for q in range(sim.shape[0])]).mean()
    target = torch.arange(n)
    total = 0
    for scores in (t2i, i2t):
        m = torch.stack([torch.stack(row) for row in scores]) * scale
        total = total + F.cross_entropy(m, target) + F.cross_entropy(m.T, target)
    return total


def test_sla_detached_shared_sentences_match_loops():
    patches, sents, mask = _sla_inputs()
    shared = torch.zeros(5, 5, 4, dtype=torch.bool)
    shared[1, 0, 2] = shared[0, 1, 0] = shared[3, 0, 1] = shared[4, 3, 0] = shared[2, 4, 1] = True
    grads = []
    for fn in ("vectorised", "loops"):
        p, s = patches.clone().requires_grad_(True), sents.clone().requires_grad_(True)
        if fn == "vectorised":
            lt, li = sla_loss(p, s, mask, torch.tensor(3.0, dtype=torch.float64), chunk=2, shared=shared)
            loss = lt + li
        else:
            loss = _loop_sla_loss_detached(p, s, mask, shared, 3.0)
        loss.backward()
        grads.append((loss.detach(), p.grad.clone(), s.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the values are the reference's; only the gradients change
    lt0, li0 = sla_loss(patches, sents, mask, torch.tensor(3.0, dtype=torch.float64), chunk=2)
    assert grads[0][0].item() == pytest.approx((lt0 + li0).item(), rel=1e-12)
    p0, s0 = patches.clone().requires_grad_(True), sents.clone().requires_grad_(True)
    sum(sla_loss(p0, s0, mask, torch.tensor(3.0, dtype=torch.float64), chunk=2)).backward()
    assert not torch.allclose(p0.grad, grads[0][1])


def test_mama_loss_shared_sentences_switch():
    out = _outputs(b=5)
    keys = torch.tensor([[1, 2, 3, 4], [1, 5, 0, 0], [6, 0, 0, 0], [1, 2, 7, 0], [8, 5, 0, 0]])
    cfg = LossConfig(sla_shared_sentences="detach")
    with pytest.raises(ValueError, match="sentence keys"):
        mama_loss(out, cfg, late=True)
    outs = {k: (v.clone().requires_grad_(True) if k in ("patches", "sentences") else v) for k, v in out.items()}
    detached = mama_loss(outs, cfg, late=True, sentence_keys=keys)
    detached["loss"].backward()
    p, s = outs["patches"].detach().clone().requires_grad_(True), outs["sentences"].detach().clone().requires_grad_(True)
    lt, li = sla_loss(p, s, out["sentence_mask"], out["local_scale"], shared=shared_sentences(keys, 4))
    (lt + li).backward()
    torch.testing.assert_close(outs["patches"].grad, p.grad)
    torch.testing.assert_close(outs["sentences"].grad, s.grad)
    reference = mama_loss(out, LossConfig(), late=True)
    assert detached["loss"].item() == pytest.approx(reference["loss"].item(), rel=1e-12)
