"""The ``mama`` task: its registration in :mod:`medlearn.tasks` (heavy modules load on first use)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medlearn.mama.config import MamaConfig
from medlearn.tasks import Task, register_task

HELP = "MaMA vision-language pre-training for mammography (multi-view, symmetric local alignment, LoRA LLM)"


def train(cfg: MamaConfig) -> dict[str, Any]:
    """Pre-train MaMA on ``cfg.data.prepared_dir`` (resumes from the run folder)."""
    from medlearn.mama.train import train as train_mama

    return train_mama(cfg)


def build_model(cfg: MamaConfig) -> Any:
    """:class:`medlearn.mama.modeling.model.MamaModel`: ``encode_image`` (B, 3, S, S) -> (B, E) and
    ``encode_text``, with the towers named by ``model.image.name`` / ``model.text.name``."""
    from medlearn.mama.modeling.model import MamaModel

    return MamaModel(cfg.model, cfg.loss)


def load_predictor(checkpoint: str | Path, device: Any = "cpu") -> Any:
    """:class:`medlearn.mama.eval.predict.MamaPredictor` of a pre-trained run (see ``load_mama``)."""
    from medlearn.mama.eval.predict import load_mama

    return load_mama(checkpoint, device)


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """``synth``, ``prepare``, ``train``, ``export``, ``evaluate``, ``predict`` (:mod:`medlearn.mama.cli`)."""
    from medlearn.mama.cli import add_verbs as add

    add(sub)


def run_demo(out: Path, report: Any, fresh: bool) -> dict[str, Any]:
    """Synthesise, prepare, pre-train, evaluate (:func:`medlearn.mama.demo.run_demo`)."""
    from medlearn.mama.demo import run_demo as run

    return run(out, report, fresh)


TASK = register_task(
    Task(
        name="mama",
        help=HELP,
        schema=MamaConfig,
        train=train,
        build_model=build_model,
        load_predictor=load_predictor,
        add_verbs=add_verbs,
        run_demo=run_demo,
    )
)
