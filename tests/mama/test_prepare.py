"""prepare: DICOM -> cached images; corrupt files skipped and reported; MONOCHROME1 tissue bright."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medlearn.errors import ConfigError, DataError
from medlearn.io.dicom_write import write_dicom_mg
from medlearn.mama.data.prepare import PrepareConfig, dicom_to_unit, load_image, prepare_dataset, save_image
from medlearn.mama.data.synth import SynthConfig, generate


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_prep")
    generate(out, SynthConfig(n_patients=3, n_rsna_patients=2, seed=1, long_side=96))
    return out


def _phantom():
    img = np.full((80, 64), 100, np.uint16)  # background
    img[10:70, 0:40] = 2000  # tissue
    img[30:40, 10:20] = 3500  # dense lesion
    return img


@pytest.mark.parametrize("window", ["voi", "max"])
def test_monochrome1_comes_out_tissue_bright(tmp_path, window):
    img = _phantom()
    top = 4095
    write_dicom_mg(
        tmp_path / "m2.dcm", img, laterality="R", view="CC", bits_stored=12, window=(1800.0, 3600.0)
    )
    write_dicom_mg(
        tmp_path / "m1.dcm",
        top - img,
        laterality="R",
        view="CC",
        bits_stored=12,
        photometric="MONOCHROME1",
        window=(top - 1800.0, 3600.0),
    )
    a, b = dicom_to_unit(tmp_path / "m2.dcm", window), dicom_to_unit(tmp_path / "m1.dcm", window)
    for x in (a, b):
        assert x[35, 15] > x[50, 30] > x[5, 60]  # lesion > tissue > background
        assert x.min() >= 0 and x.max() <= 1
    # equal up to the half-count asymmetry of the DICOM window formula (1 count / width)
    np.testing.assert_allclose(a, b, atol=5e-4 if window == "voi" else 0.05)


def test_voi_window_formula(tmp_path):
    """DICOM linear window (PS3.3 C.11.2.1.2) computed by hand."""
    img = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    c, w = 2000.0, 1001.0
    write_dicom_mg(tmp_path / "w.dcm", img, laterality="L", view="MLO", bits_stored=12, window=(c, w))
    x = img.astype(np.float64)
    expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(dicom_to_unit(tmp_path / "w.dcm", "voi"), expected, atol=1e-4)


@pytest.mark.parametrize(("bits", "fmt"), [(8, "png"), (16, "png"), (16, "npy")])
def test_cache_round_trip(tmp_path, bits, fmt):
    x = np.random.default_rng(0).random((20, 13)).astype(np.float32)
    save_image(tmp_path / f"a.{fmt}", x, bits, fmt)
    y = load_image(tmp_path / f"a.{fmt}")
    assert y.shape == x.shape
    assert np.abs(y - x).max() <= 0.5 / (2**bits - 1) + 1e-7


def test_prepare_skips_planted_corrupt_dicom(synth_dir, tmp_path):
    meta = pd.read_csv(synth_dir / "embed" / "EMBED_OpenData_metadata.csv", dtype=str)
    bad_rel = meta["anon_dicom_path"].iloc[1]
    bad = synth_dir / "embed" / bad_rel
    original = bad.read_bytes()
    try:
        bad.write_bytes(original[: len(original) // 2])  # truncated pixel data
        report = prepare_dataset(
            tmp_path / "p",
            embed_dir=synth_dir / "embed",
            rsna_dir=synth_dir / "rsna",
            cfg=PrepareConfig(long_side=48, bits=16),
        )
        skipped = pd.read_csv(tmp_path / "p" / "skipped.csv")
        assert report["n_skipped"] == 1 and len(skipped) == 1
        assert skipped["dicom_path"].iloc[0].endswith(bad_rel) and "truncated" in skipped["error"].iloc[0]
        on_disk = json.loads((tmp_path / "p" / "prepare_report.json").read_text())
        assert on_disk["n_skipped"] == 1 and on_disk["skipped"][0].endswith(bad_rel)
        table = pd.read_csv(tmp_path / "p" / "table.csv", dtype={"image_id": str})
        n_2d = int((meta["FinalImageType"] == "2D").sum())
        n_rsna = len(pd.read_csv(synth_dir / "rsna" / "train.csv"))
        assert len(table) == n_2d + n_rsna - 1
        assert bad_rel not in set(table["dicom_path"])
        for _, r in table.iterrows():
            im = load_image(tmp_path / "p" / r["image_path"])
            assert max(im.shape) == 48
            assert r["crop_y1"] - r["crop_y0"] <= r["orig_rows"]
        with pytest.raises(DataError, match="truncated"):
            prepare_dataset(
                tmp_path / "q", embed_dir=synth_dir / "embed", cfg=PrepareConfig(long_side=48, strict=True)
            )
    finally:
        bad.write_bytes(original)


def test_prepare_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="clinical_fallback"):
        prepare_dataset(tmp_path, embed_dir=tmp_path, cfg=PrepareConfig(clinical_fallback="nearest"))
    with pytest.raises(ConfigError, match="bits"):
        prepare_dataset(tmp_path, embed_dir=tmp_path, cfg=PrepareConfig(bits=12))
    with pytest.raises(ConfigError, match="embed_dir"):
        prepare_dataset(tmp_path)


def test_cli_synth_then_prepare(tmp_path):
    import argparse

    from medlearn.mama.cli_data import add_data_verbs
    from medlearn.mama.data.dataset import load_prepared

    parser = argparse.ArgumentParser()
    add_data_verbs(parser.add_subparsers())
    args = parser.parse_args(
        ["synth", "--out", str(tmp_path / "raw"), "--patients", "2", "--long-side", "64"]
    )
    assert args.func(args) == 0
    args = parser.parse_args(
        [
            "prepare",
            "--synth",
            str(tmp_path / "raw"),
            "--out",
            str(tmp_path / "p"),
            "--long-side",
            "32",
            "--format",
            "npy",
            "--bits",
            "16",
        ]
    )
    assert args.func(args) == 0
    table, root = load_prepared(tmp_path / "p")
    assert set(table["source"]) == {"embed", "rsna"}
    assert all((root / p).is_file() and p.endswith(".npy") for p in table["image_path"])
    assert set(table["split"]) <= {"train", "val", "test"}


def test_check_only_lists_unreadable_files(synth_dir, tmp_path):
    meta = pd.read_csv(synth_dir / "embed" / "EMBED_OpenData_metadata.csv", dtype=str)
    two_d = meta[meta["FinalImageType"] == "2D"]["anon_dicom_path"].tolist()
    garbage, gone = synth_dir / "embed" / two_d[0], synth_dir / "embed" / two_d[2]
    saved = garbage.read_bytes(), gone.read_bytes()
    try:
        garbage.write_bytes(b"not a dicom file at all" * 10)
        gone.unlink()
        report = prepare_dataset(tmp_path, embed_dir=synth_dir / "embed", cfg=PrepareConfig(check_only=True))
        assert report["n_skipped"] == 2 and report["n_images"] == len(two_d) - 2
        errors = pd.read_csv(tmp_path / "skipped.csv")["error"].tolist()
        assert any("not a DICOM file" in e for e in errors) and any("not found" in e for e in errors)
        assert not (tmp_path / "table.csv").exists() and not (tmp_path / "images").exists()
    finally:
        garbage.write_bytes(saved[0])
        gone.write_bytes(saved[1])


def test_prepare_resumes_after_interruption(synth_dir, tmp_path):
    cfg = PrepareConfig(long_side=40, bits=8)
    prepare_dataset(tmp_path, embed_dir=synth_dir / "embed", cfg=cfg)
    first = pd.read_csv(tmp_path / "table.csv", dtype=str)
    index = (tmp_path / "cache_index.csv").read_text().splitlines()
    assert len(index) == len(first) + 1
    # simulate a run killed after two images: the index lists two, one of them lost its file
    (tmp_path / "cache_index.csv").write_text("\n".join(index[:3]) + "\n")
    kept = first["image_path"].iloc[1]
    stamp = (tmp_path / kept).stat().st_mtime_ns
    (tmp_path / first["image_path"].iloc[0]).unlink()
    prepare_dataset(tmp_path, embed_dir=synth_dir / "embed", cfg=cfg)
    assert (tmp_path / kept).stat().st_mtime_ns == stamp  # reused, not re-cached
    again = pd.read_csv(tmp_path / "table.csv", dtype=str)
    pd.testing.assert_frame_equal(first.drop(columns=["scale"]), again.drop(columns=["scale"]))
    np.testing.assert_allclose(first["scale"].astype(float), again["scale"].astype(float))
    idx = pd.read_csv(tmp_path / "cache_index.csv", dtype={"image_id": str})
    assert set(idx["image_id"]) == set(first["image_id"])  # the re-cached image is listed again
    # other options: everything is re-cached
    prepare_dataset(tmp_path, embed_dir=synth_dir / "embed", cfg=PrepareConfig(long_side=40, bits=16))
    assert (tmp_path / kept).stat().st_mtime_ns != stamp


def test_cached_roi_boxes_hand_computed():
    from medlearn.mama.data.prepare import cached_roi_boxes

    row = {"roi_coords": "[[50, 10, 70, 30], [0, 0, 5, 5]]", "crop_y0": 40, "crop_x0": 0, "crop_y1": 140,
           "crop_x1": 60, "scale": 0.5}  # fmt: skip
    assert cached_roi_boxes(row) == [(5.0, 5.0, 15.0, 15.0)]  # the second box lies above the crop
    assert cached_roi_boxes(dict(row, roi_coords="")) == []


# Our own legend rows, laid out as the published AWS_Open_Data_Clinical_Legend.csv: BOM, the header's
# "Discription" spelling, codes and meanings padded with trailing spaces, other headers around.
PUBLISHED_LEGEND = (
    "\ufeffHeader in export,Discription,Code,Meaning\n"
    'sprocs,"Procedure code (may carry a side, e.g. -L)",AB12      ,"MAMMO, BILATERAL, DIGITAL          "\n'
    "study,Exam date.,,\n"
    "massshape,Mass Shape,A         ,Architectural distortion                  \n"
    "massdens,Mass Density,=         ,Isodense                   \n"
    "calcfind,Calcification Finding,P         ,Punctate                 \n"
    "calcdistri,Calcification Distribution,G         ,Grouped       \n"
    "side,Side,B,Both\n"
)


def test_cli_prepare_embed_with_published_legend(synth_dir, tmp_path):
    """`mama prepare --embed DIR` on a folder whose legend has the published format; the reports use its meanings."""
    import argparse
    import shutil

    from medlearn.mama.cli_data import add_data_verbs
    from medlearn.mama.data.dataset import load_prepared
    from medlearn.mama.data.report_text import ReportBuilder

    embed = tmp_path / "embed"
    shutil.copytree(synth_dir / "embed" / "images", embed / "images")
    shutil.copy(synth_dir / "embed" / "EMBED_OpenData_metadata.csv", embed)
    meta = pd.read_csv(embed / "EMBED_OpenData_metadata.csv", dtype=str)
    exams = meta[["empi_anon", "acc_anon"]].drop_duplicates()
    clinical = exams.assign(
        side="B", asses="S", tissueden="2", massshape="A", massdens="=", calcfind="P", calcdistri="G",
        age_at_study="55", RACE_DESC="Asian", ETHNIC_GROUP_DESC="Non-Hispanic or Latino",
    )  # fmt: skip
    clinical.to_csv(embed / "EMBED_OpenData_clinical.csv", index=False)
    (embed / "tables").mkdir()
    (embed / "tables" / "AWS_Open_Data_Clinical_Legend.csv").write_bytes(PUBLISHED_LEGEND.encode())

    parser = argparse.ArgumentParser()
    add_data_verbs(parser.add_subparsers())
    args = parser.parse_args(
        ["prepare", "--embed", str(embed), "--out", str(tmp_path / "p"), "--long-side", "32"]
    )
    assert args.func(args) == 0
    table, _ = load_prepared(tmp_path / "p")
    assert len(table) == int((meta["FinalImageType"] == "2D").sum())
    assert table.attrs["legend"]["calcfind"] == {"P": "Punctate"}
    report = ReportBuilder(table.attrs["legend"]).build(table.iloc[0].to_dict())
    assert (
        "Findings: suspicious abnormality, biopsy should be considered. "
        "There is an Architectural distortion mass of Isodense. "
        "There are Punctate calcifications in a Grouped distribution. Impressions:"
    ) in report
