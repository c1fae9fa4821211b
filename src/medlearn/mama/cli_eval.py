"""The evaluation verbs of ``medlearn mama``: ``evaluate`` and ``predict`` (added by ``mama/cli.py``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medlearn.cli_common import add_config_args
from medlearn.mama.eval.evaluate import MODES
from medlearn.mama.eval.zero_shot import TASK_CLASSES


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medlearn.config import load_config
    from medlearn.mama.eval.evaluate import EvalConfig, evaluate
    from medlearn.mama.eval.figures import summary_rows

    flags = [f"mode={args.mode}", f"task={args.task}", f"checkpoint={args.checkpoint}", f"data={args.data}"]
    if args.out:
        flags.append(f"out={args.out}")
    cfg = load_config(EvalConfig, args.config, [*args.overrides, *flags])
    res = evaluate(cfg)
    keep = ("subset", "level", "n", "balanced_accuracy", "auc", "specificity_at_80_sensitivity", "pf1")
    for row in summary_rows(res):
        print(
            "  ".join(
                f"{k}={row[k]:.4f}" if isinstance(row.get(k), float) else f"{k}={row.get(k)}"
                for k in keep
                if k in row
            )
        )
    print(f"results: {res['out']}/metrics.json")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from medlearn.mama.eval.evaluate import load_pretrained
    from medlearn.mama.eval.predict import load_head, predict_files

    model, mcfg = load_pretrained(args.checkpoint)
    head = load_head(args.head, model, args.task) if args.head else None
    images, breasts = predict_files(
        args.inputs, model, int(mcfg.model.image.image_size), args.task, head=head,
        batch_size=args.batch_size, window=args.window, heatmap_dir=args.heatmaps, strict=args.strict,
    )  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images.to_csv(out, index=False)
    breast_csv = out.with_name(f"{out.stem}_breast{out.suffix or '.csv'}")
    breasts.to_csv(breast_csv, index=False)
    n_bad = int((images["status"] != "ok").sum())
    print(
        json.dumps(
            {
                "images": len(images),
                "errors": n_bad,
                "breasts": len(breasts),
                "csv": str(out),
                "breast_csv": str(breast_csv),
            }
        )
    )
    if n_bad:
        print(f"{n_bad} file(s) could not be read; see status/error columns of {out}")
    return 0 if n_bad < len(images) else 1


def add_eval_verbs(subparsers: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` and ``predict`` to the ``medlearn mama`` sub-parsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="zero-shot / linear-probe / fine-tune evaluation of a checkpoint (balanced + full test)",
    )
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--task", required=True, choices=sorted(TASK_CLASSES))
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint folder (<run>/checkpoints/final) or run folder"
    )
    p.add_argument("--data", required=True, help="prepared data folder (medlearn mama prepare)")
    p.add_argument("--out", default="", help="output folder (default <run>/eval/<mode>_<task>)")
    add_config_args(p, help="YAML file of evaluation settings (keys of EvalConfig), optional")
    p.set_defaults(func=_cmd_evaluate)
    q = subparsers.add_parser(
        "predict", help="class probabilities per image and per breast for DICOM/PNG files"
    )
    q.add_argument("inputs", nargs="+", metavar="FILES_OR_DIR", help="DICOM / PNG files or folders")
    q.add_argument("--checkpoint", required=True, help="pre-trained MaMA checkpoint (or run folder)")
    q.add_argument("--task", required=True, choices=sorted(TASK_CLASSES))
    q.add_argument(
        "--out", required=True, help="per-image CSV; per-breast CSV written next to it (*_breast.csv)"
    )
    q.add_argument(
        "--head",
        default="",
        help="output folder of `mama evaluate` (linear-probe/finetune); default zero-shot",
    )
    q.add_argument(
        "--heatmaps", default=None, help="folder for SLA heatmap PNGs (predicted class's sentence)"
    )
    q.add_argument("--batch-size", type=int, default=16)
    q.add_argument(
        "--window", default="voi", choices=("voi", "max"), help="DICOM intensity window (as in prepare)"
    )
    q.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    q.set_defaults(func=_cmd_predict)
