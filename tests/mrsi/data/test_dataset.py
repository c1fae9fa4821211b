"""MRSIDataset: items against numpy k-space truncation, per-epoch randomness, aligned augmentation, bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlearn.errors import ConfigError, DataError
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.data import MRSIDataset, load_patient

from .writers import H, S, W, write_npy_patient


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


def test_batched_degradation_equals_per_item_lr(two_patients):
    from medlearn.mrsi.kspace import truncate_kspace

    ds = MRSIDataset(two_patients, n_choices=(2, 3, 4), seed=3)
    no_lr = MRSIDataset(two_patients, n_choices=(2, 3, 4), seed=3, with_lr=False)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    other = next(iter(torch.utils.data.DataLoader(no_lr, batch_size=6)))
    assert "lr" not in other
    torch.testing.assert_close(other["hr"], batch["hr"])
    torch.testing.assert_close(truncate_kspace(other["hr"], other["n"]), batch["lr"])
