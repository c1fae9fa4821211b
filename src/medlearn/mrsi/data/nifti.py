"""Reader of the ``nifti`` layout (clinical; e.g. FSL-MRS ``concs/<kind>/<met>.nii.gz``), with the
resampling that brings an acquired MRI onto the grid this layout needs::

    <root>/<patient>/concs[/<kind>]/<met>.nii.gz      (H, W, S)    one volume per metabolite
    <root>/<patient>/T1.nii.gz, FLAIR.nii.gz          (3H, 3W, 3S) on a grid 3x finer than the maps
    <root>/<patient>/quality_mask.nii.gz              (H, W, S)    optional, non-zero = voxel passed QC

With a ``quality_mask`` file, maps are set to 0 outside it; without one the mask is the union of
``map != 0`` (see :mod:`medlearn.mrsi.data.patient`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medlearn.errors import DataError
from medlearn.mrsi.constants import METABOLITE_ALIASES, MRI_FACTOR
from medlearn.mrsi.data.patient import (
    PatientData,
    _check_finite,
    _check_map_shapes,
    _check_mri_grid,
    _mri_to_slabs,
    _union_mask,
)

MAPS_DIR = "concs"
MRI_STEMS = {"t1": ("T1", "t1"), "flair": ("FLAIR", "flair", "Flair")}
MASK_STEMS = ("quality_mask",)
EXTENSIONS = (".nii.gz", ".nii")


def _find_nifti(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for ext in EXTENSIONS:
            path = folder / f"{stem}{ext}"
            if path.is_file():
                return path
    return None


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data (X, Y, Z) float32, affine (4, 4)); trailing singleton dims dropped; 2-d -> one slice."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-d volume, got shape {data.shape}")
    _check_finite(data, path)
    return data, np.asarray(img.affine, dtype=np.float64)


def mri_affine_from_map_affine(map_affine: np.ndarray, factor: int = MRI_FACTOR) -> np.ndarray:
    """Affine of the MRI grid that subdivides every map voxel into factor^3 voxels.

    MRI voxel ``factor * i + (factor - 1) / 2`` has its centre at map voxel ``i``'s centre.
    """
    sub = np.diag([1.0 / factor] * 3 + [1.0])
    sub[:3, 3] = -(factor - 1) / (2.0 * factor)
    return np.asarray(map_affine, dtype=np.float64) @ sub


def resample_mri_to_map_grid(
    mri_path: str | Path, map_path: str | Path, out_path: str | Path, order: int = 1
) -> Path:
    """Resample an MRI volume (any grid) onto the map grid subdivided 3x, as the nifti layout needs.

    The output has shape (3H, 3W, 3S) and the affine :func:`mri_affine_from_map_affine` of the
    map's affine, so :func:`load_patient` accepts it.  Interpolation is spline ``order`` (1 =
    trilinear) in world coordinates; voxels outside the source volume become 0.

    Args:
        mri_path: T1 or FLAIR NIfTI on its own grid (e.g. the acquired 3D volume).
        map_path: one metabolite map NIfTI (H, W, S) of the same patient, e.g. ``concs/NAA.nii.gz``.
        out_path: where to write the resampled NIfTI.
        order: spline order (0 nearest, 1 trilinear, 3 cubic).
    Raises:
        DataError: if a file cannot be read.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    mri_path, map_path, out_path = Path(mri_path), Path(map_path), Path(out_path)
    map_data, map_aff = _load_nifti(map_path)
    map_shape = map_data.shape
    if not mri_path.is_file():
        raise DataError(f"{mri_path}: file not found")
    try:
        src = nib.load(str(mri_path))
        if len(src.shape) > 3:
            src = nib.Nifti1Image(np.asarray(src.dataobj).reshape(src.shape[:3]), src.affine)
    except Exception as exc:
        raise DataError(f"{mri_path}: cannot read NIfTI ({type(exc).__name__}: {exc})") from exc
    target_shape = tuple(MRI_FACTOR * d for d in map_shape)
    target_aff = mri_affine_from_map_affine(map_aff)
    res = resample_from_to(src, (target_shape, target_aff), order=order, mode="constant", cval=0.0)
    img = nib.Nifti1Image(np.asarray(res.dataobj, dtype=np.float32), target_aff)
    img.set_sform(target_aff, code=1)
    img.set_qform(target_aff, code=1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out_path))
    return out_path


