"""Run the real ``medlearn`` CLI in subprocesses: under torchrun (DDP on gloo), or killed with SIGKILL.

Used by each task's DDP and hard-kill tests; nothing here knows a task.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: one thread per process, this checkout first on the path."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), MPLBACKEND="Agg")
    env.update(extra)
    return env


def cli_command(args: Sequence[str], nproc: int = 1) -> list[str]:
    """``python -m medlearn ARGS``, or the same under ``torch.distributed.run`` with ``nproc`` processes."""
    if nproc == 1:
        return [sys.executable, "-m", "medlearn", *args]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
        "127.0.0.1", "--master_port", str(free_port()), "-m", "medlearn", *args,
    ]  # fmt: skip


def run_cli(
    args: Sequence[str], nproc: int = 1, timeout: float = 300, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run the CLI to completion; raises with the tail of stderr when it fails."""
    proc = subprocess.run(
        cli_command(args, nproc), env=cli_env(**env), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def kill_when(
    args: Sequence[str], ready: Callable[[], bool], timeout: float = 300, cwd: Path | None = None, **env: str
) -> int:
    """Start the CLI, SIGKILL it (no clean-up possible) as soon as ``ready()`` is true; its exit code.

    Raises:
        AssertionError: if the command finished (or ``timeout`` passed) before ``ready()`` held.
    """
    proc = subprocess.Popen(
        cli_command(args), env=cli_env(**env), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    start = time.time()
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"finished before the kill point:\n{proc.stderr.read()[-3000:]}")
            if time.time() - start > timeout:
                raise AssertionError("kill point not reached in time")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``model_<name>.safetensors`` in a checkpoint folder."""
    return load_file(str(Path(folder) / f"model_{name}.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    """Equal key sets and tensors (bit-identical with the default ``atol=0``)."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")
