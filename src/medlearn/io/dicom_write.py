"""Write 2D greyscale images as 16-bit MG "For Presentation" DICOM files (used by the synthetic
mammography generator; readable by any DICOM viewer and by :func:`medlearn.io.dicom.read_dicom`).

Optional lossless JPEG 2000 encoding goes through pydicom's pylibjpeg-openjpeg encoder (extra
``jpeg2000``).  Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from medlearn.errors import DataError
from medlearn.io.dicom import _MONOCHROME, J2K_MIN_SIDE, JPEG2000_EXTRA_HINT, MG_FOR_PRESENTATION


def _uid(seed: str | None, role: str) -> UID:
    return generate_uid(entropy_srcs=[seed, role]) if seed is not None else generate_uid()


def _check_writer_args(
    p: Path,
    pixels: np.ndarray,
    laterality: str,
    view: str,
    photometric: str,
    window: tuple[float, float] | None,
    pixel_spacing: tuple[float, float],
    bits_stored: int,
    compression: str | None,
) -> None:
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise DataError(f"{p}: pixels must be a non-empty 2D (H, W) array, got shape {pixels.shape}")
    if not np.issubdtype(pixels.dtype, np.integer):
        raise DataError(f"{p}: pixels must be an integer array (uint16), got {pixels.dtype}")
    if not 1 <= bits_stored <= 16:
        raise DataError(f"{p}: bits_stored must be in 1..16, got {bits_stored}")
    lo, hi = int(pixels.min()), int(pixels.max())
    if lo < 0 or hi > 2**bits_stored - 1:
        raise DataError(f"{p}: pixel values [{lo}, {hi}] do not fit in {bits_stored} unsigned bits")
    if laterality not in ("L", "R"):
        raise DataError(f"{p}: laterality must be 'L' or 'R', got {laterality!r}")
    if not view or len(view) > 16:
        raise DataError(f"{p}: view must be a short code such as 'CC' or 'MLO', got {view!r}")
    if photometric not in _MONOCHROME:
        raise DataError(f"{p}: photometric must be one of {_MONOCHROME}, got {photometric!r}")
    if window is not None and not (len(window) == 2 and float(window[1]) >= 1):
        raise DataError(f"{p}: window must be (center, width) with width >= 1, got {window!r}")
    if len(pixel_spacing) != 2 or min(float(s) for s in pixel_spacing) <= 0:
        raise DataError(f"{p}: pixel_spacing must be two positive numbers (mm), got {pixel_spacing!r}")
    if compression not in (None, "jpeg2000"):
        raise DataError(f"{p}: compression must be None or 'jpeg2000', got {compression!r}")
    if compression == "jpeg2000" and min(pixels.shape) < J2K_MIN_SIDE:
        raise DataError(
            f"{p}: JPEG 2000 encoding needs both sides >= {J2K_MIN_SIDE} pixels (openjpeg uses 6 "
            f"resolution levels), got shape {pixels.shape}; write it uncompressed instead"
        )


def write_dicom_mg(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    laterality: str,
    view: str,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    pixel_spacing: tuple[float, float] = (0.1, 0.1),
    manufacturer: str = "medlearn synthetic",
    rescale: tuple[float, float] = (1.0, 0.0),
    bits_stored: int = 16,
    compression: str | None = None,
    uid_seed: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a 2D unsigned image as a 16-bit MG "For Presentation" DICOM file (atomically).

    Args:
        path: output file (parent folders are created).
        pixels: (H, W) integer array with values in ``[0, 2**bits_stored - 1]``; stored as uint16.
        laterality: ``'L'`` or ``'R'`` (Image Laterality).
        view: View Position, e.g. ``'CC'`` or ``'MLO'``.
        photometric: ``'MONOCHROME2'`` (high = bright) or ``'MONOCHROME1'``; values are written as
            given, no inversion is done here.
        window: optional (center, width) written as Window Center/Width (VOI LUT Function LINEAR).
        pixel_spacing: (row, col) in mm, written as Pixel Spacing and Imager Pixel Spacing.
        manufacturer: Manufacturer.
        rescale: (slope, intercept) written as Rescale Slope/Intercept (Rescale Type ``US``).
        bits_stored: Bits Stored (Bits Allocated is always 16, High Bit = bits_stored - 1).
        compression: None (explicit VR little endian) or ``'jpeg2000'`` (JPEG 2000 lossless through
            pydicom's encoder and pylibjpeg-openjpeg; needs the ``jpeg2000`` extra and both sides
            >= 32 pixels).
        uid_seed: when given, Study/Series/SOP Instance UIDs are derived from it deterministically.
        extra: more attributes by DICOM keyword (e.g. ``{"PatientID": "P001"}``); applied last, so they
            override the defaults written here.
    Returns:
        the written path.
    Raises:
        DataError: invalid arguments (shape, dtype, value range, laterality, keyword in ``extra``) or
            the JPEG 2000 encoder is not installed.
    """
    p = Path(path)
    pixels = np.asarray(pixels)
    _check_writer_args(
        p, pixels, laterality, view, photometric, window, pixel_spacing, bits_stored, compression
    )
    unknown = [k for k in (extra or {}) if tag_for_keyword(k) is None]
    if unknown:
        raise DataError(f"{p}: unknown DICOM keyword(s) in extra: {unknown}")

    sop_uid = _uid(uid_seed, "sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(uid_seed, "study")
    ds.SeriesInstanceUID = _uid(uid_seed, "series")
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = manufacturer
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYNTH"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = int(bits_stored) - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [float(s) for s in pixel_spacing]
    ds.ImagerPixelSpacing = [float(s) for s in pixel_spacing]
    ds.RescaleSlope = float(rescale[0])
    ds.RescaleIntercept = float(rescale[1])
    ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = float(window[0])
        ds.WindowWidth = float(window[1])
        ds.VOILUTFunction = "LINEAR"
    for keyword, value in (extra or {}).items():
        try:
            setattr(ds, keyword, value)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{p}: invalid value for {keyword} in extra: {exc}") from exc

    data = np.ascontiguousarray(pixels, dtype="<u2")
    if compression == "jpeg2000":
        encoder = get_encoder(JPEG2000Lossless)
        if not encoder.is_available:
            raise DataError(f"{p}: JPEG 2000 encoding needs the plugins: {JPEG2000_EXTRA_HINT}")
        try:
            ds.compress(JPEG2000Lossless, data)
        except (RuntimeError, ValueError) as exc:
            raise DataError(f"{p}: JPEG 2000 encoding failed: {exc}") from exc
    else:
        ds.PixelData = data.tobytes()
        ds["PixelData"].VR = "OW"

    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, p)
    except (TypeError, ValueError, OSError, struct.error) as exc:
        raise DataError(f"{p}: could not write the DICOM file: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return p
