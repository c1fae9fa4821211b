"""MRSI speed benchmark: training iterations/s (generator + n_critic WGAN-GP critic steps), inference
maps/s and peak memory, for the paper/small configurations, per-sample (mixed batch) versus per-batch
(reference) conditioning, on CPU and on a GPU when one is visible.

Usage::

    python benchmarks/mrsi_speed.py                  # paper + small, CPU (+ GPU if present)
    python benchmarks/mrsi_speed.py --quick          # small only, batch 2, 1 timed iteration
    python benchmarks/mrsi_speed.py --configs paper --device cuda --batch 8 --infer-batch 64

One training iteration is the real :func:`medlearn.mrsi.train.train_step` (generator forward,
``adversarial.n_critic`` critic steps with gradient penalty, generator step) on random tensors of
the configuration's shapes.  Per-sample rows draw a different (n, metabolite, lambda) for every
sample; per-batch rows share one condition per batch, as the reference requires.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

from medlearn.config import load_config
from medlearn.engine import build_accelerator, count_parameters
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.train import _make_nets, train_step

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mrsi"


def _batch(
    b: int, grid: int, per_sample: bool, n_choices: list[int], device: torch.device, seed: int = 0
) -> dict:
    g = torch.Generator().manual_seed(seed)
    from medlearn.mrsi.kspace import truncate_kspace

    hr = torch.rand(b, 1, grid, grid, generator=g)
    if per_sample:
        n = torch.tensor(n_choices)[torch.randint(len(n_choices), (b,), generator=g)]
        met = torch.randint(len(METABOLITES), (b,), generator=g)
    else:
        n = torch.full((b,), n_choices[len(n_choices) // 2])
        met = torch.zeros(b, dtype=torch.long)
    return {
        "hr": hr.to(device),
        "lr": truncate_kspace(hr, n).to(device),
        "mask": torch.ones(b, 1, grid, grid, device=device),
        "t1": torch.rand(b, 1, 3 * grid, 3 * grid, 3, generator=g).to(device),
        "flair": torch.rand(b, 1, 3 * grid, 3 * grid, 3, generator=g).to(device),
        "n": n.to(device),
        "met": met.to(device),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux (process peak)


def bench(
    name: str,
    device: str,
    per_sample: bool,
    batch: int,
    infer_batch: int,
    iters: int,
    warmup: int,
    precision: str,
) -> dict:
    """One table row for config ``name``."""
    cfg = load_config(
        MRSIConfig,
        CONFIGS / f"{name}.yaml",
        [f"engine.device={device}", f"model.per_sample={str(per_sample).lower()}", f"engine.precision={precision}",
         "engine.progress=false", "engine.tensorboard=false"],
    )  # fmt: skip
    grid = 64 if name in ("paper", "small") else 16
    acc = build_accelerator(cfg.engine)
    dev = acc.device
    torch.manual_seed(0)
    nets = _make_nets(cfg, (grid, grid), steps_per_epoch=1000)
    nets.gen.to(dev)
    nets.critic.to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    batches = [
        _batch(batch, grid, per_sample, cfg.data.n_choices, dev, seed=i) for i in range(warmup + iters)
    ]
    for i in range(warmup):
        train_step(cfg, nets, batches[i], acc, i)
    _sync(dev)
    t0 = time.perf_counter()
    for i in range(iters):
        train_step(cfg, nets, batches[warmup + i], acc, warmup + i)
    _sync(dev)
    train_s = (time.perf_counter() - t0) / iters
    ib = _batch(infer_batch, grid, per_sample, cfg.data.n_choices, dev, seed=99)
    gen = nets.gen.eval()
    lam = torch.full((infer_batch,), 0.05, device=dev)
    with torch.no_grad(), acc.autocast():
        gen(ib["t1"], ib["flair"], ib["lr"], ib["n"], ib["met"], lam, ib["mask"])
        _sync(dev)
        t0 = time.perf_counter()
        reps = max(1, iters)
        for _ in range(reps):
            gen(ib["t1"], ib["flair"], ib["lr"], ib["n"], ib["met"], lam, ib["mask"])
        _sync(dev)
    infer_s = (time.perf_counter() - t0) / reps
    return {
        "config": name,
        "device": str(dev),
        "conditioning": "per-sample (mixed)" if per_sample else "per-batch (reference)",
        "params_G": count_parameters(nets.gen),
        "batch": batch,
        "train_it_s": 1.0 / train_s,
        "train_samples_s": batch / train_s,
        "infer_batch": infer_batch,
        "infer_maps_s": infer_batch / infer_s,
        "peak_mem_MiB": _peak_mib(dev),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="paper,small")
    p.add_argument("--device", default="all", help="cpu, cuda or all (cpu + cuda when visible)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--infer-batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--quick", action="store_true", help="small only, batch 2, 1 iteration, CPU")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    configs = a.configs.split(",")
    devices = ["cpu", "cuda"] if a.device == "all" else [a.device]
    if a.quick:
        configs, devices, a.batch, a.infer_batch, a.iters, a.warmup = ["small"], ["cpu"], 2, 4, 1, 1
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    rows = []
    for dev in devices:
        for name in configs:
            for per_sample in (True, False):
                rows.append(
                    bench(name, dev, per_sample, a.batch, a.infer_batch, a.iters, a.warmup, a.precision)
                )
                r = rows[-1]
                print(
                    f"  done {r['config']} {r['device']} {r['conditioning']}: {r['train_it_s']:.3g} it/s",
                    flush=True,
                )
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("| " + " | ".join("---" for _ in cols) + " |")
    for r in rows:
        print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    best = max(rows, key=lambda r: r["train_it_s"])
    print(
        f"summary: torch {torch.__version__}, {platform.processor() or platform.machine()}, threads "
        f"{torch.get_num_threads()}, {gpu}, {a.precision}; fastest training: {best['config']} {best['device']} "
        f"{best['conditioning']} {best['train_it_s']:.3g} it/s at batch {best['batch']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
