"""A resumable, rank-aware sampler: the data order is a pure function of (seed, epoch)."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence

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
        groups: optional group key per index (e.g. the exam of each image).  The epoch's order is
            then the groups in shuffled order, each group's members shuffled and kept together,
            so consecutive indices (and so a batch) hold whole groups; each rank takes a
            contiguous block of that order instead of every ``world_size``-th index.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        groups: Sequence[Hashable] | None = None,
    ) -> None:
        if n <= 0:
            raise ValueError("ResumableSampler needs a non-empty dataset")
        if groups is not None and len(groups) != n:
            raise ValueError(f"ResumableSampler: {len(groups)} group keys for {n} indices")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.members: list[list[int]] | None = None
        if groups is not None:
            first: dict[Hashable, list[int]] = {}
            for i, key in enumerate(groups):
                first.setdefault(key, []).append(i)
            self.members = list(first.values())
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the position (in this rank's indices) to start from."""
        self.epoch, self.start = epoch, start

    def _grouped_order(self) -> list[int]:
        """Whole groups in (shuffled) group order, members shuffled inside their group."""
        assert self.members is not None
        if not self.shuffle:
            return [i for m in self.members for i in m]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = []
        for k in torch.randperm(len(self.members), generator=g).tolist():
            m = self.members[k]
            order += [m[j] for j in torch.randperm(len(m), generator=g).tolist()]
        return order

    def _indices(self) -> list[int]:
        if self.members is not None:
            order = self._grouped_order()
        elif self.shuffle:
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
        if self.members is not None:  # contiguous blocks keep the groups together on one rank
            per = total // self.world_size
            return order[self.rank * per : (self.rank + 1) * per]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return -(-self.n // self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])
