"""read_dicom / read_dicom_header: values against hand-computed DICOM pipelines, real files, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless

from medlearn.errors import DataError
from medlearn.io import read_dicom, read_dicom_header, write_dicom_mg

# ------------------------------------------------------------------------ pixel pipeline, hand-computed


def test_monochrome1_is_inverted_within_bits_stored(make_dicom):
    stored = np.array([[0, 1000], [4095, 2048]], dtype=np.uint16)
    path = make_dicom("mono1.dcm", stored, bits_stored=12, photometric="MONOCHROME1")
    img = read_dicom(path)
    # 12 bits stored, unsigned: out = 4095 - x
    np.testing.assert_array_equal(img.pixels, np.array([[4095, 3095], [0, 2047]], dtype=np.float32))
    assert img.pixels.dtype == np.float32
    assert img.inverted and img.value_range == (0.0, 4095.0)
    raw = read_dicom(path, invert_monochrome1=False)
    np.testing.assert_array_equal(raw.pixels, stored.astype(np.float32))
    assert not raw.inverted


def test_monochrome2_is_not_inverted(make_dicom):
    stored = np.array([[0, 1000]], dtype=np.uint16)
    img = read_dicom(make_dicom("mono2.dcm", stored, bits_stored=12))
    np.testing.assert_array_equal(img.pixels, [[0.0, 1000.0]])
    assert not img.inverted


def test_rescale_slope_intercept(make_dicom):
    stored = np.array([[0, 1], [50, 300]], dtype=np.uint16)
    path = make_dicom("rescale.dcm", stored, RescaleSlope=2, RescaleIntercept=-100)
    img = read_dicom(path)
    np.testing.assert_array_equal(img.pixels, [[-100.0, -98.0], [0.0, 500.0]])
    assert img.value_range == (-100.0, 65535 * 2 - 100.0)


def test_rescale_signed_pixels(make_dicom):
    stored = np.array([[-5, 7], [-32768, 32767]], dtype=np.int16)
    img = read_dicom(make_dicom("signed.dcm", stored, RescaleSlope=0.5, RescaleIntercept=10))
    np.testing.assert_array_equal(img.pixels, [[7.5, 13.5], [-16374.0, 16393.5]])


def test_monochrome1_with_rescale_mirrors_the_rescaled_range(make_dicom):
    stored = np.array([[1000, 0]], dtype=np.uint16)
    path = make_dicom(
        "m1r.dcm", stored, bits_stored=12, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100
    )
    img = read_dicom(path)
    # range [-100, 4095*2 - 100 = 8090]; x = 1900 -> -100 + 8090 - 1900 = 6090; x = -100 -> 8090
    np.testing.assert_array_equal(img.pixels, [[6090.0, 8090.0]])


def _linear_window(x: float, center: float, width: float, y_min: float, y_max: float) -> float:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' window, written out for the test."""
    c, w = center - 0.5, width - 1
    if x <= c - w / 2:
        return y_min
    if x > c + w / 2:
        return y_max
    return ((x - c) / w + 0.5) * (y_max - y_min) + y_min


def test_window_center_width_linear(make_dicom):
    stored = np.array([[74, 75, 100, 124, 125, 200]], dtype=np.uint8)
    path = make_dicom("win.dcm", stored, WindowCenter=100, WindowWidth=51)
    img = read_dicom(path, apply_voi=True)
    # c' = 99.5, w' = 50, output range [0, 255]: 75 -> 0.01*255, 100 -> 0.51*255, 124 -> 0.99*255
    expected = np.array([[0.0, 2.55, 130.05, 252.45, 255.0, 255.0]])
    np.testing.assert_allclose(img.pixels, expected, rtol=0, atol=1e-4)
    by_formula = [_linear_window(float(x), 100, 51, 0, 255) for x in stored.ravel()]
    np.testing.assert_allclose(img.pixels.ravel(), by_formula, atol=1e-4)
    assert img.voi_applied and img.window == (100.0, 51.0)
    np.testing.assert_array_equal(read_dicom(path).pixels, stored.astype(np.float32))  # off by default


def test_window_after_rescale_and_monochrome1(make_dicom):
    stored = np.array([[100, 0, 255]], dtype=np.uint8)
    path = make_dicom(
        "win_m1.dcm",
        stored,
        photometric="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=100,
        WindowWidth=51,
    )
    img = read_dicom(path, apply_voi=True)
    # rescaled: 100, -100, 410; range [-100, 410]; windowed: 0.51*510 - 100 = 160.1, -100, 410
    # MONOCHROME1 mirror in [-100, 410]: 310 - x
    np.testing.assert_allclose(img.pixels, [[310 - 160.1, 410.0, -100.0]], atol=1e-4)


