"""k-space functions against numpy.fft definitions written here (fftshift + slicing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlearn.mrsi.kspace import (
    centered_fft2,
    centered_ifft2,
    data_consistency,
    energy_outside_window,
    kspace_window_mask,
    truncate_kspace,
)

GRIDS = [(32, 32), (31, 33), (16, 15), (7, 9), (64, 64)]


def np_window(h: int, w: int, n: int) -> np.ndarray:
    """Centred 2n x 2n window by slicing around the fftshift centre (h//2, w//2)."""
    m = np.zeros((h, w), dtype=bool)
    m[max(h // 2 - n, 0) : min(h // 2 + n, h), max(w // 2 - n, 0) : min(w // 2 + n, w)] = True
    return m


def np_kspace(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(x, norm="ortho"), axes=(-2, -1))


def np_image(k: np.ndarray) -> np.ndarray:
    return np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho")


def np_truncate(x: np.ndarray, n: int) -> np.ndarray:
    return np.abs(np_image(np_kspace(x) * np_window(*x.shape[-2:], n)))


@pytest.mark.parametrize("h,w", GRIDS)
def test_centered_fft_matches_numpy_and_inverts(h, w):
    rng = np.random.default_rng(0)
    x = rng.random((2, h, w))
    k = centered_fft2(torch.from_numpy(x))
    np.testing.assert_allclose(k.numpy(), np_kspace(x), atol=1e-10)
    # the zero frequency sits at (h//2, w//2) and equals sum / sqrt(h*w) (orthonormal)
    np.testing.assert_allclose(k[:, h // 2, w // 2].real.numpy(), x.sum(axis=(1, 2)) / np.sqrt(h * w))
    np.testing.assert_allclose(centered_ifft2(k).real.numpy(), x, atol=1e-10)
    np.testing.assert_allclose((k.abs() ** 2).sum().item(), (x**2).sum(), rtol=1e-10)  # Parseval


@pytest.mark.parametrize("h,w", GRIDS)
@pytest.mark.parametrize("n", [1, 3, 4, 8, 40])
def test_window_mask_matches_slicing(h, w, n):
    m = kspace_window_mask(h, w, n)
    assert m.dtype == torch.bool and m.shape == (h, w)
    np.testing.assert_array_equal(m.numpy(), np_window(h, w, n))
    assert int(m.sum()) == min(2 * n, h) * min(2 * n, w)


def test_window_mask_odd_keeps_frequencies_minus_n_to_n_minus_1():
    # 5 x 5 grid: DC at index 2, n = 1 keeps frequencies -1, 0 -> indices 1, 2 (hand-worked)
    expected = np.zeros((5, 5), dtype=bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(kspace_window_mask(5, 5, 1).numpy(), expected)


@pytest.mark.parametrize("h,w", GRIDS)
@pytest.mark.parametrize("n", [2, 5, 8, 16])
def test_truncate_matches_numpy(h, w, n):
    x = np.random.default_rng(1).random((3, h, w))
    got = truncate_kspace(torch.from_numpy(x), n).numpy()
    np.testing.assert_allclose(got, np_truncate(x, n), atol=1e-10)


def test_truncate_keeps_dtype_and_shape_float32():
    x = torch.rand(2, 1, 31, 32, dtype=torch.float32)
    y = truncate_kspace(x, 6)
    assert y.dtype == torch.float32 and y.shape == x.shape
    np.testing.assert_allclose(y.numpy(), np_truncate(x.double().numpy(), 6), atol=1e-5)


@pytest.mark.parametrize("h,w", [(32, 32), (31, 29)])
def test_truncate_per_sample_n(h, w):
    x = np.random.default_rng(2).random((4, 2, h, w))
    n = torch.tensor([2, 5, 8, 16])
    got = truncate_kspace(torch.from_numpy(x), n).numpy()
    for b, nb in enumerate(n.tolist()):
        np.testing.assert_allclose(got[b], np_truncate(x[b], nb), atol=1e-10)
    masks = kspace_window_mask(h, w, n)
    assert masks.shape == (4, h, w)
    for b, nb in enumerate(n.tolist()):
        np.testing.assert_array_equal(masks[b].numpy(), np_window(h, w, nb))


def test_full_window_is_identity_on_nonnegative_maps():
    x = np.random.default_rng(3).random((2, 15, 16))
    np.testing.assert_allclose(truncate_kspace(torch.from_numpy(x), 8).numpy(), x, atol=1e-10)


@pytest.mark.parametrize("h,w", [(32, 32), (33, 31)])
def test_truncation_is_idempotent_in_kspace(h, w):
    n = 6
    rng = np.random.default_rng(4)
    # linear projection (no magnitude) is idempotent for any input
    k = np_kspace(rng.random((h, w)))
    win = kspace_window_mask(h, w, n).numpy()
    once = centered_fft2(centered_ifft2(torch.from_numpy(k * win))).numpy() * win
    np.testing.assert_allclose(once, k * win, atol=1e-10)
    # a non-negative map band-limited to |f| <= n - 1 (Hermitian-symmetric support inside the
    # window) survives truncation exactly, so truncate(truncate(x)) == truncate(x) in k-space
    fy = np.arange(h)[:, None] - h // 2
    fx = np.arange(w)[None, :] - w // 2
    inner = (np.abs(fy) <= n - 1) & (np.abs(fx) <= n - 1)
    x = np.real(np_image(np_kspace(rng.random((h, w))) * inner))
    x = x - x.min() + 0.1
    t1 = truncate_kspace(torch.from_numpy(x), n)
    t2 = truncate_kspace(t1, n)
    np.testing.assert_allclose(centered_fft2(t2).numpy() * win, centered_fft2(t1).numpy() * win, atol=1e-10)
    np.testing.assert_allclose(t1.numpy(), x, atol=1e-10)


def np_data_consistency(sr, lr, n, mask, mode):
    win = np_window(*sr.shape[-2:], n)
    merged = np.where(win, np_kspace(lr), np_kspace(sr))
    img = np_image(merged)
    out = np.abs(img) if mode == "reference" else img.real
    return out * mask


@pytest.mark.parametrize("mode", ["reference", "real"])
@pytest.mark.parametrize("h,w", [(32, 32), (31, 30)])
def test_data_consistency_matches_numpy(mode, h, w):
    rng = np.random.default_rng(5)
    sr, hr = rng.random((2, 2, h, w))
    lr = np_truncate(hr, 5)
    mask = rng.random((2, h, w)) > 0.2
    got = data_consistency(torch.from_numpy(sr), torch.from_numpy(lr), 5, torch.from_numpy(mask), mode=mode)
    np.testing.assert_allclose(got.numpy(), np_data_consistency(sr, lr, 5, mask, mode), atol=1e-10)


def test_data_consistency_real_mode_restores_symmetric_window_exactly():
    h = w = 32
    rng = np.random.default_rng(6)
    sr, lr = rng.random((2, h, w))
    n = 5
    out = data_consistency(torch.from_numpy(sr), torch.from_numpy(lr), n, mode="real")
    fy = np.arange(h)[:, None] - h // 2
    fx = np.arange(w)[None, :] - w // 2
    sym = (np.abs(fy) <= n - 1) & (np.abs(fx) <= n - 1)
    np.testing.assert_allclose(np_kspace(out.numpy())[sym], np_kspace(lr)[sym], atol=1e-10)


def test_data_consistency_per_sample_n_and_gradient():
    sr = torch.rand(3, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    lr = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    n = torch.tensor([2, 4, 6])
    out = data_consistency(sr, lr, n, mode="real")
    for b in range(3):
        ref = np_data_consistency(sr[b].detach().numpy(), lr[b].numpy(), int(n[b]), 1.0, "real")
        np.testing.assert_allclose(out[b].detach().numpy(), ref, atol=1e-10)
    out.sum().backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all()


@pytest.mark.parametrize("h,w", [(32, 32), (31, 33)])
def test_energy_outside_window_matches_numpy(h, w):
    x = np.random.default_rng(7).random((2, h, w))
    p = np.abs(np_kspace(x)) ** 2
    win = np_window(h, w, 6)
    expected = (p * ~win).sum(axis=(1, 2)) / p.sum(axis=(1, 2))
    np.testing.assert_allclose(energy_outside_window(torch.from_numpy(x), 6).numpy(), expected, rtol=1e-10)
    assert float(energy_outside_window(torch.zeros(8, 8), 2)) == 0.0


def test_bad_inputs_raise():
    x = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="n must be >= 1"):
        truncate_kspace(x, 0)
    with pytest.raises(ValueError, match="per-sample n"):
        truncate_kspace(x, torch.tensor([2, 3, 4]))
    with pytest.raises(ValueError, match="integer"):
        truncate_kspace(x, 2.5)
    with pytest.raises(ValueError, match="mode"):
        data_consistency(x, x, 2, mode="complex")
    with pytest.raises(ValueError, match="grid"):
        data_consistency(x, torch.rand(2, 8, 9), 2)
    with pytest.raises(ValueError, match="real"):
        truncate_kspace(torch.rand(8, 8, dtype=torch.complex64), 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    x = torch.rand(2, 1, 15, 16).to(dtype)
    ref = np_truncate(x.double().numpy(), 4)
    y = truncate_kspace(x, 4)
    assert y.dtype == dtype
    np.testing.assert_allclose(y.double().numpy(), ref, atol=2e-2)
    dc = data_consistency(x, y, torch.tensor([4, 4]), mode="real")
    assert dc.dtype == dtype and dc.shape == x.shape
    assert energy_outside_window(x, 4).dtype == dtype
