"""Damaged checkpoints and retention: resume falls back to the newest whole checkpoint, with a warning.

The reference is an uninterrupted toy run: resuming from the older checkpoint after the newest one
is found damaged must give the same weights bit for bit (resume from any checkpoint is exact).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from medlearn.engine import Checkpointer
from medlearn.errors import DataError
from tests.engine.toy_loop import Killed, run_toy


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _killed_run(out: Path) -> Path:
    with pytest.raises(Killed):
        run_toy(out, total_steps=13, ckpt_every=4, kill_at=8)
    ckpts = out / "checkpoints"
    assert (ckpts / "LATEST").read_text() == "step_00000008" and (ckpts / "step_00000004").is_dir()
    return ckpts


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    return run_toy(tmp_path_factory.mktemp("ref") / "run", total_steps=13, ckpt_every=4)


@pytest.mark.parametrize(
    "damage",
    ["truncated_weights", "truncated_state", "flipped_state_byte", "garbage_rng", "latest_to_missing_folder"],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, reference, damage):
    ckpts = _killed_run(tmp_path / "run")
    newest = ckpts / "step_00000008"
    if damage == "truncated_weights":
        bad = newest / "model_model.safetensors"
        _truncate(bad)
    elif damage == "truncated_state":
        bad = newest / "state.pt"
        _truncate(bad)
    elif damage == "flipped_state_byte":
        bad = newest / "state.pt"
        _flip_middle_byte(bad)
    elif damage == "garbage_rng":
        bad = newest / "rng_rank0.pt"
        bad.write_bytes(b"not a torch file")
    else:
        bad = ckpts / "step_00000012"
        (ckpts / "LATEST").write_text(bad.name)
    with caplog.at_level(logging.WARNING, logger="medlearn.engine.checkpoint"):
        resumed = run_toy(tmp_path / "run", total_steps=13, ckpt_every=4, resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in w for w in warnings), warnings
    for name in reference:  # resumed from step 4: the same weights as the run that was never stopped
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=0)


def test_no_whole_checkpoint_is_one_clear_error(tmp_path):
    ckpts = _killed_run(tmp_path / "run")
    for step in (4, 8):
        _truncate(ckpts / f"step_{step:08d}" / "state.pt")
    with pytest.raises(DataError, match="no usable checkpoint") as err:
        Checkpointer(ckpts).load_latest({"model": nn.Linear(6, 16)})
    assert "step_00000004" in str(err.value) and "step_00000008" in str(err.value)


def test_side_checkpoints_are_never_resumed_from(tmp_path):
    ck = Checkpointer(tmp_path)
    ck.save(2, {"net": nn.Linear(1, 1)})
    ck.save(3, {"net": nn.Linear(1, 1)}, tag="best", update_latest=False)
    ck.save(4, {"net": nn.Linear(1, 1)})
    _truncate(tmp_path / "step_00000004" / "model_net.safetensors")
    assert ck.latest().name == "step_00000002"  # not 'best' (step 3), which holds no optimizer state


def test_latest_never_goes_past_the_step_latest_names(tmp_path):
    """A restarted run (LATEST at step 2) next to stale step_9 of an earlier one: fall back to step 1."""
    ck = Checkpointer(tmp_path, keep_last=0)
    for step in (1, 9, 2):
        ck.save(step, {"net": nn.Linear(1, 1)})
    assert (tmp_path / "LATEST").read_text() == "step_00000002"
    _truncate(tmp_path / "step_00000002" / "state.pt")
    assert ck.candidates()[1:] == [tmp_path / "step_00000001"]
    assert ck.latest().name == "step_00000001"


@pytest.mark.parametrize("keep_last, kept", [(3, [8, 10, 12]), (0, [2, 4, 6, 8, 10, 12])])
def test_retention_keeps_the_newest_k_and_never_final(tmp_path, keep_last, kept):
    run_toy(tmp_path / "run", total_steps=13, ckpt_every=2, keep_last=keep_last)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == [f"step_{s:08d}" for s in kept]
    assert (ckpts / "final" / "state.pt").is_file() and (ckpts / "LATEST").read_text() == "final"
