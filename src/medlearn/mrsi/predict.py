"""Apply a trained generator to NIfTI files: LR metabolite map + T1 + FLAIR -> SR map.

Geometry: the map (H, W, S) and the MRI (3H, 3W, 3S) follow the nifti layout of
:mod:`medlearn.mrsi.data` (MRI grid = map grid subdivided 3x).  The output is written on the
input map's grid with the input map's affine.  A map given on its acquired low-resolution matrix
(2n x 2n in-plane) is first zero-filled in k-space onto the grid implied by the MRI (H = MRI / 3),
and the output then takes the affine of that grid (derived from the T1 affine).

Intensities: each slice is divided by its LR maximum, super-resolved, and multiplied back, so the
output is in the input's units.  Without a quality mask every voxel is predicted.

:class:`MRSIPredictor` (from :func:`load_mrsi`, also ``medlearn.load_mrsi``) offers the same on numpy
arrays; both paths share :func:`check_geometry`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlearn.errors import ConfigError, DataError
from medlearn.io import read_nifti, write_nifti
from medlearn.mrsi.constants import METABOLITE_ALIASES, METABOLITES, MRI_FACTOR
from medlearn.mrsi.kspace import centered_fft2, centered_ifft2

log = logging.getLogger(__name__)

__all__ = [
    "InputNames",
    "MRSIPredictor",
    "check_geometry",
    "check_sharpness",
    "half_window",
    "load_mrsi",
    "metabolite_from_name",
    "predict_file",
    "predict_folder",
    "predict_volume",
    "zero_fill",
]


def metabolite_from_name(name: str) -> int:
    """Metabolite id of a name or file stem (``NAA``, ``Cr+PCr`` ...).

    Raises:
        DataError: for an unknown name.
    """
    for mid, met in enumerate(METABOLITES):
        if name == met or name in METABOLITE_ALIASES.get(met, ()):
            return mid
    raise DataError(f"unknown metabolite '{name}'; known: {', '.join(METABOLITES)} (and aliases)")


def zero_fill(small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, S) low-resolution slices -> (H, W, S) by centred k-space zero-filling (magnitude, same units)."""
    x = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1))).double()
    h, w = x.shape[-2:]
    k = centered_fft2(x)
    big = torch.zeros((x.shape[0], *size), dtype=k.dtype)
    oy, ox = size[0] // 2 - h // 2, size[1] // 2 - w // 2
    big[:, oy : oy + h, ox : ox + w] = k
    img = centered_ifft2(big).abs() * float(np.sqrt(size[0] * size[1] / (h * w)))
    return img.numpy().transpose(1, 2, 0).astype(np.float32)


def check_sharpness(
    value: float, trained_range: tuple[float, float] | None, allow_extrapolation: bool = False
) -> float:
    """Refuse a sharpness lambda outside the range the model was trained on.

    Args:
        value: the requested lambda.
        trained_range: (lowest, highest) trained lambda (:func:`~medlearn.mrsi.evaluate.trained_sharpness_range`); None
            (a model without a run config) checks only that ``value`` is finite.
        allow_extrapolation: warn with the range instead of refusing (no check: the reference).
    Returns:
        ``value`` as a float.
    Raises:
        ConfigError: ``value`` is not finite, or outside ``trained_range`` without ``allow_extrapolation``.
    """
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"sharpness must be a finite number, got {value}")
    if trained_range is None:
        return value
    lo, hi = (float(v) for v in trained_range)
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))
    if lo - tol <= value <= hi + tol:
        return value
    msg = f"sharpness {value:g} is outside the lambda range this model was trained on, [{lo:g}, {hi:g}]"
    if not allow_extrapolation:
        raise ConfigError(msg + "; pick a value in that range (0 = smoothest)")
    log.warning("%s: the output is an extrapolation", msg)
    return value


