"""MammoDataset on data written by synth + prepare and read back through load_prepared."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from medlearn.errors import DataError
from medlearn.mama.data.dataset import MammoDataset, collate_mammo, load_prepared
from medlearn.mama.data.prepare import PrepareConfig, prepare_dataset
from medlearn.mama.data.synth import SynthConfig, generate


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    generate(root / "raw", SynthConfig(n_patients=4, n_rsna_patients=1, seed=2, long_side=96))
    prepare_dataset(
        root / "prep",
        embed_dir=root / "raw" / "embed",
        rsna_dir=root / "raw" / "rsna",
        cfg=PrepareConfig(long_side=64, bits=8),
    )
    return load_prepared(root / "prep")


def test_items_and_labels(prepared):
    table, root = prepared
    assert table["image_id"].map(type).eq(str).all() and "legend" in table.attrs
    ds = MammoDataset(table, root, train=True, image_size=32)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert item["extra_image"].shape == (3, 32, 32)
        assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
        row = table.iloc[i]
        assert item["image_id"] == row["image_id"] and item["exam_id"] == row["exam_id"]
        assert item["patient_id"] == row["patient_id"]
        for k in ("birads", "density", "cancer"):
            assert item["labels"][k].dtype == torch.int64 and int(item["labels"][k]) == int(row[k])
        extra = table[table["image_id"] == item["extra_image_id"]].iloc[0]
        assert extra["exam_id"] == row["exam_id"] and extra["patient_id"] == row["patient_id"]
        assert isinstance(item["report"], str) and item["report"].startswith("Procedure reported:")


def test_masking_fresh_per_fetch_and_eval_is_stable(prepared):
    table, root = prepared
    embed = table[table["source"] == "embed"].reset_index(drop=True)
    ds = MammoDataset(embed, root, train=True, image_size=16, mask_prob=0.8)
    reports = {ds[0]["report"] for _ in range(30)}
    assert len(reports) > 3
    ev = MammoDataset(embed, root, train=False, image_size=16)
    a, b = ev[0], ev[0]
    assert a["report"] == b["report"] and "unknown" not in a["report"]
    torch.testing.assert_close(a["image"], b["image"])


def test_pairing_rate_and_same_breast(prepared):
    table, root = prepared
    embed = table[table["source"] == "embed"].reset_index(drop=True)
    ds = MammoDataset(embed, root, train=True, image_size=8, same_breast_only=True)
    has_partner = [i for i in range(len(ds)) if ds.pairs.partners(i).size]
    other = 0
    n = 200
    for k in range(n):
        i = has_partner[k % len(has_partner)]
        item = ds[i]
        if item["extra_image_id"] != item["image_id"]:
            other += 1
            extra = embed[embed["image_id"] == item["extra_image_id"]].iloc[0]
            assert extra["laterality"] == embed.at[i, "laterality"]
    assert abs(other / n - 0.5) < 4 * np.sqrt(0.25 / n)


def test_collate_and_loader(prepared):
    table, root = prepared
    ds = MammoDataset(table, root, train=True, image_size=16)
    batch = next(iter(DataLoader(ds, batch_size=5, collate_fn=collate_mammo)))
    assert batch["image"].shape == (5, 3, 16, 16) and batch["extra_image"].shape == (5, 3, 16, 16)
    assert batch["labels"]["birads"].shape == (5,) and len(batch["report"]) == 5
    assert batch["image_id"] == table["image_id"].iloc[:5].tolist()


def test_bad_inputs(prepared, tmp_path):
    table, root = prepared
    with pytest.raises(DataError, match="image_path"):
        MammoDataset(table.drop(columns=["image_path"]), root, train=False, image_size=8)
    with pytest.raises(DataError, match="run `medlearn mama prepare`"):
        load_prepared(tmp_path)
    ds = MammoDataset(table.assign(image_path="images/none.png"), root, train=False, image_size=8)
    with pytest.raises(DataError, match="cached image missing"):
        ds[0]
    pd.DataFrame({"image_id": ["a"]}).to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(DataError, match="missing column"):
        load_prepared(tmp_path)


def test_set_epoch_makes_samples_a_function_of_epoch_and_index(prepared):
    table, root = prepared
    embed = table[table["source"] == "embed"].reset_index(drop=True)
    ds = MammoDataset(embed, root, train=True, image_size=16)
    ds.set_epoch(3)
    a = [ds[i] for i in range(4)]
    b = [ds[i] for i in reversed(range(4))][::-1]  # order of fetches does not matter
    for x, y in zip(a, b):
        assert x["report"] == y["report"] and x["extra_image_id"] == y["extra_image_id"]
        torch.testing.assert_close(x["image"], y["image"])
    reports = set()
    for e in range(12):
        ds.set_epoch(e)
        reports.add(ds[0]["report"])
    assert len(reports) > 3  # masking is redrawn every epoch
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_mammo, num_workers=2)
    ds.set_epoch(3)
    batch = next(iter(loader))
    assert batch["report"] == [x["report"] for x in a]
    torch.testing.assert_close(batch["image"], torch.stack([x["image"] for x in a]))
