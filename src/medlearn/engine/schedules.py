"""Learning-rate schedules as ``LambdaLR`` factories (stepped once per optimizer step).

The multipliers are written here because the library schedules give other numbers:

* ``transformers.get_cosine_schedule_with_warmup`` (and ``..._with_min_lr_...``) warms up with
  ``step / warmup`` (learning rate 0 on the first step; ours ``(step + 1) / warmup``), and past
  ``total_steps`` its cosine rises again, where ours stays at ``min_ratio``.
* ``torch.optim.lr_scheduler.SequentialLR(LinearLR, CosineAnnealingLR)`` updates the rate
  recursively; on a 4-step warm-up and 16 cosine steps it is up to 3% of the base rate off the
  closed form.
* ``StepLR`` multiplies by ``gamma`` at each boundary instead of computing ``gamma ** k``: equal for
  ``gamma = 0.5`` but off by rounding for e.g. 0.1, and its state is not a ``LambdaLR`` state, so
  checkpoints written before a switch would not resume.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from medlearn.errors import ConfigError

SCHEDULES = ("constant", "cosine", "step")


def cosine_with_warmup_factor(
    step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> float:
    """LR multiplier: linear 0 -> 1 over ``warmup_steps``, then cosine 1 -> ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_decay_factor(step: int, step_size: int, gamma: float) -> float:
    """LR multiplier ``gamma ** (step // step_size)``."""
    return gamma ** (step // max(1, step_size))


def build_scheduler(
    optimizer: Optimizer,
    kind: str,
    total_steps: int = 1,
    warmup_steps: int = 0,
    step_size: int = 1,
    gamma: float = 0.5,
    min_ratio: float = 0.0,
) -> LambdaLR:
    """A scheduler of ``kind`` (``constant``, ``cosine`` with linear warm-up, or ``step`` decay).

    Raises:
        ConfigError: for an unknown ``kind``.
    """
    if kind == "constant":
        fn = lambda s: 1.0  # noqa: E731
    elif kind == "cosine":
        fn = lambda s: cosine_with_warmup_factor(s, warmup_steps, total_steps, min_ratio)  # noqa: E731
    elif kind == "step":
        fn = lambda s: step_decay_factor(s, step_size, gamma)  # noqa: E731
    else:
        raise ConfigError(f"unknown schedule '{kind}'; valid: {', '.join(SCHEDULES)}")
    return LambdaLR(optimizer, fn)
