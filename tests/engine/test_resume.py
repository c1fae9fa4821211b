"""Resume equivalence of the shared loop: N uninterrupted steps == k steps, simulated kill, resume to N."""

from __future__ import annotations

import pytest
import torch

from tests.engine.toy_loop import Killed, run_toy


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_after_kill_matches_uninterrupted(tmp_path, accum):
    ref = run_toy(tmp_path / "ref", total_steps=13, ckpt_every=4, grad_accum_steps=accum)
    with pytest.raises(Killed):
        run_toy(tmp_path / "run", total_steps=13, ckpt_every=4, kill_at=8, grad_accum_steps=accum)
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text() == "step_00000008"
    resumed = run_toy(tmp_path / "run", total_steps=13, ckpt_every=4, resume=True, grad_accum_steps=accum)
    assert ref.keys() == resumed.keys()
    for name in ref:
        torch.testing.assert_close(
            ref[name], resumed[name], rtol=0, atol=0, msg=f"parameter {name} differs after resume"
        )


def test_resume_is_not_trivially_equal(tmp_path):
    """Guard against a vacuous comparison: a run restarted from scratch (RNG not restored) differs."""
    ref = run_toy(tmp_path / "ref", total_steps=6, ckpt_every=3)
    other = run_toy(tmp_path / "other", total_steps=12, ckpt_every=3)
    diffs = [(ref[k] - other[k]).abs().max().item() for k in ref]
    assert max(diffs) > 1e-4
