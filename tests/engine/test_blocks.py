"""Engine blocks: schedules, sampler, checkpoint atomicity, metric log, run dir, signals."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from medlearn.engine import (
    Checkpointer,
    EngineConfig,
    GracefulStop,
    MetricLogger,
    ResumableSampler,
    build_scheduler,
    load_weights,
    prepare_run_dir,
    read_metrics,
)
from medlearn.errors import ConfigError, DataError


def _lrs(kind, steps, **kw):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sch = build_scheduler(opt, kind, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


def test_cosine_with_warmup_matches_formula():
    lrs = _lrs("cosine", 10, total_steps=10, warmup_steps=4, min_ratio=0.1)
    for s, lr in enumerate(lrs):
        if s < 4:
            expect = 2.0 * (s + 1) / 4
        else:
            expect = 2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 6)))
        assert lr == pytest.approx(expect)


def test_step_decay_matches_formula():
    assert _lrs("step", 7, step_size=3, gamma=0.5) == pytest.approx([2, 2, 2, 1, 1, 1, 0.5])


def test_unknown_schedule_is_config_error():
    with pytest.raises(ConfigError, match="cosine"):
        _lrs("linear", 1)


def test_engine_config_validation():
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        EngineConfig(grad_accum_steps=0)
    with pytest.raises(ConfigError, match="device"):
        EngineConfig(device="tpu")


def test_sampler_shards_cover_dataset_and_resume_mid_epoch():
    n = 10
    shards = [list(ResumableSampler(n, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(n))
    s = ResumableSampler(n, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=4)
    assert list(s) == full[4:]
    s.set_epoch(3)
    assert list(s) != full  # a new permutation each epoch
    uneven = [list(ResumableSampler(7, seed=0, rank=r, world_size=2)) for r in range(2)]
    assert len(uneven[0]) == len(uneven[1]) == 4  # padded like DistributedSampler


def _runs(order, key):
    """Number of maximal runs of equal keys along ``order`` (one per group when groups stay together)."""
    keys = [key[i] for i in order]
    return sum(1 for k in range(len(keys)) if k == 0 or keys[k] != keys[k - 1])


def test_grouped_sampler_keeps_groups_together_shuffled_and_resumable():
    groups = ["e1", "e2", "e1", "e3", "e2", "e1", "e4", "e3", "e4", "e5"]  # 5 exams, 1-3 images each
    s = ResumableSampler(len(groups), seed=7, groups=groups)
    s.set_epoch(0)
    e0 = list(s)
    assert sorted(e0) == list(range(len(groups)))  # every index once per epoch
    assert _runs(e0, groups) == 5  # each exam's images are consecutive
    s.set_epoch(0, start=3)
    assert list(s) == e0[3:]  # resumes mid-epoch
    orders = []
    for epoch in range(6):
        s.set_epoch(epoch)
        orders.append(list(s))
        assert _runs(orders[-1], groups) == 5
    assert len({tuple(o) for o in orders}) > 1  # shuffled anew per epoch
    # two ranks: disjoint contiguous blocks of the grouped order, together the whole epoch
    shards = [ResumableSampler(len(groups), seed=7, rank=r, world_size=2, groups=groups, drop_last=True) for r in range(2)]
    for sh in shards:
        sh.set_epoch(0)
    a, b = list(shards[0]), list(shards[1])
    assert a + b == e0 and len(a) == len(b) == 5
    with pytest.raises(ValueError, match="3 group keys for 4 indices"):
        ResumableSampler(4, groups=["a", "b", "c"])


def test_checkpoint_roundtrip_and_pruning(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ck = Checkpointer(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        ck.save(step, {"net": model}, {"opt": opt}, extra={"epoch": step})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert ck.latest().name == "step_00000003"
    other = nn.Linear(3, 2)
    opt2 = torch.optim.Adam(other.parameters())
    info = ck.load(ck.latest(), {"net": other}, {"opt": opt2})
    assert info == {"step": 3, "extra": {"epoch": 3}}
    torch.testing.assert_close(other.weight, model.weight)
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    fresh = load_weights(nn.Linear(3, 2), ck.latest(), "net")
    torch.testing.assert_close(fresh.bias, model.bias)


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    ck = Checkpointer(tmp_path)
    ck.save(1, {"net": model})
    import medlearn.engine.checkpoint as mod

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mod, "save_model", boom)
    with pytest.raises(OSError):
        ck.save(2, {"net": model})
    assert ck.latest().name == "step_00000001"
    assert not (tmp_path / "step_00000002").exists()


def test_side_checkpoint_does_not_move_latest(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save(5, {"net": nn.Linear(1, 1)})
    ck.save(3, {"net": nn.Linear(1, 1)}, tag="best", update_latest=False)
    assert ck.latest().name == "step_00000005" and (tmp_path / "best" / "state.pt").is_file()


def test_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(DataError, match="incomplete or missing"):
        Checkpointer(tmp_path).load(tmp_path / "step_1", {"net": nn.Linear(1, 1)})
    with pytest.raises(DataError, match="not found"):
        load_weights(nn.Linear(1, 1), tmp_path / "w.safetensors")


def test_metric_logger_writes_jsonl(tmp_path):
    log = MetricLogger(tmp_path, tensorboard=False)
    log.log(1, loss=torch.tensor(0.5), lr=1e-3)
    log.log(2, loss=float("nan"))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] == 0.5 and rows[1]["loss"] == "nan"
    MetricLogger(tmp_path / "off", enabled=False).log(1, x=1)
    assert not (tmp_path / "off").exists()


def test_run_dir_provenance(tmp_path):
    cfg = EngineConfig(seed=5)
    out = prepare_run_dir(tmp_path / "run", cfg, seed=5, device="cpu")
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 5 and env["libraries"]["torch"] and "gpus" in env
    assert "precision: fp32" in (out / "config.yaml").read_text()


def test_graceful_stop_sets_flag_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before
