"""Writers of tiny patients in both MRSI layouts (values known, so readers can be checked)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medlearn.mrsi.constants import METABOLITES

S, H, W = 2, 8, 10


def make_maps(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Positive maps (S, H, W) with a zero border row standing for failed voxels."""
    maps = {}
    for met in METABOLITES:
        a = rng.uniform(0.5, 2.0, size=(S, H, W)).astype(np.float32)
        a[:, 0, :] = 0.0
        maps[met] = a
    return maps


def make_mri(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(1.0, 100.0, size=(3 * S, 3 * H, 3 * W)).astype(np.float32)


def write_npy_patient(root: Path, pid: str, seed: int = 0, skip=(), mri_shape=None) -> dict:
    rng = np.random.default_rng(seed)
    maps, t1, flair = make_maps(rng), make_mri(rng), make_mri(rng)
    pdir = root / pid
    (pdir / "Met_filtered").mkdir(parents=True)
    (pdir / "MRI_sliced").mkdir()
    for met, arr in maps.items():
        if met not in skip:
            np.save(pdir / "Met_filtered" / f"{met}.npy", arr)
    if mri_shape is not None:
        t1 = np.ones(mri_shape, np.float32)
    np.save(pdir / "MRI_sliced" / "T1_sliced.npy", t1)
    np.save(pdir / "MRI_sliced" / "flair_sliced.npy", flair)
    return {"maps": maps, "t1": t1, "flair": flair}


def map_affine(v: float = 3.4) -> np.ndarray:
    a = np.diag([v, v, 2 * v, 1.0])
    a[:3, 3] = [-20.0, 10.0, 5.0]
    return a


def mri_affine(a: np.ndarray) -> np.ndarray:
    """MRI grid: same corner voxel centre shifted by one MRI voxel, voxels 3x smaller (by hand)."""
    b = a.copy()
    b[:3, :3] = a[:3, :3] / 3
    b[:3, 3] = a[:3, 3] - a[:3, :3].sum(axis=1) / 3  # voxel 1 of the fine grid = voxel 0 of the map
    return b


def write_nifti_patient(root: Path, pid: str, seed: int = 0, kind: str | None = None, names=None) -> dict:
    rng = np.random.default_rng(seed)
    maps, t1, flair = make_maps(rng), make_mri(rng), make_mri(rng)
    pdir = root / pid
    conc = pdir / "concs" / kind if kind else pdir / "concs"
    conc.mkdir(parents=True)
    aff = map_affine()
    for met, arr in maps.items():
        name = (names or {}).get(met, met)
        nib.save(nib.Nifti1Image(arr.transpose(1, 2, 0), aff), str(conc / f"{name}.nii.gz"))
    for name, arr in (("T1", t1), ("FLAIR", flair)):
        nib.save(nib.Nifti1Image(arr.transpose(1, 2, 0), mri_affine(aff)), str(pdir / f"{name}.nii.gz"))
    return {"maps": maps, "t1": t1, "flair": flair, "affine": aff}
