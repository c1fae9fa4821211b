"""The real ``medlearn mrsi train`` under torchrun (2 gloo processes x 2 maps) equals 1 process x 4 maps.

This runs the WGAN-GP critic steps, whose gradient penalty is a double backward, through the
DDP-wrapped critic, and the generator step through the DDP-wrapped generator.  The ranks' shards of
one step are the single process's batch (:class:`ResumableSampler`); every item's n and
augmentation depend on (seed, epoch, index), and the step's lambdas and GP mixing weights are drawn
for the global batch, each rank taking its samples' entries.  The MS-SSIM term uses each map's own
data range (``loss.ssim_data_range=sample``), the networks normalise per sample (instance norm), so
nothing depends on how the batch is split.  Tolerances: logged losses rtol 1e-4 (float32 sums in
another order); parameters atol 1e-5 = 10% of one Adam step at lr 1e-4 (Adam turns float noise in
near-zero gradients into parameter noise of about 2e-6).
"""

from __future__ import annotations

import json

import pytest

from tests.harness import assert_same_weights, run_cli, weights

SMALL = ["data.metabolites=[NAA]", "adversarial.n_critic=2", "model.base_width=2", "model.depth=2",
         "critic.n_blocks=2", "train.max_steps=3", "train.epochs=10", "train.val_every=100",
         "engine.log_every=1", "engine.ckpt_every=0"]  # fmt: skip


def _losses(run) -> dict[int, dict[str, float]]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r for r in recs if "loss" in r}


def test_two_processes_equal_one_with_gradient_penalty(tiny_root, tmp_path):
    common = ["mrsi", "train", "--config", "tiny", f"data.root={tiny_root}", *SMALL]
    run_cli([*common, f"train.out={tmp_path / 'one'}", "train.batch_size=4"], timeout=120)
    run_cli([*common, f"train.out={tmp_path / 'two'}", "train.batch_size=2"], nproc=2, timeout=120)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:
        for term in ("loss", "l1", "ssim", "adv", "loss_d", "wdist", "lam"):
            assert two[step][term] == pytest.approx(one[step][term], rel=1e-4, abs=1e-7), (step, term)
    assert any(one[s]["lam"] > 0 for s in one)  # the adversarial term was on
    for name in ("generator", "critic"):
        a, b = (weights(tmp_path / f / "checkpoints" / "final", name) for f in ("one", "two"))
        assert_same_weights(a, b, atol=1e-5)
