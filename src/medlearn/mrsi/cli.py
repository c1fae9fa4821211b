"""``medlearn mrsi <verb>``: synth, prepare, train, evaluate, predict, demo (task protocol of medlearn.tasks)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from medlearn.cli_common import add_config_args, add_demo_verb
from medlearn.errors import ConfigError, DataError, MedlearnError

HELP = "multi-scale MRSI super-resolution with metabolite and sharpness conditioning (Dong et al. 2022)"

log = logging.getLogger(__name__)


def _configs_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "configs" / "mrsi"


def _load(args: argparse.Namespace, default: str | Path | None = None):
    from medlearn.config import load_config
    from medlearn.mrsi.config import MRSIConfig

    return load_config(MRSIConfig, args.config or default, args.overrides)


# ------------------------------------------------------------------------------------------ verbs
def _cmd_synth(args: argparse.Namespace) -> int:
    from medlearn.mrsi.synth import synthesize

    layouts = tuple(args.layouts.split(","))
    out = synthesize(args.out, n_patients=args.patients, seed=args.seed, hr_size=args.hr_size,
                     n_slices=args.slices, workers=args.workers, layouts=layouts)  # fmt: skip
    print(f"synthetic MRSI benchmark written to {out} (layouts: {', '.join(layouts)})")
    return 0


def check_dataset(cfg: Any) -> dict[str, Any]:
    """Validate every patient of ``cfg.data`` (files, shapes, NaNs, geometry) and the split.

    Returns ``{"patients": [...], "errors": {pid: message}, "slices": int, "split": {...}}``;
    never raises for a single bad patient (all problems are collected).
    """
    from medlearn.mrsi.data import list_patients, load_patient
    from medlearn.mrsi.train import load_split

    d = cfg.data
    ids = list_patients(d.root, d.layout)
    errors: dict[str, str] = {}
    slices = 0
    grids = set()
    for pid in ids:
        try:
            p = load_patient(d.root, pid, d.layout, d.metabolites, d.conc_kind)
            slices += p.n_slices
            grids.add(p.grid)
        except DataError as exc:
            errors[pid] = str(exc)
    if len(grids) > 1:
        errors["<grid>"] = f"patients have different map grids: {sorted(grids)}"
    split: dict[str, Any] = {}
    try:
        split = load_split(cfg)
    except MedlearnError as exc:
        errors["<split>"] = str(exc)
    return {"patients": ids, "errors": errors, "slices": slices, "grids": sorted(grids), "split": split}


def _cmd_prepare(args: argparse.Namespace) -> int:
    cfg = _load(args)
    res = check_dataset(cfg)
    print(
        f"{cfg.data.root}: {len(res['patients'])} patients, {res['slices']} slices, map grid(s) {res['grids']}"
    )
    if res["split"]:
        print("fold {}: {}".format(cfg.data.fold, {k: len(v) for k, v in res["split"].items()}))
    for pid, msg in res["errors"].items():
        print(f"  ERROR {pid}: {msg}")
    if res["errors"]:
        print(f"dataset check FAILED: {len(res['errors'])} problem(s)")
        return 2
    if args.write_splits:
        from medlearn.mrsi.splits import kfold_patient_splits, write_splits

        d = cfg.data
        folds = kfold_patient_splits(res["patients"], d.k_folds, d.n_val, d.n_test, d.split_seed)
        print(f"splits written to {write_splits(args.write_splits, folds)}")
    print("dataset check passed")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from medlearn.mrsi.train import fit

    summary = fit(_load(args))
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medlearn.mrsi.evaluate import evaluate, find_run_config

    cfg = _load(args, default=find_run_config(args.checkpoint))
    out = args.out or str(Path(args.checkpoint) / "eval")
    summary = evaluate(args.checkpoint, out, cfg, split=args.split, device=args.device)
    print((Path(out) / "summary.md").read_text())
    print(f"parameters: {summary['parameters']:,}; tables and figures in {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from medlearn.mrsi.evaluate import load_generator
    from medlearn.mrsi.predict import predict_file, predict_folder

    gen, _ = load_generator(args.checkpoint, args.device)
    if Path(args.map).is_dir():
        outs = predict_folder(
            gen, args.map, args.t1, args.flair, args.out, args.lowres_matrix, args.sharpness, args.mask
        )
        print(f"wrote {len(outs)} maps to {args.out}")
    else:
        if not args.metabolite:
            raise ConfigError("--metabolite is required when --map is a file (e.g. --metabolite NAA)")
        out = predict_file(gen, args.map, args.t1, args.flair, args.out, args.metabolite, args.lowres_matrix,
                           args.sharpness, args.mask)  # fmt: skip
        print(f"wrote {out}")
    return 0


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """Add the mrsi verbs to ``medlearn mrsi``."""
    p = sub.add_parser("synth", help="write the synthetic benchmark (MNI152 anatomy + simulated gliomas)")
    p.add_argument("--out", required=True, help="output folder (npy/ and nifti/ layouts)")
    p.add_argument("--patients", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hr-size", type=int, default=64, help="map grid H = W (64 = paper)")
    p.add_argument("--slices", type=int, default=None, help="MRSI slices per patient (default: about 34 mm)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--layouts", default="npy,nifti", help="comma-separated: npy,nifti")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "prepare", help="check a dataset (files, shapes, NaN, geometry, split) without training"
    )
    add_config_args(p)
    p.add_argument("--check-only", action="store_true", help="only validate (the default; nothing is cached)")
    p.add_argument("--write-splits", default=None, metavar="JSON", help="also write the k-fold splits here")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train (resumes from the newest checkpoint in train.out)")
    add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="PSNR/SSIM per n and lambda, sharpness, tables and figures")
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint folder or .safetensors")
    p.add_argument("--out", default=None, help="output folder (default <checkpoint>/eval)")
    p.add_argument("--split", default=None, choices=["train", "val", "test"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="super-resolve NIfTI maps with a trained checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--map", required=True, help="LR map .nii.gz, or a folder of <met>.nii.gz (batch mode)")
    p.add_argument("--t1", required=True)
    p.add_argument("--flair", required=True)
    p.add_argument("--metabolite", default=None, help="tCr, Gln, Glu, Gly, tCho, Ins or NAA (file mode)")
    p.add_argument(
        "--lowres-matrix", type=int, required=True, help="acquired matrix 2n (e.g. 16 = x4 for 64x64)"
    )
    p.add_argument("--sharpness", type=float, default=0.0, help="lambda (0 = smoothest / highest PSNR)")
    p.add_argument("--mask", default=None, help="optional quality mask .nii.gz on the map grid")
    p.add_argument("--out", required=True, help="output .nii.gz (file mode) or folder (batch mode)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_predict)

    add_demo_verb(sub, "mrsi", "synthesise, train a demo model, evaluate, write a report")


# ------------------------------------------------------------------------------------------- demo
DEMO_PATIENTS = 6
DEMO_HR_SIZE = 32
DEMO_SLICES = 2


def run_demo(out: Path, report: Any, fresh: bool) -> dict:
    """Synthesise a small benchmark, train a demo MCM network, evaluate it, add a report section.

    Outputs are reused when present unless ``fresh``.  Runs single-threaded: the tiny
    convolutions gain little from a second thread, and on a shared machine OpenMP spinning made
    two threads several times slower.
    """
    import torch

    from medlearn.config import load_config
    from medlearn.mrsi.config import MRSIConfig
    from medlearn.mrsi.evaluate import evaluate
    from medlearn.mrsi.synth import synthesize
    from medlearn.mrsi.train import fit

    out = Path(out)
    cfg_path = _configs_dir() / "demo.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"demo config '{cfg_path}' not found (run from a source checkout)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        data = out / "data"
        if fresh and out.exists():
            shutil.rmtree(out)
        if not (data / "synth.json").is_file():
            synthesize(
                data,
                n_patients=DEMO_PATIENTS,
                seed=0,
                hr_size=DEMO_HR_SIZE,
                n_slices=DEMO_SLICES,
                layouts=("npy",),
            )
        t_synth = time.time() - t0
        run = out / "run"
        cfg = load_config(MRSIConfig, cfg_path, [f"data.root={data / 'npy'}", f"train.out={run}"])
        if not (run / "checkpoints" / "final").is_dir():
            fit(cfg)
        t_train = time.time() - t0 - t_synth
        ev = out / "eval"
        if not (ev / "summary.json").is_file():
            evaluate(run, ev, cfg)
        summary = json.loads((ev / "summary.json").read_text())
    finally:
        torch.set_num_threads(threads)
    sec = report.section(
        "MRSI super-resolution",
        "One multi-conditional network (Filter Scaling on upscaling factor and metabolite, conditional "
        f"instance norm on the sharpness weight lambda) trained for {cfg.train.epochs} epochs on "
        f"{DEMO_PATIENTS} synthetic patients ({DEMO_HR_SIZE}x{DEMO_HR_SIZE} maps from MNI152 anatomy with "
        "simulated gliomas), scored on a held-out patient. Demo-sized: numbers show the pipeline, not the "
        "method's quality (see docs/mrsi.md for the benchmark).",
    )
    keys = [
        "n",
        "lambda",
        "psnr_mean",
        "psnr_std",
        "ssim_mean",
        "ssim_std",
        "gradient_mean",
        "gmsd_mean",
        "count",
    ]
    sec.table(
        [{k: r[k] for k in keys} for r in summary["per_n_lambda"]], caption="SR: PSNR/SSIM per n and lambda"
    )
    rkeys = ["method", "n", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std"]
    sec.table(
        [{k: r[k] for k in rkeys} for r in summary["references"]],
        caption="zero-filled input and bicubic per n",
    )
    sec.table([{"parameters": summary["parameters"], "synth_s": round(t_synth, 1), "train_s": round(t_train, 1)}],
              caption="model size and wall time")  # fmt: skip
    for name in ("NAA", "tCho"):
        png = ev / f"sr_grid_{name}.png"
        if png.is_file():
            sec.image(png, f"{name}: HR / zero-filled LR / SR across n and lambda")
    if (ev / "psnr_vs_sharpness.png").is_file():
        sec.image(
            ev / "psnr_vs_sharpness.png",
            "PSNR versus sharpness (k-space energy outside the acquired window) per lambda",
        )
    sr0 = [r for r in summary["per_n_lambda"] if r["lambda"] == min(cfg.eval.lambdas)]
    zf = [r for r in summary["references"] if r["method"] == "zero_filled"]
    return {
        "psnr_sr_lambda0": round(sum(r["psnr_mean"] for r in sr0) / max(1, len(sr0)), 2),
        "psnr_zero_filled": round(sum(r["psnr_mean"] for r in zf) / max(1, len(zf)), 2),
        "parameters": summary["parameters"],
    }
