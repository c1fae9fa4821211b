"""Synthetic EMBED/RSNA data: real formats, consistent findings across views, determinism."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydicom
import pytest

from medlearn.mama.data.synth import SynthConfig, generate
from medlearn.mama.data.synth_image import Breast, Finding, power_law_noise, render_view
from medlearn.mama.data.tables import RSNA_COLUMNS, read_embed, read_rsna

LONG = 128


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthConfig(n_patients=14, n_rsna_patients=4, seed=3, long_side=LONG, rsna_cancer_rate=0.5))
    return out


def test_tables_in_embed_and_rsna_format(synth_dir):
    table, dropped, legend = read_embed(synth_dir / "embed")
    assert len(table) > 40 and dropped["no_clinical_row"] == 0
    meta = pd.read_csv(synth_dir / "embed" / "EMBED_OpenData_metadata.csv", dtype=str)
    clin = pd.read_csv(synth_dir / "embed" / "EMBED_OpenData_clinical.csv", dtype=str)
    assert (clin["side"] == "B").any() and clin["side"].isin(["L", "R"]).any()
    assert (clin.groupby("acc_anon").size() > 1).any()  # multi-row exams
    assert set(meta["ViewPosition"]) >= {"CC", "MLO"}
    train = pd.read_csv(synth_dir / "rsna" / "train.csv", dtype=str)
    assert list(train.columns) == list(RSNA_COLUMNS)
    rsna = read_rsna(synth_dir / "rsna" / "train.csv")
    assert set(rsna["patient_id"]).isdisjoint(set(table["patient_id"]))
    syntaxes = set()
    for p in rsna["dicom_path"]:
        syntaxes.add(
            pydicom.dcmread(synth_dir / "rsna" / p, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        )
    assert "JPEG 2000 Image Compression (Lossless Only)" in syntaxes  # as many real RSNA files
    assert rsna["cancer"].sum() >= 2


def test_legend_in_published_format_and_codes_mean_what_is_drawn(synth_dir):
    from medlearn.mama.data.synth import DISTRI_CODE, MORPH_CODE, SHAPE_CODE

    path = synth_dir / "embed" / "AWS_Open_Data_Clinical_Legend.csv"
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfHeader in export,Discription,Code,Meaning\r\n") or raw.startswith(
        b"\xef\xbb\xbfHeader in export,Discription,Code,Meaning\n"
    )
    assert b"calcfind,calcfind,P         ,punctate   " in raw  # padded code and meaning
    _, _, legend = read_embed(synth_dir / "embed")
    assert legend["side"] == {"L": "left", "R": "right", "B": "both"}  # a header the reports do not use
    # the code written for each drawn finding means that finding in the EMBED legend
    assert {m: legend["calcfind"][c] for m, c in MORPH_CODE.items()} == {
        "punctate": "punctate", "pleomorphic": "pleomorphic", "fine_linear": "fine linear", "coarse": "coarse"
    }  # fmt: skip
    assert {k: legend["massshape"][c] for k, c in SHAPE_CODE.items()} == {
        "round": "round", "oval": "oval", "irregular": "irregular"
    }  # fmt: skip
    assert all(legend["calcdistri"][c] == k for k, c in DISTRI_CODE.items())


def test_dicom_headers(synth_dir):
    meta = pd.read_csv(synth_dir / "embed" / "EMBED_OpenData_metadata.csv", dtype=str)
    photometric, manufacturers = set(), set()
    for _, r in meta.iterrows():
        ds = pydicom.dcmread(synth_dir / "embed" / r["anon_dicom_path"])
        assert ds.Modality == "MG" and ds.BitsAllocated == 16
        assert ds.ImageLaterality == r["ImageLateralityFinal"] and ds.ViewPosition == r["ViewPosition"]
        assert max(ds.Rows, ds.Columns) == LONG and float(ds.PixelSpacing[0]) > 0
        assert "WindowCenter" in ds and float(ds.WindowWidth) > 1
        photometric.add(ds.PhotometricInterpretation)
        manufacturers.add(ds.Manufacturer)
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert len(manufacturers) >= 3


def _boxes(text):
    return json.loads(text) if isinstance(text, str) and text else []


def test_findings_in_both_views_and_labels_consistent(synth_dir):
    table, _, _ = read_embed(synth_dir / "embed")
    meta = pd.read_csv(synth_dir / "embed" / "EMBED_OpenData_metadata.csv", dtype=str)
    two_d = meta[(meta["FinalImageType"] == "2D") & meta["spot_mag"].isna()]
    checked = 0
    for (acc, lat), g in two_d.groupby(["acc_anon", "ImageLateralityFinal"]):
        cc, mlo = g[g["ViewPosition"] == "CC"], g[g["ViewPosition"] == "MLO"]
        if cc.empty or mlo.empty:
            continue
        b_cc, b_mlo = _boxes(cc["ROI_coords"].iloc[0]), _boxes(mlo["ROI_coords"].iloc[0])
        assert len(b_cc) == len(b_mlo)
        for bc, bm in zip(b_cc, b_mlo):
            # same depth: distance of the ROI centre from the chest wall agrees between views
            w = LONG * 0.8
            xc, xm = (bc[1] + bc[3]) / 2, (bm[1] + bm[3]) / 2
            if lat == "L":
                xc, xm = w - 1 - xc, w - 1 - xm
            assert abs(xc - xm) < 0.15 * w, (acc, lat, bc, bm)
            checked += 1
    assert checked >= 4
    # an image whose selected clinical row describes a mass or calcifications shows a ROI
    merged = table.merge(
        meta[["anon_dicom_path", "ROI_coords"]], left_on="dicom_path", right_on="anon_dicom_path"
    )
    coded = merged[(merged["massshape"] != "") | (merged["calcfind"] != "")]
    assert len(coded) > 5
    assert all(_boxes(r) for r in coded["ROI_coords"])
    negative = merged[merged["asses"] == "N"]
    assert not any(_boxes(r) for r in negative["ROI_coords"])
    # cancers only where pathology says so and never for BI-RADS 1-3
    assert set(table.loc[table["cancer"] == 1, "birads"]) <= {4, 5, 6}


def test_mass_is_brighter_than_surroundings():
    f = Finding(
        "mass",
        depth=0.5,
        ml=0.0,
        si=0.0,
        size_mm=20,
        shape="round",
        margin="circumscribed",
        density="+",
        seed=1,
    )
    plain = Breast("R", 1, 120, 180, (), seed=5)
    with_mass = Breast("R", 1, 120, 180, (f,), seed=5)
    a, _ = render_view(plain, "CC", (256, 205), 1.17, np.random.default_rng(0))
    b, boxes = render_view(with_mass, "CC", (256, 205), 1.17, np.random.default_rng(0))
    y0, x0, y1, x1 = boxes[0]
    diff = b - a
    assert diff[y0 : y1 + 1, x0 : x1 + 1].mean() > 0.08
    outside = np.ones_like(diff, bool)
    outside[max(y0 - 5, 0) : y1 + 6, max(x0 - 5, 0) : x1 + 6] = False
    assert np.abs(diff[outside]).max() < 1e-6


def test_power_law_slope():
    """Radially averaged power spectrum slope of the texture is -beta (independent numpy fit)."""
    x = power_law_noise((256, 256), 3.0, np.random.default_rng(0))
    p = np.abs(np.fft.fft2(x)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256), indexing="ij"))
    sel = (f > 0.02) & (f < 0.4)
    slope = np.polyfit(np.log(f[sel]), np.log(p[sel]), 1)[0]
    assert abs(slope + 3.0) < 0.15


def test_deterministic_and_worker_independent(synth_dir, tmp_path):
    generate(tmp_path, SynthConfig(n_patients=2, n_rsna_patients=1, seed=3, long_side=LONG, workers=2))
    a = pd.read_csv(tmp_path / "embed" / "EMBED_OpenData_metadata.csv", dtype=str)
    b = pd.read_csv(synth_dir / "embed" / "EMBED_OpenData_metadata.csv", dtype=str)
    b = b[b["empi_anon"].isin(a["empi_anon"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    for p in a["anon_dicom_path"]:
        x = pydicom.dcmread(tmp_path / "embed" / p)
        y = pydicom.dcmread(synth_dir / "embed" / p)
        assert np.array_equal(x.pixel_array, y.pixel_array) and x.SOPInstanceUID == y.SOPInstanceUID


def test_exam_figure(synth_dir, tmp_path):
    from PIL import Image

    from medlearn.mama.data.synth_figure import exam_figure

    out = exam_figure(synth_dir / "embed", tmp_path / "fig.png", n_exams=1)
    with Image.open(out) as im:
        assert im.size[0] > 400 and im.size[1] > 100


def test_synthetic_monochrome1_reads_tissue_bright(synth_dir):
    from medlearn.mama.data.prepare import dicom_to_unit

    meta = pd.read_csv(synth_dir / "embed" / "EMBED_OpenData_metadata.csv", dtype=str)
    seen = set()
    for _, r in meta[meta["FinalImageType"] == "2D"].iterrows():
        x = dicom_to_unit(synth_dir / "embed" / r["anon_dicom_path"])
        h, w = x.shape
        chest = (
            x[h // 2 - 4 : h // 2 + 4, :6]
            if r["ImageLateralityFinal"] == "R"
            else x[h // 2 - 4 : h // 2 + 4, -6:]
        )
        far = (
            x[-10:, :10] if r["ImageLateralityFinal"] == "L" else x[-10:, -10:]
        )  # corner away from the breast
        assert chest.mean() > far.mean() + 0.2, r["anon_dicom_path"]
        seen.add(r["PhotometricInterpretation"])
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_bad_config(tmp_path):
    from medlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="patient"):
        generate(tmp_path, SynthConfig(n_patients=0))
    with pytest.raises(ConfigError, match="long_side"):
        generate(tmp_path, SynthConfig(n_patients=1, long_side=8))


def test_fixed_density_keeps_every_other_draw(tmp_path):
    """``density=3`` gives every patient density 3 and leaves the findings (and everything else drawn) as they were."""
    from medlearn.errors import ConfigError

    free, fixed = tmp_path / "free", tmp_path / "fixed"
    generate(free, SynthConfig(n_patients=3, n_rsna_patients=1, seed=5, long_side=64))
    generate(fixed, SynthConfig(n_patients=3, n_rsna_patients=1, seed=5, long_side=64, density=3))
    a = pd.read_csv(free / "embed" / "EMBED_OpenData_clinical.csv", dtype=str)
    b = pd.read_csv(fixed / "embed" / "EMBED_OpenData_clinical.csv", dtype=str)
    assert set(b["tissueden"]) == {"3"}
    pd.testing.assert_frame_equal(a.drop(columns="tissueden"), b.drop(columns="tissueden"))
    with pytest.raises(ConfigError, match="density"):
        generate(tmp_path / "bad", SynthConfig(n_patients=1, density=5))
