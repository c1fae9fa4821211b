"""Parameter counts of a model or one of its parts (the one counter every task uses)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["count_parameters"]


def count_parameters(
    model: nn.Module, trainable_only: bool = False, where: Callable[[str], bool] | None = None
) -> int:
    """Number of scalar parameters of ``model``.

    A parameter shared by several sub-modules is counted once (as ``model.parameters()`` lists it).
    Buffers (BatchNorm running statistics) are not parameters and are not counted.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad`` (frozen ones, such as ITL's
            source decoder or a LoRA base model, are then left out).
        where: keep only parameters whose name in ``model.named_parameters()`` satisfies it.
    Returns:
        the sum of ``numel()`` over the selected parameters.
    """
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if (p.requires_grad or not trainable_only) and (where is None or where(name))
    )
