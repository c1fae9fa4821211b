"""``medlearn mama``: data verbs (synth, prepare), ``train``, ``pretrain-image``, ``export``, evaluation verbs.

Added by :mod:`medlearn.mama.task`; the generic verbs (``presets``, ``show-config``, ``demo``)
come from :mod:`medlearn.cli`.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from medlearn.cli_common import add_config_args, load_task_config

log = logging.getLogger(__name__)


def _load(args: argparse.Namespace) -> Any:
    return load_task_config("mama", args)


def _run_training(fn: Any, args: argparse.Namespace) -> int:
    """Run a training function on the task config; print its summary; exit 0, or 130/143 when signalled."""
    from medlearn.engine.loop import exit_status

    summary = fn(_load(args))
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, indent=2))
    print(json.dumps(summary["metrics"], indent=2))
    return exit_status(summary)  # 130/143 when SIGINT/SIGTERM stopped it


def _cmd_train(args: argparse.Namespace) -> int:
    from medlearn.mama.train import train

    return _run_training(train, args)


def _cmd_pretrain_image(args: argparse.Namespace) -> int:
    from medlearn.mama.image_pretrain import pretrain_image

    return _run_training(pretrain_image, args)


def _cmd_export(args: argparse.Namespace) -> int:
    from medlearn.mama.modeling.export import export

    out = export(args.checkpoint, args.out, merge=not args.separate_adapters, config=args.config)
    print(f"exported to {out}")
    return 0


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``synth``, ``prepare`` (cli_data), ``train``, ``pretrain-image``, ``export``, ``evaluate``, ``predict`` (cli_eval)."""
    from medlearn.mama.cli_data import add_data_verbs
    from medlearn.mama.cli_eval import add_eval_verbs

    add_data_verbs(sub)
    p = sub.add_parser("train", help="pre-train MaMA (resumes from the run folder's last checkpoint)")
    add_config_args(p)
    p.set_defaults(func=_cmd_train)
    m = sub.add_parser(
        "pretrain-image",
        help="masked-image pre-training of the image tower alone; writes <train.out>/image_tower "
        "for model.image.name",
    )
    add_config_args(m)
    m.set_defaults(func=_cmd_pretrain_image)
    q = sub.add_parser(
        "export", help="checkpoint -> Hugging Face model folders (image tower, text tower, heads)"
    )
    q.add_argument("--checkpoint", required=True, help="checkpoint folder, e.g. runs/mama/checkpoints/final")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument(
        "--config", default=None, help="run config (default: <run>/config.yaml next to the checkpoint)"
    )
    q.add_argument(
        "--separate-adapters", action="store_true", help="keep LoRA as a peft adapter instead of merging"
    )
    q.set_defaults(func=_cmd_export)
    add_eval_verbs(sub)
