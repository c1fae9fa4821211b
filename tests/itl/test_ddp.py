"""``medlearn itl train`` in 2 gloo processes (torchrun) against 1 process on the same global batch.

Each process trains on its half of every step's global batch (``PhaseBatches``); the single process
sees the same two halves as 2 accumulated micro-batches (``engine.grad_accum_steps=2``).  BatchNorm
normalises each half with that half's statistics in both runs (DDP without SyncBatchNorm, which
gloo/CPU lacks), so the gradients are the same sums: DDP averages the two halves' gradients,
accumulation adds the two halves' gradients of loss/2.  Tolerance: 1e-6 absolute on every trained
parameter after two ITL phases (measured: 0, the two sums are exact in fp32).  The BatchNorm
*running* statistics are not compared: each process keeps its own and the main process's (updated
by one half per step) are saved, while the single process updates them with both halves.  For the
same reason the run uses ``itl.teacher_bn=batch``: the default eval-mode teacher F_{k-1} reads
those running statistics in phase 1, so the two runs would train against (slightly) different
targets; with batch statistics nothing in training reads them.
"""

from __future__ import annotations

import json

import torch

from tests.harness import run_cli, weights

TOL = 1e-6


def test_two_processes_equal_one_on_the_same_global_batch(site_root, tmp_path):
    def args(out, *extra):
        return ["itl", "train", "--config", "tiny", f"data.root={site_root}", f"data.cache_dir={tmp_path / 'cache'}",
                "data.sites=[RUNMC,BMC]", "data.heldout=[]", "train.steps_per_phase=2", "train.batch_size=4",
                "train.memory_batch=2", "train.strategy=itl", "itl.teacher_bn=batch", f"train.out={out}",
                *extra]  # fmt: skip

    run_cli(args(tmp_path / "one", "engine.grad_accum_steps=2"))  # fills the cache first
    run_cli(args(tmp_path / "two"), nproc=2)
    one = weights(tmp_path / "one" / "checkpoints" / "final", "model")
    two = weights(tmp_path / "two" / "checkpoints" / "final", "model")
    assert one.keys() == two.keys()
    trained = [k for k in one if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert any(k.startswith("source_decoder") for k in trained) and len(trained) > 100
    for k in trained:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=TOL, msg=k)
    # the run really moved: the final encoder is not the initial one (seeded identically in both runs)
    first = weights(tmp_path / "two" / "checkpoints" / "phase_00", "model")
    assert (first["encoder.conv1.weight"] - two["encoder.conv1.weight"]).abs().max() > 1e-4
    res = json.loads((tmp_path / "two" / "results.json").read_text())
    assert len(res["R"]) == 2  # evaluation ran (on the main process) after both phases
