"""Layout detection, patient listing, loading either layout by name, whole-dataset verification, metabolite ids."""

from __future__ import annotations

import numpy as np
import pytest

import medlearn.mrsi.data as data_pkg
from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.data import list_patients, load_patient, metabolite_index

from .writers import H, S, W, write_nifti_patient, write_npy_patient


def test_list_patients_natural_order(tmp_path):
    for k in (10, 2, 1):
        write_npy_patient(tmp_path, f"Patient{k}", seed=k)
    (tmp_path / "notes").mkdir()
    assert list_patients(tmp_path, "npy") == ["Patient1", "Patient2", "Patient10"]
    with pytest.raises(DataError, match="no patient folders"):
        list_patients(tmp_path, "nifti")
    with pytest.raises(DataError, match="not found"):
        list_patients(tmp_path / "nope")


def test_missing_metabolite_file_is_named(tmp_path):
    write_npy_patient(tmp_path, "P", skip=("Gly",))
    with pytest.raises(DataError, match=r"Gly\.npy: metabolite file missing"):
        load_patient(tmp_path, "P")
    write_nifti_patient(tmp_path / "n", "P")
    (tmp_path / "n" / "P" / "concs" / "Ins.nii.gz").unlink()
    with pytest.raises(DataError, match="Ins"):
        load_patient(tmp_path / "n", "P")


def test_verify_dataset_reports_every_bad_patient(tmp_path):
    from medlearn.mrsi.data import verify_dataset

    write_npy_patient(tmp_path, "Patient1")
    write_npy_patient(tmp_path, "Patient2", skip=("NAA",))
    write_npy_patient(tmp_path, "Patient3")
    np.save(
        tmp_path / "Patient3" / "MRI_sliced" / "flair_sliced.npy",
        np.ones((3 * S, 3 * H, 3 * W + 3), np.float32),
    )
    report = verify_dataset(tmp_path)
    assert report["Patient1"] is None
    assert "NAA.npy: metabolite file missing" in report["Patient2"]
    assert "flair_sliced.npy" in report["Patient3"] and "not 3x" in report["Patient3"]


def test_metabolite_index():
    assert metabolite_index("NAA") == 6 and metabolite_index("tCr") == 0
    with pytest.raises(ConfigError, match="unknown metabolite 'Lac'.*tCr, Gln"):
        metabolite_index("Lac")


def test_package_keeps_the_public_names():
    """``from medlearn.mrsi.data import ...`` works for every name the single module exported."""
    names = {
        "PatientData", "load_patient", "list_patients", "detect_layout", "metabolite_index", "MRSIDataset",
        "LAYOUTS", "mri_affine_from_map_affine", "resample_mri_to_map_grid", "verify_dataset",
    }  # fmt: skip
    assert set(data_pkg.__all__) == names
    assert all(getattr(data_pkg, n) is not None for n in names)
    assert data_pkg.LAYOUTS == ("npy", "nifti")
