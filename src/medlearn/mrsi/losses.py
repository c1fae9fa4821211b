"""Losses of the MRSI super-resolution GAN.

Generator: ``l1_weight * L1 + ssim_weight * (1 - MS-SSIM) + lambda * adversarial``; critic:
conditional WGAN-GP.  Maps are (B, 1, H, W); MRI slabs (B, 1, fH, fW, S); critic inputs
(B, 4, fH, fW, S) = [T1, FLAIR, LR up, SR-or-HR up].

MS-SSIM (``pytorch_msssim``) runs after bicubic upsampling of both maps by ``upsample`` (3 in the
reference: 64 -> 192).  ``pytorch_msssim`` requires the upsampled side to exceed
``(win_size - 1) * 16`` whatever the number of levels, so small configs use a smaller window
(e.g. ``win_size=5`` for 32x32 maps -> 96 px) and/or fewer ``levels`` (the first ``levels`` of the
standard 5 weights, renormalised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim, ssim
from torch import Tensor, nn

__all__ = [
    "MSSSIM_WEIGHTS",
    "content_loss",
    "critic_input",
    "critic_loss",
    "generator_adv_loss",
    "gradient_penalty",
    "l1_loss",
    "ms_ssim_loss",
    "sample_lambda",
]

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def l1_loss(sr: Tensor, hr: Tensor) -> Tensor:
    """Mean absolute error over every voxel (the output is already masked; HR is 0 outside)."""
    return F.l1_loss(sr, hr)


def ms_ssim_loss(
    sr: Tensor, hr: Tensor, upsample: int = 3, win_size: int = 11, levels: int = 5, data_range: str = "batch"
) -> Tensor:
    """``1 - MS-SSIM`` of bicubic-upsampled maps, averaged over the batch.

    Args:
        sr, hr: (B, 1, H, W).
        upsample: bicubic factor (align_corners=True) before MS-SSIM; 1 disables it.
        win_size: odd Gaussian window size (11 in the reference).
        levels: scales (1..5); 1 is plain SSIM.
        data_range: ``"batch"`` (reference): max - min of the whole (upsampled) target batch;
            ``"sample"``: each map's own target max - min, so a sample's term does not depend on
            its batch-mates.
    Raises:
        ValueError: if the upsampled maps are too small for the window.
    """
    if not 1 <= levels <= len(MSSSIM_WEIGHTS):
        raise ValueError(f"ms_ssim levels must be in 1..5, got {levels}")
    if upsample > 1:
        size = (hr.shape[-2] * upsample, hr.shape[-1] * upsample)
        sr = F.interpolate(sr, size=size, mode="bicubic", align_corners=True)
        hr = F.interpolate(hr, size=size, mode="bicubic", align_corners=True)
    side = min(hr.shape[-2:])
    if levels > 1 and side <= (win_size - 1) * 16:
        raise ValueError(
            f"MS-SSIM on {side}px maps needs win_size < {side // 16 + 1} (pytorch_msssim asserts side > "
            f"(win_size-1)*16); got win_size={win_size}. Lower loss.ssim_win or raise loss.ssim_upsample."
        )
    if data_range == "sample":
        flat = hr.reshape(hr.shape[0], -1)
        rng: Tensor = (flat.amax(1) - flat.amin(1)).clamp_min(1e-8).reshape(-1, 1, 1, 1)
    elif data_range == "batch":
        rng = (hr.max() - hr.min()).clamp_min(1e-8)
    else:
        raise ValueError(f"data_range must be 'batch' or 'sample', got {data_range!r}")
    if levels == 1:
        val = ssim(sr, hr, data_range=rng, win_size=win_size, size_average=True)
    else:
        w = torch.tensor(MSSSIM_WEIGHTS[:levels])
        weights = (w / w.sum()).tolist()
        val = ms_ssim(sr, hr, data_range=rng, win_size=win_size, weights=weights, size_average=True)
    return 1.0 - val


def content_loss(
    sr: Tensor,
    hr: Tensor,
    l1_weight: float = 0.16,
    ssim_weight: float = 0.84,
    upsample: int = 3,
    win_size: int = 11,
    levels: int = 5,
    data_range: str = "batch",
) -> dict[str, Tensor]:
    """Non-adversarial terms: ``{"l1", "ssim" (= 1 - MS-SSIM), "content" (weighted sum)}``."""
    l1 = l1_loss(sr, hr)
    ss = ms_ssim_loss(sr, hr, upsample, win_size, levels, data_range)
    return {"l1": l1, "ssim": ss, "content": l1_weight * l1 + ssim_weight * ss}


def sample_lambda(
    batch: int,
    low: float,
    span: float,
    zero_fraction: float = 0.1,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Adversarial weights lambda ~ U[low, low + span], set to 0 with probability ``zero_fraction``.

    Args:
        batch: B.
        per_sample: one draw per sample (ours) or one for the whole batch (reference).
        generator: CPU generator for reproducible draws.
    Returns:
        (B,) float32 on ``device``.
    """
    k = batch if per_sample else 1
    lam = low + span * torch.rand(k, generator=generator)
    zero = torch.rand(k, generator=generator) < zero_fraction
    lam = torch.where(zero, torch.zeros_like(lam), lam)
    return lam.expand(batch).contiguous().to(device)


