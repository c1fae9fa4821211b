"""read_nifti / write_nifti / check_same_geometry: round trips checked with plain nibabel, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medlearn.errors import DataError
from medlearn.io import check_same_geometry, read_nifti, write_nifti


def _affine() -> np.ndarray:
    """Rotation of 30 degrees about z, spacing (0.8, 1.2, 3.0) mm, translation (-10, 20.5, 7)."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    out = np.eye(4)
    out[:3, :3] = rot @ np.diag([0.8, 1.2, 3.0])
    out[:3, 3] = [-10.0, 20.5, 7.0]
    return out


def _volume(shape=(5, 6, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz"])
def test_round_trip_keeps_data_affine_spacing(tmp_path: Path, name: str):
    data, affine = _volume(), _affine()
    path = write_nifti(tmp_path / name, data, affine)
    vol = read_nifti(path, expect_ndim=3)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    np.testing.assert_allclose(vol.spacing, (0.8, 1.2, 3.0), atol=1e-6)
    # independent reader: plain nibabel sees the same, with sform and qform both set (code 1)
    img = nib.load(path)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), data)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # atomic: no temporary file left


def test_integer_labels_keep_dtype_and_bool_becomes_uint8(tmp_path: Path):
    labels = np.array([[[0, 1], [2, 1]]], dtype=np.int64)
    write_nifti(tmp_path / "lab.nii.gz", labels, np.eye(4))
    vol = read_nifti(tmp_path / "lab.nii.gz", dtype=None)
    assert vol.data.dtype == np.int32
    np.testing.assert_array_equal(vol.data, labels)
    write_nifti(tmp_path / "mask.nii.gz", labels > 0, np.eye(4))
    assert nib.load(tmp_path / "mask.nii.gz").get_data_dtype() == np.uint8


def test_trailing_singleton_dim_is_squeezed(tmp_path: Path):
    data = _volume((3, 4, 5, 1))
    write_nifti(tmp_path / "v4.nii.gz", data, _affine())
    vol = read_nifti(tmp_path / "v4.nii.gz", expect_ndim=3)
    assert vol.data.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.data, data[..., 0])
    np.testing.assert_allclose(vol.spacing, (0.8, 1.2, 3.0), atol=1e-6)


def test_4d_where_3d_expected(tmp_path: Path):
    write_nifti(tmp_path / "time.nii.gz", _volume((3, 4, 5, 2)), np.eye(4))
    with pytest.raises(DataError, match=r"time\.nii\.gz: has 4 dims \(shape \(3, 4, 5, 2\)\).*3D"):
        read_nifti(tmp_path / "time.nii.gz", expect_ndim=3)
    assert read_nifti(tmp_path / "time.nii.gz").data.shape == (3, 4, 5, 2)


def test_nan_is_rejected(tmp_path: Path):
    data = _volume()
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    write_nifti(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 2 voxel value\(s\) are NaN or infinite"):
        read_nifti(tmp_path / "nan.nii.gz")


def test_missing_file(tmp_path: Path):
    with pytest.raises(DataError, match=r"not found.*ghost\.nii\.gz"):
        read_nifti(tmp_path / "ghost.nii.gz")


def test_truncated_gzip(tmp_path: Path):
    path = write_nifti(tmp_path / "cut.nii.gz", _volume((20, 20, 20)), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"cut\.nii\.gz: not a readable NIfTI"):
        read_nifti(path)


def test_random_bytes(tmp_path: Path):
    path = tmp_path / "noise.nii.gz"
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(400)))
    with pytest.raises(DataError, match=r"noise\.nii\.gz"):
        read_nifti(path)
    raw = tmp_path / "noise.nii"
    raw.write_bytes(np.random.default_rng(1).bytes(400))
    with pytest.raises(DataError, match=r"noise\.nii"):
        read_nifti(raw)


def test_write_rejects_bad_affine_and_suffix(tmp_path: Path):
    with pytest.raises(DataError, match=r"a\.nii\.gz: affine must be a finite \(4, 4\)"):
        write_nifti(tmp_path / "a.nii.gz", _volume(), np.eye(3))
    with pytest.raises(DataError, match=r"a\.nii\.gz: affine"):
        write_nifti(tmp_path / "a.nii.gz", _volume(), np.full((4, 4), np.nan))
    with pytest.raises(DataError, match=r"a\.npy.*\.nii"):
        write_nifti(tmp_path / "a.npy", _volume(), np.eye(4))


def test_check_same_geometry(tmp_path: Path):
    a = read_nifti(write_nifti(tmp_path / "img.nii.gz", _volume(), _affine()))
    b = read_nifti(write_nifti(tmp_path / "mask.nii.gz", _volume(seed=1), _affine()))
    check_same_geometry(a, b)  # same grid: no error

    shifted = _affine()
    shifted[0, 3] += 0.5
    c = read_nifti(write_nifti(tmp_path / "shifted.nii.gz", _volume(), shifted))
    with pytest.raises(
        DataError, match=r"case 7: affines differ between .*img\.nii\.gz and .*shifted\.nii\.gz"
    ):
        check_same_geometry(a, c, what="case 7")

    d = read_nifti(write_nifti(tmp_path / "small.nii.gz", _volume((5, 6, 3)), _affine()))
    with pytest.raises(
        DataError, match=r"img\.nii\.gz has shape \(5, 6, 4\), .*small\.nii\.gz has \(5, 6, 3\)"
    ):
        check_same_geometry(a, d)
