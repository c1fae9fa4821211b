"""MRSI data layer: patient readers for both on-disk layouts, validation, and the training dataset.

Layouts (``root`` is the folder holding one sub-folder per patient):

``npy`` (the reference tree)::

    <root>/<patient>/Met_filtered/<met>.npy           (S, H, W)   metabolite maps, failed voxels = 0
    <root>/<patient>/MRI_sliced/T1_sliced.npy         (3S, 3H, 3W) MRI sub-slices 3s..3s+2 = MRSI slice s
    <root>/<patient>/MRI_sliced/flair_sliced.npy      (3S, 3H, 3W)

``nifti`` (clinical; e.g. FSL-MRS ``concs/<kind>/<met>.nii.gz``)::

    <root>/<patient>/concs[/<kind>]/<met>.nii.gz      (H, W, S)    one volume per metabolite
    <root>/<patient>/T1.nii.gz, FLAIR.nii.gz          (3H, 3W, 3S) on a grid 3x finer than the maps
    <root>/<patient>/quality_mask.nii.gz              (H, W, S)    optional, non-zero = voxel passed QC

In memory every patient becomes a :class:`PatientData` with maps (S, H, W) and MRI slabs
(S, 3H, 3W, 3): the last axis holds the 3 MRI sub-slices of each MRSI slice.

Quality mask rule: with a ``quality_mask`` file, the mask is that file (non-zero) and maps are set
to 0 outside it; otherwise (reference data) a voxel is valid when at least one loaded metabolite
map is non-zero there (union of ``map != 0``; the reference zeroes failed voxels in every map, so
union and intersection agree on reference data).  The dataset's per-sample mask follows the
reference, ``HR != 0`` of that map (``mask_rule="map"``, default) or the patient mask
(``mask_rule="patient"``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITE_ALIASES, METABOLITES, MRI_FACTOR
from medlearn.mrsi.kspace import truncate_kspace

__all__ = [
    "PatientData",
    "load_patient",
    "list_patients",
    "detect_layout",
    "metabolite_index",
    "MRSIDataset",
    "LAYOUTS",
    "mri_affine_from_map_affine",
    "resample_mri_to_map_grid",
    "verify_dataset",
]

log = logging.getLogger(__name__)

LAYOUTS = ("npy", "nifti")
_NPY_MAPS = "Met_filtered"
_NPY_MRI = "MRI_sliced"
_NPY_MRI_FILES = {"t1": "T1_sliced.npy", "flair": "flair_sliced.npy"}
_NII_MAPS = "concs"
_NII_MRI_STEMS = {"t1": ("T1", "t1"), "flair": ("FLAIR", "flair", "Flair")}
_NII_MASK_STEMS = ("quality_mask",)
_NII_EXT = (".nii.gz", ".nii")


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


def detect_layout(patient_dir: Path) -> str:
    """``"npy"`` if ``Met_filtered/`` exists, ``"nifti"`` if ``concs/`` exists.

    Raises:
        DataError: if the folder is missing or has neither.
    """
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise DataError(f"{patient_dir}: patient folder not found")
    if (patient_dir / _NPY_MAPS).is_dir():
        return "npy"
    if (patient_dir / _NII_MAPS).is_dir():
        return "nifti"
    raise DataError(
        f"{patient_dir}: cannot tell the layout: expected a '{_NPY_MAPS}/' folder (npy layout) "
        f"or a '{_NII_MAPS}/' folder (nifti layout)"
    )


def list_patients(root: str | Path, layout: str = "auto") -> list[str]:
    """Patient folder names under ``root`` in natural order (Patient2 before Patient10).

    Args:
        root: folder with one sub-folder per patient.
        layout: ``"npy"``, ``"nifti"`` or ``"auto"`` (either).
    Raises:
        DataError: if ``root`` is missing or holds no patient folder.
    """
    root = Path(root)
    if layout not in (*LAYOUTS, "auto"):
        raise ConfigError(f"layout must be one of {LAYOUTS + ('auto',)}, got {layout!r}")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    markers = {"npy": (_NPY_MAPS,), "nifti": (_NII_MAPS,), "auto": (_NPY_MAPS, _NII_MAPS)}[layout]
    found = [p.name for p in root.iterdir() if p.is_dir() and any((p / m).is_dir() for m in markers)]
    if not found:
        hint = [str(root / lay) for lay in LAYOUTS if (root / lay).is_dir()]
        raise DataError(
            f"{root}: no patient folders found for layout {layout!r} "
            f"(a patient folder holds {' or '.join(m + '/' for m in markers)})"
            + (f"; did you mean {' or '.join(hint)}?" if hint else "")
        )
    return sorted(found, key=_natural_key)


def _check_finite(arr: np.ndarray, path: Path) -> None:
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: contains {bad} NaN/inf values")


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


def _load_npy_patient(pdir: Path, metabolites: Sequence[str]) -> PatientData:
    maps: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for met in metabolites:
        path = pdir / _NPY_MAPS / f"{met}.npy"
        if not path.is_file():
            raise DataError(f"{path}: metabolite file missing (metabolite {met!r})")
        maps[met] = _load_npy(path, 3)
        paths[met] = path
    shape = _check_map_shapes(maps, paths)
    mri = {}
    for key, name in _NPY_MRI_FILES.items():
        path = pdir / _NPY_MRI / name
        slabs = _mri_to_slabs(_load_npy(path, 3), shape[0], path)
        _check_mri_grid(slabs, shape, path)
        mri[key] = slabs
    mask = np.zeros(shape, dtype=bool)
    for arr in maps.values():
        mask |= arr != 0
    return PatientData(pdir.name, maps, mri["t1"], mri["flair"], mask, source=pdir, layout="npy")


def _find_nifti(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for ext in _NII_EXT:
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


def _load_nifti_patient(
    pdir: Path, metabolites: Sequence[str], conc_kind: str | None, check_geometry: bool
) -> PatientData:
    conc_dir = pdir / _NII_MAPS if conc_kind is None else pdir / _NII_MAPS / conc_kind
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
    for key, stems in _NII_MRI_STEMS.items():
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
    mask_path = _find_nifti(pdir, _NII_MASK_STEMS)
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
        mask = np.zeros(shape, dtype=bool)
        for arr in maps.values():
            mask |= arr != 0
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


def load_patient(
    root: str | Path,
    patient_id: str,
    layout: str = "auto",
    metabolites: Sequence[str] = METABOLITES,
    conc_kind: str | None = None,
    check_geometry: bool = True,
) -> PatientData:
    """Read and validate one patient.

    Args:
        root: folder holding the patient folders.
        patient_id: the patient folder name.
        layout: ``"npy"``, ``"nifti"`` or ``"auto"`` (detected from the folder).
        metabolites: which maps to read (names of :data:`METABOLITES` or any file stem).
        conc_kind: nifti only: sub-folder of ``concs/`` to read (FSL-MRS writes ``raw``,
            ``internal``, ``molality``, ``molarity``); None reads ``concs/`` itself.
        check_geometry: nifti only: require identical map affines and an MRI affine that is the
            map grid subdivided 3x (see :func:`mri_affine_from_map_affine`).
    Returns:
        :class:`PatientData`.
    Raises:
        DataError: naming the file for a missing metabolite/MRI file, unreadable file, NaN/inf,
            maps of different shapes, MRI not 3x the map grid or not 3 sub-slices per slice,
            inconsistent affines.
        ConfigError: for an unknown layout or an empty/duplicated metabolite list.
    """
    _check_metabolites(metabolites)
    if layout not in (*LAYOUTS, "auto"):
        raise ConfigError(f"layout must be one of {LAYOUTS + ('auto',)}, got {layout!r}")
    pdir = Path(root) / patient_id
    found = detect_layout(pdir)
    if layout == "auto":
        layout = found
    if layout == "npy":
        return _load_npy_patient(pdir, metabolites)
    return _load_nifti_patient(pdir, metabolites, conc_kind, check_geometry)


def verify_dataset(
    root: str | Path,
    layout: str = "auto",
    metabolites: Sequence[str] = METABOLITES,
    conc_kind: str | None = None,
    check_geometry: bool = True,
) -> dict[str, str | None]:
    """Check every patient under ``root`` before training (all problems at once, not the first).

    Returns:
        patient id -> None when it loads and shares the metabolite grid of the first valid
        patient, else the error message (which names the file).
    Raises:
        DataError: if ``root`` holds no patient folder.
    """
    report: dict[str, str | None] = {}
    grid: tuple[tuple[int, int], str] | None = None
    for pid in list_patients(root, layout):
        try:
            p = load_patient(root, pid, layout, metabolites, conc_kind, check_geometry)
        except DataError as exc:
            report[pid] = str(exc)
            continue
        if grid is None:
            grid = (p.grid, pid)
        report[pid] = (
            None if p.grid == grid[0] else f"{pid}: map grid {p.grid} differs from {grid[1]}'s {grid[0]}"
        )
    bad = sum(v is not None for v in report.values())
    if bad:
        log.warning("%d of %d patients under %s failed validation", bad, len(report), root)
    return report


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
    epoch 0 so they are identical every time).  Augmentation (spec section 2) is drawn from the same
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

    def _draw(self, idx: int) -> dict:
        rng = _item_generator(self.seed, self.epoch if self.train else 0, idx)
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

    def __getitem__(self, idx: int) -> dict:
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
        draw = self._draw(idx)
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
