"""Loss terms checked against independent definitions (numpy, scikit-image, hand-written autograd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from medlearn.mrsi.losses import (
    content_loss,
    critic_input,
    critic_loss,
    generator_adv_loss,
    gradient_penalty,
    ms_ssim_loss,
    sample_lambda,
)
from medlearn.mrsi.networks import Critic


def _maps(b: int = 2, h: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(b, 1, h, h, generator=g)
    return hr + 0.1 * torch.rand(b, 1, h, h, generator=g), hr


def test_l1_and_single_scale_ssim_match_numpy_and_skimage() -> None:
    sr, hr = _maps(1, 64)
    terms = content_loss(sr, hr, l1_weight=0.16, ssim_weight=0.84, upsample=1, win_size=11, levels=1)
    l1 = np.abs(sr.numpy() - hr.numpy()).mean()
    rng = float(hr.max() - hr.min())
    sk = structural_similarity(
        hr[0, 0].double().numpy(), sr[0, 0].double().numpy(), data_range=rng,
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    )  # fmt: skip
    assert terms["l1"].item() == pytest.approx(l1, rel=1e-5)
    assert terms["ssim"].item() == pytest.approx(1 - sk, abs=1e-5)
    assert terms["content"].item() == pytest.approx(0.16 * l1 + 0.84 * (1 - sk), abs=1e-5)


def test_ms_ssim_identity_is_zero_and_window_is_checked() -> None:
    _, hr = _maps(2, 16)
    assert ms_ssim_loss(hr, hr, upsample=3, win_size=3, levels=3).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="win_size"):
        ms_ssim_loss(hr, hr, upsample=3, win_size=11, levels=5)  # 48 px is too small for an 11 px window


def test_gradient_penalty_of_a_linear_critic_is_analytic() -> None:
    # D(x) = <w, x>: the gradient is w for every sample, so GP = (||w|| - 1)^2 exactly
    w = torch.randn(4, 6, 6, 3, generator=torch.Generator().manual_seed(1))
    critic = lambda x: (x * w).flatten(1).sum(1, keepdim=True)  # noqa: E731
    real, fake = torch.randn(3, 4, 6, 6, 3), torch.randn(3, 4, 6, 6, 3)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)


def test_gradient_penalty_matches_hand_written_per_sample_autograd() -> None:
    torch.manual_seed(0)
    critic = Critic(in_ch=4, width=2, n_blocks=2, input_shape=(8, 8, 3), hidden=4)
    real, fake = torch.randn(3, 4, 8, 8, 3), torch.randn(3, 4, 8, 8, 3)
    gp = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(5))
    alpha = torch.rand(3, generator=torch.Generator().manual_seed(5))
    total = 0.0
    for i in range(3):  # one sample at a time: its own gradient norm
        x = (alpha[i] * real[i : i + 1] + (1 - alpha[i]) * fake[i : i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        total += (g.pow(2).sum().sqrt().item() - 1.0) ** 2
    assert gp.item() == pytest.approx(total / 3, rel=1e-4)


def test_critic_loss_and_wasserstein_estimate() -> None:
    bias = torch.nn.Parameter(torch.zeros(1))
    critic = lambda x: x.flatten(1).mean(1, keepdim=True) + bias  # noqa: E731
    real, fake = torch.full((2, 4, 4, 4, 3), 2.0), torch.full((2, 4, 4, 4, 3), 0.5)
    loss, wd = critic_loss(critic, real, fake, gp_weight=0.0)
    assert loss.item() == pytest.approx(0.5 - 2.0)
    assert wd.item() == pytest.approx(1.5)


def test_generator_adversarial_term_per_sample_and_reference_form() -> None:
    d = torch.tensor([[1.0], [3.0], [-2.0]])
    critic = lambda x: d  # noqa: E731
    lam = torch.tensor([0.1, 0.0, 0.5])
    assert generator_adv_loss(critic, torch.zeros(3), lam).item() == pytest.approx(
        (-0.1 * 1 - 0 + 0.5 * 2) / 3
    )
    shared = torch.full((3,), 0.2)
    assert generator_adv_loss(critic, torch.zeros(3), shared).item() == pytest.approx(0.2 * -d.mean().item())


def test_lambda_sampling_range_zero_fraction_and_modes() -> None:
    g = torch.Generator().manual_seed(0)
    lam = sample_lambda(20000, 0.2, 0.3, 0.1, per_sample=True, generator=g)
    nz = lam[lam != 0]
    assert (nz >= 0.2).all() and (nz <= 0.5).all()
    assert abs((lam == 0).float().mean().item() - 0.1) < 0.01
    assert abs(nz.mean().item() - 0.35) < 0.01
    batch = sample_lambda(8, 0.2, 0.3, 0.1, per_sample=False, generator=g)
    assert torch.all(batch == batch[0])
    draws = torch.stack(
        [sample_lambda(2, 0.2, 0.3, 0.1, per_sample=False, generator=g)[0] for _ in range(4000)]
    )
    assert abs((draws == 0).float().mean().item() - 0.1) < 0.02  # per-batch zero rule


def test_critic_input_stacks_and_upsamples() -> None:
    t1, flair = torch.rand(2, 1, 12, 12, 3), torch.rand(2, 1, 12, 12, 3)
    lr, m = torch.full((2, 1, 4, 4), 0.5), torch.full((2, 1, 4, 4), 2.0)
    x = critic_input(t1, flair, lr, m)
    assert x.shape == (2, 4, 12, 12, 3)
    assert torch.equal(x[:, :1], t1) and torch.allclose(x[:, 2], torch.full_like(x[:, 2], 0.5))
    assert torch.allclose(x[:, 3], torch.full_like(x[:, 3], 2.0))
