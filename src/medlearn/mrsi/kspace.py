"""k-space operations on metabolite maps: centred FFT, window truncation, data consistency.

All functions are pure torch, act on the last two dimensions (H, W) of a tensor with any leading
dimensions, work for even and odd grid sizes, and keep the input's device.

Centre convention (the same as ``numpy.fft.fftshift``): after :func:`centered_fft2` the zero
frequency of an axis of length L sits at index ``L // 2``; index ``i`` holds the integer frequency
``i - L // 2``.  The ``2n x 2n`` window keeps the frequencies ``-n .. n-1`` along each axis, i.e.
indices ``L//2 - n .. L//2 + n - 1`` (for odd L this is one more negative than positive frequency,
exactly as for even L).  When ``2n >= L`` the window covers the whole axis.  The image domain is not
shifted: only k-space is centred, so truncation does not move the image.

Example:
    >>> import torch
    >>> x = torch.rand(2, 64, 64)
    >>> truncate_kspace(x, 8).shape
    torch.Size([2, 64, 64])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "centered_fft2",
    "centered_ifft2",
    "kspace_window_mask",
    "truncate_kspace",
    "data_consistency",
    "energy_outside_window",
    "DC_MODES",
]

DC_MODES = ("reference", "real")


def _fft_ready(x: Tensor) -> Tensor:
    """Half and bfloat16 inputs are computed in float32 (torch.fft does not take them on CPU)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def centered_fft2(x: Tensor) -> Tensor:
    """Orthonormal 2D FFT over the last two dims with the zero frequency moved to (H//2, W//2).

    Args:
        x: (..., H, W) real or complex.
    Returns:
        (..., H, W) complex k-space, ``fftshift(fft2(x, norm="ortho"))`` (complex64 for
        float16/bfloat16/float32 input).
    """
    return torch.fft.fftshift(torch.fft.fft2(_fft_ready(x), norm="ortho"), dim=(-2, -1))


def centered_ifft2(k: Tensor) -> Tensor:
    """Inverse of :func:`centered_fft2`.

    Args:
        k: (..., H, W) complex centred k-space.
    Returns:
        (..., H, W) complex image, ``ifft2(ifftshift(k), norm="ortho")``.
    """
    return torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho")


def _axis_keep(length: int, n: Tensor) -> Tensor:
    """(N, L) bool: which indices of a centred axis of length L fall in the window of half-size n (N,)."""
    freq = torch.arange(length, device=n.device) - length // 2
    n = n.reshape(-1, 1)
    return (freq >= -n) & (freq <= n - 1)


def _as_n_tensor(n: int | Tensor, device: torch.device) -> Tensor:
    """Half-size(s) as an int64 tensor on ``device`` (0-d or 1-d).

    Values are checked (integral, >= 1) unless ``n`` already lives on an accelerator: reading them
    there would synchronise the device on every call.
    """
    t = torch.as_tensor(n)
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"window half-size n must be an integer, got dtype {t.dtype}")
    if t.dim() > 1:
        raise ValueError(f"n must be an int or a 1-d tensor of per-sample values, got shape {tuple(t.shape)}")
    if t.device.type == "cpu" and t.numel() > 0:
        if t.dtype.is_floating_point and not torch.equal(t, t.round()):
            raise ValueError(f"window half-size n must be an integer, got {t.tolist()}")
        if int(t.min()) < 1:
            raise ValueError(f"window half-size n must be >= 1, got {t.tolist()}")
    return t.to(device=device, dtype=torch.int64)


def kspace_window_mask(h: int, w: int, n: int | Tensor, device: torch.device | str | None = None) -> Tensor:
    """Boolean mask of the centred ``2n x 2n`` k-space window (frequencies -n..n-1 per axis).

    Args:
        h, w: grid size (even or odd).
        n: window half-size (int), or a (B,) tensor of per-sample half-sizes.
        device: device of the mask (defaults to the device of ``n`` or CPU).
    Returns:
        (H, W) bool for an int ``n``; (B, H, W) bool for a (B,) tensor.
    Raises:
        ValueError: if ``n < 1`` or not integral (checked for ints and CPU tensors).
    """
    if device is None:
        device = n.device if isinstance(n, Tensor) else torch.device("cpu")
    t = _as_n_tensor(n, torch.device(device))
    rows = _axis_keep(h, t.reshape(-1))  # (N, H)
    cols = _axis_keep(w, t.reshape(-1))  # (N, W)
    mask = rows[:, :, None] & cols[:, None, :]
    return mask[0] if t.dim() == 0 else mask


