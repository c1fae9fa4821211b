"""The MRSI training dataset: one normalised (and optionally augmented) sample per (patient, slice,
metabolite).

The per-sample mask follows the reference, ``HR != 0`` of the sampled map (``mask_rule="map"``,
default), or the patient's quality mask (``mask_rule="patient"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITES, MRI_FACTOR
from medlearn.mrsi.data.patient import PatientData, _check_metabolites, metabolite_index
from medlearn.mrsi.kspace import truncate_kspace

log = logging.getLogger(__name__)


def _item_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class MRSIDataset(Dataset):
    """One sample per (patient, slice, metabolite), normalised and optionally augmented.

    Items (dict):
        ``hr`` (1, H, W) float32: map / its slice max, 0 outside the quality mask.
        ``lr`` (1, H, W) float32: :func:`truncate_kspace` of ``hr`` with half-size ``n``.
        ``mask`` (1, H, W) float32 in {0, 1}.
        ``t1``, ``flair`` (1, 3H, 3W, 3) float32: MRI slab / its max.
        ``n`` int64, ``met`` int64 (metabolite id = index in :data:`METABOLITES`; for a name outside
        it, its position in ``metabolites``), ``scale`` float32 (the map max),
        ``patient`` str, ``slice`` int.

    ``n`` is ``fixed_n`` when given, otherwise drawn uniformly from ``n_choices`` with a generator
    seeded by (seed, epoch, index) (call :meth:`set_epoch` each epoch; evaluation datasets keep
    epoch 0 so they are identical every time).  Augmentation is drawn from the same
    generator: rot90 (k in 0..3; on a non-square grid only 0 or 180 degrees, so shapes stay
    fixed), flips of H and W, a circular shift of up to ``max_shift`` map pixels (x3 on the MRI)
    and a flip of the MRI's 3-slice axis; map, mask and MRI stay aligned (map pixel (i, j) covers
    MRI pixels 3i..3i+2, 3j..3j+2 before and after).

    Slices whose map is all zero (no valid voxel) are left out; ``n_skipped`` counts them.

    Args:
        patients: loaded patients (all with the same grid).
        metabolites: metabolites to sample; each must exist in every patient's maps.
        train: training mode (random n per epoch); False keeps epoch 0.
        n_choices: half-sizes to draw from (default 8..16, the reference's x4..x2).
        fixed_n: use this n for every item (evaluation at one upscaling factor).
        augment: apply augmentation (defaults to ``train``).
        seed: base seed.
        mask_rule: ``"map"`` (reference: HR != 0 of the sampled map) or ``"patient"``
            (``PatientData.mask``).
        max_shift: largest circular shift in map pixels (reference 3).
        with_lr: compute ``lr`` per item (default).  A trainer that degrades whole batches on its
            device (``truncate_kspace(batch["hr"], batch["n"])``, identical values) can turn this off;
            items then have no ``lr`` key.
    """

    def __init__(
        self,
        patients: Sequence[PatientData],
        metabolites: Sequence[str] = METABOLITES,
        train: bool = True,
        n_choices: Sequence[int] = tuple(range(8, 17)),
        fixed_n: int | None = None,
        augment: bool | None = None,
        seed: int = 0,
        mask_rule: str = "map",
        max_shift: int = 3,
        with_lr: bool = True,
    ) -> None:
        _check_metabolites(metabolites)
        if len(patients) == 0:
            raise ConfigError("MRSIDataset needs at least one patient")
        if mask_rule not in ("map", "patient"):
            raise ConfigError(f"mask_rule must be 'map' or 'patient', got {mask_rule!r}")
        self.patients = list(patients)
        self.metabolites = tuple(metabolites)
        self.train = bool(train)
        self.augment = self.train if augment is None else bool(augment)
        self.seed = int(seed)
        self.mask_rule = mask_rule
        self.max_shift = int(max_shift)
        self.with_lr = bool(with_lr)
        self.epoch = 0
        grid = self.patients[0].grid
        for p in self.patients:
            if p.grid != grid:
                raise DataError(
                    f"patient {p.patient_id}: map grid {p.grid} differs from {grid} of the others"
                )
            missing = [m for m in self.metabolites if m not in p.maps]
            if missing:
                raise DataError(f"patient {p.patient_id}: maps not loaded for {missing}")
        self.grid = grid
        limit = min(grid) // 2
        choices = (fixed_n,) if fixed_n is not None else tuple(int(c) for c in n_choices)
        if len(choices) == 0:
            raise ConfigError("n_choices must not be empty")
        for c in choices:
            if not 1 <= int(c) <= limit:
                raise ConfigError(f"n={c} is outside 1..{limit} (window 2n must fit the {grid} map grid)")
        self.n_choices = tuple(int(c) for c in n_choices)
        self.fixed_n = None if fixed_n is None else int(fixed_n)

        self.index: list[tuple[int, int, int]] = []
        self._map_max: dict[tuple[int, int, int], float] = {}
        self.n_skipped = 0
        for pi, p in enumerate(self.patients):
            for s in range(p.n_slices):
                for mi, met in enumerate(self.metabolites):
                    sl = p.maps[met][s]
                    if self.mask_rule == "patient":
                        sl = sl * p.mask[s]
                    vmax = float(sl.max()) if sl.size else 0.0
                    if vmax <= 0:
                        self.n_skipped += 1
                        continue
                    self.index.append((pi, s, mi))
                    self._map_max[(pi, s, mi)] = vmax
        if self.n_skipped:
            log.info(
                "MRSIDataset: left out %d (patient, slice, metabolite) maps with no positive voxel",
                self.n_skipped,
            )
        if not self.index:
            raise DataError("MRSIDataset: no map with a positive voxel in the given patients")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random n / augmentation the items use."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def _draw(self, idx: int, epoch: int) -> dict:
        rng = _item_generator(self.seed, epoch if self.train else 0, idx)
        n = self.fixed_n if self.fixed_n is not None else int(rng.choice(self.n_choices))
        aug = {"k": 0, "flip_h": False, "flip_w": False, "dy": 0, "dx": 0, "flip_z": False}
        if self.augment:
            aug = {
                "k": int(rng.integers(0, 4)) * (1 if self.grid[0] == self.grid[1] else 2),
                "flip_h": bool(rng.integers(0, 2)),
                "flip_w": bool(rng.integers(0, 2)),
                "dy": int(rng.integers(-self.max_shift, self.max_shift + 1)),
                "dx": int(rng.integers(-self.max_shift, self.max_shift + 1)),
                "flip_z": bool(rng.integers(0, 2)),
            }
        return {"n": n, **aug}

    @staticmethod
    def _spatial(x: np.ndarray, aug: dict, factor: int) -> np.ndarray:
        """Apply rot90 / flips / circular shift (scaled by ``factor``) on axes 0 and 1 (numpy views
        where possible; numpy keeps this single-threaded, which is fastest for small arrays)."""
        if aug["k"]:
            x = np.rot90(x, aug["k"], axes=(0, 1))
        if aug["flip_h"]:
            x = x[::-1]
        if aug["flip_w"]:
            x = x[:, ::-1]
        if aug["dy"] or aug["dx"]:
            x = np.roll(x, (aug["dy"] * factor, aug["dx"] * factor), axis=(0, 1))
        return x

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Item ``key``: an index (drawn for the epoch of :meth:`set_epoch`) or ``(epoch, index)``
        (drawn for that epoch; what a persistent loader worker gets, whose copy of the dataset
        does not see ``set_epoch``)."""
        epoch, idx = key if isinstance(key, tuple) else (self.epoch, key)
        pi, s, mi = self.index[idx]
        p = self.patients[pi]
        met = self.metabolites[mi]
        scale = self._map_max[(pi, s, mi)]
        raw = np.asarray(p.maps[met][s], dtype=np.float32)
        mask = raw != 0 if self.mask_rule == "map" else p.mask[s]
        hr = np.where(mask, raw / np.float32(scale), np.float32(0)).astype(np.float32)
        mri = {}
        for key in ("t1", "flair"):
            slab = np.asarray(getattr(p, key)[s], dtype=np.float32)
            vmax = float(slab.max())
            mri[key] = slab / np.float32(vmax) if vmax > 0 else slab
        draw = self._draw(idx, epoch)
        if self.augment:
            hr = self._spatial(hr, draw, 1)
            mask = self._spatial(mask, draw, 1)
            for key in mri:
                m = self._spatial(mri[key], draw, MRI_FACTOR)
                mri[key] = m[:, :, ::-1] if draw["flip_z"] else m
        hr_t = torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32))[None]
        met_id = metabolite_index(met, METABOLITES) if met in METABOLITES else mi
        item = {
            "hr": hr_t,
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None],
            "t1": torch.from_numpy(np.ascontiguousarray(mri["t1"], dtype=np.float32))[None],
            "flair": torch.from_numpy(np.ascontiguousarray(mri["flair"], dtype=np.float32))[None],
            "n": torch.tensor(draw["n"], dtype=torch.int64),
            "met": torch.tensor(met_id, dtype=torch.int64),
            "scale": torch.tensor(scale, dtype=torch.float32),
            "patient": p.patient_id,
            "slice": int(s),
        }
        if self.with_lr:
            item["lr"] = truncate_kspace(hr_t, draw["n"])
        return item