def test_invalid_window_width(make_dicom):
    path = make_dicom("w0.dcm", np.zeros((2, 2), np.uint16), WindowCenter=10, WindowWidth=0)
    with pytest.raises(DataError, match=r"w0\.dcm: invalid modality/VOI transform.*Window Width"):
        read_dicom(path, apply_voi=True)


def test_voi_lut_sequence(make_dicom):
    stored = np.array([[0, 1, 3, 9]], dtype=np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4, 0, 8])
    item.add_new("LUTData", "US", [10, 20, 30, 40])
    path = make_dicom("voilut.dcm", stored, bits_stored=12, VOILUTSequence=[item])
    img = read_dicom(path, apply_voi=True)
    np.testing.assert_array_equal(img.pixels, [[10.0, 20.0, 40.0, 40.0]])  # 9 is past the last entry
    assert img.value_range == (0.0, 255.0)


def test_display_window_follows_inversion(make_dicom):
    path = make_dicom(
        "dw.dcm",
        np.zeros((2, 2), np.uint16),
        bits_stored=12,
        photometric="MONOCHROME1",
        WindowCenter=1000,
        WindowWidth=400,
    )
    img = read_dicom(path)
    assert img.window == (1000.0, 400.0)
    assert img.display_window == (3095.0, 400.0)
    assert read_dicom(path, apply_voi=True).display_window is None


def test_8_bit_file(make_dicom):
    stored = np.array([[0, 17], [128, 255]], dtype=np.uint8)
    img = read_dicom(make_dicom("b8.dcm", stored))
    np.testing.assert_array_equal(img.pixels, stored.astype(np.float32))
    assert img.bits_stored == 8 and img.value_range == (0.0, 255.0)


def test_12_bit_file_ignores_bits_above_high_bit(make_dicom):
    stored = np.array([[0, 4095], [4096 + 7, 2000]], dtype=np.uint16)  # 4103 has bit 12 set (unused)
    img = read_dicom(make_dicom("b12.dcm", stored, bits_stored=12))
    np.testing.assert_array_equal(img.pixels, [[0.0, 4095.0], [7.0, 2000.0]])
    assert img.bits_stored == 12


def test_dtype_option(make_dicom):
    img = read_dicom(make_dicom("f64.dcm", np.array([[3]], np.uint16)), dtype=np.float64)
    assert img.pixels.dtype == np.float64


def test_multiframe_needs_frame_index(make_dicom):
    frames = np.arange(2 * 2 * 3, dtype=np.uint16).reshape(2, 2, 3)
    path = make_dicom("multi.dcm", frames)
    with pytest.raises(DataError, match=r"multi\.dcm.*2 frames"):
        read_dicom(path)
    np.testing.assert_array_equal(read_dicom(path, frame=1).pixels, [[6, 7, 8], [9, 10, 11]])
    with pytest.raises(DataError, match="frame 2"):
        read_dicom(path, frame=2)


# ---------------------------------------------------------------------------------------- header


def test_header_fields(make_dicom):
    path = make_dicom(
        "hdr.dcm",
        np.zeros((3, 4), np.uint16),
        bits_stored=14,
        ImageLaterality="R",
        ViewPosition="MLO",
        ImagerPixelSpacing=[0.085, 0.07],
        WindowCenter=[2000, 1800],
        WindowWidth=[900, 1000],
        Manufacturer="ACME",
    )
    hdr = read_dicom_header(path)
    assert hdr.laterality == "R" and hdr.view == "MLO"
    assert hdr.pixel_spacing == (0.085, 0.07)
    assert hdr.window == (2000.0, 900.0)
    assert hdr.manufacturer == "ACME" and hdr.bits_stored == 14
    assert (hdr.rows, hdr.columns, hdr.n_frames) == (3, 4, 1)
    assert hdr.photometric == "MONOCHROME2" and hdr.path == path


def test_header_laterality_fallback_and_absent_fields(make_dicom):
    path = make_dicom("lat.dcm", np.zeros((2, 2), np.uint16), Laterality="L", PixelSpacing=[0.5, 0.25])
    hdr = read_dicom_header(path)
    assert hdr.laterality == "L" and hdr.pixel_spacing == (0.5, 0.25)
    assert hdr.view is None and hdr.window is None and hdr.manufacturer is None
    bare = read_dicom_header(make_dicom("bare.dcm", np.zeros((2, 2), np.uint16)))
    assert bare.laterality is None and bare.pixel_spacing is None


def test_header_view_from_view_code_sequence(make_dicom):
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "399368009",
        "SCT",
        "medio-lateral oblique",
    )
    hdr = read_dicom_header(make_dicom("vcs.dcm", np.zeros((2, 2), np.uint16), ViewCodeSequence=[code]))
    assert hdr.view == "MLO"