@torch.no_grad()
def predict_volume(
    gen: nn.Module,
    lr_map: np.ndarray,
    t1: np.ndarray,
    flair: np.ndarray,
    met: int,
    n: int,
    lam: float,
    mask: np.ndarray | None = None,
    batch_size: int = 16,
    allow_extrapolation: bool = False,
) -> np.ndarray:
    """Super-resolve every slice of a volume.

    Args:
        lr_map: (H, W, S) low-resolution map on the high-resolution grid.
        t1, flair: (3H, 3W, 3S) MRI volumes.
        met: metabolite id; n: window half-size (low-resolution matrix 2n); lam: sharpness.
        mask: optional (H, W, S) quality mask (non-zero = keep).
        allow_extrapolation: accept a ``lam`` outside the generator's trained range (its
            ``sharpness_range`` attribute, set by :func:`~medlearn.mrsi.evaluate.load_generator`)
            with a warning instead of a :class:`ConfigError` (:func:`check_sharpness`).
    Returns:
        (H, W, S) float32 in the units of ``lr_map``.
    """
    lam = check_sharpness(lam, getattr(gen, "sharpness_range", None), allow_extrapolation)
    h, w, s = lr_map.shape
    f = MRI_FACTOR
    dev = next(gen.parameters()).device
    maps = torch.from_numpy(np.ascontiguousarray(lr_map.transpose(2, 0, 1))).float()  # (S, H, W)
    slabs = {}
    for key, vol in (("t1", t1), ("flair", flair)):
        v = torch.from_numpy(np.ascontiguousarray(vol)).float()  # (3H, 3W, 3S)
        v = v.reshape(f * h, f * w, s, f).permute(2, 0, 1, 3)  # (S, 3H, 3W, 3)
        vmax = v.amax(dim=(1, 2, 3), keepdim=True)
        slabs[key] = torch.where(vmax > 0, v / vmax.clamp_min(1e-12), v)
    scale = maps.amax(dim=(1, 2))
    out = torch.zeros_like(maps)
    keep = torch.nonzero(scale > 0).flatten().tolist()
    for i in range(0, len(keep), batch_size):
        idx = keep[i : i + batch_size]
        b = len(idx)
        lr = (maps[idx] / scale[idx, None, None])[:, None].to(dev)
        m = None
        if mask is not None:
            m = (
                torch.from_numpy(np.ascontiguousarray((mask != 0).transpose(2, 0, 1)[idx]))
                .float()[:, None]
                .to(dev)
            )
        sr = gen(
            slabs["t1"][idx][:, None].to(dev), slabs["flair"][idx][:, None].to(dev), lr,
            torch.full((b,), int(n), device=dev), torch.full((b,), int(met), device=dev),
            torch.full((b,), float(lam), device=dev), m,
        )  # fmt: skip
        out[idx] = sr[:, 0].float().cpu() * scale[idx, None, None]
    return out.numpy().transpose(1, 2, 0)


def _map_affine_from_mri(mri_affine: np.ndarray, factor: int = MRI_FACTOR) -> np.ndarray:
    """Inverse of :func:`medlearn.mrsi.data.mri_affine_from_map_affine`."""
    sub = np.diag([1.0 / factor] * 3 + [1.0])
    sub[:3, 3] = -(factor - 1) / (2.0 * factor)
    return mri_affine @ np.linalg.inv(sub)


@dataclass(frozen=True)
class InputNames:
    """How error messages name the inputs: file paths for files, argument names for arrays."""

    map: str = "lr_map"
    t1: str = "t1"
    flair: str = "flair"
    mask: str = "mask"
    matrix: str = "lowres_matrix"


def half_window(lowres_matrix: int, name: str = "lowres_matrix") -> int:
    """n of an acquired 2n x 2n matrix.

    Raises:
        DataError: ``lowres_matrix`` is odd or below 2.
    """
    if lowres_matrix < 2 or lowres_matrix % 2:
        raise DataError(f"{name} must be an even number >= 2 (it is 2n), got {lowres_matrix}")
    return lowres_matrix // 2


