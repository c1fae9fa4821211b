"""write_dicom_mg: files checked with plain pydicom (independent reader), then through read_dicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from medlearn.errors import DataError
from medlearn.io import read_dicom, read_dicom_header, write_dicom_mg

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"  # DICOM PS3.4 Annex B


def _pixels(shape=(40, 36), high=4096, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, shape).astype(np.uint16)


def test_written_file_is_a_valid_mg_dicom(tmp_path: Path):
    pixels = _pixels()
    path = write_dicom_mg(
        tmp_path / "sub" / "mg.dcm",
        pixels,
        laterality="L",
        view="CC",
        window=(2048, 4000),
        pixel_spacing=(0.07, 0.08),
        bits_stored=12,
        extra={"PatientID": "P001"},
    )
    ds = pydicom.dcmread(path)  # plain pydicom, enforce_file_format was used: preamble + meta present
    assert ds.preamble == b"\0" * 128
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == MG_FOR_PRESENTATION == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.Modality == "MG" and ds.ImageLaterality == "L" and ds.ViewPosition == "CC"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert [float(v) for v in ds.PixelSpacing] == [0.07, 0.08]
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (2048.0, 4000.0)
    assert ds.PatientID == "P001" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.pixel_array.dtype == np.uint16
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]  # no temporary file left behind


def test_jpeg2000_lossless_round_trip(tmp_path: Path):
    pixels = _pixels((48, 33), high=2**14)
    path = write_dicom_mg(
        tmp_path / "j2k.dcm", pixels, laterality="R", view="MLO", bits_stored=14, compression="jpeg2000"
    )
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    np.testing.assert_array_equal(read_dicom(path).pixels, pixels.astype(np.float32))


def test_read_back_monochrome1_with_rescale(tmp_path: Path):
    pixels = np.array([[0, 100], [4095, 4000]], dtype=np.uint16)
    path = write_dicom_mg(
        tmp_path / "m1.dcm",
        pixels,
        laterality="R",
        view="MLO",
        photometric="MONOCHROME1",
        rescale=(2.0, 1.0),
        bits_stored=12,
    )
    img = read_dicom(path)
    # range [1, 8191]; rescaled 1, 201, 8191, 8001 -> 8192 - x
    np.testing.assert_array_equal(img.pixels, [[8191.0, 7991.0], [1.0, 191.0]])
    hdr = read_dicom_header(path)
    assert (hdr.laterality, hdr.view, hdr.photometric, hdr.modality) == ("R", "MLO", "MONOCHROME1", "MG")
    assert hdr.pixel_spacing == (0.1, 0.1) and hdr.bits_stored == 12


def test_uid_seed_is_deterministic(tmp_path: Path):
    kwargs = {"laterality": "L", "view": "CC"}
    a = pydicom.dcmread(write_dicom_mg(tmp_path / "a.dcm", _pixels((4, 4)), uid_seed="case1", **kwargs))
    b = pydicom.dcmread(write_dicom_mg(tmp_path / "b.dcm", _pixels((4, 4)), uid_seed="case1", **kwargs))
    c = pydicom.dcmread(write_dicom_mg(tmp_path / "c.dcm", _pixels((4, 4)), uid_seed="case2", **kwargs))
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SOPInstanceUID != c.SOPInstanceUID
    assert len({a.SOPInstanceUID, a.StudyInstanceUID, a.SeriesInstanceUID}) == 3


@pytest.mark.parametrize(
    ("pixels", "kwargs", "pattern"),
    [
        (np.zeros((2, 2, 2), np.uint16), {}, "2D"),
        (np.zeros((2, 2), np.float32), {}, "integer"),
        (np.full((2, 2), 4096, np.uint16), {"bits_stored": 12}, "12 unsigned bits"),
        (np.full((2, 2), -1, np.int32), {}, "do not fit"),
        (np.zeros((2, 2), np.uint16), {"laterality": "B"}, "laterality"),
        (np.zeros((2, 2), np.uint16), {"photometric": "RGB"}, "photometric"),
        (np.zeros((2, 2), np.uint16), {"window": (10, 0)}, "window"),
        (np.zeros((2, 2), np.uint16), {"pixel_spacing": (0.1, -1)}, "pixel_spacing"),
        (np.zeros((2, 2), np.uint16), {"extra": {"NotAKeyword": 1}}, "NotAKeyword"),
        (np.zeros((2, 2), np.uint16), {"extra": {"Rows": "many"}}, "Rows"),
        (np.zeros((16, 64), np.uint16), {"compression": "jpeg2000"}, ">= 32"),
        (np.zeros((2, 2), np.uint16), {"compression": "zip"}, "compression"),
    ],
)
@pytest.mark.filterwarnings("ignore:A value of type")  # pydicom's own warning for the bad 'Rows' value
def test_writer_rejects_bad_input(tmp_path: Path, pixels, kwargs, pattern):
    args = {"laterality": "L", "view": "CC", **kwargs}
    with pytest.raises(DataError, match=pattern) as info:
        write_dicom_mg(tmp_path / "bad.dcm", pixels, **args)
    assert "bad.dcm" in str(info.value)
    assert not (tmp_path / "bad.dcm").exists()
