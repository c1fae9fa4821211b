import math

import numpy as np
import pytest
from scipy import ndimage

from medlearn.itl.metrics import (
    average_accuracy,
    backward_transfer,
    case_metrics,
    continual_summary,
    dice_score,
    forgetting,
    forward_transfer,
    largest_component,
    surface_distances,
)


def test_dice_hand_case():
    a = np.zeros((4, 4, 2), np.uint8)
    b = np.zeros_like(a)
    a[0:2, 0:2, 0] = 1  # 4 voxels
    b[1:3, 0:2, 0] = 1  # 4 voxels, 2 shared
    assert dice_score(a, b) == pytest.approx(0.5)
    assert dice_score(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice_score(a, np.zeros_like(a)) == 0.0
    assert dice_score(np.zeros_like(a), a) == 0.0
    with pytest.raises(ValueError, match="differ"):
        dice_score(a, a[:3])


def test_dice_equals_counting_formula_exactly():
    """MONAI-backed Dice against 2|P&G| / (|P| + |G|) counted with numpy (same float64 value)."""
    rng = np.random.default_rng(0)
    for frac in (0.02, 0.3, 0.9):
        p = rng.random((13, 11, 7)) < frac
        g = rng.random((13, 11, 7)) < 0.3
        ref = 2.0 * np.logical_and(p, g).sum() / (p.sum() + g.sum())
        assert dice_score(p.astype(np.uint8), g.astype(np.float32) * 2) == ref


def test_surface_distances_single_voxels_anisotropic():
    gt = np.zeros((6, 8, 6), np.uint8)
    pred = np.zeros_like(gt)
    gt[2, 2, 2] = 1
    pred[2, 2, 4] = 1  # two slices away along z with 3 mm slices
    hd, asd = surface_distances(pred, gt, (0.5, 0.7, 3.0))
    assert hd == pytest.approx(6.0) and asd == pytest.approx(6.0)
    # prediction = truth voxel + one extra voxel 3 steps along y (0.5 mm): distances pred->gt {0, 1.5}, gt->pred {0}
    pred = gt.copy()
    pred[2, 5, 2] = 1
    hd, asd = surface_distances(pred, gt, (1.0, 0.5, 2.0))
    assert hd == pytest.approx(np.percentile([0.0, 1.5], 95))
    assert asd == pytest.approx(1.5 / 3)


def _surface(m):
    return m & ~ndimage.binary_erosion(m)


def test_surface_distances_against_scipy_edt():
    rng = np.random.default_rng(0)
    gt = np.zeros((24, 20, 10), bool)
    gt[5:18, 4:15, 2:8] = True
    pred = ndimage.binary_dilation(gt, iterations=1) & (rng.random(gt.shape) > 0.1) | gt
    pred[6:10, 4:8, 3:5] = False
    spacing = (0.6, 0.9, 2.5)
    sp, sg = _surface(pred), _surface(gt)
    d_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    d_gp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    hd_ref = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    asd_ref = np.concatenate([d_pg, d_gp]).mean()
    hd, asd = surface_distances(pred, gt, spacing)
    assert hd == pytest.approx(hd_ref, rel=1e-4)
    assert asd == pytest.approx(asd_ref, rel=1e-4)


def test_empty_prediction_gives_nan_surfaces_and_zero_dice():
    gt = np.zeros((5, 5, 5), np.uint8)
    gt[2, 2, 2] = 1
    m = case_metrics(np.zeros_like(gt), gt, (1, 1, 1))
    assert m["dice"] == 0.0 and math.isnan(m["hd95"]) and math.isnan(m["asd"])


def test_largest_component():
    m = np.zeros((10, 10, 3), np.uint8)
    m[0:2, 0:2, 0] = 1
    m[5:9, 5:9, 1:3] = 1
    out = largest_component(m)
    assert out.sum() == 32 and out[0, 0, 0] == 0


R = np.array([[0.80, 0.10, 0.20], [0.95, 0.90, 0.30], [0.50, 0.70, 0.85]])
B = np.array([0.05, 0.10, 0.20])


def test_continual_metrics_hand_made_r():
    assert average_accuracy(R) == pytest.approx((0.50 + 0.70 + 0.85) / 3)
    assert backward_transfer(R) == pytest.approx(((0.50 - 0.80) + (0.70 - 0.90)) / 2)
    assert forgetting(R) == pytest.approx(((0.95 - 0.50) + (0.90 - 0.70)) / 2)
    assert forward_transfer(R, B) == pytest.approx(((0.10 - 0.10) + (0.30 - 0.20)) / 2)
    s = continual_summary(R, B)
    assert set(s) == {"ACC", "BWT", "forgetting", "FWT"}
    assert backward_transfer(R[:1, :1]) == 0.0 and forgetting(R[:1, :1]) == 0.0


def test_continual_metrics_bad_input():
    with pytest.raises(ValueError, match="square"):
        average_accuracy(np.zeros((2, 3)))
    bad = R.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        backward_transfer(bad)
    with pytest.raises(ValueError, match="baseline"):
        forward_transfer(R, B[:2])
    upper = R.copy()
    upper[0, 1] = np.nan
    with pytest.raises(ValueError, match="super-diagonal"):
        forward_transfer(upper, B)
