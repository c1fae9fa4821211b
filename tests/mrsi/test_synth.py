"""Synthetic benchmark: both layouts readable and identical, geometry, determinism, lesion, QC mask."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel.affines import apply_affine

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.data import MRSIDataset, list_patients, load_patient
from medlearn.mrsi.synth import synthesize

HR, SLICES = 32, 3


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), n_patients=2, seed=0, hr_size=HR, n_slices=SLICES)


def test_both_layouts_load_with_identical_content(bench):
    assert list_patients(bench / "npy") == ["Patient1", "Patient2"]
    assert list_patients(bench / "nifti") == ["Patient1", "Patient2"]
    for pid in ("Patient1", "Patient2"):
        a = load_patient(bench / "npy", pid)
        b = load_patient(bench / "nifti", pid)
        assert a.layout == "npy" and b.layout == "nifti"
        for met in METABOLITES:
            assert a.maps[met].shape == (SLICES, HR, HR)
            np.testing.assert_array_equal(a.maps[met], b.maps[met])
        assert a.t1.shape == (SLICES, 3 * HR, 3 * HR, 3)
        np.testing.assert_array_equal(a.t1, b.t1)
        np.testing.assert_array_equal(a.flair, b.flair)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert (bench / "README.md").is_file()
    with pytest.raises(DataError, match="did you mean"):
        list_patients(bench)  # the benchmark root holds the two layout folders


def test_nifti_geometry(bench):
    pdir = bench / "nifti" / "Patient1"
    met = nib.load(str(pdir / "concs" / "NAA.nii.gz"))
    t1 = nib.load(str(pdir / "T1.nii.gz"))
    assert met.shape == (HR, HR, SLICES) and t1.shape == (3 * HR, 3 * HR, 3 * SLICES)
    np.testing.assert_allclose(met.header.get_zooms(), [220 / HR] * 3, rtol=1e-5)
    np.testing.assert_allclose(t1.header.get_zooms(), [220 / HR / 3] * 3, rtol=1e-5)
    # the centre of each 3x3x3 block of MRI voxels is the centre of its MRSI voxel
    ijk = np.array([[0, 0, 0], [5, 17, 2], [HR - 1, HR - 1, SLICES - 1]])
    np.testing.assert_allclose(apply_affine(t1.affine, 3 * ijk + 1), apply_affine(met.affine, ijk), atol=1e-4)
    # same field of view: outer voxel edges coincide
    half_map = np.abs(met.affine[:3, :3]).sum(axis=1) / 2
    half_mri = np.abs(t1.affine[:3, :3]).sum(axis=1) / 2
    lo_map = apply_affine(met.affine, [0, 0, 0]) - np.sign(met.affine[:3, :3].sum(axis=1)) * half_map
    lo_mri = apply_affine(t1.affine, [0, 0, 0]) - np.sign(t1.affine[:3, :3].sum(axis=1)) * half_mri
    np.testing.assert_allclose(lo_map, lo_mri, atol=1e-4)
    assert int(met.header["sform_code"]) == 1


def test_deterministic_per_seed(bench, tmp_path):
    again = synthesize(tmp_path / "a", n_patients=1, seed=0, hr_size=HR, n_slices=SLICES, layouts=("npy",))
    other = synthesize(tmp_path / "b", n_patients=1, seed=1, hr_size=HR, n_slices=SLICES, layouts=("npy",))
    ref = load_patient(bench / "npy", "Patient1")
    same = load_patient(again / "npy", "Patient1")
    diff = load_patient(other / "npy", "Patient1")
    for met in METABOLITES:
        np.testing.assert_array_equal(same.maps[met], ref.maps[met])
    np.testing.assert_array_equal(same.t1, ref.t1)
    assert not np.array_equal(diff.maps["NAA"], ref.maps["NAA"])
    assert not (again / "nifti").exists()


def test_lesion_changes_metabolites(bench):
    info = json.loads((bench / "synth.json").read_text())
    assert info["seed"] == 0 and len(info["patients"]) == 2
    for k, pid in enumerate(("Patient1", "Patient2")):
        p = load_patient(bench / "npy", pid)
        label = np.load(bench / "npy" / pid / "lesion_label.npy")
        lesion = p.mask & (label >= 2)  # enhancing tumour and necrosis
        rim = p.mask & (label == 2)
        normal = p.mask & (label == 0)
        assert rim.sum() >= 1 and normal.sum() > 50, info["patients"][k]["lesion"]
        assert p.maps["NAA"][lesion].mean() < 0.75 * p.maps["NAA"][normal].mean()
        assert p.maps["tCho"][rim].mean() > 1.1 * p.maps["tCho"][normal].mean()
        assert p.maps["Gly"][rim].mean() > 1.3 * p.maps["Gly"][normal].mean()
        # FLAIR-like contrast: oedema brighter than normal-appearing brain
        oedema = label == 1
        if oedema.any():
            flair = p.flair.reshape(SLICES, HR, 3, HR, 3, 3).mean(axis=(2, 4, 5))
            assert flair[oedema].mean() > flair[normal].mean()


def test_quality_mask(bench):
    info = json.loads((bench / "synth.json").read_text())
    for k, pid in enumerate(("Patient1", "Patient2")):
        qm = (
            np.asarray(nib.load(str(bench / "nifti" / pid / "quality_mask.nii.gz")).dataobj).transpose(
                2, 0, 1
            )
            > 0
        )
        p = load_patient(bench / "npy", pid)
        for met in METABOLITES:
            assert (p.maps[met][~qm] == 0).all()  # failed or outside the brain: 0 in every map
            assert (p.maps[met][qm] > 0).all()
        assert info["patients"][k]["n_failed_voxels"] > 0
        assert qm.sum() == info["patients"][k]["n_valid_voxels"]


def test_dataset_on_synthetic_patients(bench):
    patients = [load_patient(bench / "nifti", pid) for pid in list_patients(bench / "nifti")]
    ds = MRSIDataset(patients, n_choices=(4, 8), seed=0)
    item = ds[0]
    assert item["hr"].shape == (1, HR, HR) and item["t1"].shape == (1, 3 * HR, 3 * HR, 3)
    assert float(item["hr"].max()) == pytest.approx(1.0)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="layouts"):
        synthesize(tmp_path, n_patients=1, hr_size=HR, layouts=("dicom",))
    with pytest.raises(ConfigError, match="n_patients"):
        synthesize(tmp_path, n_patients=0, hr_size=HR)


def test_rerun_replaces_previous_benchmark_but_not_foreign_data(tmp_path):
    out = tmp_path / "bench"
    synthesize(out, n_patients=2, hr_size=16, n_slices=1, layouts=("npy",))
    synthesize(out, n_patients=1, hr_size=16, n_slices=1, layouts=("npy",))
    assert list_patients(out / "npy") == ["Patient1"]  # no stale Patient2
    foreign = tmp_path / "mine"
    (foreign / "nifti" / "Patient1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no synth.json"):
        synthesize(foreign, n_patients=1, hr_size=16, n_slices=1)
    assert (foreign / "nifti" / "Patient1").is_dir()
