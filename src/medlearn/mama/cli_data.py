"""The data verbs of ``medlearn mama``: ``synth`` and ``prepare`` (added by ``mama/cli.py``).

Results are reported through logging (the top-level CLI sends INFO lines to stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _cmd_synth(args: argparse.Namespace) -> int:
    from medlearn.mama.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        n_patients=args.patients,
        n_rsna_patients=args.rsna_patients,
        seed=args.seed,
        long_side=args.long_side,
        workers=args.workers,
        rsna_cancer_rate=args.rsna_cancer_rate,
        rsna_jpeg2000=args.rsna_jpeg2000,
    )
    summary = generate(Path(args.out), cfg)
    log.info("synth summary:\n%s", json.dumps(summary, indent=2))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from medlearn.mama.data.prepare import PrepareConfig, prepare_dataset

    embed, rsna = args.embed, args.rsna
    if args.synth:  # a folder written by `medlearn mama synth`
        embed, rsna = embed or str(Path(args.synth) / "embed"), rsna or str(Path(args.synth) / "rsna")
    cfg = PrepareConfig(
        long_side=args.long_side,
        bits=args.bits,
        fmt=args.format,
        window=args.window,
        crop=not args.no_crop,
        workers=args.workers,
        strict=args.strict,
        check_only=args.check_only,
        resume=not args.no_resume,
        split_seed=args.split_seed,
        strip_prefix=args.strip_prefix,
        exclude_spot_mag=args.exclude_spot_mag,
    )
    report = prepare_dataset(
        args.out, embed_dir=embed, rsna_dir=rsna, dicom_root_embed=args.embed_dicom_root, cfg=cfg
    )
    log.info(
        "prepare report:\n%s",
        json.dumps({k: v for k, v in report.items() if k not in ("config", "skipped")}, indent=2),
    )
    if report["n_skipped"]:
        log.warning("%d image(s) skipped; see %s", report["n_skipped"], Path(args.out) / "skipped.csv")
    return 0


def add_data_verbs(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` and ``prepare`` to the ``medlearn mama`` sub-parsers."""
    p = subparsers.add_parser("synth", help="write a synthetic EMBED + RSNA dataset (real formats)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--patients", type=int, default=20, help="EMBED-format patients (1-3 exams each)")
    p.add_argument(
        "--rsna-patients", type=int, default=None, help="RSNA-format patients (default patients/2)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--long-side", type=int, default=2000, help="image height in pixels (width 0.8x)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--rsna-cancer-rate", type=float, default=0.15)
    p.add_argument(
        "--rsna-jpeg2000", type=float, default=0.5, help="fraction of RSNA patients stored as JPEG 2000"
    )
    p.set_defaults(func=_cmd_synth)

    q = subparsers.add_parser("prepare", help="DICOM + tables -> cached images, per-image table, splits")
    q.add_argument("--out", required=True, help="prepared folder")
    q.add_argument("--embed", default=None, help="folder with the EMBED CSVs (metadata, clinical, legend)")
    q.add_argument(
        "--embed-dicom-root", default=None, help="folder anon_dicom_path is relative to (default --embed)"
    )
    q.add_argument(
        "--strip-prefix", default="", help="prefix removed from anon_dicom_path (e.g. a NAS mount)"
    )
    q.add_argument("--rsna", default=None, help="folder with RSNA train.csv and train_images/")
    q.add_argument("--synth", default=None, help="a `medlearn mama synth` folder (sets --embed and --rsna)")
    q.add_argument("--long-side", type=int, default=1080)
    q.add_argument("--bits", type=int, choices=(8, 16), default=8)
    q.add_argument("--format", choices=("png", "npy"), default="png")
    q.add_argument(
        "--window", choices=("voi", "max"), default="voi", help="voi: header window; max: reference scaling"
    )
    q.add_argument("--no-crop", action="store_true", help="skip the Otsu foreground crop")
    q.add_argument(
        "--exclude-spot-mag", action="store_true", help="drop spot-compression/magnification views"
    )
    q.add_argument("--split-seed", type=int, default=0)
    q.add_argument("--workers", type=int, default=1)
    q.add_argument("--strict", action="store_true", help="stop at the first unreadable DICOM")
    q.add_argument("--no-resume", action="store_true", help="re-cache every image (default: resume)")
    q.add_argument(
        "--check-only", action="store_true", help="validate tables and DICOM headers; cache nothing"
    )
    q.set_defaults(func=_cmd_prepare)
