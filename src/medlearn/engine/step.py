"""One optimizer step with accumulation, clipping and scheduling, through accelerate."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from accelerate import Accelerator
from torch.optim import Optimizer


def backward_and_step(
    accelerator: Accelerator,
    loss: torch.Tensor,
    optimizer: Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    params: Iterable[torch.nn.Parameter] | None = None,
    grad_clip: float = 0.0,
) -> bool:
    """Backward ``loss``; on a gradient-sync boundary clip, step, schedule and zero the grads.

    Call inside ``with accelerator.accumulate(model):``.  Accelerate scales the loss by the
    accumulation count and skips the optimizer step on non-boundary micro-batches.

    Returns:
        ``True`` when an optimizer step was taken (a boundary), ``False`` otherwise.
    """
    accelerator.backward(loss)
    stepped = accelerator.sync_gradients
    if stepped and grad_clip > 0 and params is not None:
        accelerator.clip_grad_norm_(list(params), grad_clip)
    optimizer.step()
    if stepped and scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return stepped
