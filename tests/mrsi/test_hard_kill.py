"""SIGKILL of a real ``medlearn mrsi train`` process, then the same command again: the final weights
equal an uninterrupted run's, bit for bit."""

from __future__ import annotations

from tests.harness import assert_same_weights, kill_when, run_cli, weights

SMALL = ["data.metabolites=[NAA]", "adversarial.n_critic=1", "model.base_width=2", "model.depth=2",
         "critic.n_blocks=2", "train.epochs=3", "train.batch_size=2", "engine.ckpt_every=1"]  # fmt: skip


def test_sigkill_then_rerun_equals_uninterrupted(tiny_root, tmp_path):
    def args(out):
        return ["mrsi", "train", "--config", "tiny", f"data.root={tiny_root}", f"train.out={out}", *SMALL]

    run_cli(args(tmp_path / "whole"))
    ckpts = tmp_path / "killed" / "checkpoints"
    code = kill_when(args(tmp_path / "killed"), lambda: (ckpts / "step_00000003").is_dir())
    assert code == -9  # SIGKILL: no handler ran, nothing was tidied up
    assert not (ckpts / "final").exists()
    run_cli(args(tmp_path / "killed"))
    for name in ("generator", "critic"):
        assert_same_weights(
            weights(tmp_path / "whole" / "checkpoints" / "final", name),
            weights(ckpts / "final", name),
        )
