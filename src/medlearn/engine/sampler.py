"""A resumable, rank-aware sampler: the data order is a pure function of (seed, epoch)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffled (or ordered) indices, sharded over ranks, that can restart mid-epoch.

    The permutation of epoch ``e`` is drawn from a generator seeded with ``seed + e``, so a resumed
    run sees exactly the samples an uninterrupted run would.  Each rank takes every
    ``world_size``-th index of the (padded) permutation, like ``DistributedSampler``.

    Args:
        n: dataset length.
        seed: base seed.
        shuffle: permute each epoch.
        rank, world_size: this process's shard.
        drop_last: drop the tail so every rank gets the same count without padding.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if n <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the position (in this rank's indices) to start from."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.drop_last:
            total = (self.n // self.world_size) * self.world_size
            order = order[:total]
        else:
            total = -(-self.n // self.world_size) * self.world_size
            order = (order * (total // max(1, len(order)) + 1))[:total]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return -(-self.n // self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])
