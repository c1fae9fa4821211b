"""Read and write NIfTI-1 volumes with nibabel, keeping the affine and voxel spacing.

``read_nifti`` returns the scaled voxel values (``scl_slope``/``scl_inter`` applied by nibabel), the
image's best affine (sform if its code is set, else qform) and the spatial zooms.  ``write_nifti``
writes atomically (temporary file + rename), stores the affine in both sform and qform with code 1
(scanner) and derives the header zooms from the affine.  Every problem with a file raises one
:class:`medlearn.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import logging
import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from medlearn.errors import DataError

log = logging.getLogger(__name__)

_SUFFIXES = (".nii", ".nii.gz")
_LOAD_ERRORS = (ImageFileError, EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True)
class NiftiVolume:
    """One NIfTI image in memory.

    Attributes:
        data: voxel array, (H, W, D) for 3D volumes (nibabel's i, j, k order), any ndim otherwise.
        affine: (4, 4) voxel-to-world (mm) matrix.
        spacing: zooms of the spatial dims (at most 3), in mm.
        header: the nibabel header as read.
        path: the file.
    """

    data: np.ndarray = field(repr=False)
    affine: np.ndarray
    spacing: tuple[float, ...]
    header: Any = field(repr=False)
    path: Path


def _check_suffix(p: Path) -> None:
    if not p.name.endswith(_SUFFIXES):
        raise DataError(f"{p}: a NIfTI file name must end with .nii or .nii.gz")


def read_nifti(
    path: str | os.PathLike[str],
    *,
    expect_ndim: int | None = None,
    dtype: Any = np.float32,
) -> NiftiVolume:
    """Read a NIfTI volume.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        expect_ndim: required number of dims after dropping trailing singleton dims beyond it
            (a (H, W, D, 1) file is accepted as (H, W, D) when 3 is expected); None accepts any.
        dtype: dtype of ``data`` (default float32); None keeps the on-disk dtype after scaling.
    Returns:
        NiftiVolume.
    Raises:
        DataError: missing file, not a NIfTI / corrupt or truncated gzip, wrong ndim, NaN/inf values.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"NIfTI file not found: {p}")
    try:
        img = nib.load(p)
        data = np.asanyarray(img.dataobj)
    except _LOAD_ERRORS as exc:
        raise DataError(f"{p}: not a readable NIfTI file (corrupt or truncated?): {exc}") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{p}: not a NIfTI image (nibabel read it as {type(img).__name__})")

    if expect_ndim is not None:
        while data.ndim > expect_ndim and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != expect_ndim:
            raise DataError(
                f"{p}: has {data.ndim} dims (shape {tuple(data.shape)}) but a {expect_ndim}D image is expected"
            )
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            raise DataError(f"{p}: {int(bad.sum())} voxel value(s) are NaN or infinite")

    n_spatial = min(data.ndim, 3)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:n_spatial])
    return NiftiVolume(
        data=data, affine=np.asarray(img.affine, dtype=np.float64), spacing=spacing, header=img.header, path=p
    )


def write_nifti(
    path: str | os.PathLike[str],
    data: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: Any = None,
) -> Path:
    """Write ``data`` with ``affine`` to a NIfTI-1 file atomically (temporary file + rename).

    Args:
        path: ``.nii`` or ``.nii.gz`` output (parent folders are created).
        data: voxel array (H, W, D[, ...]); bool is stored as uint8, int64 as int32 when it fits.
        affine: (4, 4) finite voxel-to-world matrix; written to sform and qform (code 1). The header
            zooms are the column norms of its 3x3 part. qform cannot hold shear; sform keeps it
            exactly and is what readers use first.
        dtype: on-disk dtype; None keeps ``data``'s dtype (with the conversions above).
    Returns:
        the written path.
    Raises:
        DataError: bad suffix, affine not a finite (4, 4) matrix, int64 values out of int32 range.
    """
    p = Path(path)
    _check_suffix(p)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise DataError(f"{p}: affine must be a finite (4, 4) matrix, got shape {affine.shape}")
    data = np.asarray(data)
    if data.ndim < 2:
        raise DataError(f"{p}: data must have at least 2 dims, got shape {data.shape}")
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    elif data.dtype == np.bool_:
        data = data.astype(np.uint8)
    elif data.dtype == np.int64:
        info = np.iinfo(np.int32)
        if data.size and (data.min() < info.min or data.max() > info.max):
            raise DataError(f"{p}: int64 data outside the int32 range; pass dtype= explicitly")
        data = data.astype(np.int32)

    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)

    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{p.name}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def check_same_geometry(a: NiftiVolume, b: NiftiVolume, *, atol: float = 1e-3, what: str = "") -> None:
    """Raise if two volumes do not share the same voxel grid (spatial shape and affine).

    Compares the first ``min(ndim, 3)`` dims of ``data`` and the affines element-wise within
    ``atol`` (mm).  Does not resample or compare non-spatial dims.

    Args:
        a, b: volumes, e.g. an image and its mask.
        atol: absolute tolerance on affine entries.
        what: context put at the start of the message (e.g. ``"case 007 image vs mask"``).
    Raises:
        DataError: naming both files, with the shapes or the largest affine difference.
    """
    prefix = f"{what}: " if what else ""
    shape_a, shape_b = a.data.shape[: min(a.data.ndim, 3)], b.data.shape[: min(b.data.ndim, 3)]
    if shape_a != shape_b:
        raise DataError(
            f"{prefix}voxel grids differ: {a.path} has shape {tuple(shape_a)}, {b.path} has {tuple(shape_b)}"
        )
    diff = float(np.max(np.abs(np.asarray(a.affine) - np.asarray(b.affine))))
    if not diff <= atol:
        raise DataError(
            f"{prefix}affines differ between {a.path} and {b.path} (max abs difference {diff:.4g} > {atol})"
        )