def _affine_tol(affine: np.ndarray) -> float:
    """Tolerance in mm: 1% of the smallest voxel size."""
    return 0.01 * float(np.linalg.norm(affine[:3, :3], axis=0).min())


def load_nifti_patient(
    pdir: Path, metabolites: Sequence[str], conc_kind: str | None, check_geometry: bool
) -> PatientData:
    """Read ``<pdir>/concs[/<conc_kind>]/<met>.nii.gz`` (H, W, S), ``T1``/``FLAIR`` (3H, 3W, 3S) and an
    optional ``quality_mask`` (H, W, S); ``check_geometry`` also requires one map affine and an MRI
    affine equal to :func:`mri_affine_from_map_affine` of it.

    Raises:
        DataError: naming the file for a missing or unreadable file, NaN/inf, mismatched shapes
            or (with ``check_geometry``) inconsistent affines.
    """
    conc_dir = pdir / MAPS_DIR if conc_kind is None else pdir / MAPS_DIR / conc_kind
    if not conc_dir.is_dir():
        raise DataError(f"{conc_dir}: concentration folder not found")
    maps: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    affines: dict[str, np.ndarray] = {}
    for met in metabolites:
        stems = METABOLITE_ALIASES.get(met, (met,))
        path = _find_nifti(conc_dir, stems)
        if path is None:
            tried = ", ".join(f"{s}.nii.gz" for s in stems)
            raise DataError(f"{conc_dir}: metabolite file missing for {met!r} (looked for {tried})")
        data, affine = _load_nifti(path)
        maps[met] = np.ascontiguousarray(data.transpose(2, 0, 1))  # (H, W, S) -> (S, H, W)
        paths[met] = path
        affines[met] = affine
    shape = _check_map_shapes(maps, paths)
    first = next(iter(affines))
    map_affine = affines[first]
    if check_geometry:
        tol = _affine_tol(map_affine)
        for met, aff in affines.items():
            if not np.allclose(aff, map_affine, atol=tol):
                raise DataError(
                    f"{paths[met]}: affine differs from {paths[first].name} (max diff "
                    f"{np.abs(aff - map_affine).max():.4g} mm); all metabolite maps must share one grid"
                )
    mri: dict[str, np.ndarray] = {}
    mri_affines: dict[str, np.ndarray] = {}
    for key, stems in MRI_STEMS.items():
        path = _find_nifti(pdir, stems)
        if path is None:
            raise DataError(f"{pdir}: {stems[0]}.nii.gz not found")
        data, affine = _load_nifti(path)
        stack = np.ascontiguousarray(data.transpose(2, 0, 1))  # (3H, 3W, 3S) -> (3S, 3H, 3W)
        slabs = _mri_to_slabs(stack, shape[0], path)
        _check_mri_grid(slabs, shape, path)
        if check_geometry:
            want = mri_affine_from_map_affine(map_affine)
            if not np.allclose(affine, want, atol=_affine_tol(want)):
                raise DataError(
                    f"{path}: MRI affine is not geometrically consistent with the metabolite grid of "
                    f"{paths[first].name} (expected the same field of view, {MRI_FACTOR}x finer voxels; max diff "
                    f"{np.abs(affine - want).max():.4g} mm). Resample the MRI onto that grid first."
                )
        mri[key] = slabs
        mri_affines[key] = affine
    mask_path = _find_nifti(pdir, MASK_STEMS)
    if mask_path is not None:
        data, affine = _load_nifti(mask_path)
        mask = np.ascontiguousarray(data.transpose(2, 0, 1)) != 0
        if mask.shape != shape:
            raise DataError(f"{mask_path}: quality mask shape {mask.shape} differs from the maps' {shape}")
        if check_geometry and not np.allclose(affine, map_affine, atol=_affine_tol(map_affine)):
            raise DataError(f"{mask_path}: affine differs from the metabolite maps'")
        for met in maps:
            maps[met] = np.where(mask, maps[met], np.float32(0)).astype(np.float32)
    else:
        mask = _union_mask(maps, shape)
    return PatientData(
        pdir.name,
        maps,
        mri["t1"],
        mri["flair"],
        mask,
        map_affine=map_affine,
        mri_affine=mri_affines["t1"],
        source=pdir,
        layout="nifti",
    )
