"""The nifti (clinical) layout reader: values, concentration kinds, aliases, quality mask, geometry checks, resampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medlearn.errors import DataError
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.data import load_patient

from .writers import H, S, W, map_affine, write_nifti_patient


def test_nifti_layout_reads_values_kind_and_aliases(tmp_path):
    names = {"tCr": "Cr+PCr", "tCho": "GPC+PCh"}  # FSL-MRS style names
    ref = write_nifti_patient(tmp_path, "Patient2", kind="molarity", names=names)
    p = load_patient(tmp_path, "Patient2", conc_kind="molarity")
    assert p.layout == "nifti"
    for met in METABOLITES:
        np.testing.assert_array_equal(p.maps[met], ref["maps"][met])
    for s in range(S):
        np.testing.assert_array_equal(p.t1[s, :, :, 2], ref["t1"][3 * s + 2])
    np.testing.assert_allclose(p.map_affine, ref["affine"])
    with pytest.raises(DataError, match="concentration folder"):
        load_patient(tmp_path, "Patient2", conc_kind="raw")


def test_nifti_quality_mask_file_is_applied(tmp_path):
    write_nifti_patient(tmp_path, "P")
    mask = np.ones((H, W, S), np.uint8)
    mask[3, 4, 1] = 0
    nib.save(nib.Nifti1Image(mask, map_affine()), str(tmp_path / "P" / "quality_mask.nii.gz"))
    p = load_patient(tmp_path, "P", layout="nifti")
    assert not p.mask[1, 3, 4] and p.mask[0, 3, 4]
    assert all(p.maps[m][1, 3, 4] == 0 for m in METABOLITES)


def test_nifti_affine_mismatches(tmp_path):
    write_nifti_patient(tmp_path, "A")
    arr = np.asarray(nib.load(str(tmp_path / "A" / "concs" / "Gln.nii.gz")).dataobj)
    shifted = map_affine()
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(arr, shifted), str(tmp_path / "A" / "concs" / "Gln.nii.gz"))
    with pytest.raises(DataError, match="Gln.nii.gz: affine differs"):
        load_patient(tmp_path, "A")
    load_patient(tmp_path, "A", check_geometry=False)  # the switch turns the check off

    write_nifti_patient(tmp_path, "B")
    t1 = np.asarray(nib.load(str(tmp_path / "B" / "T1.nii.gz")).dataobj)
    nib.save(nib.Nifti1Image(t1, map_affine()), str(tmp_path / "B" / "T1.nii.gz"))  # MRI on the map affine
    with pytest.raises(DataError, match="T1.nii.gz: MRI affine is not geometrically consistent"):
        load_patient(tmp_path, "B")


def test_resample_mri_onto_map_grid(tmp_path):
    from nibabel.affines import apply_affine

    from medlearn.mrsi.data import resample_mri_to_map_grid

    write_nifti_patient(tmp_path, "P")
    # an acquired T1 on its own (rotated, 1.3 mm) grid covering the MRSI slab, intensity linear in mm
    theta = np.deg2rad(10)
    raw = np.eye(4)
    raw[:3, :3] = 1.3 * np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    raw[:3, 3] = [-40.0, -15.0, -10.0]
    ijk = np.stack(np.meshgrid(*(np.arange(d) for d in (70, 70, 40)), indexing="ij"), -1)
    xyz = apply_affine(raw, ijk)
    coef = np.array([0.5, -0.25, 1.0])
    nib.save(nib.Nifti1Image((xyz @ coef + 100).astype(np.float32), raw), str(tmp_path / "raw_t1.nii.gz"))
    out = resample_mri_to_map_grid(
        tmp_path / "raw_t1.nii.gz", tmp_path / "P" / "concs" / "NAA.nii.gz", tmp_path / "P" / "T1.nii.gz"
    )
    img = nib.load(str(out))
    assert img.shape == (3 * H, 3 * W, 3 * S)
    target = apply_affine(
        img.affine, np.stack(np.meshgrid(*(np.arange(d) for d in img.shape), indexing="ij"), -1)
    )
    np.testing.assert_allclose(np.asarray(img.dataobj), target @ coef + 100, atol=1e-3)  # trilinear is exact
    p = load_patient(tmp_path, "P")  # geometry check passes
    assert p.t1.shape == (S, 3 * H, 3 * W, 3)