def test_file_without_meta_needs_force(tmp_path: Path):
    ds = Dataset()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        1,
        3,
        16,
        16,
        15,
        0,
    )
    ds.PixelData = np.array([5, 6, 7], dtype="<u2").tobytes()
    path = tmp_path / "nometa.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    with pytest.raises(DataError, match=r"nometa\.dcm.*not a DICOM file"):
        read_dicom(path)
    np.testing.assert_array_equal(read_dicom(path, force=True).pixels, [[5.0, 6.0, 7.0]])


def test_header_rejects_bad_spacing(make_dicom):
    path = make_dicom("badsp.dcm", np.zeros((2, 2), np.uint16), PixelSpacing=[0, 0.1])
    with pytest.raises(DataError, match=r"badsp\.dcm.*PixelSpacing"):
        read_dicom_header(path)


# ------------------------------------------------------------------------------ pydicom's test files


def test_ct_small_matches_rescaled_pixels():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = read_dicom(path)
    assert img.pixels.shape == (128, 128)
    np.testing.assert_array_equal(img.pixels, expected.astype(np.float32))
    assert img.pixel_spacing == tuple(float(v) for v in ds.PixelSpacing)
    assert img.modality == "CT"


def test_mr_small_and_its_jpeg2000_and_rle_twins():
    ref = read_dicom(get_testdata_file("MR_small.dcm"))
    assert ref.pixels.shape == (64, 64) and ref.window == (600.0, 1600.0)
    raw = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    np.testing.assert_array_equal(ref.pixels, raw.astype(np.float32))
    for twin in (
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ):
        img = read_dicom(get_testdata_file(twin))
        assert img.transfer_syntax != ref.transfer_syntax
        np.testing.assert_array_equal(img.pixels, ref.pixels)


def test_jpeg2000_file_decodes():
    img = read_dicom(get_testdata_file("JPEG2000.dcm"))
    assert img.pixels.shape == (1024, 256) and img.pixels.dtype == np.float32
    assert "1.2.840.10008.1.2.4.91" == img.transfer_syntax
    assert np.isfinite(img.pixels).all() and img.pixels.std() > 0


def test_pydicom_truncated_file():
    with pytest.raises(DataError, match=r"MR_truncated\.dcm.*truncated pixel data: 8130 bytes, 8192"):
        read_dicom(get_testdata_file("MR_truncated.dcm"))


def test_colour_file_is_rejected():
    with pytest.raises(DataError, match=r"examples_rgb_color\.dcm.*greyscale.*RGB"):
        read_dicom(get_testdata_file("examples_rgb_color.dcm"))


# ------------------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match=r"not found.*nowhere\.dcm"):
        read_dicom(tmp_path / "nowhere.dcm")
    with pytest.raises(DataError, match=r"nowhere\.dcm"):
        read_dicom_header(tmp_path / "nowhere.dcm")


def test_random_bytes_are_not_dicom(tmp_path: Path):
    path = tmp_path / "noise.dcm"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(DataError, match=r"noise\.dcm.*not a DICOM file"):
        read_dicom(path)


def test_truncated_pixel_data(make_dicom):
    path = make_dicom("cut.dcm", np.ones((16, 16), np.uint16))
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])  # PixelData is the last element
    with pytest.raises(DataError, match=r"cut\.dcm.*truncated pixel data: 412 bytes, 512 expected"):
        read_dicom(path)


def test_truncated_jpeg2000_stream(tmp_path: Path):
    pixels = np.random.default_rng(1).integers(0, 4096, (64, 64)).astype(np.uint16)
    path = write_dicom_mg(tmp_path / "cutj2k.dcm", pixels, laterality="L", view="CC", compression="jpeg2000")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cutj2k\.dcm: truncated file"):
        read_dicom(path)


def test_no_pixel_data(make_dicom):
    path = make_dicom("nopix.dcm", np.zeros((2, 2), np.uint16), pixel_data=False)
    with pytest.raises(DataError, match=r"nopix\.dcm.*no pixel data"):
        read_dicom(path)
    assert read_dicom_header(path).rows == 2  # the header alone is fine


def test_nan_in_float_pixel_data(tmp_path: Path, make_dicom):
    path = make_dicom("nan.dcm", np.zeros((2, 2), np.float32), pixel_data=False)
    ds = pydicom.dcmread(path)
    del ds.PixelRepresentation, ds.BitsStored, ds.HighBit
    ds.FloatPixelData = np.array([[1.0, np.nan], [np.inf, 2.0]], dtype="<f4").tobytes()
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match=r"nan\.dcm.*2 pixel value\(s\) are NaN or infinite"):
        read_dicom(path)


def test_missing_jpeg2000_plugin_names_the_extra(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    path = Path(get_testdata_file("MR_small_jp2klossless.dcm"))
    with pytest.raises(DataError, match=r"MR_small_jp2klossless\.dcm.*pip install medlearn\[jpeg2000\]"):
        read_dicom(path)
