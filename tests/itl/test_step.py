"""One ITL training step as the loop runs it (``PhaseHooks.train_step`` on ``PhaseBatches``): no host
synchronisation, the global batch split into shares, frozen teachers that agree with the student at
identical weights, and the GPU switches (channels_last, autocast) exercised on the CPU."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medlearn.engine.conv_kernels import use_size_aware_convs
from medlearn.engine.loop import prepare_run
from medlearn.errors import ConfigError
from medlearn.itl.config import STRATEGIES as NAMES
from medlearn.itl.config import ITLOptions
from medlearn.itl.data import SliceSet
from medlearn.itl.model import MultiSiteExpert, build_model
from medlearn.itl.strategies import STRATEGIES, EWCState, itl_loss
from medlearn.itl.train import PhaseBatches, PhaseHooks, memory_format

from .conftest import tiny_cfg


class _Case:
    def __init__(self, name: str, seed: int) -> None:
        g = np.random.default_rng(seed)
        self.case, self.site = name, "X"
        self.image = g.normal(size=(6, 32, 32)).astype(np.float32)
        self.mask = np.zeros((6, 32, 32), np.uint8)
        self.mask[1:5, 10:22, 8:20] = 1


def _sets() -> tuple[SliceSet, tuple[SliceSet, np.ndarray]]:
    new = SliceSet([_Case("Case00", 0), _Case("Case01", 1)], 1, 0)
    mem = SliceSet([_Case("Case02", 2), _Case("Case03", 3)], 1, 0)
    return new, (mem, np.array([0, 1] * (len(mem) // 2), dtype=np.int64))


def _hooks(tmp_path: Path, strategy: str, *overrides: str) -> PhaseHooks:
    cfg = tiny_cfg(Path("unused"), tmp_path / strategy, f"train.strategy={strategy}", *overrides)
    run = prepare_run(cfg, cfg.train.out, cfg.engine)  # writes nothing
    torch.manual_seed(0)
    model = build_model(cfg.model, 1)
    strat = STRATEGIES.build(strategy)
    new, mem = _sets()
    ewc = EWCState()
    if strat.uses_ewc:
        ewc.update(model, [new.batch([0, 1])])
    if strat.uses_source_decoder:
        model.sync_source_from_target(trainable=cfg.itl.source_mode == "trainable")
    teacher = copy.deepcopy(model) if strat.needs_teacher(cfg) else None
    batches = PhaseBatches(cfg, 1, new, mem if strat.uses_memory else None, torch.device("cpu"))
    return PhaseHooks(cfg, run, model, teacher, ewc, batches)


@pytest.mark.parametrize("strategy", NAMES)
def test_a_step_never_copies_to_the_host(tmp_path, monkeypatch, strategy):
    """Every way a tensor reaches Python (item, float, int, bool, tolist, numpy) raises inside the step:
    on a GPU each of them would stall the step until the device catches up."""
    hooks = _hooks(tmp_path, strategy)
    batch = next(iter(hooks.data.epoch(0, 0)))

    def sync(*_a, **_k):
        caller = sys._getframe(1).f_code
        # MONAI's DiceLoss builds its reduction axes as torch.arange(2, ndim).tolist(): a fresh CPU
        # tensor of axis numbers, never device data, so no synchronisation on a GPU
        if caller.co_filename.endswith("monai/losses/dice.py") and caller.co_name == "forward":
            return list(range(2, 4))
        raise AssertionError("host synchronisation inside the training step")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__"):
            m.setattr(torch.Tensor, name, sync)
        with hooks.accelerator.accumulate(*hooks.accumulate):
            out = hooks.train_step(batch, 0)
    assert "loss" in out and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.values())
    if strategy == "itl":
        assert {"l_target", "l_mix", "l_source", "l_site"} <= set(out)


def test_shares_of_the_global_batch(tmp_path):
    """2 shares (2 processes, or 2 accumulated micro-batches) are the halves of the 1-share batch:
    the same slices, the same augmentation; an indivisible batch is refused naming the key."""
    new, mem = _sets()
    one = tiny_cfg(Path("unused"), tmp_path / "a", "train.batch_size=4", "train.memory_batch=2")
    acc2 = tiny_cfg(Path("unused"), tmp_path / "b", "train.batch_size=4", "train.memory_batch=2",
                    "engine.grad_accum_steps=2")  # fmt: skip
    cpu = torch.device("cpu")
    whole = list(PhaseBatches(one, 1, new, mem, cpu).epoch(0, 0))
    halves = {
        "ranks": [list(PhaseBatches(one, 1, new, mem, cpu, rank=r, world=2).epoch(0, 0)) for r in (0, 1)],
        "accum": [list(PhaseBatches(acc2, 1, new, mem, cpu).epoch(0, 0))[a::2] for a in (0, 1)],
    }
    for how, (h0, h1) in halves.items():
        assert len(h0) == len(h1) == len(whole), how
        for w, a, b in zip(whole, h0, h1):
            torch.testing.assert_close(torch.cat([a[0], b[0]]), w[0], rtol=0, atol=0)  # images, augmented
            torch.testing.assert_close(torch.cat([a[1], b[1]]), w[1], rtol=0, atol=0)  # masks
            for i in range(3):  # exemplar images, masks, sites
                torch.testing.assert_close(torch.cat([a[2][i], b[2][i]]), w[2][i], rtol=0, atol=0)
            assert a[2][3] == w[2][3] == 2  # number of past sites
    with pytest.raises(ConfigError, match=r"train.batch_size=3 does not split into 2 equal shares"):
        bad = tiny_cfg(Path("unused"), tmp_path / "c", "train.batch_size=3")
        PhaseBatches(bad, 0, new, None, cpu, rank=0, world=2)


@pytest.mark.parametrize("teacher", ["model", "decoder"])
def test_identical_weights_give_zero_site_loss_with_batch_statistics(teacher):
    """At the start of a phase the student equals the frozen teacher.  With ``teacher_bn=batch`` the
    site-level KL is exactly 0 in training mode; with ``running`` (eval-mode teacher) it is not: the
    mismatch between batch and running statistics alone makes it positive."""
    torch.manual_seed(0)
    m = MultiSiteExpert("resnet18", 1, 4, [8, 8, 4, 4, 4])
    m(torch.randn(16, 1, 32, 32) * 2 + 1)  # running statistics of other data than the step's batch
    m.sync_source_from_target()
    m.source_decoder.eval()
    f_prev = copy.deepcopy(m).eval()
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 2, (4, 32, 32))
    xm, ym, sm = torch.randn(2, 1, 32, 32), torch.randint(0, 2, (2, 32, 32)), torch.tensor([0, 1])
    site = {}
    for bn in ("batch", "running"):
        opts = ITLOptions(feature_mix=False, teacher=teacher, teacher_bn=bn)
        _, logs = itl_loss(m, x, y, xm, ym, sm, opts, np.random.default_rng(0), f_prev, 2)
        site[bn] = float(logs["l_site"])
    assert site["batch"] == pytest.approx(0.0, abs=1e-7)
    assert site["running"] > 1e-3, site


def test_channels_last_and_autocast_steps_match_the_default(tmp_path):
    """``train.memory_format=channels_last`` computes the same step (NHWC kernels), and so do
    PyTorch's native CPU convolutions (``engine.cpu_conv=native``, oneDNN off) and the per-call
    choice of ``engine.cpu_conv=auto``; bf16 autocast (the
    GPU's AMP path, here on the CPU) gives a loss within bf16 round-off of fp32 and finite gradients."""
    outs = {}
    for name, fmt, onednn in (("contiguous", "contiguous", True), ("channels_last", "channels_last", True),
                              ("native", "channels_last", False), ("auto", "channels_last", True)):  # fmt: skip
        hooks = _hooks(tmp_path / name, "itl", f"train.memory_format={fmt}")
        if fmt == "channels_last":
            hooks.model.to(memory_format=torch.channels_last)
            assert hooks.model.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        if name == "auto":  # engine.cpu_conv=auto: the deep stages on the native kernel, the rest on oneDNN
            assert use_size_aware_convs(hooks.model, hooks.teacher) > 0
        batch = next(iter(hooks.data.epoch(0, 0)))
        with hooks.accelerator.accumulate(*hooks.accumulate), torch.backends.mkldnn.flags(enabled=onednn):
            outs[name] = (hooks.train_step(batch, 0), copy.deepcopy(hooks.model.state_dict()))
    # one AdamW step moves a weight by about lr * sign(gradient): round-off may flip the sign of a
    # gradient that is nearly zero, so single weights may differ by up to 2 lr, not more
    lr = hooks.cfg.optim.lr
    for name in ("channels_last", "native", "auto"):
        torch.testing.assert_close(outs[name][0]["loss"], outs["contiguous"][0]["loss"], rtol=1e-5, atol=1e-6)
        for k, v in outs["contiguous"][1].items():
            assert (outs[name][1][k].float() - v.float()).abs().max() <= 2 * lr * 1.01, (name, k)

    auto = tiny_cfg(Path("unused"), tmp_path / "x")  # train.memory_format=auto
    assert memory_format(auto, torch.device("cpu")) == torch.channels_last
    assert memory_format(auto, torch.device("cuda")) == torch.channels_last

    hooks = _hooks(tmp_path / "amp", "itl")
    batch = next(iter(hooks.data.epoch(0, 0)))
    xb, yb, mem, rng = batch
    kw = dict(
        strategy=hooks.strategy, y=yb, batch_mem=mem, teacher=hooks.teacher, ewc=hooks.ewc, cfg=hooks.cfg
    )
    from medlearn.itl.strategies import strategy_step

    ref, _ = hooks.net(xb, step=strategy_step, rng=np.random.default_rng(1), **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp, logs = hooks.net(xb, step=strategy_step, rng=np.random.default_rng(1), **kw)
    assert amp.dtype == torch.float32  # losses are computed in fp32 under autocast
    assert abs(float(amp.detach()) - float(ref.detach())) <= 0.03 * abs(float(ref.detach()))
    amp.backward()
    assert all(torch.isfinite(p.grad).all() for p in hooks.params if p.grad is not None)
