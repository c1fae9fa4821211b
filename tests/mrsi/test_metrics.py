"""Fidelity and sharpness measures against hand-worked cases and independent formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlearn.mrsi import metrics as M
from medlearn.mrsi.evaluate import bicubic_from_truncated, markdown_table, summarise


def test_gmsd_hand_case() -> None:
    # columns 0, 0, 90, 180 (3 rows): valid Prewitt gives |gx| = 90 and 180, gy = 0 on the reference;
    # the distorted image is constant (gradient 0): GMS = c / (m^2 + c); GMSD = population std
    ref = np.tile(np.array([0.0, 0.0, 90.0, 180.0]), (3, 1))
    dist = np.full_like(ref, 7.0)
    c = 170.0
    gms = np.array([c / (90.0**2 + c), c / (180.0**2 + c)])
    assert M.gmsd(ref, dist, data_range=255.0) == pytest.approx(abs(gms[0] - gms[1]) / 2, rel=1e-9)
    assert M.gmsd(ref, ref, data_range=255.0) == pytest.approx(0.0, abs=1e-12)
    # scale invariance through data_range: the same image in other units gives the same GMSD
    assert M.gmsd(ref / 9.0, dist / 9.0) == pytest.approx(M.gmsd(ref, dist, data_range=180.0), rel=1e-9)


def test_sharpness_measures_hand_cases() -> None:
    ramp = np.tile(np.arange(5, dtype=float), (4, 1))  # x increases by 1 per column
    assert M.total_variation(ramp) == pytest.approx(4 * 4 / 20)  # 16 unit steps over 20 pixels
    assert M.mean_gradient(ramp) == pytest.approx(1.0)
    mask = np.zeros_like(ramp, dtype=bool)
    mask[0, 0] = True
    assert M.mean_gradient(ramp**2, mask) == pytest.approx(1.0)  # forward difference at the edge: 1 - 0
    const = np.ones((8, 8))
    assert M.energy_outside_window_np(const, 1) == pytest.approx(0.0)
    checker = np.indices((8, 8)).sum(0) % 2 * 2.0 - 1.0  # all energy at the Nyquist corner
    assert M.energy_outside_window_np(checker, 2) == pytest.approx(1.0)


def test_energy_outside_matches_kspace_module() -> None:
    from medlearn.mrsi.kspace import energy_outside_window

    x = np.random.default_rng(0).random((12, 12))
    ours = M.energy_outside_window_np(x, 3)
    theirs = float(energy_outside_window(torch.from_numpy(x), 3))
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_psnr_and_ssim_use_the_hr_data_range() -> None:
    hr = np.zeros((8, 8))
    hr[2:6, 2:6] = 4.0
    sr = hr + 0.5
    assert M.psnr(hr, sr) == pytest.approx(10 * np.log10(16 / 0.25))
    assert M.ssim(hr, hr) == pytest.approx(1.0)
    assert np.isnan(M.psnr(np.ones((8, 8)), sr))


def test_bicubic_from_truncated_keeps_constants_and_low_frequencies() -> None:
    hr = torch.full((1, 1, 16, 16), 3.0)
    assert torch.allclose(bicubic_from_truncated(hr, 4), hr, atol=1e-4)


def test_summary_mean_and_population_std() -> None:
    import pandas as pd

    rows = pd.DataFrame({"n": [8, 8, 16], "psnr": [30.0, 32.0, 40.0], "ssim": [0.8, 0.9, 1.0],
                         "energy_outside": 0.0, "gradient": 1.0, "tv": 1.0, "gmsd": 0.1})  # fmt: skip
    s = summarise(rows, ["n"])
    assert s.loc[s.n == 8, "psnr_mean"].item() == 31.0 and s.loc[s.n == 8, "psnr_std"].item() == 1.0
    assert s.loc[s.n == 16, "count"].item() == 1
    assert "| 8 | 31 +- 1 |" in markdown_table(s, ["n"], ["psnr"])
