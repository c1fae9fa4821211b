"""Read greyscale DICOM images (mammograms, CT/MR slices) into float arrays (writing: ``dicom_write``).

Reading (``read_dicom``) runs the DICOM greyscale pipeline in a fixed order on the stored values:

1. decode the pixel data (native or compressed; JPEG 2000 needs the ``jpeg2000`` extra:
   ``pylibjpeg`` + ``pylibjpeg-openjpeg``);
2. modality transform: the Modality LUT Sequence if present, else Rescale Slope/Intercept
   (``pydicom.pixels.apply_modality_lut``);
3. optionally (``apply_voi=True``) the VOI transform: the VOI LUT Sequence if present, else the
   Window Centre/Width with the header's VOI LUT Function (``pydicom.pixels.apply_voi_lut``);
4. MONOCHROME1 inversion (``invert_monochrome1=True``), so that high values are bright (tissue
   bright in mammography).  The inversion mirrors the values inside the range that the stored bit
   depth can reach after steps 2-3: ``out = lo + hi - x`` with ``[lo, hi]`` from
   :func:`output_range`.  For the usual unsigned image without rescale this is
   ``out = (2**BitsStored - 1) - x``.  Float pixel data has no nominal range, so its own minimum
   and maximum are used.

Every problem with a file raises one :class:`medlearn.errors.DataError` whose message names the file
and the problem (missing, not DICOM, no pixel data, truncated pixel data, missing decoder plugin,
colour or multi-frame where a 2D greyscale image is expected, NaN/inf values).

Writing (``write_dicom_mg``, in :mod:`medlearn.io.dicom_write`) produces an explicit-VR little-endian (or JPEG 2000 lossless) 16-bit
"Digital Mammography X-Ray Image Storage - For Presentation" Part 10 file.  It carries the
attributes medlearn reads plus the identifiers of a valid Part 10 file; it is *not* a fully
IOD-conformant mammogram (no View Code Sequence, Patient Orientation, or acquisition attributes).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medlearn.errors import DataError

log = logging.getLogger(__name__)

MG_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
"""SOP Class UID of Digital Mammography X-Ray Image Storage - For Presentation."""

JPEG2000_EXTRA_HINT = "pip install medlearn[jpeg2000]"
J2K_MIN_SIDE = 32
"""Smallest image side pylibjpeg-openjpeg's encoder accepts (it always uses 6 DWT resolution levels)."""

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_VIEW_MEANINGS = {
    "cranio-caudal": "CC",
    "medio-lateral oblique": "MLO",
    "medio-lateral": "ML",
    "latero-medial": "LM",
    "latero-medial oblique": "LMO",
    "cranio-caudal exaggerated laterally": "XCCL",
    "cranio-caudal exaggerated medially": "XCCM",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Exceptions pydicom raises on malformed files (parsing is partly lazy, so element access can raise).
_PARSE_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError)
_DECODE_ERRORS = (*_PARSE_ERRORS, RuntimeError, NotImplementedError)


@dataclass(frozen=True)
class DicomHeader:
    """Header fields of one DICOM image that medlearn's tasks use.

    Attributes:
        path: the file.
        laterality: ``'L'``, ``'R'`` or None, from Image Laterality, else (series) Laterality.
        view: View Position as written (``'CC'``, ``'MLO'``, ...), else the View Code Sequence's
            meaning (common mammography views abbreviated to CC/MLO/ML/LM/LMO/XCCL/XCCM), or None.
        pixel_spacing: (row, col) spacing in mm from Pixel Spacing, else Imager Pixel Spacing, or None.
        photometric: Photometric Interpretation (``'MONOCHROME1'``, ``'MONOCHROME2'``, ...).
        window: first (centre, width) pair of Window Center/Width as stored in the file (modality
            units, before any MONOCHROME1 inversion), or None.
        manufacturer: Manufacturer or None.
        bits_stored: Bits Stored.
        rows, columns: image size.
        n_frames: Number of Frames (1 when absent).
        modality: Modality or None.
        transfer_syntax: Transfer Syntax UID of the file.
    """

    path: Path
    laterality: str | None
    view: str | None
    pixel_spacing: tuple[float, float] | None
    photometric: str
    window: tuple[float, float] | None
    manufacturer: str | None
    bits_stored: int
    rows: int
    columns: int
    n_frames: int
    modality: str | None
    transfer_syntax: str


