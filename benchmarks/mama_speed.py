"""MaMA pre-training speed: samples/s, peak memory and model FLOPs utilisation, plus SLA loss scaling.

Usage::

    python benchmarks/mama_speed.py                 # paper + small configs on the GPU (when present)
    python benchmarks/mama_speed.py --quick         # CPU-sized configs, a few steps
    python benchmarks/mama_speed.py --configs paper --steps 20 --peak-tflops 989

One training step = forward of both towers on the anchor and the extra image (all five loss terms,
i.e. after ``late_loss``), the loss, backward, AdamW step.  Random weights (no download needed).

FLOPs per sample (model FLOPs, no recomputation; multiply-add = 2 FLOPs), per transformer layer of
width d on T tokens: matmuls 2*T*12*d^2 (QKV 3d^2, output d^2, MLP 8d^2 for a 4d MLP), attention
4*T^2*d (QK^T and AV).  Training = 3x forward for trained weights (the image tower: forward, input
gradient, weight gradient), 2x forward for the frozen text base (input gradients only; LoRA weight
gradients are negligible).  The image tower runs on two images per sample (anchor + extra view).
At the paper size this gives ~3.3 TFLOP per sample (spec: "about 3.4").
MFU = samples/s x FLOPs/sample / peak FLOP/s (``--peak-tflops``; H100/H200 SXM dense bf16 = 989).
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import time
from dataclasses import dataclass

import torch

from medlearn.mama.config import HeadsConfig, ImageTowerConfig, LossConfig, ModelConfig, TextTowerConfig
from medlearn.mama.modeling.losses import mama_loss, sla_loss
from medlearn.mama.modeling.model import MamaModel


@dataclass
class Setting:
    name: str
    image_arch: dict
    image_size: int
    text_arch: dict
    max_length: int
    batch: int
    heads: HeadsConfig


VIT_B = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
         "patch_size": 14, "num_register_tokens": 4}  # fmt: skip
VIT_S = {**VIT_B, "hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536}
BIOMEDLM = {"model_type": "gpt2", "n_embd": 2560, "n_layer": 32, "n_head": 20, "n_positions": 1024}
GPT2_S = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024}
TINY_VIT = {"hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 384,
            "patch_size": 8, "num_register_tokens": 4}  # fmt: skip
TINY_GPT2 = {"model_type": "gpt2", "n_embd": 128, "n_layer": 4, "n_head": 4, "n_positions": 256}
PAPER_HEADS = HeadsConfig()

SETTINGS = {
    "paper": Setting(
        "paper: ViT-B/14-reg 518 + BioMedLM-shape GPT-2 + LoRA", VIT_B, 518, BIOMEDLM, 144, 36, PAPER_HEADS
    ),
    "small": Setting("small: ViT-S/14-reg 518 + GPT-2 124M + LoRA", VIT_S, 518, GPT2_S, 144, 32, PAPER_HEADS),
    "cpu-small": Setting(
        "cpu-small: ViT-S/14-reg 224 + GPT-2 124M + LoRA", VIT_S, 224, GPT2_S, 144, 8, PAPER_HEADS
    ),
    "cpu-tiny": Setting(
        "cpu-tiny: ViT 96x4 @64 + GPT-2 128x4 + LoRA",
        TINY_VIT,
        64,
        TINY_GPT2,
        96,
        16,
        HeadsConfig(128, 256, 128, 128),
    ),
}


def layer_flops(tokens: int, d: int, mlp: int) -> float:
    """Forward FLOPs of one transformer layer: matmuls + attention scores/values."""
    return 2 * tokens * (4 * d * d + 2 * d * mlp) + 4 * tokens * tokens * d


def flops_per_sample(s: Setting) -> dict[str, float]:
    """Training FLOPs per sample (see module docstring)."""
    a = s.image_arch
    p = s.image_size // a["patch_size"]
    t_img = 1 + a["num_register_tokens"] + p * p
    d = a["hidden_size"]
    img_fwd = (
        a["num_hidden_layers"] * layer_flops(t_img, d, a["intermediate_size"])
        + 2 * p * p * 3 * a["patch_size"] ** 2 * d
    )
    t = s.text_arch
    txt_fwd = t["n_layer"] * layer_flops(s.max_length, t["n_embd"], 4 * t["n_embd"])
    image = 2 * 3 * img_fwd  # anchor + extra view, trained
    text = 2 * txt_fwd  # frozen base: forward + input gradients
    return {"image": image, "text": text, "total": image + text}


def build(s: Setting, checkpointing: bool) -> MamaModel:
    cfg = ModelConfig(
        image=ImageTowerConfig(
            name="random", arch=s.image_arch, image_size=s.image_size, gradient_checkpointing=checkpointing
        ),
        text=TextTowerConfig(
            name="random", arch=s.text_arch, max_length=s.max_length, gradient_checkpointing=checkpointing
        ),
        heads=s.heads,
    )
    return MamaModel(cfg, LossConfig())


def _peak_mem(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (peak RSS, whole process)


def bench_train(s: Setting, device: torch.device, steps: int, warmup: int, checkpointing: bool) -> dict:
    """Samples/s and peak memory of full training steps (all five loss terms)."""
    model = build(s, checkpointing).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    report = "Procedure reported: screening mammogram. Breast composition: heterogeneously dense. " * 12
    enc = model.tokenizer([report] * s.batch)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    imgs = torch.randn(s.batch, 3, s.image_size, s.image_size, device=device)
    extra = torch.randn_like(imgs)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lcfg = LossConfig()

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            out = model(imgs, ids, mask, extra, late=True)
            loss = mama_loss(out, lcfg, late=True)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    return {"samples_per_s": s.batch * steps / dt, "peak_mem_gib": _peak_mem(device), "tokens": ids.shape[1]}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized configs and few steps")
    ap.add_argument("--configs", default="", help="comma-separated subset of: " + ", ".join(SETTINGS))
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak (bf16 dense) for MFU")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or (989.0 if ("H100" in card or "H200" in card) else 0.0)
    else:
        card = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        peak = args.peak_tflops
    default = "cpu-tiny,cpu-small" if args.quick or device.type == "cpu" else "paper,small"
    names = (args.configs or default).split(",")
    steps = args.steps or (3 if args.quick else 20)
    ckpt = not args.no_checkpointing
    print(f"device: {card}; torch {torch.__version__}; precision {'bf16' if device.type == 'cuda' else 'fp32'}; "
          f"checkpointing {'on' if ckpt else 'off'}")  # fmt: skip
    print(
        f"\n{'setting':58s} {'batch':>5s} {'samples/s':>10s} {'peak GiB':>9s} {'TFLOP/sample':>13s} {'MFU':>6s}"
    )
    results = []
    for name in names:
        s = SETTINGS[name]
        fl = flops_per_sample(s)
        r = bench_train(s, device, steps, args.warmup, ckpt)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        mfu = r["samples_per_s"] * fl["total"] / (peak * 1e12) if peak else float("nan")
        results.append((name, r, fl, mfu))
        print(f"{s.name:58s} {s.batch:5d} {r['samples_per_s']:10.2f} {r['peak_mem_gib']:9.2f} "
              f"{fl['total'] / 1e12:13.3f} {mfu:6.1%}")  # fmt: skip
    if device.type == "cuda":
        sizes, pp, ss, dd = [36, 72, 144, 288], 1369, 24, 512
    else:
        sizes, pp, ss, dd = [8, 16, 32, 64], 256, 12, 128
    print(f"\nSLA loss (forward + backward), P={pp} patches, S={ss} sentences, E={dd}")
    print(f"{'N':>5s} {'chunk':>6s} {'ms':>9s} {'peak MiB':>9s} {'sim chunk MiB':>14s}")
    for row in bench_sla(device, sizes, pp, ss, dd, chunk=8):
        print(
            f"{row['N']:5d} {row['chunk']:6d} {row['ms']:9.1f} {row['peak_MiB']:9.1f} {row['sim_chunk_MiB']:14.1f}"
        )
    best = max(results, key=lambda x: x[1]["samples_per_s"])
    print(f"\nsummary: {best[0]} {best[1]['samples_per_s']:.2f} samples/s on {card}"
          + (f", MFU {best[3]:.1%}" if peak else ""))  # fmt: skip


if __name__ == "__main__":
    main()
