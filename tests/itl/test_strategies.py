"""Registered strategies: names and flags as in the spec's table, and step losses equal to the
string-dispatch definition they replaced (bit for bit)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from medlearn.errors import ConfigError
from medlearn.itl.config import STRATEGIES as CONFIG_STRATEGIES
from medlearn.itl.losses import LOSSES, dice_ce, ewc_penalty, kl_distill
from medlearn.itl.model import MultiSiteExpert
from medlearn.itl.strategies import STRATEGIES, USES_MEMORY, EWCState, itl_loss, step_loss

from .conftest import tiny_cfg


def _reference_step_loss(strategy, model, batch_new, batch_mem, teacher, ewc, cfg, rng):
    """One step of each strategy written as a chain of name tests (the independent definition)."""
    x, y = batch_new
    if strategy == "itl":
        xm, ym, sm = batch_mem if batch_mem is not None else (None, None, None)
        return itl_loss(model, x, y, xm, ym, sm, cfg.itl, rng)
    if strategy == "replay" and batch_mem is not None:
        x, y = torch.cat([x, batch_mem[0]]), torch.cat([y, batch_mem[1]])
    logits = model(x)
    loss = dice_ce(logits, y)
    logs = {"l_seg": float(loss.detach())}
    if strategy == "lwf" and teacher is not None:
        with torch.no_grad():
            t_logits = teacher(x)
        l_kd = kl_distill(logits, t_logits, cfg.train.lwf_temperature)
        loss = loss + cfg.train.lwf_weight * l_kd
        logs["l_kd"] = float(l_kd.detach())
    if strategy == "ewc" and ewc is not None and ewc.fisher:
        pen = ewc.penalty(model)
        loss = loss + 0.5 * cfg.train.ewc_lambda * pen
        logs["l_ewc"] = float(pen.detach())
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


@pytest.mark.parametrize("name", ["individual", "joint", "sequential", "replay", "lwf", "ewc", "itl"])
@pytest.mark.parametrize("with_extras", [True, False])
def test_step_loss_equals_string_dispatch(name, with_extras):
    cfg = tiny_cfg(Path("unused"), Path("unused"), "train.lwf_weight=0.7", "train.ewc_lambda=3.0")
    torch.manual_seed(0)
    model = MultiSiteExpert("resnet18", 1, 4, [8, 8, 4, 4, 4])
    x, y = torch.randn(3, 1, 32, 32), torch.randint(0, 2, (3, 32, 32))
    mem = (torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32)), torch.tensor([0, 1]))
    teacher, ewc = None, EWCState()
    if with_extras:
        teacher = copy.deepcopy(model).eval()
        ewc.update(model, [(x, y)])
        model.sync_source_from_target()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    batch_mem = mem if with_extras else None
    got_model, ref_model = copy.deepcopy(model), copy.deepcopy(model)
    rng_got, rng_ref = np.random.default_rng(5), np.random.default_rng(5)
    got, got_logs = step_loss(name, got_model, (x, y), batch_mem, teacher, ewc, cfg, rng_got)
    ref, ref_logs = _reference_step_loss(name, ref_model, (x, y), batch_mem, teacher, ewc, cfg, rng_ref)
    assert torch.equal(got, ref)
    assert got_logs == ref_logs
    assert rng_got.random() == rng_ref.random()  # the same random draws were consumed
    got.backward()
    ref.backward()
    for (n, a), b in zip(got_model.named_parameters(), ref_model.parameters()):
        assert (a.grad is None) == (b.grad is None), n
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad), n
    extra = {"lwf": "l_kd", "ewc": "l_ewc", "itl": "l_site"}.get(name)
    if extra is not None:
        assert (extra in got_logs) == with_extras
