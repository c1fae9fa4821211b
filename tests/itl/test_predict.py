import nibabel as nib
import numpy as np
import pytest

from medlearn.errors import DataError
from medlearn.itl.predict import load_checkpoint, predict_paths


def _oblique_affine():
    a = np.diag([0.7, 0.7, 3.3, 1.0])
    c, s = np.cos(0.3), np.sin(0.3)
    a[:2, :2] = np.array([[c, -s], [s, c]]) @ np.diag([0.7, 0.7])
    a[:3, 3] = [-40.0, 12.5, 80.0]
    return a


def test_predict_keeps_geometry_single_file_and_folder(finished_run, site_root, tmp_path):
    run, _ = finished_run
    img = np.asarray(nib.load(str(site_root / "HK" / "Case00.nii.gz")).dataobj)[:, 1:, :5]  # odd shape
    affine = _oblique_affine()
    src = tmp_path / "in" / "scan.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(img, affine), str(src))
    out = tmp_path / "mask.nii.gz"
    written = predict_paths(run / "checkpoints" / "final", [src], out)
    assert written == [out]
    m = nib.load(str(out))
    assert m.shape == img.shape
    np.testing.assert_allclose(m.affine, affine, atol=1e-5)
    assert set(np.unique(np.asarray(m.dataobj)).tolist()) <= {0, 1}
    # a folder (masks skipped) and a run folder as checkpoint
    written = predict_paths(run, [site_root / "BMC"], tmp_path / "out")
    assert sorted(p.name for p in written) == ["Case00.nii.gz", "Case01.nii.gz", "Case02.nii.gz"]
    ref = nib.load(str(site_root / "BMC" / "Case01.nii.gz"))
    got = nib.load(str(tmp_path / "out" / "Case01.nii.gz"))
    assert got.shape == ref.shape and np.allclose(got.affine, ref.affine)


def test_predict_bad_inputs(finished_run, tmp_path):
    run, _ = finished_run
    with pytest.raises(DataError, match="does not exist"):
        predict_paths(run, [tmp_path / "missing.nii.gz"], tmp_path / "o.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        predict_paths(run, [tmp_path / "empty"], tmp_path / "o")
    with pytest.raises(DataError, match="not an itl checkpoint"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4)), np.eye(4)), str(bad))
    with pytest.raises(DataError, match="3D"):
        predict_paths(run, [bad], tmp_path / "o.nii.gz")
