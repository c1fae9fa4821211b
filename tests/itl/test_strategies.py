"""Registered strategies: names and flags as in the spec's table, and step losses equal to the
string-dispatch definition they replaced (bit for bit)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medlearn.errors import ConfigError
from medlearn.itl.config import STRATEGIES as CONFIG_STRATEGIES
from medlearn.itl.losses import LOSSES, dice_ce, ewc_penalty, kl_distill
from medlearn.itl.model import MultiSiteExpert
from medlearn.itl.strategies import STRATEGIES, USES_MEMORY, EWCState, step_loss

from .conftest import tiny_cfg


def _frozen_call(module, *args):
    """``module(*args)`` in training mode on throwaway copies of its buffers: batch statistics,
    running statistics untouched, gradients still reach its parameters (torch.func)."""
    from torch.func import functional_call

    was = module.training
    module.train()
    state = dict(module.named_parameters()) | {n: b.clone() for n, b in module.named_buffers()}
    out = functional_call(module, state, args)
    module.train(was)
    return out


def _reference_itl(model, x, y, xm, ym, sm, opts, rng, teacher):
    """ITL written out independently: the per-site KL loop of the first implementation, and frozen
    passes as train-mode calls on copied buffers (``_frozen_call``) instead of the library's context."""
    size, b = tuple(x.shape[-2:]), x.shape[0]
    if xm is None:
        loss = dice_ce(model(x), y)
        return loss, {"l_target": loss.detach()}
    x_all = torch.cat([x, xm])
    feats = model.encode(x_all)
    logits_all = model.decode(feats, size)
    l_target = dice_ce(logits_all, torch.cat([y, ym]))
    logs = {}
    if opts.feature_mix:
        m = xm.shape[0]
        pair = torch.as_tensor(rng.integers(0, b, size=m))
        lam = torch.as_tensor(rng.beta(opts.mix_beta, opts.mix_beta, size=m), dtype=torch.float32)
        mixed = [lam.view(-1, 1, 1, 1) * fm + (1 - lam.view(-1, 1, 1, 1)) * fn[pair] for fm, fn in
                 zip([f[b:] for f in feats], [f[:b] for f in feats])]  # fmt: skip
        soft = lam.view(-1, 1, 1, 1) * F.one_hot(ym, 2).permute(0, 3, 1, 2) + (
            1 - lam.view(-1, 1, 1, 1)
        ) * F.one_hot(y[pair], 2).permute(0, 3, 1, 2)
        dec = (
            model.target_decoder(mixed, size)
            if opts.mix_bn_stats
            else _frozen_call(model.target_decoder, mixed, size)
        )
        l_mix = dice_ce(dec, soft.float())
        l_target = l_target + opts.mix_weight * l_mix
        logs["l_mix"] = l_mix.detach()
    logs["l_target"] = l_target.detach()
    batch_bn = opts.teacher_bn == "batch" and model.training
    if opts.source_mode == "teacher" and batch_bn:
        src = _frozen_call(model.source_decoder, feats, size)[b:]
    else:
        src = model.source_decoder([f[b:] for f in feats], size)
    l_source = dice_ce(src, ym)
    if opts.teacher == "model":
        with torch.no_grad():
            target = _frozen_call(teacher, x_all)[b:] if batch_bn else teacher(xm)
    else:
        target = src.detach()
    n_sites = int(sm.max()) + 1
    present = [s for s in range(n_sites) if (sm == s).any()]
    weight = {s: (1 / len(present) if opts.site_weights == "uniform" else float((sm == s).sum()) / len(sm))
              for s in present}  # fmt: skip
    l_site = sum(
        weight[s] * kl_distill(logits_all[b:][sm == s], target[sm == s], opts.temperature) for s in present
    )
    logs.update(l_source=l_source.detach(), l_site=l_site.detach())
    return l_target + opts.alpha * l_source + opts.beta * l_site, logs


def _reference_step_loss(strategy, model, batch_new, batch_mem, teacher, ewc, cfg, rng):
    """One step of each strategy written as a chain of name tests (the independent definition)."""
    x, y = batch_new
    if strategy == "itl":
        xm, ym, sm = batch_mem if batch_mem is not None else (None, None, None)
        return _reference_itl(model, x, y, xm, ym, sm, cfg.itl, rng, teacher)
    if strategy == "replay" and batch_mem is not None:
        x, y = torch.cat([x, batch_mem[0]]), torch.cat([y, batch_mem[1]])
    logits = model(x)
    loss = dice_ce(logits, y)
    logs = {"l_seg": loss.detach()}
    if strategy == "lwf" and teacher is not None:
        with torch.no_grad():
            t_logits = teacher(x)
        l_kd = kl_distill(logits, t_logits, cfg.train.lwf_temperature)
        loss = loss + cfg.train.lwf_weight * l_kd
        logs["l_kd"] = l_kd.detach()
    if strategy == "ewc" and ewc is not None and ewc.fisher:
        pen = ewc.penalty(model)
        loss = loss + 0.5 * cfg.train.ewc_lambda * pen
        logs["l_ewc"] = pen.detach()
    return loss, logs


