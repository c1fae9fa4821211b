"""Multi-view pairing: which other images of the same exam can be the extra view.

For row ``i`` of a per-image table, the partners are the other rows with the same patient and exam
(``patient_id``, ``exam_id``); with ``same_breast_only`` also the same ``laterality`` (other views of
the same breast). Only rows of the table given are candidates, so building the index on the training
split keeps partners inside the training set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medlearn.mama.data.tables import validate_columns


class PairingIndex:
    """Partners of every row of a per-image table.

    Args:
        table: per-image table with ``patient_id``, ``exam_id`` (and ``laterality``).
        same_breast_only: restrict partners to the same breast (default False: reference, either breast).
    """

    def __init__(self, table: pd.DataFrame, same_breast_only: bool = False) -> None:
        keys = ["patient_id", "exam_id"] + (["laterality"] if same_breast_only else [])
        validate_columns(table, keys, "per-image table (pairing)")
        self.same_breast_only = same_breast_only
        groups = table.reset_index(drop=True).groupby(keys, sort=False).indices
        self._group = [np.empty(0, dtype=np.int64)] * len(table)
        for rows in groups.values():
            rows = np.asarray(rows, dtype=np.int64)
            for r in rows:
                self._group[r] = rows

    def __len__(self) -> int:
        return len(self._group)

    def partners(self, i: int) -> np.ndarray:
        """Row positions (0-based) of the other images of row ``i``'s exam (or breast)."""
        g = self._group[i]
        return g[g != i]

    def sample(self, i: int, rng: np.random.Generator, p: float = 0.5) -> int | None:
        """With probability ``p`` a uniformly drawn partner of ``i``; None otherwise or when it has none.

        None means: use a second augmentation of the same image.
        """
        if rng.random() >= p:
            return None
        others = self.partners(i)
        if others.size == 0:
            return None
        return int(others[rng.integers(others.size)])
