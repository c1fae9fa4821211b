"""Apply a trained generator to NIfTI files: LR metabolite map + T1 + FLAIR -> SR map.

Geometry: the map (H, W, S) and the MRI (3H, 3W, 3S) follow the nifti layout of
:mod:`medlearn.mrsi.data` (MRI grid = map grid subdivided 3x).  The output is written on the
input map's grid with the input map's affine.  A map given on its acquired low-resolution matrix
(2n x 2n in-plane) is first zero-filled in k-space onto the grid implied by the MRI (H = MRI / 3),
and the output then takes the affine of that grid (derived from the T1 affine).

Intensities: each slice is divided by its LR maximum, super-resolved, and multiplied back, so the
output is in the input's units.  Without a quality mask every voxel is predicted.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlearn.errors import DataError
from medlearn.io import read_nifti, write_nifti
from medlearn.mrsi.constants import METABOLITE_ALIASES, METABOLITES, MRI_FACTOR
from medlearn.mrsi.kspace import centered_fft2, centered_ifft2

log = logging.getLogger(__name__)

__all__ = ["metabolite_from_name", "predict_file", "predict_folder", "predict_volume", "zero_fill"]


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
) -> np.ndarray:
    """Super-resolve every slice of a volume.

    Args:
        lr_map: (H, W, S) low-resolution map on the high-resolution grid.
        t1, flair: (3H, 3W, 3S) MRI volumes.
        met: metabolite id; n: window half-size (low-resolution matrix 2n); lam: sharpness.
        mask: optional (H, W, S) quality mask (non-zero = keep).
    Returns:
        (H, W, S) float32 in the units of ``lr_map``.
    """
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
) -> Path:
    """Read the NIfTI inputs, super-resolve, write ``out_path`` with the map's geometry.

    Raises:
        DataError: missing/corrupt files, odd ``lowres_matrix``, or a map grid that is neither the
            MRI grid / 3 nor ``lowres_matrix`` in-plane.
    """
    if lowres_matrix < 2 or lowres_matrix % 2:
        raise DataError(f"--lowres-matrix must be an even number >= 2 (it is 2n), got {lowres_matrix}")
    n = lowres_matrix // 2
    met = metabolite_from_name(metabolite)
    lr = read_nifti(map_path, expect_ndim=3)
    t1 = read_nifti(t1_path, expect_ndim=3)
    flair = read_nifti(flair_path, expect_ndim=3)
    if t1.data.shape != flair.data.shape:
        raise DataError(
            f"{flair_path}: FLAIR shape {flair.data.shape} differs from T1 {t1.data.shape} ({t1_path})"
        )
    f = MRI_FACTOR
    if any(d % f for d in t1.data.shape):
        raise DataError(f"{t1_path}: MRI shape {t1.data.shape} is not a multiple of {f} on every axis")
    grid = tuple(d // f for d in t1.data.shape)
    data, affine = lr.data, lr.affine
    if data.shape != grid:
        if data.shape[:2] == (lowres_matrix, lowres_matrix) and data.shape[2] == grid[2]:
            log.info(
                "%s: %dx%d acquisition zero-filled to %s", map_path, lowres_matrix, lowres_matrix, grid[:2]
            )
            data = zero_fill(data, grid[:2])
            affine = _map_affine_from_mri(t1.affine)
        else:
            raise DataError(
                f"{map_path}: map shape {data.shape} matches neither the MRI grid / {f} = {grid} "
                f"({t1_path} is {t1.data.shape}) nor the low-resolution matrix {lowres_matrix}x{lowres_matrix}"
            )
    if n > min(grid[:2]) // 2:
        raise DataError(f"--lowres-matrix {lowres_matrix} is larger than the {grid[:2]} map grid")
    mask = None
    if mask_path is not None:
        mvol = read_nifti(mask_path, expect_ndim=3)
        if mvol.data.shape != grid:
            raise DataError(f"{mask_path}: mask shape {mvol.data.shape} differs from the map grid {grid}")
        mask = mvol.data
    sr = predict_volume(gen, data, t1.data, flair.data, met, n, sharpness, mask)
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
) -> list[Path]:
    """Batch mode: every ``<met>.nii[.gz]`` in ``map_dir`` (metabolite from the file name) -> ``out_dir``.

    Raises:
        DataError: when the folder holds no map with a known metabolite name.
    """
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
        )
        for p in jobs
    ]
