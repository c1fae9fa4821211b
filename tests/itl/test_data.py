import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from medlearn.errors import ConfigError, DataError
from medlearn.itl.config import DataConfig
from medlearn.itl.data import (
    SliceSet,
    crop_or_pad,
    find_nnunet_cases,
    find_site_cases,
    load_case,
    make_splits,
    merge_labels,
    prepare_dataset,
    preprocess,
    resample_inplane,
    restore_probabilities,
    training_slices,
    zscore,
)
from medlearn.itl.metrics import dice_score
from medlearn.itl.synth import make_benchmark


def _write(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))


def test_bmc_spelling_and_label_merge(site_root):
    refs = find_site_cases(site_root, ["BMC", "RUNMC"])
    bmc = [r for r in refs if r.site == "BMC"]
    assert [r.case for r in bmc] == ["Case00", "Case01", "Case02"]
    assert bmc[0].mask.name == "Case00_Segmentation.nii.gz"
    raw = np.asarray(nib.load(str(bmc[0].mask)).dataobj)
    _, mask, _, _ = load_case(bmc[0])
    assert set(np.unique(raw).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(mask, (raw == 1) | (raw == 2))
    assert merge_labels(np.array([0, 1, 2, 3])).tolist() == [0, 1, 1, 1]


def test_missing_mask_names_the_case(tmp_path):
    _write(tmp_path / "UCL" / "Case07.nii.gz", np.zeros((4, 4, 3)))
    with pytest.raises(DataError, match="UCL/Case07.*no mask"):
        find_site_cases(tmp_path, ["UCL"])
    with pytest.raises(DataError, match="site folder .*HK.* does not exist"):
        find_site_cases(tmp_path, ["HK"])


def test_geometry_checks(tmp_path):
    _write(tmp_path / "S" / "Case00.nii.gz", np.zeros((6, 6, 3)))
    _write(tmp_path / "S" / "Case00_segmentation.nii.gz", np.zeros((6, 5, 3)))
    _write(tmp_path / "S" / "Case01.nii.gz", np.zeros((6, 6, 3)))
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    _write(tmp_path / "S" / "Case01_segmentation.nii.gz", np.zeros((6, 6, 3)), shifted)
    bad = np.zeros((6, 6, 3))
    bad[0, 0, 0] = np.nan
    _write(tmp_path / "S" / "Case02.nii.gz", bad)
    _write(tmp_path / "S" / "Case02_segmentation.nii.gz", np.zeros((6, 6, 3)))
    refs = {r.case: r for r in find_site_cases(tmp_path, ["S"])}
    with pytest.raises(DataError, match=r"S/Case00.*image shape \(6, 6, 3\) != mask shape \(6, 5, 3\)"):
        load_case(refs["Case00"])
    with pytest.raises(DataError, match="S/Case01.*affines differ"):
        load_case(refs["Case01"])
    load_case(refs["Case01"], strict_affine=False)  # a warning only
    with pytest.raises(DataError, match="NaN"):
        load_case(refs["Case02"])
    (tmp_path / "T").mkdir()
    (tmp_path / "T" / "Case00.nii.gz").write_text("not a nifti")
    (tmp_path / "T" / "Case00_segmentation.nii.gz").write_text("x")
    with pytest.raises(DataError, match="not a readable NIfTI"):
        load_case(find_site_cases(tmp_path, ["T"])[0])


def test_nnunet_discovery_and_missing_label(tmp_path):
    root = make_benchmark(tmp_path / "d", scale="tiny", nnunet=True, sites=["RUNMC", "HK"], cases_per_site=2)
    refs = find_nnunet_cases(root, ["HK", "RUNMC"])
    assert [(r.site, r.case) for r in refs][:2] == [("HK", "HK_Case00"), ("HK", "HK_Case01")]
    (root / "labelsTr" / "HK_Case01.nii.gz").unlink()
    with pytest.raises(DataError, match="HK_Case01.*missing"):
        find_nnunet_cases(root, ["HK"])
    with pytest.raises(DataError, match="no dataset.json"):
        find_nnunet_cases(tmp_path)


def test_zscore_resample_crop_against_references():
    rng = np.random.default_rng(0)
    v = rng.normal(5, 3, (10, 12, 4)).astype(np.float32)
    np.testing.assert_allclose(zscore(v), stats.zscore(v, axis=None), atol=1e-5)
    # a linear ramp stays linear under bilinear resampling (half-pixel centres, interior points)
    x = np.arange(20, dtype=np.float32)
    ramp = np.repeat(x[:, None, None], 20, 1).repeat(2, 2)
    out = resample_inplane(ramp, (1.0, 1.0, 3.0), 0.5, "bilinear")
    assert out.shape == (40, 40, 2)
    centres = (np.arange(40) + 0.5) * 0.5 - 0.5  # source coordinate of each output pixel
    np.testing.assert_allclose(out[2:-2, 5, 0], centres[2:-2], atol=1e-5)
    # crop/pad by hand
    a = np.arange(36).reshape(6, 6)
    c, off = crop_or_pad(a, 4, -1)
    np.testing.assert_array_equal(c, a[1:5, 1:5])
    assert off == (1, 1)
    p, off = crop_or_pad(a, 8, -1)
    assert off == (-1, -1) and p[0, 0] == -1 and p[1, 1] == a[0, 0] and p[6, 6] == a[5, 5]


def test_preprocess_then_restore_recovers_the_mask():
    mask = np.zeros((50, 44, 5), np.uint8)
    mask[15:35, 12:30, 1:4] = 1
    img = mask * 3.0 + 1.0
    _, m, geom = preprocess(img, (0.8, 0.8, 3.0), 0.5, 64, mask)
    assert m.shape == (5, 64, 64)
    back = restore_probabilities(m.astype(np.float32), geom)
    assert back.shape == mask.shape
    # crop to 64 px at 0.5 mm cuts 80x70 -> 64x64: the central box survives
    assert dice_score(back > 0.5, mask) > 0.95


def test_case_level_split_has_no_leakage_and_is_seeded():
    cases = {
        "A": [f"Case{i:02d}" for i in range(30)],
        "B": [f"Case{i:02d}" for i in range(12)],
        "H": ["Case00", "Case01"],
    }
    s1 = make_splits(cases, 0.6, 0.2, seed=1, heldout=["H"])
    s2 = make_splits(cases, 0.6, 0.2, seed=1, heldout=["H"])
    s3 = make_splits(cases, 0.6, 0.2, seed=2, heldout=["H"])
    assert s1 == s2 and s1 != s3
    for site, names in cases.items():
        parts = [set(s1[site][k]) for k in ("train", "val", "test")]
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
        assert set().union(*parts) == set(names)
    assert len(s1["A"]["train"]) == 18 and len(s1["A"]["val"]) == 6
    assert s1["H"]["train"] == [] and s1["H"]["test"] == ["Case00", "Case01"]


def test_prepare_dataset_writes_split_and_reuses_it(site_root, tmp_path):
    cfg = DataConfig(
        root=str(site_root),
        sites=["RUNMC", "BMC"],
        heldout=["HK"],
        spacing_mm=2.5,
        size=32,
        cache_dir=str(tmp_path),
    )
    data = prepare_dataset(cfg)
    split_files = list(tmp_path.glob("splits_seed0_*.json"))
    assert len(split_files) == 1
    stored = json.loads(split_files[0].read_text())
    for site in ("RUNMC", "BMC"):
        train = {c.case for c in data.split(site, "train")}
        test = {c.case for c in data.split(site, "test")}
        assert train and test and not train & test and train | test == {"Case00", "Case01", "Case02"}
        assert sorted(train) == stored[site]["train"]
    c = data.split("BMC", "train")[0]
    assert c.image.shape[1:] == (32, 32) and c.mask.max() == 1 and c.spacing[:2] == (2.5, 2.5)
    again = prepare_dataset(cfg)
    np.testing.assert_array_equal(again.split("BMC", "train")[0].image, c.image)
    # a stale split file (cases changed on disk) is an error, not a silent re-split
    stored["BMC"]["test"] = ["Case99"]
    split_files[0].write_text(json.dumps(stored))
    with pytest.raises(DataError, match="does not match the cases on disk"):
        prepare_dataset(cfg)


def test_slices_context_and_prostate_range():
    mask = np.zeros((8, 4, 4), np.uint8)
    mask[3:5, 1:3, 1:3] = 1
    assert training_slices(mask, 1) == [2, 3, 4, 5]
    assert training_slices(np.zeros((3, 2, 2)), 1) == [0, 1, 2]

    class C:
        image = np.arange(8, dtype=np.float32)[:, None, None] * np.ones((8, 4, 4), np.float32)

    c = C()
    c.mask = mask
    ss = SliceSet([c], context=3, margin=0)
    assert ss.rows == [(0, 3), (0, 4)]
    x, y = ss.batch([0, 1])
    assert x.shape == (2, 3, 4, 4) and y.shape == (2, 4, 4)
    assert x[0, :, 0, 0].tolist() == [2.0, 3.0, 4.0]


def test_config_validation():
    with pytest.raises(ConfigError, match="context"):
        DataConfig(context=2)
    with pytest.raises(ConfigError, match="also in data.sites"):
        DataConfig(sites=["A", "B"], heldout=["B"])
    from medlearn.config import load_config
    from medlearn.itl.config import ITLConfig

    with pytest.raises(ConfigError, match=r"data\.layout.*'bids'.*sites.*nnunet"):  # a Literal of the schema
        load_config(ITLConfig, overrides=["data.layout=bids"])


def test_prepare_check_only_reports_bad_case(site_root, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(site_root / "HK", root / "HK")
    (root / "HK" / "Case01_segmentation.nii.gz").unlink()
    cfg = DataConfig(root=str(root), sites=["HK"], heldout=[])
    with pytest.raises(DataError, match="HK/Case01"):
        prepare_dataset(cfg, check_only=True)


def test_prepare_nnunet_layout_by_site(tmp_path):
    root = make_benchmark(tmp_path / "nn", scale="tiny", nnunet=True, sites=["RUNMC", "HK"], cases_per_site=3)
    cfg = DataConfig(
        root=str(root), layout="nnunet", sites=["RUNMC"], heldout=["HK"], spacing_mm=3.0, size=24
    )
    data = prepare_dataset(cfg)
    assert len(data.split("RUNMC", "train")) == 2 and len(data.split("RUNMC", "test")) == 1
    assert [c.case for c in data.split("HK", "test")] == ["HK_Case00", "HK_Case01", "HK_Case02"]
    assert data.split("HK", "test")[0].mask.max() == 1
