"""Argument helpers shared by the task CLIs (config file + dotted overrides, logging)."""

from __future__ import annotations

import argparse
import logging


def add_config_args(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """``--config FILE`` and trailing ``key=value`` overrides."""
    parser.add_argument("--config", default=default_config, help="YAML preset (configs/<task>/*.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. optim.lr=2e-4"
    )


def add_demo_verb(subparsers: argparse._SubParsersAction, task: str, help: str) -> None:
    """``medlearn <task> demo``: the same as ``medlearn demo --tasks <task>``.

    Outputs go to ``<out>/<task>/`` (shared with the all-task demo, so results are reused) and the
    one-task report to ``<out>/report_<task>.html``.
    """
    p = subparsers.add_parser("demo", help=help)
    p.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    p.add_argument("--fresh", action="store_true", help="recompute instead of reusing earlier outputs")
    p.set_defaults(func=lambda args: _task_demo(task, args))


def _task_demo(task: str, args: argparse.Namespace) -> int:
    from medlearn.cli import _cmd_demo

    ns = argparse.Namespace(out=args.out, fresh=args.fresh, tasks=task, report_name=f"report_{task}.html")
    return _cmd_demo(ns)


def setup_logging(verbose: bool = False) -> None:
    """Log INFO (or DEBUG) lines to stderr with a short format; idempotent."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
