"""The real ``medlearn mama train`` under torchrun (2 gloo processes) equals 1 process on the same global
batch across ``loss.late_loss`` (validation shared out over the processes included), and a SIGKILLed run, re-run with the same command, ends bit-identical
to an uninterrupted one.

DDP comparison: 2 processes x 4 images against 1 process x 8 images; every item's augmentation,
report masking and pairing depend on (seed, epoch, index) only, and the ranks' shards of one step are
the single process's batch. Terms whose statistics are per device in the method itself (SLA: each
device's own images and reports; NT-Xent: the image-image head's BatchNorm over each device's rows)
are switched off; CLIP and the extra-view CLIP are gathered with gradient, so they are exact. At
``late_loss`` the local heads and the local scale switch ``requires_grad`` on after
``accelerator.prepare`` (they stay unused here: DDP must find them, ``find_unused_parameters``).
Dropout is off. Tolerance: losses rtol 1e-4 (float32 all-reduce order); parameters atol 5e-5, i.e.
5% of one Adam step at lr 1e-3: the key-projection biases have a true gradient of zero (softmax
ignores a constant added to every key), and Adam scales their float-noise gradients up to
parameter noise of about 1e-5. BatchNorm running statistics are per-device (DDP keeps rank 0's and
the late-phase local heads still update theirs): they are not compared.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tests.harness import assert_same_weights, kill_when, run_cli, weights

try:
    from tests.mama.pt_fakes import write_prepared
except ImportError:  # tests/mama collected as a plain folder
    from pt_fakes import write_prepared

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
NO_DROPOUT = [
    "model.text.arch.resid_pdrop=0.0",
    "model.text.arch.embd_pdrop=0.0",
    "model.text.arch.attn_pdrop=0.0",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("mama_ddp_data"))


def _losses(run) -> dict[int, dict[str, float]]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: r for r in recs if "loss" in r}


def _validations(run) -> dict[int, dict[str, float]]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("val_")} for r in recs if "val_i2t_top1" in r}


def test_two_processes_equal_one_across_late_loss(prepared, tmp_path):
    common = ["mama", "train", "--config", "tiny", f"data.prepared_dir={prepared}", "train.max_steps=4",
              "loss.late_loss=2", "loss.nt_xent=false", "loss.sla=false", "train.val_every=2",
              "engine.log_every=1", *NO_DROPOUT]  # fmt: skip
    run_cli([*common, f"train.out={tmp_path / 'one'}", "data.batch_size=8"], timeout=240)
    run_cli([*common, f"train.out={tmp_path / 'two'}", "data.batch_size=4"], nproc=2, timeout=240)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    assert "clip_extra" not in one[2] and "clip_extra" in one[3]  # the late term starts at step index 2
    for step in one:
        for term in ("loss", "clip", "clip_extra"):
            if term in one[step]:
                assert two[step][term] == pytest.approx(one[step][term], rel=1e-4), (step, term)
    # validation is shared out over the processes (each embeds its items) and gathered: the same
    # retrieval metrics as one process over all items, at steps 0 (start), 2 and 4
    val_one, val_two = (_validations(tmp_path / f) for f in ("one", "two"))
    assert sorted(val_one) == sorted(val_two) == [0, 2, 4]
    for step, metrics in val_one.items():
        assert set(metrics) == set(val_two[step]) and metrics, step
        for k, v in metrics.items():
            assert val_two[step][k] == pytest.approx(v, abs=1e-9), (step, k)
    final = ("one", "two")
    for name in ("image", "heads"):
        a, b = (weights(tmp_path / f / "checkpoints" / "final", name) for f in final)
        # BatchNorm buffers are per-device statistics (DDP keeps rank 0's): parameters only
        a, b = ({k: v for k, v in w.items() if not k.endswith(BUFFERS)} for w in (a, b))
        assert_same_weights(a, b, atol=5e-5)
    a, b = (load_file(str(tmp_path / f / "checkpoints" / "final" / "text_adapter" / "adapter_model.safetensors"))
            for f in final)  # fmt: skip
    assert_same_weights(a, b, atol=5e-5)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # the adapters did train


def test_sigkill_then_rerun_equals_uninterrupted(prepared, tmp_path):
    def args(out):
        return ["mama", "train", "--config", "tiny", f"data.prepared_dir={prepared}", f"train.out={out}",
                "train.max_steps=6", "loss.late_loss=3", "engine.ckpt_every=1", "train.val_every=100"]  # fmt: skip

    run_cli(args(tmp_path / "whole"))
    ckpts = tmp_path / "killed" / "checkpoints"
    code = kill_when(args(tmp_path / "killed"), lambda: (ckpts / "step_00000004").is_dir())
    assert code == -9  # SIGKILL: no handler ran, nothing was tidied up
    assert not (ckpts / "final").exists()
    run_cli(args(tmp_path / "killed"))
    for name in ("image", "heads"):
        assert_same_weights(
            weights(tmp_path / "whole" / "checkpoints" / "final", name), weights(ckpts / "final", name)
        )
    lora = "text_adapter/adapter_model.safetensors"
    assert_same_weights(
        load_file(str(tmp_path / "whole" / "checkpoints" / "final" / lora)),
        load_file(str(ckpts / "final" / lora)),
    )
    assert torch.load(ckpts / "final" / "state.pt", weights_only=False)["step"] == 6