@dataclass(frozen=True)
class DicomImage(DicomHeader):
    """A decoded greyscale DICOM image with its header fields.

    Attributes:
        pixels: (H, W) float array after the modality (and optional VOI) transform and inversion.
        value_range: (lo, hi) range the pixel values can take (see :func:`output_range`).
        inverted: True when MONOCHROME1 values were mirrored (``out = lo + hi - x``).
        voi_applied: True when the VOI LUT or window was applied to ``pixels``.
    """

    pixels: np.ndarray = field(repr=False)
    value_range: tuple[float, float]
    inverted: bool
    voi_applied: bool

    @property
    def display_window(self) -> tuple[float, float] | None:
        """The header window expressed in the units of ``pixels`` (None if absent or already applied).

        Equal to ``window`` unless the image was inverted, in which case the centre is mirrored.
        """
        if self.window is None or self.voi_applied:
            return None
        center, width = self.window
        if self.inverted:
            lo, hi = self.value_range
            center = lo + hi - center
        return (center, width)


# ----------------------------------------------------------------------------------------- reading


def _open(path: str | os.PathLike[str], *, header_only: bool, force: bool) -> tuple[Path, Dataset]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"DICOM file not found: {p}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(p, stop_before_pixels=header_only, force=force)
    except InvalidDicomError as exc:
        raise DataError(f"{p}: not a DICOM file (no 'DICM' preamble/file meta): {exc}") from exc
    except _PARSE_ERRORS as exc:
        raise DataError(f"{p}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
    for warning in caught:
        text = str(warning.message)
        if "End of file reached" in text:  # pydicom drops the incomplete element and only warns
            raise DataError(f"{p}: truncated file, it ends inside a data element ({text})")
        log.warning("%s: %s", p, text)
    return p, ds


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _first_float(value: Any) -> float:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _view(ds: Dataset) -> str | None:
    """View Position, else the View Code Sequence's Code Meaning (common views abbreviated)."""
    position = _text(ds, "ViewPosition")
    if position is not None:
        return position
    items = ds.get("ViewCodeSequence") or []
    meaning = _text(items[0], "CodeMeaning") if len(items) else None
    if meaning is None:
        return None
    return _VIEW_MEANINGS.get(meaning.lower().replace("_", "-"), meaning)


def _laterality(ds: Dataset) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword)
        if value is not None and value.upper() in ("L", "R"):
            return value.upper()
    return None


def _spacing(ds: Dataset, p: Path) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{p}: {keyword} must hold two numbers, found {value!r}") from exc
        if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
            raise DataError(f"{p}: {keyword} must be two positive numbers (mm), found {value!r}")
        return (row, col)
    return None


def _window(ds: Dataset, p: Path) -> tuple[float, float] | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        return (_first_float(center), _first_float(width))
    except (TypeError, ValueError, IndexError) as exc:
        raise DataError(f"{p}: unreadable Window Center/Width {center!r}/{width!r}") from exc


def _header(p: Path, ds: Dataset) -> DicomHeader:
    try:
        meta = getattr(ds, "file_meta", None)
        tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
        return DicomHeader(
            path=p,
            laterality=_laterality(ds),
            view=_view(ds),
            pixel_spacing=_spacing(ds, p),
            photometric=_text(ds, "PhotometricInterpretation") or "",
            window=_window(ds, p),
            manufacturer=_text(ds, "Manufacturer"),
            bits_stored=int(ds.get("BitsStored") or 0),
            rows=int(ds.get("Rows") or 0),
            columns=int(ds.get("Columns") or 0),
            n_frames=int(ds.get("NumberOfFrames") or 1),
            modality=_text(ds, "Modality"),
            transfer_syntax=str(tsyntax) if tsyntax else "",
        )
    except DataError:
        raise
    except _PARSE_ERRORS as exc:
        raise DataError(f"{p}: unreadable DICOM header ({type(exc).__name__}: {exc})") from exc


