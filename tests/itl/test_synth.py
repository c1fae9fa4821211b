import json

import nibabel as nib
import numpy as np
import pytest

from medlearn.errors import ConfigError
from medlearn.itl.synth import SITES, make_benchmark, scaled_site


def test_site_layout_labels_and_spacing(site_root):
    # real layout: site folders, CaseXX + CaseXX_segmentation, BMC spells _Segmentation
    assert (site_root / "BMC" / "Case00_Segmentation.nii.gz").is_file()
    assert not (site_root / "BMC" / "Case00_segmentation.nii.gz").exists()
    assert (site_root / "RUNMC" / "Case02_segmentation.nii.gz").is_file()
    for site, zones in (("RUNMC", True), ("BMC", True), ("I2CVB", False), ("HK", False)):
        suffix = SITES[site].seg_suffix
        lab = nib.load(str(site_root / site / f"Case00{suffix}.nii.gz"))
        img = nib.load(str(site_root / site / "Case00.nii.gz"))
        values = set(np.unique(np.asarray(lab.dataobj)).tolist())
        assert values == ({0, 1, 2} if zones else {0, 1})
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        spec = scaled_site(site, "tiny")
        sx, sy, sz = img.header.get_zooms()[:3]
        assert spec.inplane_mm[0] - 1e-4 <= sx <= spec.inplane_mm[1] + 1e-4 and sx == sy
        assert spec.slice_mm[0] - 1e-4 <= sz <= spec.slice_mm[1] + 1e-4


def test_real_sizes_and_spacings_of_full_scale():
    counts = {s: SITES[s].cases for s in SITES}
    assert counts == {"RUNMC": 30, "BMC": 30, "I2CVB": 19, "UCL": 13, "BIDMC": 12, "HK": 12}
    assert scaled_site("BIDMC", "full").inplane_mm == (0.25, 0.25)
    assert scaled_site("RUNMC", "full").slice_mm == (3.6, 4.0)
    assert scaled_site("BMC", "full").coil == "endorectal" and scaled_site("RUNMC", "full").coil == "surface"


def test_sites_differ_in_intensity_and_seed_reproducible(tmp_path):
    a = make_benchmark(tmp_path / "a", seed=3, scale="tiny", sites=["RUNMC", "HK"], cases_per_site=1)
    b = make_benchmark(tmp_path / "b", seed=3, scale="tiny", sites=["RUNMC"], cases_per_site=1)
    x = np.asarray(nib.load(str(a / "RUNMC" / "Case00.nii.gz")).dataobj)
    y = np.asarray(nib.load(str(b / "RUNMC" / "Case00.nii.gz")).dataobj)
    np.testing.assert_array_equal(x, y)
    hk = np.asarray(nib.load(str(a / "HK" / "Case00.nii.gz")).dataobj)
    assert abs(np.median(hk) - np.median(x)) > 100  # per-site intensity scale/offset


def test_nnunet_layout(tmp_path):
    root = make_benchmark(tmp_path, seed=0, scale="tiny", nnunet=True, sites=["BMC", "HK"], cases_per_site=2)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and meta["labels"] == {"background": 0, "prostate": 1}
    assert meta["sites"]["BMC_Case01"] == "BMC"
    assert (root / "imagesTr" / "BMC_Case01_0000.nii.gz").is_file()
    lab = np.asarray(nib.load(str(root / "labelsTr" / "BMC_Case01.nii.gz")).dataobj)
    assert set(np.unique(lab).tolist()) == {0, 1}


def test_bad_synth_options(tmp_path):
    with pytest.raises(ConfigError, match="unknown synthetic site 'XYZ'"):
        make_benchmark(tmp_path, sites=["XYZ"])
    with pytest.raises(ConfigError, match="scale"):
        make_benchmark(tmp_path, scale="huge")
    with pytest.raises(ConfigError, match=">= 1"):
        make_benchmark(tmp_path, sites=["HK"], cases_per_site=0)
