"""Patient readers (npy and NIfTI layouts), validators, and the MRSI dataset."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.data import MRSIDataset, list_patients, load_patient, metabolite_index

S, H, W = 2, 8, 10


def make_maps(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Positive maps (S, H, W) with a zero border row standing for failed voxels."""
    maps = {}
    for met in METABOLITES:
        a = rng.uniform(0.5, 2.0, size=(S, H, W)).astype(np.float32)
        a[:, 0, :] = 0.0
        maps[met] = a
    return maps


def make_mri(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(1.0, 100.0, size=(3 * S, 3 * H, 3 * W)).astype(np.float32)


def write_npy_patient(root: Path, pid: str, seed: int = 0, skip=(), mri_shape=None) -> dict:
    rng = np.random.default_rng(seed)
    maps, t1, flair = make_maps(rng), make_mri(rng), make_mri(rng)
    pdir = root / pid
    (pdir / "Met_filtered").mkdir(parents=True)
    (pdir / "MRI_sliced").mkdir()
    for met, arr in maps.items():
        if met not in skip:
            np.save(pdir / "Met_filtered" / f"{met}.npy", arr)
    if mri_shape is not None:
        t1 = np.ones(mri_shape, np.float32)
    np.save(pdir / "MRI_sliced" / "T1_sliced.npy", t1)
    np.save(pdir / "MRI_sliced" / "flair_sliced.npy", flair)
    return {"maps": maps, "t1": t1, "flair": flair}


def map_affine(v: float = 3.4) -> np.ndarray:
    a = np.diag([v, v, 2 * v, 1.0])
    a[:3, 3] = [-20.0, 10.0, 5.0]
    return a


def mri_affine(a: np.ndarray) -> np.ndarray:
    """MRI grid: same corner voxel centre shifted by one MRI voxel, voxels 3x smaller (by hand)."""
    b = a.copy()
    b[:3, :3] = a[:3, :3] / 3
    b[:3, 3] = a[:3, 3] - a[:3, :3].sum(axis=1) / 3  # voxel 1 of the fine grid = voxel 0 of the map
    return b


def write_nifti_patient(root: Path, pid: str, seed: int = 0, kind: str | None = None, names=None) -> dict:
    rng = np.random.default_rng(seed)
    maps, t1, flair = make_maps(rng), make_mri(rng), make_mri(rng)
    pdir = root / pid
    conc = pdir / "concs" / kind if kind else pdir / "concs"
    conc.mkdir(parents=True)
    aff = map_affine()
    for met, arr in maps.items():
        name = (names or {}).get(met, met)
        nib.save(nib.Nifti1Image(arr.transpose(1, 2, 0), aff), str(conc / f"{name}.nii.gz"))
    for name, arr in (("T1", t1), ("FLAIR", flair)):
        nib.save(nib.Nifti1Image(arr.transpose(1, 2, 0), mri_affine(aff)), str(pdir / f"{name}.nii.gz"))
    return {"maps": maps, "t1": t1, "flair": flair, "affine": aff}


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


def test_list_patients_natural_order(tmp_path):
    for k in (10, 2, 1):
        write_npy_patient(tmp_path, f"Patient{k}", seed=k)
    (tmp_path / "notes").mkdir()
    assert list_patients(tmp_path, "npy") == ["Patient1", "Patient2", "Patient10"]
    with pytest.raises(DataError, match="no patient folders"):
        list_patients(tmp_path, "nifti")
    with pytest.raises(DataError, match="not found"):
        list_patients(tmp_path / "nope")


# ----------------------------------------------------------------------------- validators
def test_missing_metabolite_file_is_named(tmp_path):
    write_npy_patient(tmp_path, "P", skip=("Gly",))
    with pytest.raises(DataError, match=r"Gly\.npy: metabolite file missing"):
        load_patient(tmp_path, "P")
    write_nifti_patient(tmp_path / "n", "P")
    (tmp_path / "n" / "P" / "concs" / "Ins.nii.gz").unlink()
    with pytest.raises(DataError, match="Ins"):
        load_patient(tmp_path / "n", "P")


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


def test_metabolite_index():
    assert metabolite_index("NAA") == 6 and metabolite_index("tCr") == 0
    with pytest.raises(ConfigError, match="unknown metabolite 'Lac'.*tCr, Gln"):
        metabolite_index("Lac")


# ----------------------------------------------------------------------------- dataset
@pytest.fixture()
def two_patients(tmp_path):
    for k in (1, 2):
        write_npy_patient(tmp_path, f"Patient{k}", seed=k)
    return [load_patient(tmp_path, f"Patient{k}") for k in (1, 2)]


def np_truncate(x: np.ndarray, n: int) -> np.ndarray:
    h, w = x.shape
    k = np.fft.fftshift(np.fft.fft2(x, norm="ortho"))
    win = np.zeros_like(k)
    win[h // 2 - n : h // 2 + n, w // 2 - n : w // 2 + n] = 1
    return np.abs(np.fft.ifft2(np.fft.ifftshift(k * win), norm="ortho"))


def test_dataset_items_eval(two_patients):
    ds = MRSIDataset(two_patients, train=False, fixed_n=3)
    assert len(ds) == 2 * S * len(METABOLITES)
    item = ds[ds.index.index((1, 1, 6))]  # Patient2, slice 1, NAA
    raw = two_patients[1].maps["NAA"][1]
    assert item["hr"].shape == (1, H, W) and item["lr"].shape == (1, H, W) and item["mask"].shape == (1, H, W)
    assert item["t1"].shape == (1, 3 * H, 3 * W, 3) and item["flair"].shape == (1, 3 * H, 3 * W, 3)
    assert item["patient"] == "Patient2" and item["slice"] == 1
    assert int(item["met"]) == 6 and int(item["n"]) == 3 and item["n"].dtype == torch.int64
    np.testing.assert_allclose(float(item["scale"]), raw.max(), rtol=1e-6)
    np.testing.assert_allclose(item["hr"][0].numpy(), raw / raw.max(), rtol=1e-6)
    np.testing.assert_array_equal(item["mask"][0].numpy(), (raw != 0).astype(np.float32))
    np.testing.assert_allclose(item["lr"][0].numpy(), np_truncate(raw / raw.max(), 3), atol=1e-5)
    slab = two_patients[1].t1[1]
    np.testing.assert_allclose(item["t1"][0].numpy(), slab / slab.max(), rtol=1e-6)
    assert float(item["flair"].max()) == pytest.approx(1.0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["hr"].shape == (4, 1, H, W) and batch["t1"].shape == (4, 1, 3 * H, 3 * W, 3)


def test_dataset_random_n_is_deterministic_per_epoch(two_patients):
    ds = MRSIDataset(two_patients, n_choices=(2, 3, 4), augment=False, seed=5)
    first = [int(ds[i]["n"]) for i in range(len(ds))]
    assert set(first) == {2, 3, 4}
    assert first == [int(ds[i]["n"]) for i in range(len(ds))]
    ds.set_epoch(1)
    assert first != [int(ds[i]["n"]) for i in range(len(ds))]
    other = MRSIDataset(two_patients, n_choices=(2, 3, 4), augment=False, seed=5)
    other.set_epoch(1)
    assert [int(ds[i]["n"]) for i in range(5)] == [int(other[i]["n"]) for i in range(5)]
    ev = MRSIDataset(two_patients, train=False, n_choices=(2, 3, 4))
    a = [int(ev[i]["n"]) for i in range(len(ev))]
    ev.set_epoch(7)
    assert a == [int(ev[i]["n"]) for i in range(len(ev))]  # evaluation ignores the epoch


def _pool3(x: np.ndarray) -> np.ndarray:
    h, w = x.shape
    return x.reshape(h // 3, 3, w // 3, 3).mean(axis=(1, 3))


def test_augmentation_keeps_map_mask_and_mri_aligned(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 12, 12
    pdir = tmp_path / "P"
    (pdir / "Met_filtered").mkdir(parents=True)
    (pdir / "MRI_sliced").mkdir()
    base = rng.uniform(0.5, 2.0, size=(1, h, w)).astype(np.float32)
    base[0, :2, :] = 0.0
    base[0, 5, 7] = 0.0
    for met in METABOLITES:
        np.save(pdir / "Met_filtered" / f"{met}.npy", base)
    # MRI = the map copied into 3x3 blocks, sub-slice j scaled by (1 + j): slab-axis flips are visible
    up = np.kron(base[0], np.ones((3, 3), np.float32))
    mri = np.stack([up * (1 + j) for j in range(3)])
    np.save(pdir / "MRI_sliced" / "T1_sliced.npy", mri)
    np.save(pdir / "MRI_sliced" / "flair_sliced.npy", mri * 2)
    ds = MRSIDataset([load_patient(tmp_path, "P")], metabolites=("NAA",), n_choices=(3,), seed=1)
    seen_flip, seen_change = set(), False
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        hr, mask = item["hr"][0].numpy(), item["mask"][0].numpy()
        np.testing.assert_array_equal(mask, (hr != 0).astype(np.float32))
        assert np.isclose(hr.max(), 1.0)
        seen_change |= not np.allclose(hr, base[0] / base.max())
        for key in ("t1", "flair"):
            vol = item[key][0].numpy()
            ratios = []
            for j in range(3):
                pooled = _pool3(vol[:, :, j])
                np.testing.assert_allclose(pooled / pooled.max(), hr, atol=1e-6)
                ratios.append(pooled.max())
            seen_flip.add(ratios[0] > ratios[2])
        np.testing.assert_allclose(item["lr"][0].numpy(), np_truncate(hr, 3), atol=1e-5)
    assert seen_change and seen_flip == {True, False}


def test_dataset_bad_config(two_patients):
    with pytest.raises(ConfigError, match="outside 1..4"):
        MRSIDataset(two_patients, n_choices=(2, 8))
    with pytest.raises(ConfigError, match="mask_rule"):
        MRSIDataset(two_patients, mask_rule="both")
    with pytest.raises(DataError, match="maps not loaded"):
        MRSIDataset(two_patients, metabolites=("NAA", "Lac"))
    with pytest.raises(ConfigError, match="at least one patient"):
        MRSIDataset([])


def test_dataset_skips_empty_slices(tmp_path):
    write_npy_patient(tmp_path, "P")
    arr = np.load(tmp_path / "P" / "Met_filtered" / "Gly.npy")
    arr[1] = 0.0
    np.save(tmp_path / "P" / "Met_filtered" / "Gly.npy", arr)
    ds = MRSIDataset([load_patient(tmp_path, "P")], train=False, fixed_n=2)
    assert ds.n_skipped == 1 and len(ds) == S * len(METABOLITES) - 1


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


def test_batched_degradation_equals_per_item_lr(two_patients):
    from medlearn.mrsi.kspace import truncate_kspace

    ds = MRSIDataset(two_patients, n_choices=(2, 3, 4), seed=3)
    no_lr = MRSIDataset(two_patients, n_choices=(2, 3, 4), seed=3, with_lr=False)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    other = next(iter(torch.utils.data.DataLoader(no_lr, batch_size=6)))
    assert "lr" not in other
    torch.testing.assert_close(other["hr"], batch["hr"])
    torch.testing.assert_close(truncate_kspace(other["hr"], other["n"]), batch["lr"])
