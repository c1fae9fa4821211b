"""The ``mrsi`` task: its registration in :mod:`medlearn.tasks` (heavy modules load on first use)."""

from __future__ import annotations

import copy
from typing import Any

from medlearn.mrsi.config import MRSIConfig
from medlearn.tasks import Task, lazy, register_task

HELP = "multi-scale MRSI super-resolution with metabolite and sharpness conditioning (Dong et al. 2022)"


def build_model(cfg: MRSIConfig) -> Any:
    """The generator (:class:`medlearn.mrsi.networks.MCUNet` or a baseline) of ``cfg``, untrained.

    Called as ``net(t1, flair, lr, n, met, lam, mask)`` with t1/flair (B, 1, 3H, 3W, 3), lr
    (B, 1, H, W), n/met (B,) int64, lam (B,) float, mask (B, 1, H, W) or None -> (B, 1, H, W).
    The critic is a training-only network and is not built.
    """
    from medlearn.mrsi.train import build_models

    cfg = copy.deepcopy(cfg)
    cfg.adversarial.enabled = False
    gen, _ = build_models(cfg, (0, 0))  # the grid only sizes the critic
    return gen


TASK = register_task(
    Task(
        name="mrsi",
        help=HELP,
        schema=MRSIConfig,
        train=lazy("medlearn.mrsi.train:train"),
        build_model=build_model,
        load_predictor=lazy("medlearn.mrsi.predict:load_mrsi"),
        add_verbs=lazy("medlearn.mrsi.cli:add_verbs"),
        run_demo=lazy("medlearn.mrsi.demo:run_demo"),
    )
)
