"""MaMA pre-training speed through the real training path: samples/s, peak memory, MFU; SLA loss scaling.

Usage::

    python benchmarks/mama_speed.py                              # tiny preset on this machine
    python benchmarks/mama_speed.py --config demo --steps 20 --json mama_speed.json
    python benchmarks/mama_speed.py --config paper --device cuda --precision bf16 --peak-tflops 790 \
        --override model.image.name=random model.text.name=random ...   # see benchmarks/gpu_suite.py

:func:`bench` writes synthetic EMBED-format DICOMs and tables to a temporary folder, prepares them
with the real ``prepare``, and trains ``steps`` + warm-up optimizer steps with
``medlearn.mama.train.train`` (the function the CLI runs: real DataLoader, hooks and loop), all
five loss terms from step 0 (``loss.late_loss=0``). The time per step is read from the run's
``metrics.jsonl`` (logged every step) after the warm-up steps, so start-up, data preparation,
validation and checkpoints are left out.

FLOPs per sample (model FLOPs, no recomputation; multiply-add = 2 FLOPs), per transformer layer of
width d on T tokens: matmuls 2*T*(4d^2 + 2*d*mlp), attention 4*T^2*d.  Training = 3x forward for
trained weights (the image tower: forward, input gradient, weight gradient), 2x forward for the
frozen text base (input gradients only; LoRA weight gradients are negligible).  The image tower
runs on two images per sample (anchor + extra view).  At the paper size: 3.29 TFLOP per sample
(a rough count gives about 3.4).  MFU = samples/s x FLOPs/sample / peak FLOP/s (``--peak-tflops``; default
790 on CUDA, one H200's dense bf16 peak; none on CPU).
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
from typing import Any

import torch

from medlearn.mama.modeling.losses import sla_loss

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEAK_TFLOPS = 790.0  # one H200, bf16 dense (NVIDIA's datasheet)


def layer_flops(tokens: int, d: int, mlp: int) -> float:
    """Forward FLOPs of one transformer layer: matmuls + attention scores/values."""
    return 2 * tokens * (4 * d * d + 2 * d * mlp) + 4 * tokens * tokens * d


def _text_dims(text: Any) -> tuple[int, int, int]:
    """(layers, width, mlp width) of the text tower of a config (random arch or a named model)."""
    if text.name == "random":
        a = dict(text.arch)
        d = int(a.get("n_embd", a.get("hidden_size", 768)))
        layers = int(a.get("n_layer", a.get("num_hidden_layers", 12)))
        return layers, d, int(a.get("n_inner") or a.get("intermediate_size") or 4 * d)
    from transformers import AutoConfig

    from medlearn.mama.modeling.text_tower import _source

    src = _source(text.name)
    c = AutoConfig.from_pretrained(src, local_files_only=Path(src).is_dir())
    d = int(getattr(c, "hidden_size", getattr(c, "n_embd", 768)))
    layers = int(getattr(c, "num_hidden_layers", getattr(c, "n_layer", 12)))
    return layers, d, int(getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d)


def flops_per_sample(cfg: Any) -> dict[str, float]:
    """Training FLOPs per sample of a ``MamaConfig`` (see module docstring)."""
    img = cfg.model.image
    a = {"hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072, "patch_size": 14,
         "num_register_tokens": 4, **dict(img.arch)}  # fmt: skip
    if img.name != "random":
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(img.name)
        a.update({k: getattr(c, k) for k in a if hasattr(c, k)})
    p = img.image_size // a["patch_size"]
    t_img = 1 + a["num_register_tokens"] + p * p
    d = a["hidden_size"]
    img_fwd = (
        a["num_hidden_layers"] * layer_flops(t_img, d, a["intermediate_size"])
        + 2 * p * p * 3 * a["patch_size"] ** 2 * d
    )
    layers, dt, mlp = _text_dims(cfg.model.text)
    txt_fwd = layers * layer_flops(cfg.model.text.max_length, dt, mlp)
    image, text = 2 * 3 * img_fwd, 2 * txt_fwd
    return {"image": image, "text": text, "total": image + text}


def write_data(folder: Path, patients: int, long_side: int, cache_side: int) -> Path:
    """Synthetic EMBED-format DICOMs + tables, prepared by the real ``prepare``."""
    from medlearn.mama.data.prepare import PrepareConfig, prepare_dataset
    from medlearn.mama.data.synth import SynthConfig, generate

    generate(folder / "synth", SynthConfig(n_patients=patients, n_rsna_patients=1, long_side=long_side))
    prepare_dataset(
        folder / "prepared", embed_dir=folder / "synth" / "embed", cfg=PrepareConfig(long_side=cache_side)
    )
    return folder / "prepared"


def _peak_mem_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return kib / 2**20


def bench(
    config: str = "tiny",
    steps: int = 10,
    device: str = "auto",
    precision: str | None = None,
    overrides: Sequence[str] = (),
    warmup: int = 3,
    peak_tflops: float | None = None,
    patients: int = 24,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``warmup + steps`` optimizer steps of preset ``config`` through ``train()``; one result row.

    Args:
        config: MaMA preset name (tiny, demo, small, paper) or YAML path.
        steps: timed optimizer steps (after ``warmup`` steps).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16``, ``fp16`` (None: the preset's).
        overrides: more ``key=value`` config overrides (e.g. random towers of the paper's shape).
        peak_tflops: device peak for ``mfu`` (None: 790 on CUDA, no MFU on CPU).
        patients: synthetic EMBED patients written (images cycle when the run needs more).
        data_dir: an already prepared folder to reuse (default: written to a temporary folder).
    Returns:
        ``task, config, device, precision, batch, steps, it_per_s, samples_per_s, peak_mem_gib,
        tflop_per_sample, mfu`` and the loss of the last step.
    """
    from medlearn.config import load_config, resolve_preset
    from medlearn.engine import read_metrics
    from medlearn.mama.config import MamaConfig
    from medlearn.mama.train import train

    with tempfile.TemporaryDirectory(prefix="mama-speed-") as tmp:
        tmp = Path(tmp)
        ov = [f"train.out={tmp / 'run'}", f"train.max_steps={warmup + steps}", "train.val_every=100000",
              "loss.late_loss=0", "engine.log_every=1", "engine.ckpt_every=100000", "engine.progress=false",
              "engine.tensorboard=false", f"engine.device={device}", "data.val_max=2"]  # fmt: skip
        if precision:
            ov.append(f"engine.precision={precision}")
        cfg = load_config(MamaConfig, resolve_preset("mama", config), [*ov, *overrides])
        side = max(128, min(512, 2 * cfg.model.image.image_size))
        prep = Path(data_dir) if data_dir else write_data(tmp / "data", patients, 2 * side, side)
        cfg.data.prepared_dir = str(prep)
        if cfg.engine.device.startswith("cuda") or (
            cfg.engine.device == "auto" and torch.cuda.is_available()
        ):
            torch.cuda.reset_peak_memory_stats()
        summary = train(cfg)
        recs = [r for r in read_metrics(Path(summary["run"]) / "metrics.jsonl") if "loss" in r]
        times = {int(r["step"]): float(r["time"]) for r in recs}
        t0, t1 = times[warmup], times[warmup + steps]
        it_s = steps / max(t1 - t0, 1e-9)
        dev = "cuda" if torch.cuda.is_available() and cfg.engine.device in ("auto", "cuda") else "cpu"
        batch = cfg.data.batch_size * cfg.engine.grad_accum_steps
        fl = flops_per_sample(cfg)
        peak = peak_tflops if peak_tflops else (DEFAULT_PEAK_TFLOPS if dev == "cuda" else None)
        return {
            "task": "mama",
            "config": config,
            "device": torch.cuda.get_device_name(0)
            if dev == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)",
            "precision": cfg.engine.precision,
            "batch": batch,
            "steps": steps,
            "it_per_s": it_s,
            "samples_per_s": it_s * batch,
            "peak_mem_gib": _peak_mem_gib(dev),
            "tflop_per_sample": fl["total"] / 1e12,
            "mfu": it_s * batch * fl["total"] / (peak * 1e12) if peak else None,
            "loss": recs[-1]["loss"],
        }


