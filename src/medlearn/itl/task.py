"""The ``itl`` task: its registration in :mod:`medlearn.tasks` (heavy modules load on first use)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medlearn.itl.config import ITLConfig
from medlearn.tasks import Task, register_task

HELP = "incremental-transfer learning for multi-site prostate MRI segmentation"


def train(cfg: ITLConfig) -> dict[str, Any]:
    """Train ``cfg.train.strategy`` over the site sequence (resumes from the run folder)."""
    from medlearn.itl.train import train as train_itl

    return train_itl(cfg)


def build_model(cfg: ITLConfig) -> Any:
    """:class:`medlearn.itl.model.MultiSiteExpert` of ``cfg``: (B, C, H, W) -> (B, K, H, W) logits.

    C = ``data.context``; a ``model.pretrained`` file is loaded when set.
    """
    from medlearn.itl.model import build_model as build

    return build(cfg.model, cfg.data.context)


def load_predictor(checkpoint: str | Path, device: Any = "cpu") -> Any:
    """:class:`medlearn.itl.predict.ITLSegmenter` of a trained run (see ``load_itl``)."""
    from medlearn.itl.predict import load_itl

    return load_itl(checkpoint, device)


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``synth``, ``prepare``, ``train``, ``evaluate``, ``predict`` (:mod:`medlearn.itl.cli`)."""
    from medlearn.itl.cli import add_verbs as add

    add(sub)


def run_demo(out: Path, report: Any, fresh: bool) -> dict[str, Any]:
    """The whole loop on synthetic data (:func:`medlearn.itl.demo.run_demo`)."""
    from medlearn.itl.demo import run_demo as run

    return run(out, report, fresh)


TASK = register_task(
    Task(
        name="itl",
        help=HELP,
        schema=ITLConfig,
        train=train,
        build_model=build_model,
        load_predictor=load_predictor,
        add_verbs=add_verbs,
        run_demo=run_demo,
    )
)
