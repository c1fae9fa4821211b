"""Gather with gradient: two gloo processes with half batches == one process with the whole batch.

The worker (pt_ddp_worker.py) runs under ``torch.distributed.run``; gradients are averaged
over ranks as DDP does.  With ``gather=on`` the loss and the gradients equal the single-process
whole-batch values (clip, clip_extra, nt_xent).  With ``gather=off`` (reference: per-GPU negatives)
they equal the mean of the two half-batch losses computed separately (SLA included).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medlearn.mama.modeling.distributed import GatherInfo

try:
    from tests.mama import pt_ddp_worker as worker
except ImportError:  # tests/mama collected as a plain folder
    import pt_ddp_worker as worker

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(Path(worker.__file__)), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "ddp_gather.pt")


def test_gathered_loss_and_gradients_equal_whole_batch(ddp_result):
    assert ddp_result["world"] == 2
    loss, grads = worker.run("on", worker.batch(), GatherInfo())
    assert ddp_result["on"]["loss"] == pytest.approx(loss, rel=1e-10)
    for name, g in grads.items():
        assert g.abs().max() > 0 or name.startswith("local"), name
        torch.testing.assert_close(ddp_result["on"]["grads"][name], g, rtol=1e-9, atol=1e-12, msg=name)


def test_per_gpu_reference_mode_equals_mean_of_half_batches(ddp_result):
    x = worker.batch()
    halves = [worker.run("off", x[:4], GatherInfo()), worker.run("off", x[4:], GatherInfo())]
    assert ddp_result["off"]["loss"] == pytest.approx(sum(h[0] for h in halves) / 2, rel=1e-10)
    for name in halves[0][1]:
        expected = (halves[0][1][name] + halves[1][1][name]) / 2
        torch.testing.assert_close(
            ddp_result["off"]["grads"][name], expected, rtol=1e-9, atol=1e-12, msg=name
        )
    # and per-GPU negatives really differ from the gathered loss
    whole, _ = worker.run("off", x, GatherInfo())
    assert abs(ddp_result["off"]["loss"] - whole) > 1e-3
