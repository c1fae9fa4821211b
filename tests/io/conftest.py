"""Fixtures for the I/O tests: DICOM files written with plain pydicom (independent of medlearn's writer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_test_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    pixel_data: bool = True,
    **attrs: Any,
) -> Path:
    """Write a greyscale Part 10 file with pydicom. pixels: (H, W) or (F, H, W) integer array."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(np.issubdtype(pixels.dtype, np.signedinteger))
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def make_dicom(tmp_path: Path) -> Callable[..., Path]:
    """Factory: make_dicom(name, pixels, **attrs) -> path of a file written in tmp_path."""

    def make(name: str, pixels: np.ndarray, **kwargs: Any) -> Path:
        return write_test_dicom(tmp_path / name, pixels, **kwargs)

    return make