def check_geometry(
    map_shape: tuple[int, ...],
    t1_shape: tuple[int, ...],
    flair_shape: tuple[int, ...],
    lowres_matrix: int,
    mask_shape: tuple[int, ...] | None = None,
    names: InputNames = InputNames(),
) -> tuple[tuple[int, int, int], bool]:
    """Check that a map, T1, FLAIR and mask fit together (the geometry of :mod:`medlearn.mrsi.data`).

    Args:
        map_shape: (H, W, S) on the map grid, or (2n, 2n, S) on the acquired matrix.
        t1_shape, flair_shape: (3H, 3W, 3S).
        lowres_matrix: the acquired matrix 2n.
        mask_shape: (H, W, S) or None.
    Returns:
        (the map grid (H, W, S), True when the map is on the acquired matrix and must be zero-filled).
    Raises:
        DataError: the first mismatch, naming the inputs as ``names`` says.
    """
    n = half_window(lowres_matrix, names.matrix)
    if tuple(t1_shape) != tuple(flair_shape):
        raise DataError(
            f"{names.flair}: FLAIR shape {tuple(flair_shape)} differs from T1 {tuple(t1_shape)} ({names.t1})"
        )
    f = MRI_FACTOR
    if any(d % f for d in t1_shape):
        raise DataError(f"{names.t1}: MRI shape {tuple(t1_shape)} is not a multiple of {f} on every axis")
    grid = tuple(d // f for d in t1_shape)
    acquired = tuple(map_shape) != grid
    if acquired and not (
        tuple(map_shape[:2]) == (lowres_matrix, lowres_matrix) and map_shape[2:] == grid[2:]
    ):
        raise DataError(
            f"{names.map}: map shape {tuple(map_shape)} matches neither the MRI grid / {f} = {grid} "
            f"({names.t1} is {tuple(t1_shape)}) nor the low-resolution matrix {lowres_matrix}x{lowres_matrix}"
        )
    if n > min(grid[:2]) // 2:
        raise DataError(f"{names.matrix} {lowres_matrix} is larger than the {grid[:2]} map grid")
    if mask_shape is not None and tuple(mask_shape) != grid:
        raise DataError(f"{names.mask}: mask shape {tuple(mask_shape)} differs from the map grid {grid}")
    return (grid[0], grid[1], grid[2]), acquired


def predict_file(
    gen: nn.Module,
    map_path: str | Path,
    t1_path: str | Path,
    flair_path: str | Path,
    out_path: str | Path,
    metabolite: str,
    lowres_matrix: int,
    sharpness: float = 0.0,
    mask_path: str | Path | None = None,
    allow_extrapolation: bool = False,
) -> Path:
    """Read the NIfTI inputs, super-resolve, write ``out_path`` with the map's geometry.

    Raises:
        DataError: missing/corrupt files, odd ``lowres_matrix``, or inputs whose shapes do not fit
            (:func:`check_geometry`).
        ConfigError: ``sharpness`` outside the trained range (:func:`check_sharpness`), checked
            before any file is read.
    """
    check_sharpness(sharpness, getattr(gen, "sharpness_range", None), allow_extrapolation)
    n = half_window(lowres_matrix, "--lowres-matrix")
    met = metabolite_from_name(metabolite)
    lr = read_nifti(map_path, expect_ndim=3)
    t1 = read_nifti(t1_path, expect_ndim=3)
    flair = read_nifti(flair_path, expect_ndim=3)
    mvol = read_nifti(mask_path, expect_ndim=3) if mask_path is not None else None
    names = InputNames(str(map_path), str(t1_path), str(flair_path), str(mask_path), "--lowres-matrix")
    grid, acquired = check_geometry(lr.data.shape, t1.data.shape, flair.data.shape, lowres_matrix,
                                    None if mvol is None else mvol.data.shape, names)  # fmt: skip
    data, affine = lr.data, lr.affine
    if acquired:
        log.info("%s: %dx%d acquisition zero-filled to %s", map_path, lowres_matrix, lowres_matrix, grid[:2])
        data = zero_fill(data, grid[:2])
        affine = _map_affine_from_mri(t1.affine)
    mask = None if mvol is None else mvol.data
    sr = predict_volume(gen, data, t1.data, flair.data, met, n, sharpness, mask,
                        allow_extrapolation=allow_extrapolation)  # fmt: skip
    return write_nifti(out_path, sr.astype(np.float32), affine)


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def predict_folder(
    gen: nn.Module,
    map_dir: str | Path,
    t1_path: str | Path,
    flair_path: str | Path,
    out_dir: str | Path,
    lowres_matrix: int,
    sharpness: float = 0.0,
    mask_path: str | Path | None = None,
    allow_extrapolation: bool = False,
) -> list[Path]:
    """Batch mode: every ``<met>.nii[.gz]`` in ``map_dir`` (metabolite from the file name) -> ``out_dir``.

    Raises:
        DataError: when the folder holds no map with a known metabolite name.
        ConfigError: ``sharpness`` outside the trained range (:func:`check_sharpness`).
    """
    check_sharpness(sharpness, getattr(gen, "sharpness_range", None), allow_extrapolation)
    map_dir = Path(map_dir)
    files = sorted(p for p in map_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    jobs = []
    for p in files:
        try:
            metabolite_from_name(_stem(p))
        except DataError:
            log.warning("skipping %s: not a known metabolite name", p)
            continue
        jobs.append(p)
    if not jobs:
        raise DataError(f"{map_dir}: no metabolite maps named <met>.nii.gz ({', '.join(METABOLITES)})")
    return [
        predict_file(
            gen,
            p,
            t1_path,
            flair_path,
            Path(out_dir) / f"{_stem(p)}.nii.gz",
            _stem(p),
            lowres_matrix,
            sharpness,
            mask_path,
            allow_extrapolation,
        )
        for p in jobs
    ]


# ------------------------------------------------------------------------------------ Python API
class MRSIPredictor:
    """A trained MRSI generator with array and NIfTI entry points (see :func:`load_mrsi`).

    Attributes:
        model: the generator (eval mode); config: the run's ``MRSIConfig``; device: where it runs.
    """

    def __init__(self, model: nn.Module, config: Any, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = device

    @property
    def sharpness_range(self) -> tuple[float, float]:
        """(lowest, highest) sharpness lambda seen in training; 0 = smoothest."""
        a = self.config.adversarial
        if not a.enabled:
            return (0.0, 0.0)
        if a.fixed_lambda is not None:
            return (float(a.fixed_lambda), float(a.fixed_lambda))
        return (float(a.lambda_low), float(a.lambda_low + a.lambda_span))

    def super_resolve(
        self,
        lr_map: Any,
        t1: Any,
        flair: Any,
        metabolite: str = "NAA",
        lowres_matrix: int = 16,
        sharpness: float = 0.0,
        mask: Any = None,
    ) -> np.ndarray:
        """Super-resolve one metabolite map, slice by slice.

        Args:
            lr_map: (H, W, S) low-resolution map on the high-resolution grid (e.g. zero-filled), or
                (2n, 2n, S) on its acquired matrix, which is zero-filled in k-space to (H, W, S).
            t1, flair: (3H, 3W, 3S) MRI volumes on the map grid subdivided 3x.
            metabolite: ``NAA``, ``tCr``, ``tCho``, ``Glu``, ``Gln``, ``Gly``, ``Ins`` (or an alias).
            lowres_matrix: the acquired matrix 2n (even; e.g. 16 for a x4 upscaling of 64x64).
            sharpness: lambda, see :attr:`sharpness_range` (0 = smoothest).
            mask: optional (H, W, S) quality mask (non-zero = keep), else every voxel is predicted.
        Returns:
            (H, W, S) float32 in the units of ``lr_map`` (each slice is normalised by its maximum
            and scaled back).
        Raises:
            DataError: odd matrix, unknown metabolite, non-finite values, or shapes that do not fit.

        Example:
            >>> from medlearn import build_model, load_preset
            >>> p = MRSIPredictor(build_model("mrsi", "tiny"), load_preset("mrsi", "tiny"), torch.device("cpu"))
            >>> lr, mri = np.ones((16, 16, 2)), np.ones((48, 48, 6))
            >>> p.super_resolve(lr, mri, mri, "NAA", lowres_matrix=8).shape
            (16, 16, 2)
        """
        from medlearn.io.arrays import as_float_array

        n = half_window(lowres_matrix)
        met = metabolite_from_name(metabolite)
        lr = as_float_array(lr_map, "lr_map", 3)
        t1a, fla = as_float_array(t1, "t1", 3), as_float_array(flair, "flair", 3)
        m = None if mask is None else np.asarray(mask)
        grid, acquired = check_geometry(
            lr.shape, t1a.shape, fla.shape, lowres_matrix, None if m is None else m.shape
        )
        if acquired:
            lr = zero_fill(lr, grid[:2])
        return predict_volume(self.model, lr, t1a, fla, met, n, float(sharpness), m)

    def predict_file(
        self,
        map_path: str | Path,
        t1_path: str | Path,
        flair_path: str | Path,
        out_path: str | Path,
        metabolite: str = "NAA",
        lowres_matrix: int = 16,
        sharpness: float = 0.0,
        mask_path: str | Path | None = None,
    ) -> Path:
        """NIfTI in, NIfTI out (:func:`predict_file`): the output keeps the map's affine.

        Example:
            >>> p = load_mrsi("runs/mrsi/tiny")  # doctest: +SKIP
            >>> p.predict_file("NAA.nii.gz", "T1.nii.gz", "FLAIR.nii.gz", "SR_NAA.nii.gz", "NAA", 16)  # doctest: +SKIP
        """
        return predict_file(self.model, map_path, t1_path, flair_path, out_path, metabolite, lowres_matrix,
                            sharpness, mask_path)  # fmt: skip

    def predict_folder(
        self,
        map_dir: str | Path,
        t1_path: str | Path,
        flair_path: str | Path,
        out_dir: str | Path,
        lowres_matrix: int = 16,
        sharpness: float = 0.0,
        mask_path: str | Path | None = None,
    ) -> list[Path]:
        """Every ``<metabolite>.nii.gz`` of ``map_dir`` -> ``out_dir`` (:func:`predict_folder`)."""
        return predict_folder(self.model, map_dir, t1_path, flair_path, out_dir, lowres_matrix, sharpness,
                              mask_path)  # fmt: skip


def load_mrsi(checkpoint: str | Path, device: str | torch.device = "cpu") -> MRSIPredictor:
    """Load a trained MRSI generator: a run folder, a checkpoint folder or a ``.safetensors`` file.

    A run folder uses ``best/best``, else ``checkpoints/final``, else the latest checkpoint; the
    architecture comes from the run's ``config.yaml``.

    Raises:
        DataError: no checkpoint or no ``config.yaml`` there.

    Example:
        >>> p = load_mrsi("runs/mrsi/tiny")  # doctest: +SKIP
        >>> sr = p.super_resolve(lr_map, t1, flair, "NAA", lowres_matrix=16)  # doctest: +SKIP
    """
    from medlearn.config import load_config
    from medlearn.mrsi.config import MRSIConfig
    from medlearn.mrsi.evaluate import find_run_config, load_generator

    gen, _ = load_generator(checkpoint, device)
    cfg = load_config(MRSIConfig, find_run_config(checkpoint))  # as trained (load_generator drops the critic)
    return MRSIPredictor(gen, cfg, torch.device(device))
