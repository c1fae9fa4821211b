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


def setup_logging(verbose: bool = False) -> None:
    """Log INFO (or DEBUG) lines to stderr with a short format; idempotent."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
