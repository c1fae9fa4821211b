"""The ``itl`` task: its registration in :mod:`medlearn.tasks` (heavy modules load on first use)."""

from __future__ import annotations

from typing import Any

from medlearn.itl.config import ITLConfig
from medlearn.tasks import Task, lazy, register_task

HELP = "incremental-transfer learning for multi-site prostate MRI segmentation"


def build_model(cfg: ITLConfig) -> Any:
    """:class:`medlearn.itl.model.MultiSiteExpert` of ``cfg``: (B, C, H, W) -> (B, K, H, W) logits.

    C = ``data.context``; a ``model.pretrained`` file is loaded when set.
    """
    from medlearn.itl.model import build_model as build

    return build(cfg.model, cfg.data.context)


TASK = register_task(
    Task(
        name="itl",
        help=HELP,
        schema=ITLConfig,
        train=lazy("medlearn.itl.train:train"),
        build_model=build_model,
        load_predictor=lazy("medlearn.itl.predict:load_itl"),
        add_verbs=lazy("medlearn.itl.cli:add_verbs"),
        run_demo=lazy("medlearn.itl.demo:run_demo"),
    )
)