def critic_input(t1: Tensor, flair: Tensor, lr: Tensor, m: Tensor) -> Tensor:
    """[T1, FLAIR, LR up, map up] -> (B, 4, fH, fW, S); maps trilinearly upsampled to the slab grid."""
    size = t1.shape[2:]
    up = lambda x: F.interpolate(x.unsqueeze(-1), size=size, mode="trilinear", align_corners=True)  # noqa: E731
    return torch.cat([t1, flair, up(lr), up(m)], dim=1)


def _mixing_weights(b: int, like: Tensor, generator: torch.Generator | None, alpha: Tensor | None) -> Tensor:
    if alpha is None:
        alpha = torch.rand(b, generator=generator)
    return alpha.to(like.device, like.dtype).reshape(b, *([1] * (like.dim() - 1)))


def _penalty(grad: Tensor) -> Tensor:
    norm = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    return ((norm - 1.0) ** 2).mean()


def gradient_penalty(
    critic: nn.Module,
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
    alpha: Tensor | None = None,
) -> Tensor:
    """WGAN-GP: mean over samples of (||grad_x D(x_hat)||_2 - 1)^2, the norm over each sample's flattened gradient.

    ``x_hat = a * real + (1 - a) * fake`` with one ``a ~ U[0, 1]`` per sample (drawn from
    ``generator``, or given as ``alpha`` (B,)).
    """
    b = real.shape[0]
    a = _mixing_weights(b, real, generator, alpha)
    x = (a * real.detach() + (1 - a) * fake.detach()).requires_grad_(True)
    out = critic(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return _penalty(grad)


def critic_loss(
    critic: nn.Module,
    real: Tensor,
    fake: Tensor,
    gp_weight: float = 10.0,
    generator: torch.Generator | None = None,
    alpha: Tensor | None = None,
    one_forward: bool = True,
) -> tuple[Tensor, Tensor]:
    """``D(fake) - D(real) + gp_weight * GP``; returns (loss, Wasserstein estimate D(real) - D(fake)).

    With ``one_forward`` the critic scores [fake, real] as one batch of 2B (the critic normalises
    per sample, so the numbers equal two separate forwards up to float rounding); the gradient
    penalty keeps its own forward of B, since its double backward over a 3B batch would triple
    that part (measured 2.2x slower per critic step on CPU).  False runs three forwards.
    """
    if not one_forward:
        d_fake = critic(fake.detach()).mean()
        d_real = critic(real).mean()
        gp = gradient_penalty(critic, real, fake, generator, alpha)
        return d_fake - d_real + gp_weight * gp, (d_real - d_fake).detach()
    b = real.shape[0]
    out = critic(torch.cat([fake.detach(), real.detach()])).reshape(2, b)
    d_fake, d_real = out[0].mean(), out[1].mean()
    gp = gradient_penalty(critic, real, fake, generator, alpha)
    return d_fake - d_real + gp_weight * gp, (d_real - d_fake).detach()


def generator_adv_loss(critic: nn.Module, fake: Tensor, lam: Tensor) -> Tensor:
    """Adversarial generator term already weighted: mean_i(lam_i * -D(fake_i)).

    With one lambda for the batch it equals the reference ``lambda * (-mean D(fake))``.
    """
    d = critic(fake).reshape(-1)
    return (lam.to(d.dtype).reshape(-1) * -d).mean()
