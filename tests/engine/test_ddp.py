"""The shared loop under DDP on two CPU processes (gloo, torchrun) equals one process on the whole batch.

Each rank sees half of every batch (ResumableSampler shards the unshuffled order), DDP averages
the two half-batch gradients, which equals the full-batch gradient of a mean-reduced loss.  The
only differences are float summation order: we allow 1e-5 absolute (documented tolerance).
Dropout is switched off (p=0) because each process draws its own masks.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import tests.engine.toy_loop as toy

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_single_process(tmp_path, monkeypatch):
    env = dict(os.environ, OMP_NUM_THREADS="1", MEDLEARN_TOY_DROPOUT="0", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(ROOT / "tests/engine/ddp_script.py"), str(tmp_path / "ddp"), "4",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "ddp" / "params_rank0.pt")
    r1 = torch.load(tmp_path / "ddp" / "params_rank1.pt")
    assert r0["world"] == 2 and r1["world"] == 2
    monkeypatch.setenv("MEDLEARN_TOY_DROPOUT", "0")
    single = toy.run_toy(tmp_path / "single", total_steps=5, batch_size=8, shuffle=False)
    for name, ref in single.items():
        torch.testing.assert_close(r0["state"][name], ref, rtol=0, atol=1e-5, msg=f"rank0 {name}")
        torch.testing.assert_close(r1["state"][name], ref, rtol=0, atol=1e-5, msg=f"rank1 {name}")
    # and the runs really trained (not a vacuous comparison with the initial weights)
    toy.seed_everything(7)
    init = toy.make_model().state_dict()
    assert max((init[k] - single[k]).abs().max().item() for k in init) > 1e-3
