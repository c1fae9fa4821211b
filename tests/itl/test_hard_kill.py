"""SIGKILL of a real ``medlearn itl train`` in the middle of phase 1, after a periodic checkpoint, then
the same command again: the final weights (and BatchNorm statistics) equal an uninterrupted run's, bit
for bit, and so does R."""

from __future__ import annotations

import json

from tests.harness import assert_same_weights, kill_when, run_cli, weights


def test_sigkill_mid_phase_then_rerun_equals_uninterrupted(site_root, tmp_path):
    def args(out):
        return ["itl", "train", "--config", "tiny", f"data.root={site_root}", f"data.cache_dir={tmp_path / 'cache'}",
                "data.sites=[RUNMC,BMC]", "data.heldout=[]", "train.steps_per_phase=6", "train.strategy=itl",
                "engine.ckpt_every=2", "engine.keep_last=3", f"train.out={out}"]  # fmt: skip

    run_cli(args(tmp_path / "whole"))
    phase = tmp_path / "killed" / "phases" / "phase_01"
    code = kill_when(args(tmp_path / "killed"), lambda: (phase / "step_00000002").is_dir())
    assert code == -9  # SIGKILL: no handler ran, nothing was tidied up
    assert not (tmp_path / "killed" / "checkpoints" / "final").exists()
    assert (tmp_path / "killed" / "checkpoints" / "phase_00").is_dir()  # phase 0 had finished
    run_cli(args(tmp_path / "killed"))
    for name in ("model",):
        assert_same_weights(
            weights(tmp_path / "whole" / "checkpoints" / "final", name),
            weights(tmp_path / "killed" / "checkpoints" / "final", name),
        )
    r = [json.loads((tmp_path / run / "results.json").read_text())["R"] for run in ("whole", "killed")]
    assert r[0] == r[1]
