"""MRSI speed benchmark through the real training path: optimizer steps/s (one step = the generator
forward, ``adversarial.n_critic`` WGAN-GP critic steps, the generator step), samples/s, peak memory,
and generator inference maps/s at batch 64.

``bench()`` writes synthetic patients in the reference npy layout to a temporary folder, trains with
:func:`medlearn.mrsi.train.train` (the function ``medlearn mrsi train`` runs: the real DataLoader,
hooks and :func:`medlearn.engine.loop.fit`) for ``warmup + steps`` optimizer steps, and reads the
step rate from the run's ``metrics.jsonl`` (one record per step, wall-clock ``time``) after the
warm-up.  Inference runs the trained generator on a mixed-condition batch of 64 maps.

Usage::

    python benchmarks/mrsi_speed.py                                # tiny + demo on this machine
    python benchmarks/mrsi_speed.py --configs paper --device cuda --steps 40 --json mrsi_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medlearn.config import load_config
from medlearn.engine import count_parameters
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.evaluate import load_generator
from medlearn.mrsi.kspace import truncate_kspace
from medlearn.mrsi.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mrsi"
GRID = {"tiny": 16, "demo": 32, "small": 64, "paper": 64}  # the map grid each preset is sized for


def write_patients(root: Path, grid: int, n_patients: int = 3, slices: int = 2, seed: int = 0) -> Path:
    """Smooth random maps (zero rim) and matching T1/FLAIR stacks in the reference npy layout."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:grid, 0:grid] / grid
    brain = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.42**2
    for p in range(1, n_patients + 1):
        pdir = root / f"Patient{p}"
        (pdir / "Met_filtered").mkdir(parents=True)
        (pdir / "MRI_sliced").mkdir(parents=True)
        tissue = np.stack([1 + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
                           for cy, cx in rng.uniform(0.3, 0.7, (slices, 2))]).astype(np.float32)  # fmt: skip
        for m, met in enumerate(METABOLITES):
            maps = tissue * (1 + 0.2 * m) + rng.normal(0, 0.02, tissue.shape)
            np.save(pdir / "Met_filtered" / f"{met}.npy", (maps * brain).astype(np.float32))
        mri = np.repeat(np.repeat(np.repeat(tissue, 3, 0), 3, 1), 3, 2)
        np.save(pdir / "MRI_sliced" / "T1_sliced.npy", mri)
        np.save(pdir / "MRI_sliced" / "flair_sliced.npy", (2.5 - mri).astype(np.float32))
    return root


def _rate(metrics: Path, warmup: int) -> float:
    """Optimizer steps per second between the records of step ``warmup`` and the last step."""
    recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    t = {int(r["step"]): float(r["time"]) for r in recs if "loss" in r}
    last = max(t)
    return (last - warmup) / max(t[last] - t[warmup], 1e-9)


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux: process peak


def _infer(gen: torch.nn.Module, grid: int, batch: int, device: torch.device, reps: int) -> float:
    """Maps/s of the generator on a mixed batch (every sample its own n, metabolite, lambda)."""
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(batch, 1, grid, grid, generator=g)
    n = torch.randint(grid // 8, grid // 4 + 1, (batch,), generator=g)
    args = [torch.rand(batch, 1, 3 * grid, 3 * grid, 3, generator=g) for _ in range(2)]
    args += [truncate_kspace(hr, n), n, torch.randint(len(METABOLITES), (batch,), generator=g),
             torch.rand(batch, generator=g) * 0.1]  # fmt: skip
    args = [a.to(device) for a in args]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    with torch.no_grad():
        gen(*args)
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            gen(*args)
        sync()
    return batch * reps / (time.perf_counter() - t0)


def bench(
    config: str = "tiny",
    steps: int = 12,
    device: str = "auto",
    precision: str | None = None,
    overrides: Sequence[str] = (),
    warmup: int = 3,
    infer_batch: int = 64,
    infer_reps: int = 3,
) -> dict:
    """Train preset ``config`` for ``warmup + steps`` optimizer steps through ``train()``; one result row.

    Returns:
        ``task, config, device, precision, batch, steps, it_per_s, samples_per_s, peak_mem_gib,
        maps_per_s`` (inference at ``infer_batch``), ``params_G``, ``n_critic``.
    """
    grid = GRID.get(config, 64)
    with tempfile.TemporaryDirectory(prefix="mrsi-speed-") as tmp:
        data = write_patients(Path(tmp) / "npy", grid)
        out = Path(tmp) / "run"
        ov = [f"data.root={data}", "data.k_folds=1", "data.n_val=0", "data.n_test=1", f"train.out={out}",
              f"train.max_steps={warmup + steps}", "train.epochs=100000", "train.val_every=1000000",
              f"engine.device={device}", "engine.log_every=1", "engine.ckpt_every=1000000",
              "engine.progress=false", "engine.tensorboard=false"]  # fmt: skip
        if precision:
            ov.append(f"engine.precision={precision}")
        cfg = load_config(MRSIConfig, CONFIGS / f"{config}.yaml", [*ov, *overrides])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        train(cfg)
        it_s = _rate(out / "metrics.jsonl", warmup)
        dev = torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
        peak = _peak_gib(dev)
        gen, _ = load_generator(out, str(dev))
        maps_s = _infer(gen, grid, infer_batch, dev, infer_reps)
    batch = cfg.train.batch_size
    return {
        "task": "mrsi", "config": config, "device": str(dev), "precision": cfg.engine.precision, "batch": batch,
        "steps": steps, "it_per_s": it_s, "samples_per_s": it_s * batch, "peak_mem_gib": peak,
        "maps_per_s": maps_s, "infer_batch": infer_batch, "params_G": count_parameters(gen),
        "n_critic": cfg.adversarial.n_critic,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="tiny,demo")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default=None)
    p.add_argument("--infer-batch", type=int, default=64)
    p.add_argument("--json", default="", help="write the rows here")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for every config")
    a = p.parse_args(argv)
    rows = []
    for name in a.configs.split(","):
        rows.append(bench(name, a.steps, a.device, a.precision, a.overrides, a.warmup, a.infer_batch))
    cols = ["config", "device", "precision", "batch", "n_critic", "params_G", "it_per_s", "samples_per_s",
            "maps_per_s", "peak_mem_gib"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("| " + " | ".join("---" for _ in cols) + " |")
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=2))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(f"summary: torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads, {gpu}: "
          + ", ".join(f"{r['config']} {r['it_per_s']:.3g} it/s (batch {r['batch']}), {r['maps_per_s']:.4g} maps/s"
                      for r in rows))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