def _broadcast_mask(x: Tensor, n: int | Tensor) -> Tensor:
    """Window mask shaped to broadcast against x (..., H, W); per-sample n indexes x's first dim."""
    h, w = x.shape[-2:]
    mask = kspace_window_mask(h, w, n, device=x.device)
    if mask.dim() == 3:
        if x.dim() < 3 or x.shape[0] != mask.shape[0]:
            raise ValueError(
                f"per-sample n has {mask.shape[0]} values but x has shape {tuple(x.shape)}; "
                "expected x of shape (B, ..., H, W) with B = len(n)"
            )
        mask = mask.reshape(mask.shape[0], *([1] * (x.dim() - 3)), h, w)
    return mask


def truncate_kspace(x: Tensor, n: int | Tensor) -> Tensor:
    """Simulate a low-resolution acquisition: keep the central 2n x 2n of k-space, magnitude image.

    ``|ifft2c(window * fft2c(x))|`` on the same H x W grid (the reference degradation).

    Args:
        x: (..., H, W) real map(s).
        n: window half-size (int), or a (B,) tensor with one half-size per sample for x (B, ..., H, W).
    Returns:
        (..., H, W) real, non-negative, same dtype as ``x`` (half/bfloat16 computed in float32).
    """
    if x.is_complex():
        raise ValueError("truncate_kspace expects a real tensor")
    k = centered_fft2(x)
    k = k * _broadcast_mask(x, n)
    return centered_ifft2(k).abs().to(x.dtype)


def data_consistency(
    sr: Tensor,
    lr: Tensor,
    n: int | Tensor,
    mask: Tensor | None = None,
    mode: str = "reference",
) -> Tensor:
    """Replace the central 2n x 2n k-space of ``sr`` by that of ``lr``, back to image space.

    Modes:
        ``"reference"`` (default, as the published code): magnitude of the inverse FFT.  Because
        the magnitude is taken after the inverse FFT, the result's k-space matches ``lr`` only
        approximately inside the window.
        ``"real"``: real part of the inverse FFT.  Linear in ``sr`` (smooth gradients, no kink at
        zero); the result's k-space equals the Hermitian-symmetric part of the merged k-space, so it
        matches ``lr`` exactly at every window frequency whose mirror is also in the window.

    Args:
        sr: (..., H, W) real network output.
        lr: (..., H, W) real low-resolution input on the same grid.
        n: window half-size, int or (B,) per sample.
        mask: optional (..., H, W) quality mask (bool or float), multiplied in at the end.
        mode: ``"reference"`` or ``"real"``.
    Returns:
        (..., H, W) real, dtype of ``sr``.
    Raises:
        ValueError: on an unknown mode or mismatched shapes.
    """
    if mode not in DC_MODES:
        raise ValueError(f"data_consistency mode must be one of {DC_MODES}, got {mode!r}")
    if sr.shape[-2:] != lr.shape[-2:]:
        raise ValueError(f"sr {tuple(sr.shape)} and lr {tuple(lr.shape)} must share the H, W grid")
    window = _broadcast_mask(sr, n)
    k = torch.where(window, centered_fft2(lr), centered_fft2(sr))
    img = centered_ifft2(k)
    out = (img.abs() if mode == "reference" else img.real).to(sr.dtype)
    if mask is not None:
        out = out * mask.to(out.dtype)
    return out


def energy_outside_window(x: Tensor, n: int | Tensor) -> Tensor:
    """Fraction of k-space energy outside the central 2n x 2n window (a sharpness measure).

    Args:
        x: (..., H, W) real map(s).
        n: window half-size, int or (B,) per sample.
    Returns:
        (...) fraction in [0, 1]; 0 for an all-zero map.
    """
    power = centered_fft2(x).abs().square()
    total = power.sum(dim=(-2, -1))
    outside = (power * (~_broadcast_mask(x, n))).sum(dim=(-2, -1))
    return (outside / total.clamp_min(torch.finfo(power.dtype).tiny)).to(
        x.dtype if x.dtype.is_floating_point else torch.float32
    )
