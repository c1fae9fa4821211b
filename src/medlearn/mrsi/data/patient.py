"""The in-memory patient (:class:`PatientData`) and the checks every layout reader shares.

In memory every patient becomes a :class:`PatientData` with maps (S, H, W) and MRI slabs
(S, 3H, 3W, 3): the last axis holds the 3 MRI sub-slices of each MRSI slice.

Quality mask rule: with a ``quality_mask`` file (nifti layout), the mask is that file (non-zero)
and maps are set to 0 outside it; otherwise (reference data) a voxel is valid when at least one
loaded metabolite map is non-zero there (union of ``map != 0``; the reference zeroes failed voxels
in every map, so union and intersection agree on reference data).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITES, MRI_FACTOR

LAYOUTS = ("npy", "nifti")


@dataclass
class PatientData:
    """One patient in memory.

    Attributes:
        patient_id: folder name, e.g. ``"Patient3"``.
        maps: metabolite name -> (S, H, W) float32, 0 where quality control failed.
        t1: (S, 3H, 3W, 3) float32 MRI slabs (3 sub-slices per MRSI slice, last axis).
        flair: (S, 3H, 3W, 3) float32.
        mask: (S, H, W) bool quality mask (see the module docstring for the rule).
        map_affine: (4, 4) voxel-to-world affine of the map grid (i=H, j=W, k=S), or None (npy).
        mri_affine: (4, 4) affine of the MRI grid (3H, 3W, 3S), or None (npy).
        source: the patient folder.
        layout: ``"npy"`` or ``"nifti"``.
    """

    patient_id: str
    maps: dict[str, np.ndarray]
    t1: np.ndarray
    flair: np.ndarray
    mask: np.ndarray
    map_affine: np.ndarray | None = None
    mri_affine: np.ndarray | None = None
    source: Path | None = None
    layout: str = "npy"

    @property
    def n_slices(self) -> int:
        return int(self.mask.shape[0])

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the metabolite grid."""
        return int(self.mask.shape[1]), int(self.mask.shape[2])


def metabolite_index(name: str, metabolites: Sequence[str] = METABOLITES) -> int:
    """Position of a metabolite name in ``metabolites`` (the metabolite id).

    Raises:
        ConfigError: for an unknown name, listing the valid ones.
    """
    try:
        return list(metabolites).index(name)
    except ValueError:
        raise ConfigError(f"unknown metabolite {name!r}; valid names: {', '.join(metabolites)}") from None


def _check_metabolites(metabolites: Sequence[str]) -> None:
    if len(metabolites) == 0:
        raise ConfigError("metabolites must list at least one metabolite")
    if len(set(metabolites)) != len(metabolites):
        raise ConfigError(f"metabolites contains duplicates: {list(metabolites)}")


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _check_finite(arr: np.ndarray, path: Path) -> None:
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: contains {bad} NaN/inf values")


def _mri_to_slabs(mri: np.ndarray, n_slices: int, path: Path) -> np.ndarray:
    """(3S, 3H, 3W) sub-slice stack -> (S, 3H, 3W, 3) slabs."""
    if mri.shape[0] != MRI_FACTOR * n_slices:
        raise DataError(
            f"{path}: has {mri.shape[0]} MRI slices, expected {MRI_FACTOR} per MRSI slice = {MRI_FACTOR * n_slices}"
        )
    s3, h3, w3 = mri.shape
    return np.ascontiguousarray(mri.reshape(n_slices, MRI_FACTOR, h3, w3).transpose(0, 2, 3, 1))


def _check_map_shapes(maps: dict[str, np.ndarray], paths: dict[str, Path]) -> tuple[int, int, int]:
    first = next(iter(maps))
    shape = maps[first].shape
    for met, arr in maps.items():
        if arr.shape != shape:
            raise DataError(f"{paths[met]}: map shape {arr.shape} differs from {paths[first].name} {shape}")
    if min(shape) < 1:
        raise DataError(f"{paths[first]}: empty map of shape {shape}")
    return shape  # type: ignore[return-value]


def _check_mri_grid(mri: np.ndarray, map_shape: tuple[int, int, int], path: Path) -> None:
    s, h, w = map_shape
    want = (s, MRI_FACTOR * h, MRI_FACTOR * w, MRI_FACTOR)
    if mri.shape != want:
        raise DataError(
            f"{path}: MRI grid {mri.shape[1:3]} x {mri.shape[0]} slabs is not {MRI_FACTOR}x the metabolite grid "
            f"{(h, w)} x {s} slices (expected slabs of shape {want}, got {mri.shape})"
        )


def _union_mask(maps: dict[str, np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """(S, H, W) bool: voxels where at least one map is non-zero (the rule without a mask file)."""
    mask = np.zeros(shape, dtype=bool)
    for arr in maps.values():
        mask |= arr != 0
    return mask