def read_dicom_header(path: str | os.PathLike[str], *, force: bool = False) -> DicomHeader:
    """Read the header fields of a DICOM file without loading its pixel data (fast).

    Args:
        path: the file.
        force: read files without the 128-byte preamble / ``DICM`` prefix (pydicom's ``force``).
    Raises:
        DataError: the file is missing, not DICOM, or has an unreadable header field.
    """
    p, ds = _open(path, header_only=True, force=force)
    return _header(p, ds)


def output_range(ds: Dataset, *, voi_applied: bool) -> tuple[float, float] | None:
    """Range (lo, hi) of values reachable after the modality (and VOI) transform, from the header.

    Stored range: ``[0, 2**BitsStored - 1]`` (unsigned) or ``[-2**(BitsStored-1), 2**(BitsStored-1) - 1]``
    (signed).  A Modality LUT Sequence maps it to ``[0, 2**n - 1]`` (n = 3rd LUT Descriptor value);
    otherwise Rescale Slope/Intercept map both ends.  A VOI LUT Sequence (when applied) maps to
    ``[0, 2**n - 1]``; windowing keeps the range (DICOM PS3.3 C.11.2.1.2 and pydicom output the
    modality range).  Returns None for float pixel data, which has no nominal range.
    """
    if "PixelData" not in ds:
        return None
    if voi_applied and ds.get("VOILUTSequence"):
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return (0.0, float(2**depth - 1))
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return (0.0, float(2**depth - 1))
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        a, b = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
        lo, hi = min(a, b), max(a, b)
    return (lo, hi)


def _is_j2k(tsyntax: UID) -> bool:
    return "JPEG 2000" in tsyntax.name


def _check_decoder(p: Path, tsyntax: UID) -> None:
    if not tsyntax.is_compressed:
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise DataError(f"{p}: no pixel-data decoder exists for transfer syntax {tsyntax.name}") from exc
    if decoder.is_available:
        return
    if _is_j2k(tsyntax):
        hint = f"install the JPEG 2000 plugins: {JPEG2000_EXTRA_HINT}"
    else:
        hint = "install one of: " + "; ".join(decoder.missing_dependencies)
    raise DataError(f"{p}: cannot decode '{tsyntax.name}' pixel data, no decoder plugin is installed; {hint}")


def _expected_native_bytes(ds: Dataset) -> int:
    n = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames") or 1) * int(ds.SamplesPerPixel or 1)
    bits = int(ds.BitsAllocated)
    return (n * bits + 7) // 8


