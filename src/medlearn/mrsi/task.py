"""The ``mrsi`` task: its registration in :mod:`medlearn.tasks` (heavy modules load on first use)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medlearn.mrsi.config import MRSIConfig
from medlearn.tasks import Task, register_task

HELP = "multi-scale MRSI super-resolution with metabolite and sharpness conditioning (Dong et al. 2022)"


def train(cfg: MRSIConfig) -> dict[str, Any]:
    """Train the generator (and critic) of ``cfg``; the run folder is ``cfg.train.out``."""
    from medlearn.mrsi.train import train as train_mrsi

    return train_mrsi(cfg)


def build_model(cfg: MRSIConfig) -> Any:
    """The generator (:class:`medlearn.mrsi.networks.MCUNet` or a baseline) of ``cfg``, untrained.

    Called as ``net(t1, flair, lr, n, met, lam, mask)`` with t1/flair (B, 1, 3H, 3W, 3), lr
    (B, 1, H, W), n/met (B,) int64, lam (B,) float, mask (B, 1, H, W) or None -> (B, 1, H, W).
    The critic is a training-only network and is not built.
    """
    from medlearn.mrsi.train import build_models

    cfg.adversarial.enabled = False
    gen, _ = build_models(cfg, (0, 0))  # the grid only sizes the critic
    return gen


def load_predictor(checkpoint: str | Path, device: Any = "cpu") -> Any:
    """:class:`medlearn.mrsi.predict.MRSIPredictor` of a trained run (see ``load_mrsi``)."""
    from medlearn.mrsi.predict import load_mrsi

    return load_mrsi(checkpoint, device)


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``synth``, ``prepare``, ``train``, ``evaluate``, ``predict`` (:mod:`medlearn.mrsi.cli`)."""
    from medlearn.mrsi.cli import add_verbs as add

    add(sub)


def run_demo(out: Path, report: Any, fresh: bool) -> dict[str, Any]:
    """The whole loop on synthetic data (:func:`medlearn.mrsi.demo.run_demo`)."""
    from medlearn.mrsi.demo import run_demo as run

    return run(out, report, fresh)


TASK = register_task(
    Task(
        name="mrsi",
        help=HELP,
        schema=MRSIConfig,
        train=train,
        build_model=build_model,
        load_predictor=load_predictor,
        add_verbs=add_verbs,
        run_demo=run_demo,
    )
)
