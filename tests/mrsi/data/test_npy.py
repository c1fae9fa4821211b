"""The npy (reference) layout reader and its validators."""

from __future__ import annotations

import numpy as np
import pytest

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.data import load_patient

from .writers import H, S, W, write_npy_patient


def test_npy_layout_reads_values_and_slabs(tmp_path):
    ref = write_npy_patient(tmp_path, "Patient1")
    p = load_patient(tmp_path, "Patient1")
    assert p.layout == "npy" and p.patient_id == "Patient1"
    for met in METABOLITES:
        np.testing.assert_array_equal(p.maps[met], ref["maps"][met])
        assert p.maps[met].dtype == np.float32
    assert p.t1.shape == (S, 3 * H, 3 * W, 3)
    for s in range(S):
        for j in range(3):
            np.testing.assert_array_equal(p.t1[s, :, :, j], ref["t1"][3 * s + j])
            np.testing.assert_array_equal(p.flair[s, :, :, j], ref["flair"][3 * s + j])
    np.testing.assert_array_equal(p.mask, ref["maps"]["NAA"] != 0)
    assert p.mask.dtype == bool and not p.mask[:, 0].any()


def test_wrong_shape_nan_and_mri_grid(tmp_path):
    write_npy_patient(tmp_path, "A")
    np.save(tmp_path / "A" / "Met_filtered" / "NAA.npy", np.ones((S, H + 1, W), np.float32))
    with pytest.raises(DataError, match="NAA.npy: map shape"):
        load_patient(tmp_path, "A")

    write_npy_patient(tmp_path, "B")
    bad = np.ones((S, H, W), np.float32)
    bad[1, 2, 3] = np.nan
    np.save(tmp_path / "B" / "Met_filtered" / "Glu.npy", bad)
    with pytest.raises(DataError, match="Glu.npy: contains 1 NaN/inf"):
        load_patient(tmp_path, "B")

    write_npy_patient(tmp_path, "C", mri_shape=(3 * S, 2 * H, 2 * W))
    with pytest.raises(DataError, match="T1_sliced.npy: MRI grid .* not 3x"):
        load_patient(tmp_path, "C")

    write_npy_patient(tmp_path, "D", mri_shape=(2 * S, 3 * H, 3 * W))
    with pytest.raises(DataError, match="T1_sliced.npy: has 4 MRI slices, expected 3 per MRSI slice"):
        load_patient(tmp_path, "D")

    (tmp_path / "E").mkdir()
    with pytest.raises(DataError, match="cannot tell the layout"):
        load_patient(tmp_path, "E")
    with pytest.raises(ConfigError, match="layout"):
        load_patient(tmp_path, "A", layout="dicom")
    with pytest.raises(DataError, match="patient folder not found"):
        load_patient(tmp_path, "Z")
