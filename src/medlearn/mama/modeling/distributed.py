"""Cross-process gathering for contrastive losses (open_clip's "gather with grad + local loss" scheme).

Each process scores its own B rows against the features of the whole gathered batch
(B x world*B), and the targets of its rows are shifted by ``rank * B``.  With the autograd-aware
all-gather, the gradient reaching a process's features is the sum of the gradients of every
process's loss; DDP then averages over processes, which equals the gradient of the loss of one
process holding the whole batch (tested with two gloo processes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class GatherInfo:
    """Where this process sits and whether to gather.

    Attributes:
        rank: process index.
        world: number of processes.
        enabled: gather features across processes (False = the reference's per-GPU negatives).
    """

    rank: int = 0
    world: int = 1
    enabled: bool = False

    @property
    def active(self) -> bool:
        return self.enabled and self.world > 1


def gather_info(mode: str) -> GatherInfo:
    """:class:`GatherInfo` from the initialised process group and ``loss.gather`` (auto/on/off)."""
    if not (dist.is_available() and dist.is_initialized()):
        return GatherInfo()
    return GatherInfo(rank=dist.get_rank(), world=dist.get_world_size(), enabled=mode in ("auto", "on"))


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradients of every rank and returns this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # works on gloo and NCCL; features are small (N x E)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor, info: GatherInfo) -> Tensor:
    """(B, ...) -> (world * B, ...) concatenated in rank order, differentiable; ``x`` itself when inactive.

    Every rank must call it with the same B (the training loader drops the last partial batch).
    """
    if not info.active:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: Tensor, info: GatherInfo) -> Tensor:
    """All-gather without gradient (e.g. report keys); ``x`` itself when inactive."""
    if not info.active:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
