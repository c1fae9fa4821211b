"""CPU time of one MRSI training step in two git revisions, side by side in one run.

Each revision is checked out in its own ``git worktree``; a worker subprocess with
``PYTHONPATH=<worktree>/src`` builds that revision's networks and optimisers (``_make_nets``) from
its own preset and times its own ``train_step`` (generator forward, ``n_critic`` WGAN-GP critic
steps, generator step) on the same random batches of the preset's shapes, as process CPU time per
step after warm-up steps (CPU time, not wall time: on a shared machine the wall clock mostly
measures the other jobs).  Workers alternate (base, head, head, base, ...) so drifts of the
machine hit both.  ``--head-overrides`` applies dotted overrides to the head only, e.g. to time the
same maths as the base.

Usage::

    python benchmarks/mrsi_step_ab.py --base 69442bc --head HEAD --preset tiny --repeats 3
    python benchmarks/mrsi_step_ab.py --preset demo --head-overrides model.lambda_offset=false \\
        adversarial.route=all adversarial.lambda_span=0.1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = {"tiny": 16, "demo": 32, "small": 64, "paper": 64}

WORKER = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from medlearn.config import load_config
from medlearn.engine import build_accelerator
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.kspace import truncate_kspace
from medlearn.mrsi.train import _make_nets, train_step

preset, grid, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = load_config(MRSIConfig, preset, ["engine.device=cpu", *sys.argv[5:]])
acc = build_accelerator(cfg.engine)
torch.manual_seed(0)
nets = _make_nets(cfg, (grid, grid), 1000)
b = cfg.train.batch_size
choices = list(cfg.data.n_choices)

def batch(i):
    g = torch.Generator().manual_seed(i)
    hr = torch.rand(b, 1, grid, grid, generator=g)
    n = torch.tensor(choices)[torch.randint(len(choices), (b,), generator=g)]
    return {"hr": hr, "lr": truncate_kspace(hr, n), "mask": torch.ones(b, 1, grid, grid),
            "t1": torch.rand(b, 1, 3 * grid, 3 * grid, 3, generator=g),
            "flair": torch.rand(b, 1, 3 * grid, 3 * grid, 3, generator=g),
            "n": n, "met": torch.randint(7, (b,), generator=g)}

batches = [batch(i) for i in range(warmup + steps)]
for i in range(warmup):
    train_step(cfg, nets, batches[i], acc, i)
t0 = time.process_time()
for i in range(warmup, warmup + steps):
    train_step(cfg, nets, batches[i], acc, i)
print(json.dumps({"cpu_s_per_step": (time.process_time() - t0) / steps, "batch": b,
                  "n_critic": cfg.adversarial.n_critic}))
"""


def _preset(tree: Path, name: str) -> Path:
    for folder in (tree / "src" / "medlearn" / "configs", tree / "configs"):
        if (folder / "mrsi" / f"{name}.yaml").is_file():
            return folder / "mrsi" / f"{name}.yaml"
    raise FileNotFoundError(f"no MRSI preset {name} in {tree}")


def _worker(tree: Path, preset: str, steps: int, warmup: int, overrides: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", WORKER, str(_preset(tree, preset)), str(GRID[preset]), str(steps), str(warmup),
           *overrides]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"worker in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="69442bc")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--preset", default="tiny", choices=sorted(GRID))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--head-overrides", nargs="*", default=[])
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mrsi-ab-"))
    trees = {}
    try:
        for label, rev in (("base", a.base), ("head", a.head)):
            trees[label] = work / label
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(trees[label]), rev],
                           check=True, capture_output=True)  # fmt: skip
        times: dict[str, list[float]] = {"base": [], "head": []}
        for r in range(a.repeats):
            for label in ("base", "head") if r % 2 == 0 else ("head", "base"):
                ov = a.head_overrides if label == "head" else []
                res = _worker(trees[label], a.preset, a.steps, a.warmup, ov)
                times[label].append(res["cpu_s_per_step"])
                print(f"repeat {r} {label}: {res['cpu_s_per_step'] * 1000:.0f} ms CPU/step (batch {res['batch']}, "
                      f"n_critic {res['n_critic']})", flush=True)  # fmt: skip
        base, head = statistics.median(times["base"]), statistics.median(times["head"])
        row = {"preset": a.preset, "base": a.base, "head": a.head, "head_overrides": a.head_overrides,
               "base_cpu_ms": round(base * 1000, 1), "head_cpu_ms": round(head * 1000, 1),
               "speedup": round(base / head, 3), "repeats": a.repeats, "steps": a.steps, "times": times}  # fmt: skip
        print(f"summary: MRSI {a.preset} train step, CPU time per step (median of {a.repeats} alternated runs, "
              f"{a.steps} steps each, 1 thread): base {a.base} {base * 1000:.0f} ms, head {a.head} {head * 1000:.0f} ms, "
              f"speed-up {base / head:.2f}x" + (f" (head: {' '.join(a.head_overrides)})" if a.head_overrides else ""))  # fmt: skip
        if a.json:
            Path(a.json).write_text(json.dumps(row, indent=2))
    finally:
        for tree in trees.values():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True
            )
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
