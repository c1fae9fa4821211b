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


def test_keyed_items_skip_the_extra_view_without_changing_the_anchor(prepared):
    table, root = prepared
    embed = table[table["source"] == "embed"].reset_index(drop=True)
    ds = MammoDataset(embed, root, train=True, image_size=16, seed=5)
    for i in range(4):
        with_extra, without = ds[(3, i, True)], ds[(3, i, False)]
        torch.testing.assert_close(with_extra["image"], without["image"])  # anchor and report: own stream
        assert with_extra["report"] == without["report"]
        assert "extra_image" in with_extra and "extra_image" not in without
        again = ds[(3, i, True)]  # a function of (seed, epoch, index)
        torch.testing.assert_close(again["extra_image"], with_extra["extra_image"])
    assert not torch.equal(ds[(4, 0, False)]["image"], ds[(3, 0, False)]["image"])  # new epoch, new draw


def test_prepared_images_are_not_cropped_twice(prepared):
    from medlearn.mama.data.dataset import needs_crop

    table, _ = prepared
    assert not needs_crop(table).any()  # prepare cropped every row (crop box smaller than the DICOM)
    whole = table.assign(crop_y0=0, crop_x0=0, crop_y1=table["orig_rows"], crop_x1=table["orig_cols"])
    assert needs_crop(whole).all()  # prepared without a crop: the evaluation/augmentation crops
    assert needs_crop(table.drop(columns=["crop_y0"])).all()  # not from prepare: crop
    ds = MammoDataset(
        table[table["source"] == "embed"].reset_index(drop=True), prepared[1], False, 16, recrop=True
    )
    assert ds.crop.all()  # data.recrop=true: the reference's second crop


def test_late_keys_follow_the_loops_step_count():
    from medlearn.engine.sampler import ResumableSampler
    from medlearn.mama.train import LateKeys

    base = ResumableSampler(24, seed=0, shuffle=False)
    keys = LateKeys(base, batch_size=4, per_epoch=6, accum=2, late_from=2)  # steps: micro-batches // 2
    base.set_epoch(0)
    flags = [late for _, _, late in keys]
    assert flags == [False] * 16 + [True] * 8  # micro-batches 0-3 are steps 0-1; from micro-batch 4 on: late
    base.set_epoch(1, start=4)  # resumed in epoch 1 at micro-batch 1: step (6 + 1) // 2 = 3
    assert {late for _, _, late in keys} == {True} and next(iter(keys))[:2] == (1, 4)
    assert not any(late for _, _, late in LateKeys(base, 4, 6, 2, None))  # no term uses the extra view


def test_augment_switches_reach_the_training_transform(prepared):
    """``data.augment`` reaches the training transform; with it off, items are about the plain resize.

    (A random resized crop of the whole area can still be a pixel short of the image when its
    aspect rounds, so "about": the mean difference to the evaluation transform stays small.)
    """
    from medlearn.config import load_config
    from medlearn.mama.config import MamaConfig

    table, root = prepared
    embed = table[table["source"] == "embed"].reset_index(drop=True)
    off = [
        "data.augment.crop_scale=[1.0,1.0]", "data.augment.crop_ratio=[0.1,10.0]", "data.augment.hflip_p=0", "data.augment.vflip_p=0",
        "data.augment.jitter_p=0", "data.augment.blur_p=0",
    ]  # fmt: skip
    cfg = load_config(MamaConfig, None, off)
    plain = MammoDataset(embed, root, train=True, image_size=16, augment=cfg.data.augment.transform_kwargs())
    ev = MammoDataset(embed, root, train=False, image_size=16)
    ref = MammoDataset(embed, root, train=True, image_size=16)  # the reference recipe (default)
    kw = cfg.data.augment.transform_kwargs()
    for name, value in kw.items():
        assert getattr(plain.transforms[True], name) == value and getattr(plain.transforms[False], name) == value
    off_diff = np.mean([float((plain[i]["image"] - ev[i]["image"]).abs().mean()) for i in range(len(embed))])
    ref_diff = np.mean([float((ref[i]["image"] - ev[i]["image"]).abs().mean()) for i in range(len(embed))])
    assert off_diff < 0.03 < 0.1 < ref_diff


def test_augment_defaults_are_the_reference_recipe():
    from medlearn.mama.config import AugmentConfig

    kw = AugmentConfig().transform_kwargs()
    assert kw["scale"] == (0.1, 1.0) and kw["ratio"] == pytest.approx((0.75, 4 / 3))
    assert (kw["hflip_p"], kw["vflip_p"], kw["jitter_p"], kw["blur_p"]) == (0.5, 0.5, 0.8, 0.4)
    assert (kw["brightness"], kw["contrast"], kw["blur_sigma"]) == (0.4, 0.4, (0.1, 2.0))


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.augment.jitter_p=1.5", "data.augment.jitter_p"),
        ("data.augment.crop_scale=[0.5,1.2]", "data.augment.crop_scale"),
        ("data.augment.crop_scale=[0.9,0.5]", "data.augment.crop_scale"),
        ("data.augment.blur_sigma=[0.1]", "data.augment.blur_sigma"),
        ("data.augment.brightness=1.0", "data.augment.brightness"),
    ],
)
def test_bad_augment_values_name_their_key(override, key):
    from medlearn.config import load_config
    from medlearn.errors import ConfigError
    from medlearn.mama.config import MamaConfig

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(MamaConfig, None, [override])