def test_names_and_flags_follow_the_table():
    assert set(STRATEGIES.names()) == set(CONFIG_STRATEGIES)
    assert USES_MEMORY == {"replay", "itl"}
    flags = {
        "uses_teacher": {"lwf"},
        "uses_ewc": {"ewc"},
        "uses_source_decoder": {"itl"},
        "cumulative": {"joint"},
        "fresh_model": {"individual"},
    }
    for flag, names in flags.items():
        assert {n for n in STRATEGIES if getattr(STRATEGIES.build(n), flag)} == names, flag
    assert {"dice_ce", "kl_distill", "ewc_penalty"} <= set(LOSSES.names())
    assert LOSSES.get("ewc_penalty") is ewc_penalty


def test_unknown_strategy_is_config_error():
    with pytest.raises(ConfigError, match="unknown ITL strategy 'finetune'; registered: sequential"):
        step_loss("finetune", None, (None, None), None, None, None, None, None)


ITL_SWITCHES = {
    "itl": [],  # defaults: F_{k-1} teacher in eval mode, mixed pass leaves BatchNorm statistics alone
    "itl-decoder-teacher": ["itl.teacher=decoder", "itl.teacher_bn=running", "itl.mix_bn_stats=true"],
    "itl-model-batch": ["itl.teacher=model", "itl.teacher_bn=batch"],
    "itl-decoder-batch": ["itl.teacher=decoder", "itl.teacher_bn=batch"],
    "itl-trainable-size": ["itl.source_mode=trainable", "itl.site_weights=size"],
}


@pytest.mark.parametrize("name", ["individual", "joint", "sequential", "replay", "lwf", "ewc", *ITL_SWITCHES])
@pytest.mark.parametrize("with_extras", [True, False])
def test_step_loss_equals_string_dispatch(name, with_extras):
    overrides = ITL_SWITCHES.get(name, [])
    strategy = "itl" if name in ITL_SWITCHES else name
    cfg = tiny_cfg(Path("unused"), Path("unused"), "train.lwf_weight=0.7", "train.ewc_lambda=3.0", *overrides)
    torch.manual_seed(0)
    model = MultiSiteExpert("resnet18", 1, 4, [8, 8, 4, 4, 4])
    x, y = torch.randn(3, 1, 32, 32), torch.randint(0, 2, (3, 32, 32))
    mem = (torch.randn(3, 1, 32, 32), torch.randint(0, 2, (3, 32, 32)), torch.tensor([0, 2, 0]))
    teacher, ewc = None, EWCState()
    if with_extras:
        model(torch.randn(8, 1, 32, 32))  # running statistics that differ from a batch's
        teacher = copy.deepcopy(model).eval()
        ewc.update(model, [(x, y)])
        model.sync_source_from_target(trainable=cfg.itl.source_mode == "trainable")
        if cfg.itl.source_mode == "teacher":
            model.source_decoder.eval()  # as PhaseHooks sets it
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    batch_mem = mem if with_extras else None
    got_model, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    rng_got, rng_ref = np.random.default_rng(5), np.random.default_rng(5)
    got, got_logs = step_loss(strategy, got_model, (x, y), batch_mem, teacher, ewc, cfg, rng_got)
    ref, ref_logs = _reference_step_loss(strategy, ref_model, (x, y), batch_mem, teacher, ewc, cfg, rng_ref)
    exact = strategy != "itl"  # the ITL site loss is vectorised: another summation order
    tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-5, "atol": 1e-7}
    torch.testing.assert_close(got, ref, **tol)
    assert got_logs.keys() == ref_logs.keys()
    for k in got_logs:
        assert isinstance(got_logs[k], torch.Tensor) and got_logs[k].dim() == 0, k  # no host copies
        torch.testing.assert_close(got_logs[k], ref_logs[k], **tol)
    assert rng_got.random() == rng_ref.random()  # the same random draws were consumed
    got.backward()
    ref.backward()
    for (n, a), b in zip(got_model.named_parameters(), ref_model.parameters()):
        assert (a.grad is None) == (b.grad is None), n
        if a.grad is not None:
            torch.testing.assert_close(
                a.grad, b.grad, **({"rtol": 0, "atol": 0} if exact else {"rtol": 1e-4, "atol": 1e-6})
            )
    # running statistics: the same updates (and none from frozen or mixed passes, unless switched on)
    for (n, a), b in zip(got_model.named_buffers(), ref_model.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    extra = {"lwf": "l_kd", "ewc": "l_ewc", "itl": "l_site"}.get(strategy)
    if extra is not None:
        assert (extra in got_logs) == with_extras