def bench_sla(
    device: torch.device, sizes: list[int], patches: int, sentences: int, dim: int, chunk: int
) -> list[dict]:
    """Forward + backward time and memory of the SLA loss versus the (gathered) batch size."""
    rows = []
    for n in sizes:
        for ch in (chunk, n):
            p = torch.randn(n, patches, dim, device=device, requires_grad=True)
            t = torch.randn(n, sentences, dim, device=device, requires_grad=True)
            m = torch.ones(n, sentences, dtype=torch.bool, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            lt, li = sla_loss(torch.nn.functional.normalize(p, dim=-1), torch.nn.functional.normalize(t, dim=-1), m,
                              torch.tensor(14.3, device=device), chunk=ch)  # fmt: skip
            (lt + li).backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                mem = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            else:
                mem = float("nan")
            rows.append({
                "N": n, "chunk": ch, "ms": 1000 * (time.perf_counter() - t0), "peak_MiB": mem,
                "sim_chunk_MiB": min(ch, n) * n * patches * sentences * 4 / 2**20,
            })  # fmt: skip
            if ch == n:
                break
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny", help="preset (tiny, demo, small, paper) or YAML path")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (bf16 dense) for MFU")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (engine.num_threads)")
    ap.add_argument("--override", nargs="*", default=[], help="more key=value config overrides")
    ap.add_argument("--sla", action="store_true", help="also time the SLA loss against the batch size")
    ap.add_argument("--json", default="", help="write the result here")
    a = ap.parse_args(argv)
    ov = [f"engine.num_threads={a.threads}", *a.override]
    row = bench(a.config, a.steps, a.device, a.precision, ov, a.warmup, a.peak_tflops)
    cols = ("config", "device", "precision", "batch", "steps", "it_per_s", "samples_per_s", "peak_mem_gib",
            "tflop_per_sample", "mfu")  # fmt: skip

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("-" if v is None else str(v))

    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    print("| " + " | ".join(fmt(row[c]) for c in cols) + " |")
    if a.sla:
        cuda = torch.cuda.is_available() and a.device in ("auto", "cuda")
        dev = torch.device("cuda" if cuda else "cpu")
        sizes, pp, ss, dd = ([36, 72, 144, 288], 1369, 24, 512) if cuda else ([8, 16, 32, 64], 256, 12, 128)
        print(f"\nSLA loss (forward + backward), P={pp} patches, S={ss} sentences, E={dd}")
        print("| N | chunk | ms | peak MiB | similarity chunk MiB |\n|---|---|---|---|---|")
        for r in bench_sla(dev, sizes, pp, ss, dd, chunk=8):
            print(
                f"| {r['N']} | {r['chunk']} | {r['ms']:.1f} | {r['peak_MiB']:.1f} | {r['sim_chunk_MiB']:.1f} |"
            )
    if a.json:
        Path(a.json).write_text(json.dumps({**row, "machine": platform.platform()}, indent=2))
    mfu = f", MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""
    print(f"summary: mama {a.config} {row['samples_per_s']:.2f} samples/s ({row['it_per_s']:.3f} it/s, batch "
          f"{row['batch']}), peak {row['peak_mem_gib']:.2f} GiB on {row['device']}{mfu}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
