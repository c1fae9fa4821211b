"""Transforms: Otsu foreground box, crop parameters, blur and resize against scipy/numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medlearn.mama.data.transforms import (
    EvalTransform,
    TrainTransform,
    foreground_box,
    gaussian_blur,
    random_resized_crop_box,
    resize,
)


def test_foreground_box_keeps_largest_region():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 0.05, (300, 240)).astype(np.float32)
    img[40:260, 0:150] += 0.6  # breast
    img[10:16, 200:206] = 1.0  # burned-in marker
    box = foreground_box(img)  # exact to one stride of the strided copy (2 px here)
    assert np.abs(np.subtract(box, (40, 0, 260, 150))).max() <= 2, box
    assert foreground_box(img, max_side=512) == (40, 0, 260, 150)
    assert foreground_box(np.zeros((5, 7), np.float32)) == (0, 0, 5, 7)


def test_random_resized_crop_box_ranges():
    rng = np.random.default_rng(1)
    for _ in range(300):
        y0, x0, ch, cw = random_resized_crop_box(200, 160, rng, (0.1, 1.0), (3 / 4, 4 / 3))
        assert 0 <= y0 and y0 + ch <= 200 and 0 <= x0 and x0 + cw <= 160
        area = ch * cw / (200 * 160)
        assert 0.09 <= area <= 1.01
        assert 3 / 4 - 0.05 <= cw / ch <= 4 / 3 + 0.05


@pytest.mark.parametrize("shape,sigma", [((40, 33), 1.5), ((32, 32), 0.3), ((150, 120), 2.0), ((129, 130), 1.0)])
def test_gaussian_blur_matches_scipy(shape, sigma):
    """Both paths (convolutions up to 128 x 128 pixels, shifted slices above) against scipy."""
    x = np.random.default_rng(2).random(shape).astype(np.float32)
    got = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    ref = ndimage.gaussian_filter(x, sigma, mode="mirror", truncate=3.0)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_resize_preserves_linear_ramp_in_interior():
    ramp = np.tile(np.arange(64, dtype=np.float32), (64, 1))
    out = resize(torch.from_numpy(ramp), (32, 32)).numpy()
    # output pixel j covers input [2j, 2j+2): centre 2j + 0.5
    np.testing.assert_allclose(
        out[5:-5, 5:-5], np.tile(2 * np.arange(32) + 0.5, (32, 1))[5:-5, 5:-5], atol=1e-4
    )


def test_eval_and_train_transforms():
    img = np.zeros((120, 90), np.float32)
    img[10:110, 0:60] = 0.75
    ev = EvalTransform(32)(img)
    assert ev.shape == (3, 32, 32) and ev.dtype == torch.float32
    torch.testing.assert_close(ev, torch.full((3, 32, 32), 0.5))  # crop keeps only tissue: (0.75-0.5)/0.5
    noop = TrainTransform(32, scale=(1.0, 1.0), ratio=(0.6, 0.6), hflip_p=0, vflip_p=0, jitter_p=0, blur_p=0)
    torch.testing.assert_close(noop(img, np.random.default_rng(0)), ev)
    tr = TrainTransform(32)
    a = tr(img + np.linspace(0, 0.2, 90, dtype=np.float32), np.random.default_rng(5))
    b = tr(img + np.linspace(0, 0.2, 90, dtype=np.float32), np.random.default_rng(5))
    torch.testing.assert_close(a, b)
    assert a.shape == (3, 32, 32) and a.min() >= -1 and a.max() <= 1


@pytest.mark.parametrize("flip", ["h", "v"])
def test_flips(flip):
    img = np.zeros((64, 64), np.float32)
    img[:, :] = np.linspace(0.1, 0.9, 64)[None, :] if flip == "h" else np.linspace(0.1, 0.9, 64)[:, None]
    kw = {"hflip_p": 1.0, "vflip_p": 0.0} if flip == "h" else {"hflip_p": 0.0, "vflip_p": 1.0}
    t = TrainTransform(64, crop=False, scale=(1, 1), ratio=(1, 1), jitter_p=0, blur_p=0, **kw)
    out = t(img, np.random.default_rng(0))[0]
    ref = torch.from_numpy(img).flip(-1 if flip == "h" else -2) * 2 - 1
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_cache_inputs_match_float(dtype):
    top = np.iinfo(dtype).max
    q = np.zeros((50, 40), dtype)
    q[5:45, 0:30] = np.linspace(0.3 * top, 0.9 * top, 30).astype(dtype)
    as_float = q.astype(np.float64) / top
    torch.testing.assert_close(EvalTransform(16)(q), EvalTransform(16)(as_float.astype(np.float32)))
    t = TrainTransform(16)
    torch.testing.assert_close(
        t(q, np.random.default_rng(3)), t(as_float.astype(np.float32), np.random.default_rng(3))
    )
