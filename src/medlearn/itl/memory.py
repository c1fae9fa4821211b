"""Exemplar memory: a fixed budget of training slices per past site (random or herding selection)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medlearn.itl.data import PreparedCase, SliceSet


def herding(features: np.ndarray, k: int) -> list[int]:
    """iCaRL herding: greedily pick ``k`` rows whose running mean stays closest to the mean of all rows.

    Args:
        features: (N, F) feature vectors (L2-normalised by the caller if wanted).
        k: how many to pick (at most N).
    Returns:
        row indices in selection order (no repeats).
    """
    n = features.shape[0]
    k = min(k, n)
    mu = features.mean(0)
    chosen: list[int] = []
    acc = np.zeros_like(mu)
    avail = np.ones(n, bool)
    for i in range(1, k + 1):
        cand = (acc[None] + features) / i
        dist = np.linalg.norm(cand - mu[None], axis=1)
        dist[~avail] = np.inf
        j = int(np.argmin(dist))
        chosen.append(j)
        avail[j] = False
        acc += features[j]
    return chosen


@torch.no_grad()
def slice_features(model: nn.Module, slices: SliceSet, device: torch.device, batch: int = 32) -> np.ndarray:
    """(N, F) L2-normalised global-average-pooled bottleneck features of every row of ``slices``."""
    was = model.training
    model.eval()
    out = []
    for s in range(0, len(slices), batch):
        x, _ = slices.batch(list(range(s, min(s + batch, len(slices)))))
        f = model.encode(x.to(device))[-1].mean((2, 3))
        out.append(torch.nn.functional.normalize(f, dim=1).cpu().numpy())
    model.train(was)
    return np.concatenate(out)


class ExemplarMemory:
    """Stored exemplar slices per site, as ``(case name, z)`` references into prepared cases.

    Args:
        per_site: slices kept per site.
        selection: ``random`` or ``herding``.
    """

    def __init__(self, per_site: int, selection: str = "random") -> None:
        self.per_site = per_site
        self.selection = selection
        self.items: dict[str, list[tuple[str, int]]] = {}

    def add_site(
        self,
        site: str,
        slices: SliceSet,
        rng: np.random.Generator,
        model: nn.Module | None = None,
        device: torch.device | None = None,
    ) -> None:
        """Select ``per_site`` rows of ``slices`` (site ``site``'s training slices) into the memory."""
        n = len(slices)
        k = min(self.per_site, n)
        if k <= 0:
            self.items[site] = []
            return
        if self.selection == "herding" and model is not None:
            idx = herding(slice_features(model, slices, device or torch.device("cpu")), k)
        else:
            idx = sorted(rng.choice(n, size=k, replace=False).tolist())
        rows = [slices.rows[i] for i in idx]
        self.items[site] = [(slices.cases[ci].case, int(z)) for ci, z in rows]

    @property
    def sites(self) -> list[str]:
        return [s for s, v in self.items.items() if v]

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())

    def as_slice_set(self, cases: dict[str, list[PreparedCase]], context: int) -> tuple[SliceSet, np.ndarray]:
        """A :class:`SliceSet` of all exemplars and the (N,) site index (in ``self.sites`` order) of each row."""
        sel_cases: list[PreparedCase] = []
        rows: list[tuple[int, int]] = []
        site_ids: list[int] = []
        for si, site in enumerate(self.sites):
            by_name = {c.case: c for c in cases[site]}
            for name, z in self.items[site]:
                sel_cases.append(by_name[name])
                rows.append((len(sel_cases) - 1, z))
                site_ids.append(si)
        ss = SliceSet(sel_cases, context, margin=0)
        ss.rows = rows
        return ss, np.asarray(site_ids, dtype=np.int64)

    def state_dict(self) -> dict:
        return {site: [list(x) for x in v] for site, v in self.items.items()}

    def load_state_dict(self, state: dict) -> None:
        self.items = {site: [(str(a), int(b)) for a, b in v] for site, v in state.items()}
