"""Reader of the ``npy`` layout (the reference tree)::

    <root>/<patient>/Met_filtered/<met>.npy           (S, H, W)   metabolite maps, failed voxels = 0
    <root>/<patient>/MRI_sliced/T1_sliced.npy         (3S, 3H, 3W) MRI sub-slices 3s..3s+2 = MRSI slice s
    <root>/<patient>/MRI_sliced/flair_sliced.npy      (3S, 3H, 3W)

The quality mask is the union of ``map != 0`` (see :mod:`medlearn.mrsi.data.patient`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medlearn.errors import DataError
from medlearn.mrsi.data.patient import (
    PatientData,
    _check_finite,
    _check_map_shapes,
    _check_mri_grid,
    _mri_to_slabs,
    _union_mask,
)

MAPS_DIR = "Met_filtered"
MRI_DIR = "MRI_sliced"
MRI_FILES = {"t1": "T1_sliced.npy", "flair": "flair_sliced.npy"}


def _load_npy(path: Path, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: cannot read .npy file ({exc})") from exc
    if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: expected a numeric {ndim}-d array, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    _check_finite(arr, path)
    return arr


def load_npy_patient(pdir: Path, metabolites: Sequence[str]) -> PatientData:
    """Read ``<pdir>/Met_filtered/<met>.npy`` (S, H, W) and ``MRI_sliced/{T1,flair}_sliced.npy`` (3S, 3H, 3W).

    Raises:
        DataError: naming the file for a missing or unreadable file, NaN/inf, maps of different
            shapes, or MRI stacks that are not 3 sub-slices per slice on a 3x finer grid.
    """
    maps: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for met in metabolites:
        path = pdir / MAPS_DIR / f"{met}.npy"
        if not path.is_file():
            raise DataError(f"{path}: metabolite file missing (metabolite {met!r})")
        maps[met] = _load_npy(path, 3)
        paths[met] = path
    shape = _check_map_shapes(maps, paths)
    mri = {}
    for key, name in MRI_FILES.items():
        path = pdir / MRI_DIR / name
        slabs = _mri_to_slabs(_load_npy(path, 3), shape[0], path)
        _check_mri_grid(slabs, shape, path)
        mri[key] = slabs
    mask = _union_mask(maps, shape)
    return PatientData(pdir.name, maps, mri["t1"], mri["flair"], mask, source=pdir, layout="npy")
