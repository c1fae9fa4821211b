"""``medlearn mrsi <verb>``: synth, prepare, train, evaluate, predict (added by :mod:`medlearn.mrsi.task`).

The generic verbs (``presets``, ``show-config``, ``demo``) come from :mod:`medlearn.cli`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from medlearn.cli_common import add_config_args, load_task_config
from medlearn.errors import ConfigError

log = logging.getLogger(__name__)


def _load(args: argparse.Namespace, default: str | Path | None = None) -> Any:
    return load_task_config("mrsi", args, default)


# ------------------------------------------------------------------------------------------ verbs
def _cmd_synth(args: argparse.Namespace) -> int:
    from medlearn.mrsi.synth import synthesize

    layouts = tuple(args.layouts.split(","))
    out = synthesize(args.out, n_patients=args.patients, seed=args.seed, hr_size=args.hr_size,
                     n_slices=args.slices, workers=args.workers, layouts=layouts)  # fmt: skip
    print(f"synthetic MRSI benchmark written to {out} (layouts: {', '.join(layouts)})")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from medlearn.mrsi.data.verify import CHECK_CACHE, check_dataset

    cfg = _load(args)
    res = check_dataset(cfg, None if args.check_only else Path(cfg.data.root) / CHECK_CACHE)
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
    if args.write_splits and not args.check_only:
        from medlearn.mrsi.splits import kfold_patient_splits, write_splits

        d = cfg.data
        folds = kfold_patient_splits(res["patients"], d.k_folds, d.n_val, d.n_test, d.split_seed)
        print(f"splits written to {write_splits(args.write_splits, folds)}")
    print("dataset check passed")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from medlearn.engine.loop import exit_status
    from medlearn.mrsi.train import train as fit

    summary = fit(_load(args))
    print(json.dumps(summary, indent=2, default=str))
    return exit_status(summary)  # 130/143 when SIGINT/SIGTERM stopped it


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medlearn.mrsi.evaluate import evaluate, find_run_config

    cfg = _load(args, default=find_run_config(args.checkpoint))
    out = args.out or str(Path(args.checkpoint) / "eval" / (args.split or cfg.eval.split))
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
    p.add_argument("--check-only", action="store_true",
                   help="read and validate every patient and the split; write nothing (no check cache, no splits)")  # fmt: skip
    p.add_argument("--write-splits", default=None, metavar="JSON", help="also write the k-fold splits here")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train (resumes from the newest checkpoint in train.out)")
    add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="PSNR/SSIM per n and lambda, sharpness, tables and figures")
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint folder or .safetensors")
    p.add_argument("--out", default=None, help="output folder (default <checkpoint>/eval/<split>)")
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
    p.add_argument(
        "--sharpness", type=float, default=0.0, help="lambda (0 = smoothest; trained range checked)"
    )
    p.add_argument("--mask", default=None, help="optional quality mask .nii.gz on the map grid")
    p.add_argument("--out", required=True, help="output .nii.gz (file mode) or folder (batch mode)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_predict)
