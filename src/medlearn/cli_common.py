"""Argument helpers shared by the task CLIs: ``--config PRESET`` + ``key=value`` overrides, logging.

Imports nothing from :mod:`medlearn.cli` (the task CLIs are imported by it).
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path
from typing import Any

# Loggers of libraries that report at INFO/WARNING level about things a user of medlearn need not
# see on every run (deprecations, plugin discovery, weight-loading reports); shown with ``-v``.
THIRD_PARTY_LOGGERS = (
    "transformers", "huggingface_hub", "peft", "accelerate", "monai", "pydicom", "pylibjpeg",
    "openjpeg", "libjpeg", "PIL", "matplotlib", "urllib3", "filelock", "fsspec",
)  # fmt: skip
# Environment switches that silence progress bars and advisory output of the Hugging Face stack.
QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def add_config_args(
    parser: argparse.ArgumentParser, default_config: str | None = None, help: str | None = None
) -> None:
    """``--config PRESET`` (a preset name or a YAML file) and trailing ``key=value`` overrides."""
    default = f" (default: {default_config})" if default_config else ""
    parser.add_argument(
        "--config",
        default=default_config,
        metavar="PRESET",
        help=help or f"preset name (paper, small, tiny, demo; see the presets verb) or a YAML file{default}",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. optim.lr=2e-4"
    )


def load_task_config(task: str, args: argparse.Namespace, default: str | Path | None = None) -> Any:
    """The typed config of ``task`` from ``args.config`` (or ``default``) and ``args.overrides``.

    The preset goes through :func:`medlearn.config.resolve_preset` (a path, then
    ``$MEDLEARN_CONFIGS``, then the packaged presets); with neither, the schema's defaults are used.

    Raises:
        ConfigError: unknown task, preset or key, or a bad value.
    """
    from medlearn.config import load_config, resolve_preset
    from medlearn.tasks import get_task

    ref = getattr(args, "config", None) or default
    path = resolve_preset(task, ref) if ref else None
    return load_config(get_task(task).schema, path, list(getattr(args, "overrides", []) or []))


def setup_logging(verbose: bool = False) -> None:
    """INFO lines of medlearn to stderr, third-party chatter only with ``verbose``.

    Without ``verbose``: the loggers in :data:`THIRD_PARTY_LOGGERS` show errors only, the Hugging
    Face progress bars and advisory messages are off (:data:`QUIET_ENV`, unless already set), and
    ``FutureWarning``/``DeprecationWarning`` from libraries are not shown.  With ``verbose``: DEBUG
    for medlearn, INFO for those libraries (their DEBUG lines are byte-level chatter), and Python
    warnings go through logging.  Call it before the libraries are imported so that the
    environment switches take effect.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    logging.captureWarnings(verbose)
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!medlearn)")