def _transfer_syntax(p: Path, ds: Dataset) -> UID:
    """The file's Transfer Syntax UID; for files without one (read with ``force``), the encoding
    pydicom detected while parsing (only native syntaxes can be detected), recorded in ``file_meta``."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax:
        return UID(tsyntax)
    implicit, little = getattr(ds, "original_encoding", (None, None))
    detected = {
        (True, True): ImplicitVRLittleEndian,
        (False, True): ExplicitVRLittleEndian,
        (False, False): ExplicitVRBigEndian,
    }.get((implicit, little))
    if detected is None:
        raise DataError(f"{p}: no Transfer Syntax UID in the file meta, cannot decode pixel data")
    log.info("%s: no Transfer Syntax UID in the file meta; using the detected %s", p, detected.name)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = detected
    return detected


def _check_pixel_module(p: Path, ds: Dataset, frame: int | None) -> None:
    """Raise DataError for anything that would make decoding fail or give a non-2D greyscale image."""
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise DataError(f"{p}: DICOM file has no pixel data (no PixelData element)")
    required_keywords = ("Rows", "Columns", "BitsAllocated") + (
        ("BitsStored",) if keyword == "PixelData" else ()
    )
    for required in required_keywords:
        if ds.get(required) in (None, ""):
            raise DataError(f"{p}: pixel data present but {required} is missing from the header")
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if samples != 1 or photometric not in _MONOCHROME:
        raise DataError(
            f"{p}: expected a greyscale image (MONOCHROME1/2, 1 sample per pixel), "
            f"found {photometric or 'no photometric interpretation'} with {samples} samples per pixel"
        )
    n_frames = int(ds.get("NumberOfFrames") or 1)
    if frame is None and n_frames > 1:
        raise DataError(f"{p}: has {n_frames} frames but a 2D image is expected; pass frame=<index>")
    if frame is not None and not 0 <= frame < n_frames:
        raise DataError(f"{p}: frame {frame} requested but the file has {n_frames} frame(s)")
    tsyntax = _transfer_syntax(p, ds)
    _check_decoder(p, tsyntax)
    if not UID(tsyntax).is_compressed:
        expected = _expected_native_bytes(ds)
        found = len(ds[keyword].value or b"")
        if found < expected:
            raise DataError(
                f"{p}: truncated pixel data: {found} bytes, {expected} expected for "
                f"{ds.Rows}x{ds.Columns}x{n_frames} frame(s) at {ds.BitsAllocated} bits"
            )


def read_dicom(
    path: str | os.PathLike[str],
    *,
    apply_voi: bool = False,
    invert_monochrome1: bool = True,
    frame: int | None = None,
    dtype: Any = np.float32,
    force: bool = False,
) -> DicomImage:
    """Read one greyscale DICOM image as an (H, W) float array plus its header fields.

    Pipeline (module docstring): decode -> modality LUT / rescale -> [VOI LUT / window] ->
    [MONOCHROME1 inversion ``out = lo + hi - x``].  Does not resize, crop, normalise to [0, 1] or
    apply the Presentation LUT Shape.

    Args:
        path: the file.
        apply_voi: apply the VOI LUT Sequence, else Window Center/Width (first pair, header VOI LUT
            Function, default LINEAR) after the modality transform. Default False (raw modality values).
        invert_monochrome1: mirror MONOCHROME1 values so that high = bright (default True); False keeps
            the stored polarity.
        frame: index of the frame to read from a multi-frame file; None requires a single frame.
        dtype: floating dtype of ``pixels`` (default float32).
        force: read files without the preamble / ``DICM`` prefix.
    Returns:
        DicomImage with ``pixels`` (H, W).
    Raises:
        DataError: missing file, not DICOM, no pixel data, truncated or undecodable pixel data,
            missing decoder plugin (message names the extra to install), colour or multi-frame data
            without ``frame``, NaN/inf in the result.
    """
    p, ds = _open(path, header_only=False, force=force)
    header = _header(p, ds)
    _check_pixel_module(p, ds, frame)
    try:
        stored = pixel_array(ds, index=frame)
    except _DECODE_ERRORS as exc:
        raise DataError(
            f"{p}: could not decode the pixel data ({header.transfer_syntax or 'unknown syntax'}; "
            f"corrupt or truncated?): {exc}"
        ) from exc
    if stored.ndim != 2:
        raise DataError(f"{p}: decoded pixel data has shape {stored.shape}, expected a 2D (H, W) image")

    voi_applied = apply_voi and (bool(ds.get("VOILUTSequence")) or header.window is not None)
    try:
        values = apply_modality_lut(stored, ds)  # stays integer when there is no rescale (VOI LUT index)
        if apply_voi:
            values = apply_voi_lut(values, ds)
        values = np.asarray(values, dtype=np.float64)
        value_range = output_range(ds, voi_applied=voi_applied)
    except _DECODE_ERRORS as exc:
        raise DataError(f"{p}: invalid modality/VOI transform in the header: {exc}") from exc
    if value_range is None:  # float pixel data: no nominal range, use the data's own
        finite = values[np.isfinite(values)]
        value_range = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    inverted = invert_monochrome1 and header.photometric == "MONOCHROME1"
    if inverted:
        values = (value_range[0] + value_range[1]) - values

    pixels = values.astype(dtype, copy=False)
    bad = ~np.isfinite(pixels)
    if bad.any():
        raise DataError(f"{p}: {int(bad.sum())} pixel value(s) are NaN or infinite after decoding")
    return DicomImage(
        **{f: getattr(header, f) for f in DicomHeader.__dataclass_fields__},
        pixels=pixels,
        value_range=value_range,
        inverted=inverted,
        voi_applied=voi_applied,
    )
