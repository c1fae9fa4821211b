"""MCUNet / critic: published parameter counts, per-sample (modulated) conditioning, shape checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medlearn.engine import count_parameters
from medlearn.errors import ConfigError
from medlearn.mrsi.baselines import REFERENCE_PARAMS
from medlearn.mrsi.mcm import ConditionalInstanceNorm, batched_conv3d
from medlearn.mrsi.networks import Critic, MCUNet
from medlearn.mrsi.registry import build_critic, build_generator


@pytest.mark.parametrize("arch", ["mcm", "fs_nm", "fs_n", "single_scale", "hypernetwork"])
def test_paper_parameter_counts_match_reference(arch: str) -> None:
    with torch.device("meta"):
        net = build_generator(arch)  # paper sizes: 8-16-32-64-128, latent 32, 7 metabolites
    got, want = count_parameters(net), REFERENCE_PARAMS[arch]
    assert abs(got - want) / want < 0.01, (arch, got, want)


def test_paper_critic_parameter_count() -> None:
    with torch.device("meta"):
        crit = build_critic("critic3d", input_shape=(192, 192, 3))
    # 4*32*48 + 32*64*16 + 64*128*16 + 128*256*16 + (256*12*12*16 + 16) + (16 + 1), by hand
    assert count_parameters(crit) == 1_284_129
    assert abs(count_parameters(crit) - REFERENCE_PARAMS["critic"]) / REFERENCE_PARAMS["critic"] < 0.01


def test_critic_sizes_follow_the_input_shape() -> None:
    crit = Critic(width=4, n_blocks=3, input_shape=(48, 48, 3), hidden=8)
    assert crit.fc1.in_features == 16 * 6 * 6 * 1
    assert crit(torch.rand(2, 4, 48, 48, 3)).shape == (2, 1)
    with pytest.raises(ValueError, match="critic built for"):
        crit(torch.rand(2, 4, 96, 96, 3))


def test_batched_conv_equals_a_loop_of_convs() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, 5, 3, generator=g)
    w = torch.randn(3, 2, 4, 3, 3, 1, generator=g)
    got = batched_conv3d(x, w, (1, 1, 0))
    want = torch.cat([F.conv3d(x[i : i + 1], w[i], padding=(1, 1, 0)) for i in range(3)])
    assert (got - want).abs().max() <= 1e-5


def _tiny_inputs(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t1, flair = torch.rand(b, 1, 24, 24, 3, generator=g), torch.rand(b, 1, 24, 24, 3, generator=g)
    lr = torch.rand(b, 1, 8, 8, generator=g)
    return t1, flair, lr


def _pair(arch: str = "mcm"):
    torch.manual_seed(0)
    kw = dict(base_width=4, depth=3, latent=8)
    a = build_generator(arch, per_sample=True, **kw)
    b = build_generator(arch, per_sample=False, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("arch", ["mcm", "hypernetwork", "adaptive_modulation"])
def test_per_sample_equals_per_batch_when_conditions_are_shared(arch: str) -> None:
    per_sample, per_batch = _pair(arch)
    t1, flair, lr = _tiny_inputs(4)
    n, met, lam = torch.full((4,), 3), torch.full((4,), 5), torch.full((4,), 0.07)
    with torch.no_grad():
        ya = per_sample(t1, flair, lr, n, met, lam)
        yb = per_batch(t1, flair, lr, n, met, lam)
    assert ya.shape == (4, 1, 8, 8)
    assert (ya - yb).abs().max().item() <= 1e-5


def test_mixed_batch_equals_each_sample_alone() -> None:
    per_sample, per_batch = _pair("mcm")
    t1, flair, lr = _tiny_inputs(3, seed=1)
    n, met, lam = torch.tensor([2, 3, 4]), torch.tensor([0, 6, 2]), torch.tensor([0.0, 0.05, 0.1])
    with torch.no_grad():
        mixed = per_sample(t1, flair, lr, n, met, lam)
        alone = torch.cat([per_batch(t1[i : i + 1], flair[i : i + 1], lr[i : i + 1], n[i : i + 1],
                                     met[i : i + 1], lam[i : i + 1]) for i in range(3)])  # fmt: skip
    assert (mixed - alone).abs().max().item() <= 1e-5
    # the conditions matter: another metabolite gives another output
    with torch.no_grad():
        other = per_sample(t1, flair, lr, n, torch.tensor([1, 1, 1]), lam)
    assert (other - mixed).abs().max().item() > 1e-6


def test_per_batch_mode_refuses_mixed_conditions() -> None:
    _, per_batch = _pair("mcm")
    t1, flair, lr = _tiny_inputs(2)
    with pytest.raises(ValueError, match="one metabolite per batch"):
        per_batch(t1, flair, lr, torch.tensor([3, 3]), torch.tensor([0, 1]), torch.zeros(2))


def test_output_is_data_consistent_and_masked() -> None:
    net = build_generator("single_scale", base_width=2, depth=2, data_consistency="real")
    t1, flair, lr = _tiny_inputs(2)
    mask = torch.ones(2, 1, 8, 8)
    mask[:, :, 0, :] = 0
    with torch.no_grad():
        y = net(t1, flair, lr, torch.tensor([2, 2]), torch.tensor([0, 0]), torch.zeros(2))
        ym = net(t1, flair, lr, torch.tensor([2, 2]), torch.tensor([0, 0]), torch.zeros(2), mask)
    assert torch.all(ym[:, :, 0, :] == 0)
    assert torch.allclose(ym[:, :, 1:], y[:, :, 1:])
    # 'real' mode keeps the input's k-space at window frequencies whose mirror is also in the window
    # (|f| <= n - 1 per axis), checked with numpy's FFT
    freq = np.arange(8) - 4
    axis = np.abs(freq) <= 1
    sym = axis[:, None] & axis[None, :]
    ky = np.fft.fftshift(np.fft.fft2(y.numpy().astype(np.float64), norm="ortho"), axes=(-2, -1))
    kl = np.fft.fftshift(np.fft.fft2(lr.numpy().astype(np.float64), norm="ortho"), axes=(-2, -1))
    assert np.abs(ky[..., sym] - kl[..., sym]).max() < 1e-5
    assert np.abs(ky[..., ~sym]).max() > 1e-3  # outside, the network's own content


def test_conditional_instance_norm_formula() -> None:
    torch.manual_seed(0)
    cin = ConditionalInstanceNorm(3, latent=4, gamma_init=1.0)
    x, lam = torch.randn(2, 3, 4, 4, 2), torch.tensor([0.0, 0.3])
    style = cin.style(cin.mapping(lam[:, None]))
    gamma, beta = style[:, :3, None, None, None], style[:, 3:, None, None, None]
    want = (1 + gamma) * torch.nn.InstanceNorm3d(3)(x) + beta
    assert torch.allclose(cin(x, lam), want, atol=1e-6)
    assert torch.allclose(cin.style.bias[:3], torch.ones(3))


def test_unknown_arch_and_bad_shapes() -> None:
    with pytest.raises(ConfigError, match="unknown MRSI generator 'nope'"):
        build_generator("nope")
    net = MCUNet(base_width=2, depth=2)
    t1, flair, lr = _tiny_inputs(1)
    with pytest.raises(ValueError, match="does not match map"):
        net(t1, flair, torch.rand(1, 1, 9, 9), torch.tensor([2]), torch.tensor([0]), torch.zeros(1))
