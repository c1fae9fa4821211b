"""MaMA quality benchmark on synthetic EMBED-format data: MaMA vs plain CLIP vs labels only, same budget.

Three image towers of the same architecture get the same compute budget (optimizer steps x images
per step, same optimiser and schedule):

* ``mama``: all MaMA terms (CLIP, multi-view CLIP + NT-Xent, SLA from ``late_loss``);
* ``clip``: the plain-CLIP ablation (``loss.nt_xent/clip_extra/sla = false``: no multi-view, no SLA);
* ``labels``: the image tower trained only with the labels (density + BI-RADS cross-entropy).

Each is evaluated on the EMBED test split (balanced subset): zero-shot (not for ``labels``) and
linear-probe balanced accuracy and AUC for density and BI-RADS, and the pointing game of the SLA
finding-sentence map (``mama`` vs ``clip``; CLIP's local heads never train, so it is the
"no local alignment" reference; a random map gives the chance level).

    python benchmarks/mama_quality.py --out runs/mama-quality                    # CPU default size
    python benchmarks/mama_quality.py --out runs/mama-quality --steps 2000 --patients 600 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlearn.config import load_config
from medlearn.engine import EngineConfig
from medlearn.mama.config import MamaConfig
from medlearn.mama.eval.evaluate import EvalConfig, MamaEncoder, evaluate, load_pretrained, load_split_tables
from medlearn.mama.eval.linear_probe import ProbeConfig

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "mama": [],
    "clip": ["loss.nt_xent=false", "loss.clip_extra=false", "loss.sla=false"],
    "labels": None,
}
TASKS = ("density", "birads")


def make_data(args: argparse.Namespace, out: Path) -> Path:
    from medlearn.mama.data.prepare import PrepareConfig, prepare_dataset
    from medlearn.mama.data.synth import SynthConfig, generate

    synth, prep = out / "synth", out / "prepared"
    if not (synth / "synth_summary.json").is_file():
        generate(
            synth,
            SynthConfig(
                n_patients=args.patients, n_rsna_patients=1, long_side=args.long_side, workers=args.workers
            ),
        )
    if not (prep / "table.csv").is_file():
        prepare_dataset(
            prep,
            embed_dir=synth / "embed",
            cfg=PrepareConfig(long_side=args.cache_side, workers=args.workers),
        )
    return prep


def run_config(args: argparse.Namespace, run: Path, prep: Path, extra: list[str]) -> MamaConfig:
    return load_config(
        MamaConfig,
        ROOT / "configs" / "mama" / "demo.yaml",
        [
            f"train.out={run}", f"data.prepared_dir={prep}", f"train.max_steps={args.steps}", f"loss.late_loss={args.steps // 3}",
            f"optim.warmup_steps={max(1, args.steps // 20)}", f"data.batch_size={args.batch}", "train.val_every=0",
            f"model.image.image_size={args.image_size}", f"engine.device={args.device}", "engine.progress=false",
            f"engine.precision={'bf16' if args.device == 'cuda' else 'fp32'}", "engine.ckpt_every=0",
            f"engine.seed={args.seed}", *extra,
        ],
    )  # fmt: skip


def train_labels_only(cfg: MamaConfig) -> Path:
    """Train the image tower with density + BI-RADS cross-entropy (AdamW, same schedule and budget).

    Writes a checkpoint in the pre-training layout (image tower trained; heads and text untouched),
    so the evaluation code treats it like the other models.
    """
    from torch.utils.data import DataLoader

    from medlearn.engine import (
        Checkpointer,
        ResumableSampler,
        build_scheduler,
        prepare_run_dir,
        seed_everything,
    )
    from medlearn.mama.modeling.model import MamaModel
    from medlearn.mama.train import build_datasets, collate

    run = Path(cfg.train.out)
    ckpt = Checkpointer(run / "checkpoints")
    if ckpt.latest() is not None:
        return ckpt.latest()
    prepare_run_dir(run, cfg, cfg.engine.seed)
    seed_everything(cfg.engine.seed)
    model = MamaModel(cfg.model, cfg.loss)
    dev = torch.device("cuda" if cfg.engine.device == "cuda" else "cpu")
    tower = model.image.to(dev)
    heads = torch.nn.ModuleDict(
        {"density": torch.nn.Linear(tower.width, 4), "birads": torch.nn.Linear(tower.width, 7)}
    ).to(dev)
    train_ds, _ = build_datasets(cfg)
    params = [p for p in [*tower.parameters(), *heads.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas)
    )
    sched = build_scheduler(opt, "cosine", cfg.train.max_steps, cfg.optim.warmup_steps)
    sampler = ResumableSampler(len(train_ds), cfg.engine.seed, True, drop_last=True)
    loader = DataLoader(train_ds, cfg.data.batch_size, sampler=sampler, collate_fn=collate, drop_last=True)
    step, epoch = 0, 0
    ce = torch.nn.CrossEntropyLoss(ignore_index=-1)
    tower.train()
    while step < cfg.train.max_steps:
        sampler.set_epoch(epoch)
        for b in loader:
            f = tower(b["image"].to(dev)).pooled
            loss = sum(ce(heads[t](f), b["labels"][t].to(dev)) for t in TASKS)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step >= cfg.train.max_steps:
                break
        epoch += 1
    return ckpt.save(step, {"image": model.image, "heads": model.heads}, tag="final")


def save_adapter(cfg: MamaConfig, ckpt: Path) -> None:
    """The loader expects the LoRA adapter folder; the labels-only text tower is the untrained one."""
    from medlearn.mama.modeling.model import MamaModel

    if cfg.model.text.lora_r > 0 and not (ckpt / "text_adapter").is_dir():
        MamaModel(cfg.model, cfg.loss).text.lm.save_pretrained(str(ckpt / "text_adapter"))


def head_metrics(res: dict[str, Any]) -> tuple[float, float]:
    m = res["metrics"].get("balanced", res["metrics"]["full"])["image"]
    return m["balanced_accuracy"], m["auc"]


def random_pointing(test: Any, image_root: Path, size: int, grid: int, seed: int = 0) -> float:
    """Pointing game of uniformly random maps (the chance level), averaged over 20 draws."""
    from medlearn.mama.data.prepare import load_image
    from medlearn.mama.data.transforms import foreground_box
    from medlearn.mama.eval.localisation import pointing_game, roi_boxes_to_input

    rows = [
        r
        for r in test.to_dict(orient="records")
        if str(r.get("roi_coords", "") or "").strip() not in ("", "[]")
    ]
    boxes = []
    for r in rows[:200]:
        cached = load_image(Path(image_root) / str(r["image_path"]))
        boxes.append(roi_boxes_to_input(r, cached.shape, foreground_box(cached), size))
    rng = np.random.default_rng(seed)
    scores = [
        pointing_game([rng.random((grid, grid)) for _ in boxes], boxes, (size, size))["pointing_game"]
        for _ in range(20)
    ]
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/mama-quality")
    ap.add_argument("--patients", type=int, default=160)
    ap.add_argument("--long-side", type=int, default=384, help="synthetic DICOM height")
    ap.add_argument("--cache-side", type=int, default=160, help="prepared image long side")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per model (the budget)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--probe-steps", type=int, default=8000, help="linear-probe SGD steps (reference 8000)")
    ap.add_argument(
        "--probe-standardize",
        action="store_true",
        help="also run a probe on z-scored features (columns lps_*)",
    )
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default="mama,clip,labels")
    ap.add_argument("--tag", default="", help="suffix of the eval folder and result files (re-evaluations)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("medlearn.engine", "medlearn.mama.eval.zero_shot", "medlearn.progress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    t0 = time.time()
    prep = make_data(args, out)
    t_data = time.time() - t0
    engine = EngineConfig(device=args.device, tensorboard=False, progress=False, seed=args.seed)
    probes = {"lp": ProbeConfig(steps=args.probe_steps)}  # the reference recipe
    if args.probe_standardize:
        probes["lps"] = ProbeConfig(steps=args.probe_steps, standardize=True)
    rows, chance = [], math.nan
    for name in args.models.split(","):
        run = out / "runs" / name
        cfg = run_config(args, run, prep, MODELS[name] or [])
        t1 = time.time()
        if name == "labels":
            ckpt = train_labels_only(cfg)
            save_adapter(cfg, ckpt)
        else:
            final = run / "checkpoints" / "final"
            if not final.is_dir():
                from medlearn.mama.train import train

                train(cfg)
            ckpt = final
        t_train = time.time() - t1
        model, mcfg = load_pretrained(ckpt)
        row: dict[str, Any] = {"model": name, "train_s": round(t_train, 1)}
        for task in TASKS:
            common = {
                "task": task,
                "checkpoint": str(ckpt),
                "data": str(prep),
                "n_boot": 200,
                "engine": engine,
            }
            if name != "labels":
                zs = evaluate(
                    EvalConfig(
                        mode="zero-shot", out=str(out / f"eval{args.tag}" / name / f"zs_{task}"), **common
                    ),
                    model,
                    mcfg,
                )
                row[f"zs_{task}_bacc"], row[f"zs_{task}_auc"] = head_metrics(zs)
            for key, probe in probes.items():
                lp = evaluate(
                    EvalConfig(
                        mode="linear-probe",
                        out=str(out / f"eval{args.tag}" / name / f"{key}_{task}"),
                        probe=probe,
                        **common,
                    ),
                    model,
                    mcfg,
                )
                row[f"{key}_{task}_bacc"], row[f"{key}_{task}_auc"] = head_metrics(lp)
        if name != "labels":
            from medlearn.mama.data.report_text import ReportBuilder
            from medlearn.mama.eval.localisation import evaluate_pointing

            _, test, root = load_split_tables(EvalConfig(mode="zero-shot", task="birads", data=str(prep)))
            size = int(mcfg.model.image.image_size)
            pg = evaluate_pointing(MamaEncoder(model), test, root, size, ReportBuilder(test.attrs.get("legend")),
                                   max_images=200, heatmap_dir=out / f"eval{args.tag}" / name / "heatmaps")  # fmt: skip
            row["pointing_game"], row["pointing_n"] = pg["pointing_game"], pg["n"]
            if math.isnan(chance):
                patch = int(mcfg.model.image.arch.get("patch_size", 14))
                chance = random_pointing(test, root, size, size // patch)
        rows.append(row)
        print(json.dumps(row), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.device}"
    result = {"rows": rows, "chance_pointing_game": chance, "args": vars(args), "machine": machine, "data_s": round(t_data, 1),
              "total_s": round(time.time() - t0, 1)}  # fmt: skip
    (out / f"quality{args.tag}.json").write_text(json.dumps(result, indent=2))
    cols = [
        "model",
        "zs_density_bacc",
        "zs_density_auc",
        "zs_birads_bacc",
        "zs_birads_auc",
        "lp_density_bacc",
        "lp_density_auc",
        "lp_birads_bacc",
        "lp_birads_auc",
        "pointing_game",
        "train_s",
    ]
    if args.probe_standardize:
        cols[-2:-2] = ["lps_density_bacc", "lps_density_auc", "lps_birads_bacc", "lps_birads_auc"]  # fmt: skip

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    (out / f"quality{args.tag}.md").write_text(table + "\n")
    print(table)
    by = {r["model"]: r for r in rows}
    mama = by.get("mama", {})
    clip = by.get("clip", {})
    print(
        f"summary: density linear probe bacc MaMA {fmt(mama.get('lp_density_bacc'))} (target >= 0.80); zero-shot density "
        f"MaMA {fmt(mama.get('zs_density_bacc'))} vs CLIP {fmt(clip.get('zs_density_bacc'))}; pointing game MaMA "
        f"{fmt(mama.get('pointing_game'))} vs CLIP {fmt(clip.get('pointing_game'))} (chance {fmt(chance)}); "
        f"{args.steps} steps x {args.batch} images per model on {machine}; total {result['total_s']} s"
    )


if __name__ == "__main__":
    main()
