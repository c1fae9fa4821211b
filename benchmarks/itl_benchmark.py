"""ITL benchmark: every strategy on the synthetic six-site prostate benchmark, same budget.

Five sites arrive in sequence (RUNMC -> BMC -> I2CVB -> UCL -> BIDMC), HK is held out.  Every
strategy gets the same steps per phase, batch and model.  Printed: ACC, BWT, forgetting, FWT,
held-out Dice/HD95 and wall time; then training/inference slices/s at the paper configuration
Printed per variant (mean ± 95% t-interval over ``--seeds``): ACC, BWT, forgetting, FWT (not for
``individual``, whose rows of R are different models), held-out Dice, HD95 and ASD with the count
of empty held-out predictions (which have no surface distance), and wall time.  Every run is the
real ``medlearn.itl.train.train`` on synthetic NIfTI files on disk; speed is
``benchmarks/itl_speed.py``.

    python benchmarks/itl_benchmark.py --out runs/itl-bench --seeds 0,1,2     # CPU default size
    python benchmarks/itl_benchmark.py --out runs/itl-bench --strategies itl \\
        --variant itl-decoder-teacher:train.strategy=itl,itl.teacher=decoder,itl.teacher_bn=running,itl.mix_bn_stats=true
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
from medlearn.itl.synth import SITE_ORDER, SITES, make_benchmark
from medlearn.itl.train import train as train_itl

ABLATIONS = {
    # the ITL of the first implementation: L_site distils the source decoder on the training
    # encoder's features, frozen decoders in eval mode, mixed passes update BatchNorm statistics
    "itl-decoder-teacher": ["itl.teacher=decoder", "itl.teacher_bn=running", "itl.mix_bn_stats=true"],
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


def _ci95(vals: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over seeds (0 half-width for one seed)."""
    v = np.array([x for x in vals if not np.isnan(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), 0.0
    from scipy import stats

    return float(v.mean()), float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def row_of(name: str, seed: int, res: dict) -> dict:
    """One benchmark row from a run's results (``individual``: mean of R's diagonal, no BWT/FWT)."""
    continual = "BWT" in res  # not defined for individual (each row of R is another model)
    return {
        "variant": name,
        "seed": seed,
        "ACC": res["ACC"] if continual else float("nan"),
        "mean_diag": res["mean_diag"],
        "BWT": res["BWT"] if continual else float("nan"),
        "forgetting": res["forgetting"] if continual else float("nan"),
        "FWT": res["FWT"] if continual else float("nan"),
        "heldout_dice": _num(res.get("heldout_dice_final")),
        "heldout_hd95_mm": _num(res.get("heldout_hd95_final")),
        "heldout_asd_mm": _num(res.get("heldout_asd_final")),
        "heldout_empty": res.get("heldout_empty_final", 0),
        "heldout_cases": res.get("heldout_cases", 0),
        "wall_s": sum(res["wall_s_per_phase"]),
        "params": res["params"],
    }


KEYS = ("ACC", "BWT", "forgetting", "FWT", "heldout_dice", "heldout_hd95_mm", "heldout_asd_mm")


def aggregate(rows: list[dict]) -> list[dict]:
    """Per variant: mean and 95% CI half-width of every metric over seeds, empty predictions summed."""
    out = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]
        agg = {"variant": name, "seeds": [r["seed"] for r in rs]}
        for k in (*KEYS, "mean_diag"):
            agg[k], agg[k + "_ci95"] = _ci95([r[k] for r in rs])
            agg[k + "_n"] = sum(not np.isnan(r[k]) for r in rs)  # seeds with a finite value
        agg["heldout_empty"] = sum(r["heldout_empty"] for r in rs)
        agg["heldout_cases"] = sum(r["heldout_cases"] for r in rs)
        agg["wall_s"] = float(np.mean([r["wall_s"] for r in rs]))
        out.append(agg)
    return out


def _cell(a: dict, k: str, digits: int = 3, sign: bool = False) -> str:
    m, h = a[k], a[k + "_ci95"]
    if np.isnan(m):
        return "n/a"
    f = f"{m:+.{digits}f}" if sign else f"{m:.{digits}f}"
    return f if len(a["seeds"]) == 1 or a[k + "_n"] < 2 else f"{f} ± {h:.{digits}f}"


def table(aggs: list[dict]) -> str:
    lines = [
        "| variant | seeds | ACC | BWT | forgetting | FWT | held-out Dice | held-out HD95 (mm) | held-out ASD (mm) "
        "| empty held-out predictions | wall (s) |",
        "|" + "---|" * 11,
    ]
    for a in aggs:
        acc = _cell(a, "ACC") if not np.isnan(a["ACC"]) else f"({_cell(a, 'mean_diag')} diag)"
        lines.append(
            f"| {a['variant']} | {','.join(map(str, a['seeds']))} | {acc} | {_cell(a, 'BWT', sign=True)} | "
            f"{_cell(a, 'forgetting')} | {_cell(a, 'FWT', sign=True)} | {_cell(a, 'heldout_dice')} | "
            f"{_cell(a, 'heldout_hd95_mm', 1)} | {_cell(a, 'heldout_asd_mm', 1)} | "
            f"{a['heldout_empty']}/{a['heldout_cases']} | {a['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/itl-bench")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per phase (every strategy)")
    p.add_argument("--width", type=int, default=16, help="ResNet-18 stem width (64 = paper)")
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--spacing", type=float, default=2.5)
    p.add_argument("--memory", type=int, default=16, help="exemplar slices per past site")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list ('' for none)")
    p.add_argument("--ablations", action="store_true", help="also run the ITL ablations")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:key=v,key=v",
        help="an extra named run with overrides (repeatable), e.g. ewc-1e4:train.strategy=ewc,train.ewc_lambda=1e4",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--seeds", default="0", help="comma list: each seed draws new synthetic cases, split and training"
    )
    p.add_argument(
        "--json", default="", help="also write the rows and aggregates here (default: OUT/benchmark.json)"
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    runs = {s: [f"train.strategy={s}"] for s in args.strategies.split(",") if s}
    if args.ablations:
        runs.update({k: ["train.strategy=itl", *v] for k, v in ABLATIONS.items()})
    for v in args.variant:
        name, _, keys = v.partition(":")
        runs[name] = [k for k in keys.split(",") if k]
    rows = []
    for seed in [int(x) for x in args.seeds.split(",")]:
        root = out / f"data_seed{seed}" if seed else out / "data"
        if not (root / "HK").is_dir():
            make_benchmark(
                root, seed=seed, scale="tiny", cases_per_site={s: SITES[s].cases for s in SITE_ORDER}
            )
        data = None
        for name, extra in runs.items():
            run_out = out / (name if seed == 0 else f"{name}_seed{seed}")
            cfg = load_config(
                ITLConfig,
                None,
                base_overrides(args, root) + extra + [f"train.out={run_out}", f"engine.seed={seed}"],
            )
            if data is None:
                data = prepare_dataset(cfg.data)
            res_file = run_out / "results.json"
            t0 = time.time()
            res = json.loads(res_file.read_text()) if res_file.is_file() else train_itl(cfg, data)
            res = {k: (float("nan") if v is None else v) for k, v in res.items()}
            rows.append(row_of(name, seed, res))
            print(f"{name} seed {seed}: done in {time.time() - t0:.0f} s", flush=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    aggs = aggregate(rows)
    text = table(aggs).replace("nan", "n/a")
    print(text)
    by = {a["variant"]: a for a in aggs}
    targets = {}
    if {"itl", "sequential", "joint", "replay"} <= set(by):
        it, sq, jo, rp = by["itl"], by["sequential"], by["joint"], by["replay"]
        targets = {
            "forgetting<=seq/3": it["forgetting"] <= sq["forgetting"] / 3,
            "ACC within 0.03 of joint": it["ACC"] >= jo["ACC"] - 0.03,
            ">= replay on ACC or forgetting": it["ACC"] >= rp["ACC"] or it["forgetting"] <= rp["forgetting"],
        }
        print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()))
    payload = {"rows": rows, "aggregates": aggs, "machine": machine, "args": vars(args), "targets": targets}
    (out / "benchmark.json").write_text(json.dumps(payload, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(payload, indent=2))
    (out / "benchmark.md").write_text(text + "\n")
    best = max((a for a in aggs if not np.isnan(a["ACC"])), key=lambda a: a["ACC"], default=None)
    print(
        f"summary: {len(rows)} runs, {args.steps} steps/phase"
        + (f"; best ACC {best['ACC']:.3f} ({best['variant']})" if best else "")
        + f"; machine: {machine}"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
