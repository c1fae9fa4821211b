"""ITL benchmark: every strategy on the synthetic six-site prostate benchmark, same budget.

Five sites arrive in sequence (RUNMC -> BMC -> I2CVB -> UCL -> BIDMC), HK is held out.  Every
strategy gets the same steps per phase, batch and model.  Printed: ACC, BWT, forgetting, FWT,
held-out Dice/HD95 and wall time; then training/inference slices/s at the paper configuration
(ResNet-18, 384 x 384 input) on CPU and, when present, GPU.

    python benchmarks/itl_benchmark.py --out runs/itl-bench            # CPU default size
    python benchmarks/itl_benchmark.py --out runs/itl-bench --steps 400 --width 32 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from medlearn.config import load_config
from medlearn.itl.config import STRATEGIES, ITLConfig
from medlearn.itl.data import prepare_dataset
from medlearn.itl.model import MultiSiteExpert
from medlearn.itl.synth import SITE_ORDER, SITES, make_benchmark
from medlearn.itl.train import train as train_itl

ABLATIONS = {
    "itl-no-mix": ["itl.feature_mix=false"],
    "itl-no-source": ["itl.source_mode=none"],
    "itl-trainable-source": ["itl.source_mode=trainable"],
}


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def base_overrides(args: argparse.Namespace, root: Path) -> list[str]:
    return [
        f"data.root={root}",
        "data.sites=[RUNMC,BMC,I2CVB,UCL,BIDMC]",
        "data.heldout=[HK]",
        f"data.spacing_mm={args.spacing}",
        f"data.size={args.size}",
        "data.margin=1",
        "model.arch=resnet18",
        f"model.width={args.width}",
        f"model.decoder_channels=[{4 * args.width},{2 * args.width},{args.width},{args.width},{args.width}]",
        f"train.steps_per_phase={args.steps}",
        "train.batch_size=8",
        "train.memory_batch=4",
        f"train.memory_per_site={args.memory}",
        "optim.lr=0.003",
        "train.eval_batch=64",
        f"engine.device={args.device}",
        "engine.progress=false",
        "engine.tensorboard=false",
        "engine.log_every=50",
        "engine.keep_last=1",
    ]


def speed(device: str, size: int = 384, batch: int = 8, iters: int = 3) -> dict[str, float]:
    """Training and inference slices/s of the paper model (ResNet-18, 1 channel, ``size`` x ``size``)."""
    dev = torch.device(device)
    model = MultiSiteExpert("resnet18", 1, 64, [256, 128, 64, 32, 16]).to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
    x = torch.randn(batch, 1, size, size, device=dev)
    y = torch.randint(0, 2, (batch, size, size), device=dev)
    from medlearn.itl.losses import dice_ce

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for i in range(iters + 1):
        if i == 1:
            sync()
            t0 = time.time()
        loss = dice_ce(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync()
    train = batch * iters / (time.time() - t0)
    model.eval()
    with torch.no_grad():
        for i in range(iters + 1):
            if i == 1:
                sync()
                t0 = time.time()
            model(x)
        sync()
    infer = batch * iters / (time.time() - t0)
    return {"train_slices_per_s": train, "infer_slices_per_s": infer}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/itl-bench")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per phase (every strategy)")
    p.add_argument("--width", type=int, default=16, help="ResNet-18 stem width (64 = paper)")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--spacing", type=float, default=2.5)
    p.add_argument("--memory", type=int, default=16, help="exemplar slices per past site")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--ablations", action="store_true", help="also run the ITL ablations")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    root = out / "data"
    if not (root / "HK").is_dir():
        make_benchmark(
            root, seed=args.seed, scale="tiny", cases_per_site={s: SITES[s].cases for s in SITE_ORDER}
        )
    runs = {s: [f"train.strategy={s}"] for s in args.strategies.split(",")}
    if args.ablations:
        runs.update({k: ["train.strategy=itl", *v] for k, v in ABLATIONS.items()})
    rows = []
    data = None
    for name, extra in runs.items():
        cfg = load_config(
            ITLConfig,
            None,
            base_overrides(args, root) + extra + [f"train.out={out / name}", f"engine.seed={args.seed}"],
        )
        if data is None:
            data = prepare_dataset(cfg.data)
        res_file = out / name / "results.json"
        t0 = time.time()
        res = json.loads(res_file.read_text()) if res_file.is_file() else train_itl(cfg, data)
        wall = sum(res["wall_s_per_phase"])
        acc = res["mean_diag"] if name == "individual" else res["ACC"]
        rows.append(
            {
                "strategy": name,
                "ACC": acc,
                "BWT": res["BWT"],
                "forgetting": res["forgetting"],
                "FWT": res["FWT"],
                "heldout_dice": _num(res.get("heldout_dice_final")),
                "heldout_hd95_mm": _num(res.get("heldout_hd95_final")),
                "wall_s": wall,
                "params": res["params"],
            }
        )
        print(f"{name}: done in {time.time() - t0:.0f} s", flush=True)
    speeds = {}
    if not args.skip_speed:
        speeds["cpu"] = speed("cpu")
        if torch.cuda.is_available():
            speeds["cuda"] = speed("cuda")
            speeds["cuda"]["card"] = torch.cuda.get_device_name(0)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    head = (
        f"| {'strategy':22s} | ACC | BWT | forgetting | FWT | held-out Dice | held-out HD95 (mm) | wall (s) |"
    )
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['strategy']:22s} | {r['ACC']:.3f} | {r['BWT']:+.3f} | {r['forgetting']:.3f} | {r['FWT']:+.3f} | "
            f"{r['heldout_dice']:.3f} | {r['heldout_hd95_mm']:.1f} | {r['wall_s']:.0f} |"
        )
    table = "\n".join(lines).replace("nan", "n/a")
    print(table)
    for dev, s in speeds.items():
        print(
            f"paper config (ResNet-18, 384x384, batch 8) on {dev}: train {s['train_slices_per_s']:.1f} slices/s, "
            f"infer {s['infer_slices_per_s']:.1f} slices/s"
        )
    by = {r["strategy"]: r for r in rows}
    if {"itl", "sequential", "joint", "replay"} <= set(by):
        it, sq, jo, rp = by["itl"], by["sequential"], by["joint"], by["replay"]
        targets = {
            "forgetting<=seq/3": it["forgetting"] <= sq["forgetting"] / 3,
            "ACC within 0.03 of joint": it["ACC"] >= jo["ACC"] - 0.03,
            ">= replay on ACC or forgetting": it["ACC"] >= rp["ACC"] or it["forgetting"] <= rp["forgetting"],
        }
        print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()))
    else:
        targets = {}
    (out / "benchmark.json").write_text(
        json.dumps(
            {"rows": rows, "speed": speeds, "machine": machine, "args": vars(args), "targets": targets},
            indent=2,
        )
    )
    (out / "benchmark.md").write_text(table + "\n")
    best = max(rows, key=lambda r: r["ACC"])
    print(
        f"summary: {len(rows)} runs, {args.steps} steps/phase; best ACC {best['ACC']:.3f} ({best['strategy']}); machine: {machine}"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
