"""The run-folder guard, provenance written only when training starts, and exit statuses."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

from medlearn.config import load_config, save_config
from medlearn.engine import EngineConfig
from medlearn.engine.loop import LoopSpec, exit_status, fit, prepare_run
from medlearn.engine.run_guard import SAFE_ON_RESUME, check_run_folder, config_changes, is_safe
from medlearn.errors import ConfigError, DataError
from tests.engine import toy_loop
from tests.engine.toy_loop import ToyConfig, toy_config, train


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finished(out: Path, steps: int = 4, **kw) -> ToyConfig:
    cfg = toy_config(out, steps, ckpt_every=2, **kw)
    train(cfg)
    return cfg


# ------------------------------------------------------------------------------- the guard
def test_a_shape_changing_key_is_refused_and_nothing_is_touched(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    before = _tree(out)
    cfg = toy_config(out, 4, ckpt_every=2, batch_size=4)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    msg = str(err.value)
    assert "train.batch_size (8 -> 4)" in msg and "train.out" in msg and "move_aside" in msg
    assert "max_steps" not in msg  # only the keys that changed
    assert _tree(out) == before  # config.yaml, checkpoints, metrics: byte for byte


def test_a_safe_change_resumes_and_is_recorded(tmp_path):
    out = tmp_path / "run"
    _finished(out, steps=4)
    cfg = toy_config(out, 7, ckpt_every=2)
    cfg.engine.log_every = 3
    summary = train(cfg)
    assert summary["step"] == 7
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 7 and 5 not in steps and 6 in steps  # resumed at 4, logged every 3 after
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == {"engine.log_every": [10, 3], "train.max_steps": [4, 7]}
    old = yaml.safe_load((out / history[-1]["previous"]).read_text())
    assert old["train"]["max_steps"] == 4
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_steps"] == 7


def test_an_unchanged_resume_is_recorded_without_a_copy(tmp_path):
    out = tmp_path / "run"
    cfg = _finished(out)
    train(cfg)
    history = [json.loads(line) for line in (out / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["changed"] == {} and "previous" not in history[0]
    assert not (out / "config_history").exists()


def test_move_aside_keeps_the_old_run_and_starts_afresh(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    before = _tree(out)
    cfg = toy_config(out, 3, ckpt_every=2, batch_size=4)
    cfg.engine.on_existing_run = "move_aside"
    assert train(cfg)["step"] == 3
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and _tree(moved[0]) == before
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["batch_size"] == 4
    assert not (out / "config_history.jsonl").exists()


def test_checkpoints_without_config_are_refused(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    (out / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="holds checkpoints but no config.yaml"):
        check_run_folder(out, toy_config(out, 4))


def test_a_folder_without_checkpoints_is_not_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    save_config(toy_config(out, 4, batch_size=2), out / "config.yaml")  # an earlier failed command
    check = check_run_folder(out, toy_config(out, 4))
    assert not check.existing and check.changes == {}


def test_config_changes_reads_renamed_added_and_removed_keys():
    @dataclass
    class Train:
        out: str = "runs/x"
        steps: int = 10
        new_key: int = 3

    @dataclass
    class Cfg:
        RENAMED: ClassVar[dict[str, str]] = {"out": "train.out", "train.n": "train.steps"}
        train: Train = field(default_factory=Train)

    saved = {"out": "runs/x", "train": {"n": 10, "gone": 1}}
    assert config_changes(saved, Cfg()) == {"train.gone": (1, "<absent>")}
    cfg = Cfg(Train(steps=12, new_key=4))
    assert config_changes(saved, cfg) == {
        "train.gone": (1, "<absent>"),
        "train.new_key": ("<absent>", 4),
        "train.steps": (10, 12),
    }


def test_safe_keys():
    assert is_safe("train.max_steps") and is_safe("eval.lambdas") and is_safe("engine.log_every")
    assert not any(is_safe(k) for k in ("model.base_width", "engine.seed", "engine.grad_accum_steps"))
    assert not is_safe("train.evaluation") and "train.out" in SAFE_ON_RESUME


def test_on_existing_run_choices():
    with pytest.raises(ConfigError, match="on_existing_run"):
        EngineConfig(on_existing_run="overwrite")
    with pytest.raises(ConfigError, match="on_existing_run"):
        load_config(ToyConfig, None, ["engine.on_existing_run=later"])
    assert (
        load_config(ToyConfig, None, ["engine.on_existing_run=move_aside"]).engine.on_existing_run
        == "move_aside"
    )


# ------------------------------------------------------------------------ process hygiene
def test_a_command_failing_on_bad_data_leaves_no_new_folder(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a tensor file")
    out = tmp_path / "run"
    cfg = toy_config(out, 4)
    cfg.train.data = str(bad)
    with pytest.raises(DataError, match="broken.pt"):
        train(cfg)
    assert not out.exists()  # the toy wrote data.txt into it before failing: removed with the folder


def test_a_failing_command_never_removes_or_rewrites_an_existing_run(tmp_path):
    data = tmp_path / "data.pt"
    torch.save(tuple(toy_loop.make_data().tensors), data)
    out = tmp_path / "run"
    cfg = toy_config(out, 4, ckpt_every=2)
    cfg.train.data = str(data)
    train(cfg)
    before = _tree(out)
    data.write_bytes(b"damaged since")
    cfg.train.max_steps = 6  # a safe change, then the data fails to load
    with pytest.raises(DataError, match="data.pt"):
        train(cfg)
    assert _tree(out) == before  # no config.yaml rewrite, no history entry, checkpoints untouched


def test_prepare_run_writes_nothing_until_training_starts(tmp_path):
    out = tmp_path / "run"
    cfg = toy_config(out, 2)
    run = prepare_run(cfg, out, cfg.engine)
    assert not out.exists() and run.created and not run.started
    run.start()
    assert {p.name for p in out.iterdir()} >= {"config.yaml", "env.json"}
    assert json.loads((out / "env.json").read_text())["seed"] == 7
    run.close()


# ---------------------------------------------------------------------------- exit status
def test_exit_status_of_summaries():
    assert exit_status({"signal": None}) == 0 and exit_status({"step": 3}) == 0
    assert exit_status({"signal": int(signal.SIGINT)}) == 130
    assert exit_status({"signal": int(signal.SIGTERM)}) == 143


def test_sigterm_stops_with_a_checkpoint_and_status_143(tmp_path, monkeypatch):
    step_fn = toy_loop.ToyHooks.train_step

    def step_then_signal(self, batch, step):
        out = step_fn(self, batch, step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(toy_loop.ToyHooks, "train_step", step_then_signal)
    out = tmp_path / "run"
    summary = train(toy_config(out, 10))
    assert summary["signal"] == signal.SIGTERM and exit_status(summary) == 143
    assert (out / "checkpoints" / "LATEST").read_text() == "step_00000003"
    state = torch.load(out / "checkpoints" / "step_00000003" / "state.pt", weights_only=False)
    assert state["step"] == 3


# ------------------------------------------------------------------------ engine.cpu_conv
def _conv_kernels() -> set[str]:
    """Names of the aten ops one 2D convolution forward + backward dispatches to (torch profiler)."""
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        conv(x).sum().backward()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("choice,kernel,other", [("native", "aten::_slow_conv2d_forward", "aten::mkldnn_convolution"),
                                                 ("onednn", "aten::mkldnn_convolution", "aten::_slow_conv2d_forward")])  # fmt: skip
def test_cpu_conv_picks_the_convolution_kernels_for_the_run_only(tmp_path, choice, kernel, other):
    assert torch.backends.mkldnn.is_available()  # the CPU wheels the Makefile installs ship oneDNN
    cfg = toy_config(tmp_path / "run", 2)
    cfg.engine.cpu_conv = choice
    before = torch.backends.mkldnn.enabled
    with prepare_run(cfg, tmp_path / "run", cfg.engine):
        inside = _conv_kernels()
    assert kernel in inside and other not in inside
    assert torch.backends.mkldnn.enabled == before  # restored when the run ends
    with pytest.raises(RuntimeError), prepare_run(cfg, tmp_path / "run2", cfg.engine):
        raise RuntimeError("a failing run restores it too")
    assert torch.backends.mkldnn.enabled == before


def test_fit_applies_cpu_conv_without_the_context_manager(tmp_path, monkeypatch):
    """A task that calls ``fit`` on a bare ``prepare_run`` (no ``with``) trains with the chosen kernels too."""
    seen = []
    step = toy_loop.ToyHooks.train_step

    def recording_step(self, batch, i):
        seen.append(torch.backends.mkldnn.enabled)
        return step(self, batch, i)

    monkeypatch.setattr(toy_loop.ToyHooks, "train_step", recording_step)
    cfg = toy_config(tmp_path / "run", 3)
    cfg.engine.cpu_conv = "native"
    before = torch.backends.mkldnn.enabled
    run = prepare_run(cfg, cfg.train.out, cfg.engine)
    fit(run, toy_loop.ToyHooks(cfg, run, 0), LoopSpec(run.out / "checkpoints", max_steps=3))
    run.close()
    assert seen == [False, False, False]
    assert torch.backends.mkldnn.enabled == before


def test_cpu_conv_rejects_an_unknown_backend():
    with pytest.raises(ConfigError, match="engine.cpu_conv='mkl' is not one of onednn, native, auto"):
        EngineConfig(cpu_conv="mkl")
