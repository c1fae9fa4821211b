"""MaMA quality benchmark on synthetic EMBED-format data: MaMA vs its plain-CLIP ablation, same budget, seeds.

Both models train through the real ``medlearn.mama.train.train`` (the CLI's path: the real
DataLoader over DICOM-derived PNGs that ``prepare`` wrote to disk) with the same compute budget
(optimizer steps x images per step, same optimiser and schedule):

* ``mama``: all MaMA terms (CLIP, multi-view CLIP + NT-Xent, SLA from ``late_loss``);
* ``clip``: the plain-CLIP ablation (``loss.nt_xent/clip_extra/sla = false``): its local heads
  never train, so its heatmaps are fixed random projections of the patch tokens.

Each is evaluated on the EMBED test split (balanced subset): zero-shot and linear-probe balanced
accuracy and AUC (``--tasks``), and the pointing game of the SLA finding-sentence heatmap
(``pointing_game``: sentence features normalised as SLA trains them; ``pointing_game_running``:
the sentence BatchNorms' running statistics, the heatmaps before issue 13;
``pointing_game_coldest``: the same game with each map's coldest cell). Chance is exact: the
mean over test images of the fraction of grid cells that hit a box. Two diagnostics separate
*whether* from *where* (:mod:`medlearn.mama.eval.sla_diagnostics`): ``sla_detection_auc``, how well
the finding sentence's best-patch score ranks its own image above the images without findings
(the finding or the rest of the report may do it; ``sla_detection_auc_density_matched``: only
against images of the same density); ``removal_drop_positive``, the share of images
whose finding-sentence score drops when the finding is removed from the image (0.5: the
sentence ignores the finding); ``locality_share_outside``, the share of the finding's effect on
the patch features that lands outside its own cells (``locality_share_if_spread``: the value for
an effect spread evenly). A supervised linear probe asks whether the finding's place is in the
patch features at all (:func:`~medlearn.mama.eval.sla_diagnostics.patch_probe_pointing`, trained
on the training split's ROI cells): ``probe_pointing_tower`` (the image tower's patch tokens),
``probe_pointing_sla`` (the SLA-projected patch features), ``probe_pointing_pixels`` (raw pixels).
How far the global alignment got: ``train_clip_end`` (each row: the mean of the last 10 logged
CLIP losses of its training) against ``clip_loss_chance`` (2 ln B), ``clip_loss_floor`` and
``clip_loss_floor_density_only`` (summary: the loss of an ideal model that reads from the image
everything the reports state about it, or only the density;
:func:`~medlearn.mama.eval.alignment_floor.contrastive_floor`).

``--image-pretrain-steps N`` first gives the image tower learnt, local patch features by masked-image
pre-training on the training split (:func:`medlearn.mama.image_pretrain.pretrain_image`, the path of
``medlearn mama pretrain-image``; reports unused) and starts both models from it, as the paper starts
from a pre-trained DINOv2.

The synthetic findings are rendered with ``--conspicuity`` (mass contrast and calcification speck
size x that factor; 1 = the realistic values) so that a reader can point at them at 64 px.

With several ``--seeds`` (training seeds; the data is the same), the summary gives per model the
mean over seeds and a 95% bootstrap CI over test images (resampled jointly for all seeds and both
models), and the paired differences MaMA - CLIP and MaMA - chance with their CIs.

    python benchmarks/mama_quality.py --out runs/mama-quality                        # CPU default
    python benchmarks/mama_quality.py --out runs/mq --seeds 0 --conspicuity 1 --tasks density,birads
    python benchmarks/mama_quality.py --out runs/mq --image-pretrain-steps 3000            # pre-trained tower
    python benchmarks/mama_quality.py --out runs/mq --steps 2000 --patients 600 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
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
MODELS = {"mama": [], "clip": ["loss.nt_xent=false", "loss.clip_extra=false", "loss.sla=false"]}


def make_data(args: argparse.Namespace, out: Path) -> Path:
    """Synthetic EMBED DICOMs + tables, prepared by the real ``prepare`` (cached under ``out``)."""
    from medlearn.mama.data.prepare import PrepareConfig, prepare_dataset
    from medlearn.mama.data.synth import SynthConfig, generate

    density = getattr(args, "density", None)
    base = out / (f"data_p{args.patients}_c{args.conspicuity:g}" + (f"_d{density}" if density else ""))
    synth, prep = base / "synth", base / "prepared"
    if not (synth / "synth_summary.json").is_file():
        cfg = SynthConfig(n_patients=args.patients, n_rsna_patients=1, long_side=args.long_side,
                          workers=args.workers, conspicuity=args.conspicuity, density=density)  # fmt: skip
        generate(synth, cfg)
    if not (prep / "table.csv").is_file():
        prepare_dataset(
            prep,
            embed_dir=synth / "embed",
            cfg=PrepareConfig(long_side=args.cache_side, workers=args.workers),
        )
    return prep


def pretrained_tower(args: argparse.Namespace, out: Path, prep: Path) -> Path | None:
    """``--image-pretrain-steps`` > 0: the image tower after masked-image pre-training on the training
    split (``medlearn mama pretrain-image``'s path, seed 0, run under ``out``); else None."""
    n = args.image_pretrain_steps
    if n <= 0:
        return None
    from medlearn.mama.image_pretrain import pretrain_image

    run = out / f"image_pretrain_{n}"
    # always through pretrain_image: a finished run only re-exports (seconds), and the run guard
    # refuses a cached run whose settings differ instead of silently reusing its tower
    cfg = load_config(
        MamaConfig,
        ROOT / "configs" / "mama" / "demo.yaml",
        [
            f"train.out={run}", f"data.prepared_dir={prep}", f"train.max_steps={n}", f"train.val_every={max(1, n // 6)}",
            f"optim.warmup_steps={max(1, n // 30)}", f"data.batch_size={args.image_pretrain_batch}",
            f"model.image.image_size={args.image_size}", f"engine.device={args.device}", "engine.progress=false",
            f"engine.ckpt_every={max(1, n // 6)}", "engine.seed=0", f"engine.num_threads={args.threads}",
            *args.image_pretrain_override,
        ],
    )  # fmt: skip
    summary = pretrain_image(cfg)
    if not summary["image_tower"]:
        raise SystemExit(f"image-tower pre-training stopped at step {summary['step']}; rerun to resume it")
    return Path(summary["image_tower"])


def late_loss(args: argparse.Namespace) -> int:
    """The step at which the late terms (SLA, NT-Xent, extra-view CLIP) switch on."""
    return args.steps // 3 if args.late_loss is None else args.late_loss


def run_config(args: argparse.Namespace, run: Path, prep: Path, seed: int, extra: list[str]) -> MamaConfig:
    return load_config(
        MamaConfig,
        ROOT / "configs" / "mama" / "demo.yaml",
        [
            f"train.out={run}", f"data.prepared_dir={prep}", f"train.max_steps={args.steps}", f"loss.late_loss={late_loss(args)}",
            f"optim.warmup_steps={max(1, args.steps // 20)}", f"data.batch_size={args.batch}", "train.val_every=0",
            f"model.image.image_size={args.image_size}", f"engine.device={args.device}", "engine.progress=false",
            f"engine.precision={'bf16' if args.device == 'cuda' else 'fp32'}", "engine.ckpt_every=0",
            f"engine.seed={seed}", f"engine.num_threads={args.threads}", *args.override, *extra,
        ],
    )  # fmt: skip


def head_metrics(res: dict[str, Any]) -> dict[str, Any]:
    m = res["metrics"].get("balanced", res["metrics"]["full"])["image"]
    return {"bacc": m["balanced_accuracy"], "auc": m["auc"], "bacc_ci95": m.get("balanced_accuracy_ci95")}


def evaluate_model(args: argparse.Namespace, ckpt: Path, prep: Path, out: Path, seed: int) -> dict[str, Any]:
    """Zero-shot and linear probe per task, and the pointing game (both sentence normalisations)."""
    from medlearn.mama.data.report_text import ReportBuilder
    from medlearn.mama.eval.localisation import (
        evaluate_pointing,
        location_prior,
        pointing_hit,
        table_roi_boxes,
    )
    from medlearn.mama.eval.sla_diagnostics import (
        finding_detection_auc,
        finding_removal,
        patch_probe_pointing,
        pixel_patches,
    )

    model, mcfg = load_pretrained(ckpt)
    engine = EngineConfig(
        device=args.device, tensorboard=False, progress=False, seed=seed, num_threads=args.threads
    )
    row: dict[str, Any] = {}
    for task in args.tasks.split(","):
        common = {"task": task, "checkpoint": str(ckpt), "data": str(prep), "n_boot": 200, "engine": engine}
        if not args.no_zero_shot:
            zs = head_metrics(
                evaluate(EvalConfig(mode="zero-shot", out=str(out / f"zs_{task}"), **common), model, mcfg)
            )
            row[f"zs_{task}_bacc"], row[f"zs_{task}_auc"] = zs["bacc"], zs["auc"]
        probe = ProbeConfig(steps=args.probe_steps)  # the reference recipe
        lp = evaluate(
            EvalConfig(mode="linear-probe", out=str(out / f"lp_{task}"), probe=probe, **common), model, mcfg
        )
        m = head_metrics(lp)
        row[f"lp_{task}_bacc"], row[f"lp_{task}_auc"], row[f"lp_{task}_bacc_ci95"] = (
            m["bacc"],
            m["auc"],
            m["bacc_ci95"],
        )
    train_rows, test, root = load_split_tables(EvalConfig(mode="zero-shot", task="birads", data=str(prep)))
    size = int(mcfg.model.image.image_size)
    enc, builder = MamaEncoder(model), ReportBuilder(test.attrs.get("legend"))
    pg = evaluate_pointing(
        enc, test, root, size, builder, max_images=args.max_pointing, heatmap_dir=out / "heatmaps"
    )
    old = evaluate_pointing(
        enc, test, root, size, builder, max_images=args.max_pointing, sentence_stats="running"
    )
    prior = location_prior(table_roi_boxes(train_rows, root, size), pg["grid"], (size, size))
    test_boxes = [b for b in table_roi_boxes(test, root, size)[: args.max_pointing] if len(b)]
    row["prior_hits"] = [bool(pointing_hit(prior, b, (size, size))) for b in test_boxes]
    row["prior_pointing_game"] = float(np.mean(row["prior_hits"])) if test_boxes else float("nan")
    det = finding_detection_auc(enc, test, root, size, builder, max_images=args.max_pointing)
    # the same against images of the image's own density only: then just the finding separates them
    det_m = finding_detection_auc(
        enc, test, root, size, builder, max_images=args.max_pointing, match=("density",)
    )
    rem = finding_removal(enc, test, root, size, builder, max_images=args.max_pointing)
    # is the finding's place linearly readable from the patch features at all? (a supervised probe)
    probes = {
        "tower": enc.patch_tokens,
        "sla": enc.patch_features,
        "pixels": lambda im: pixel_patches(im, pg["grid"][0]),
    }
    played = patch_probe_pointing(probes, train_rows, test, root, size, max_test=args.max_pointing)
    for name, pr in played.items():
        row[f"probe_pointing_{name}"], row[f"probe_hits_{name}"] = pr["probe_pointing_game"], pr["hits"]
        row[f"probe_patch_auc_{name}"] = pr["patch_auc"]
    row.update(
        sla_detection_auc=det["finding_detection_auc"],
        detection_aucs=det["aucs"],
        sla_detection_auc_density_matched=det_m["finding_detection_auc"],
        removal_drop_positive=rem["drop_positive"],
        locality_share_outside=rem["share_outside"],
        locality_share_if_spread=rem["share_outside_if_spread"],
    )
    row.update(pointing_game=pg["pointing_game"], pointing_n=pg["n"], pointing_game_running=old["pointing_game"],
               pointing_game_coldest=pg["pointing_game_coldest"],
               hits=pg["hits"], chance_per_image=pg["chance_per_image"])  # fmt: skip
    return row


def training_losses(run: Path, last: int = 10) -> dict[str, float]:
    """``train_<term>_end``: the mean of the last ``last`` logged values of each loss term of a run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = {}
    for term in ("clip", "clip_extra", "nt_xent", "sla_t2i", "sla_i2t"):
        values = [r[term] for r in rows if term in r][-last:]
        if values:
            out[f"train_{term}_end"] = float(np.mean(values))
    return out


def clip_loss_floors(prep: Path, batch: int, mask_prob: float) -> dict[str, float]:
    """The global CLIP loss of ideal models on the training pairs (:mod:`~medlearn.mama.eval.alignment_floor`)."""
    from medlearn.mama.data.dataset import load_prepared
    from medlearn.mama.eval.alignment_floor import contrastive_floor

    table, _ = load_prepared(prep)
    table = table[(table["split"].astype(str) == "train") & (table["source"].astype(str) == "embed")]
    return {
        "clip_loss_chance": float(2 * np.log(batch)),
        "clip_loss_floor_density_only": contrastive_floor(table, batch, mask_prob, ["tissueden"], []),
        "clip_loss_floor": contrastive_floor(table, batch, mask_prob),
    }


def bootstrap(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, list[float]]:
    """Mean over the last axis (images) averaged over seeds, and its 95% percentile CI (images resampled)."""
    rng = np.random.default_rng(seed)
    n = values.shape[-1]
    idx = rng.integers(0, n, (n_boot, n))
    boots = (
        values[..., idx].mean(axis=-1).reshape(-1, n_boot) if values.ndim > 1 else values[idx].mean(-1)[None]
    )
    boots = boots.mean(axis=0)
    return float(values.mean()), [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def summarise(rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Per-model means over seeds with 95% CIs, and paired MaMA - CLIP / MaMA - chance differences."""
    by = {(r["model"], r["seed"]): r for r in rows}
    models = sorted({r["model"] for r in rows})
    hits = {m: np.array([by[(m, s)]["hits"] for s in seeds], float) for m in models}
    chance = np.array(rows[0]["chance_per_image"], float)
    out: dict[str, Any] = {"chance": bootstrap(chance)[0], "seeds": seeds, "n_images": int(chance.size)}
    for m in models:
        mean, ci = bootstrap(hits[m])
        baccs = [by[(m, s)]["lp_density_bacc"] for s in seeds if "lp_density_bacc" in by[(m, s)]]
        out[m] = {"pointing_game": mean, "pointing_game_ci95": ci,
                  "pointing_game_per_seed": [float(h.mean()) for h in hits[m]],
                  "pointing_game_running_per_seed": [by[(m, s)]["pointing_game_running"] for s in seeds],
                  "lp_density_bacc": float(np.mean(baccs)) if baccs else None,
                  "lp_density_bacc_per_seed": baccs,
                  "lp_density_bacc_ci95_per_seed": [by[(m, s)].get("lp_density_bacc_ci95") for s in seeds]}  # fmt: skip
        mean, ci = bootstrap(hits[m] - chance[None])
        out[m]["minus_chance"], out[m]["minus_chance_ci95"] = mean, ci
        out[m]["train_clip_end_per_seed"] = [by[(m, s)].get("train_clip_end") for s in seeds]
    if all("prior_hits" in r for r in rows):
        prior = np.array(rows[0]["prior_hits"], float)
        out["prior_pointing_game"] = float(prior.mean())
        for m in models:
            mean, ci = bootstrap(hits[m] - prior[None])
            out[m]["minus_prior"], out[m]["minus_prior_ci95"] = mean, ci
    if "mama" in hits and "clip" in hits:
        mean, ci = bootstrap(hits["mama"] - hits["clip"])
        out["mama_minus_clip"], out["mama_minus_clip_ci95"] = mean, ci
    det = {m: np.array([by[(m, s)]["detection_aucs"] for s in seeds], float) for m in models
           if all("detection_aucs" in by[(m, s)] for s in seeds)}  # fmt: skip
    for m, v in det.items():
        mean, ci = bootstrap(v)
        out[m]["sla_detection_auc"], out[m]["sla_detection_auc_ci95"] = mean, ci
        out[m]["sla_detection_auc_per_seed"] = [float(x.mean()) for x in v]
        out[m]["sla_detection_auc_density_matched_per_seed"] = [
            by[(m, s)].get("sla_detection_auc_density_matched") for s in seeds
        ]
        out[m]["locality_share_outside_per_seed"] = [by[(m, s)]["locality_share_outside"] for s in seeds]
        out[m]["removal_drop_positive_per_seed"] = [by[(m, s)]["removal_drop_positive"] for s in seeds]
    for m in models:
        for name in ("tower", "sla", "pixels"):
            key = f"probe_hits_{name}"
            if all(key in by[(m, s)] for s in seeds):
                mean, ci = bootstrap(np.array([by[(m, s)][key] for s in seeds], float))
                out[m][f"probe_pointing_{name}"], out[m][f"probe_pointing_{name}_ci95"] = mean, ci
    if "mama" in det and "clip" in det:
        mean, ci = bootstrap(det["mama"] - det["clip"])
        out["detection_mama_minus_clip"], out["detection_mama_minus_clip_ci95"] = mean, ci
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/mama-quality")
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--long-side", type=int, default=384, help="synthetic DICOM height")
    ap.add_argument("--cache-side", type=int, default=160, help="prepared image long side")
    ap.add_argument(
        "--conspicuity", type=float, default=5.0, help="finding visibility factor of the synthetic data"
    )
    ap.add_argument(
        "--density", type=int, default=None, choices=(1, 2, 3, 4),
        help="give every synthetic patient this density (then density cannot tell reports apart; use --tasks birads)",
    )  # fmt: skip
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per model (the budget)")
    ap.add_argument(
        "--late-loss", type=int, default=None, help="step at which the late terms start (default steps // 3)"
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--probe-steps", type=int, default=8000, help="linear-probe SGD steps (reference 8000)")
    ap.add_argument("--tasks", default="density", help="comma list of density, birads")
    ap.add_argument("--no-zero-shot", action="store_true")
    ap.add_argument("--max-pointing", type=int, default=200, help="test images with ROIs scored at most")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=1, help="synth/prepare worker processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (engine.num_threads)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (the data stays the same)")
    ap.add_argument("--models", default="mama,clip")
    ap.add_argument("--override", nargs="*", default=[], help="extra config overrides for both models")
    ap.add_argument(
        "--image-pretrain-steps", type=int, default=0,
        help="masked-image pre-training steps of the image tower before both models (0 = random tower)",
    )  # fmt: skip
    ap.add_argument("--image-pretrain-batch", type=int, default=64)
    ap.add_argument("--image-pretrain-override", nargs="*", default=[], help="config overrides of that pre-training")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("medlearn.engine", "medlearn.mama.eval.zero_shot", "medlearn.progress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out)
    t0 = time.time()
    prep = make_data(args, out)
    t_data = time.time() - t0
    t0_tower = time.time()
    tower = pretrained_tower(args, out, prep)
    t_tower = time.time() - t0_tower
    tower_override = [f"model.image.name={tower}"] if tower else []
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict[str, Any]] = []
    done = out / "rows.jsonl"
    if done.is_file():  # resume: rows already evaluated
        rows = [json.loads(line) for line in done.read_text().splitlines() if line.strip()]
        for r in rows:  # rows written before the loss columns existed
            metrics = out / "runs" / f"{r['model']}_s{r['seed']}" / "metrics.jsonl"
            if "train_clip_end" not in r and metrics.is_file():
                r.update(training_losses(metrics.parent))
    for seed in seeds:
        for name in args.models.split(","):
            if any(r["model"] == name and r["seed"] == seed for r in rows):
                continue
            from medlearn.mama.train import train

            run = out / "runs" / f"{name}_s{seed}"
            cfg = run_config(args, run, prep, seed, [*MODELS[name], *tower_override])
            t1 = time.time()
            if not (run / "checkpoints" / "final").is_dir():
                train(cfg)
            row: dict[str, Any] = {"model": name, "seed": seed, "train_s": round(time.time() - t1, 1)}
            row.update(training_losses(run))
            row.update(
                evaluate_model(
                    args, run / "checkpoints" / "final", prep, out / "eval" / f"{name}_s{seed}", seed
                )
            )
            row["chance_pointing_game"] = float(np.mean(row["chance_per_image"]))
            rows.append(row)
            with done.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                json.dumps(
                    {
                        k: v
                        for k, v in row.items()
                        if k not in ("hits", "chance_per_image", "detection_aucs", "prior_hits")
                        and not k.startswith("probe_hits")
                    }
                ),
                flush=True,
            )
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.device}"
    summary = summarise(rows, seeds)
    mask_prob = run_config(args, out / "runs", prep, seeds[0], []).data.mask_prob  # with --override
    summary.update(clip_loss_floors(prep, args.batch, mask_prob))
    result = {"rows": rows, "summary": summary, "chance_pointing_game": summary["chance"], "args": vars(args),
              "machine": machine, "data_s": round(t_data, 1), "image_pretrain_s": round(t_tower, 1), "total_s": round(time.time() - t0, 1)}  # fmt: skip
    (out / "quality.json").write_text(json.dumps(result, indent=2))

    def fmt(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else str(v))

    cols = ["model", "seed", "lp_density_bacc", "lp_density_bacc_ci95", "zs_density_bacc", "pointing_game",
            "pointing_game_running", "pointing_game_coldest", "chance_pointing_game", "prior_pointing_game", "sla_detection_auc",
            "sla_detection_auc_density_matched",
            "removal_drop_positive", "locality_share_outside", "locality_share_if_spread", "probe_pointing_tower",
            "probe_pointing_sla", "probe_pointing_pixels", "train_clip_end", "train_s"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    (out / "quality.md").write_text(table + "\n")
    print(table)
    parts = [
        f"{m}: pointing {fmt(summary[m]['pointing_game'])} {fmt(summary[m]['pointing_game_ci95'])}, "
        f"density probe bacc {fmt(summary[m]['lp_density_bacc'])}, "
        f"SLA detection AUC {fmt(summary[m].get('sla_detection_auc'))} {fmt(summary[m].get('sla_detection_auc_ci95'))}, "
        f"CLIP loss at the end {fmt(summary[m]['train_clip_end_per_seed'])}"
        for m in args.models.split(",")
    ]
    parts.append(
        f"CLIP loss chance {fmt(summary['clip_loss_chance'])}, floor {fmt(summary['clip_loss_floor'])} "
        f"(reading density only {fmt(summary['clip_loss_floor_density_only'])})"
    )
    diff = (
        f"; MaMA - CLIP pointing {fmt(summary.get('mama_minus_clip'))} {fmt(summary.get('mama_minus_clip_ci95'))}, "
        f"detection AUC {fmt(summary.get('detection_mama_minus_clip'))} {fmt(summary.get('detection_mama_minus_clip_ci95'))}"
    )
    print(
        f"summary: {'; '.join(parts)}; chance {fmt(summary['chance'])}, location prior {fmt(summary.get('prior_pointing_game'))}{diff if 'mama_minus_clip' in summary else ''} "
        f"({len(seeds)} seeds, {args.steps} steps x {args.batch} images, {summary['n_images']} test images with ROIs; "
        f"{machine}; total {result['total_s']} s)"
    )


if __name__ == "__main__":
    main()
