"""The ``mama`` task: its registration in :mod:`medlearn.tasks` (heavy modules load on first use)."""

from __future__ import annotations

from typing import Any

from medlearn.mama.config import MamaConfig
from medlearn.tasks import Task, lazy, register_task

HELP = "MaMA vision-language pre-training for mammography (multi-view, symmetric local alignment, LoRA LLM)"


def build_model(cfg: MamaConfig) -> Any:
    """:class:`medlearn.mama.modeling.model.MamaModel`: ``encode_image`` (B, 3, S, S) -> (B, E) and
    ``encode_text``, with the towers named by ``model.image.name`` / ``model.text.name``."""
    from medlearn.mama.modeling.model import MamaModel

    return MamaModel(cfg.model, cfg.loss)


TASK = register_task(
    Task(
        name="mama",
        help=HELP,
        schema=MamaConfig,
        train=lazy("medlearn.mama.train:train"),
        build_model=build_model,
        load_predictor=lazy("medlearn.mama.eval.predict:load_mama"),
        add_verbs=lazy("medlearn.mama.cli:add_verbs"),
        run_demo=lazy("medlearn.mama.demo:run_demo"),
    )
)
