"""The 2D forms of thin-slab 3D operations (medlearn.mrsi.planar) against PyTorch's 3D operations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medlearn.mrsi.baselines import ARCH_SWITCHES
from medlearn.mrsi.networks import Critic, MCUNet
from medlearn.mrsi.planar import Conv3d, conv3d, conv3d_replicated, max_pool3d, resize_trilinear

CASES = [  # (input shape, weight shape, stride, padding, groups)
    ((2, 4, 10, 12, 1), (6, 4, 3, 3, 1), 1, (1, 1, 0), 1),  # kernel 1 along S, S = 1 (squeeze)
    ((2, 4, 10, 12, 3), (6, 2, 3, 3, 1), (2, 1, 1), (1, 0, 0), 2),  # S = 3 folded into the batch, groups
    ((2, 4, 12, 12, 3), (5, 4, 4, 4, 3), (2, 2, 3), (1, 1, 0), 1),  # kernel spans S (critic's first layer)
    ((1, 6, 12, 12, 3), (6, 2, 4, 4, 3), (2, 2, 3), (1, 1, 0), 3),  # ... with groups
    ((2, 4, 8, 8, 3), (6, 4, 3, 3, 3), 1, 1, 1),  # mixes slices: stays 3D
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("xs,ws,stride,padding,groups", CASES)
def test_conv3d_forward_and_gradients_equal_conv3d(xs, ws, stride, padding, groups, channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(xs, generator=g, dtype=torch.float64)
    w = torch.randn(ws, generator=g, dtype=torch.float64)
    bias = torch.randn(ws[0], generator=g, dtype=torch.float64)
    if channels_last:
        x, w = (t.contiguous(memory_format=torch.channels_last_3d) for t in (x, w))
    outs, grads = [], []
    for planar in (True, False):
        xi, wi, bi = (t.detach().clone().requires_grad_() for t in (x, w, bias))
        y = conv3d(xi, wi, bi, stride, padding, groups, planar=planar)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        outs.append(y)
        grads.append((xi.grad, wi.grad, bi.grad))
    ref = F.conv3d(x, w, bias, stride, padding, 1, groups)
    torch.testing.assert_close(outs[0], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[1], ref, rtol=0, atol=0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "shape,kernel", [((2, 3, 8, 6, 1), (2, 2, 1)), ((2, 3, 8, 6, 3), (2, 2, 1)), ((2, 3, 8, 6, 3), (2, 2, 3))]
)
def test_max_pool_equals_max_pool3d(shape, kernel):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(max_pool3d(x, kernel), F.max_pool3d(x, kernel), rtol=0, atol=0)


@pytest.mark.parametrize("shape,size", [((2, 3, 5, 4, 1), (10, 8, 1)), ((2, 3, 5, 4, 3), (10, 8, 3)),
                                        ((2, 3, 5, 4, 1), (10, 8, 3)), ((2, 3, 5, 4, 2), (10, 8, 4))])  # fmt: skip
def test_resize_equals_trilinear_align_corners(shape, size):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = F.interpolate(x, size=size, mode="trilinear", align_corners=True)
    torch.testing.assert_close(resize_trilinear(x, size), ref, rtol=1e-12, atol=1e-12)


def test_conv3d_module_keeps_the_state_dict_of_nn_conv3d():
    plain = torch.nn.Conv3d(3, 4, (3, 3, 1), padding=(1, 1, 0))
    ours = Conv3d(3, 4, (3, 3, 1), padding=(1, 1, 0))
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 6, 6, 1)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-6)


def _assert_generators_agree(arch: str, variants: list[dict]) -> None:
    """Two generator variants with the same weights: output and every parameter gradient agree."""
    torch.manual_seed(0)
    kw = dict(base_width=2, depth=3, latent=4, channels_last=True, **ARCH_SWITCHES[arch])
    nets = [MCUNet(**kw, **v) for v in variants]
    nets[1].load_state_dict(nets[0].state_dict())
    t1, fl, lr = torch.rand(2, 1, 24, 24, 3), torch.rand(2, 1, 24, 24, 3), torch.rand(2, 1, 8, 8)
    n, met, lam = torch.tensor([2, 3]), torch.tensor([0, 5]), torch.tensor([0.0, 0.7])
    outs = []
    for net in nets:
        y = net(t1, fl, lr, n, met, lam)
        y.pow(2).sum().backward()
        outs.append((y, [p.grad for p in net.parameters()]))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCH_SWITCHES))
def test_networks_with_planar_ops_equal_the_3d_networks(arch):
    """Whole generators (every ablation) and the critic, forward and parameter gradients (float32 rounding)."""
    _assert_generators_agree(arch, [dict(planar=True), dict(planar=False)])
    critics = [Critic(width=2, n_blocks=3, input_shape=(24, 24, 3), planar=p) for p in (True, False)]
    critics[1].load_state_dict(critics[0].state_dict())
    x = torch.rand(2, 4, 24, 24, 3)
    torch.testing.assert_close(critics[0](x), critics[1](x), rtol=1e-5, atol=1e-6)


SPLIT_CASES = [  # (input shape, weight shape, padding, groups): the generator's 3D convolution kinds
    ((1, 8, 6, 5, 3), (8, 2, 3, 3, 3), 1, 4),  # grouped, 2 input channels per group (forward channels-last)
    ((1, 16, 6, 5, 3), (16, 4, 3, 3, 3), 1, 4),  # grouped, 4 per group (forward plain)
    ((2, 6, 6, 5, 3), (3, 6, 3, 3, 3), 1, 1),  # plain convolution with a bias
    ((2, 3, 6, 5, 3), (1, 3, 1, 1, 1), 0, 1),  # 1x1x1 head
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("xs,ws,padding,groups", SPLIT_CASES)
def test_split_layout_conv3d_equals_conv3d(xs, ws, padding, groups, channels_last):
    """Forward, every gradient, an input-gradient-only backward and double backward, in float64."""
    g = torch.Generator().manual_seed(3)
    x, w = (
        torch.randn(xs, generator=g, dtype=torch.float64),
        torch.randn(ws, generator=g, dtype=torch.float64),
    )
    bias = torch.randn(ws[0], generator=g, dtype=torch.float64) if groups == 1 else None
    if channels_last:
        x, w = (t.contiguous(memory_format=torch.channels_last_3d) for t in (x, w))
    weights = torch.randn(F.conv3d(x, w, bias, 1, padding, 1, groups).shape, generator=g, dtype=torch.float64)
    results = []
    for split in (True, False):
        xi, wi = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        bi = None if bias is None else bias.detach().clone().requires_grad_()
        y = conv3d(xi, wi, bi, 1, padding, groups, planar=False, split_layout=split)
        inputs = [xi, wi] + ([] if bi is None else [bi])
        grads = torch.autograd.grad((y * weights).sum(), inputs, create_graph=True)
        only_x = torch.autograd.grad((y * weights).sum(), xi, retain_graph=True)[0]
        second = torch.autograd.grad(grads[0].pow(2).sum(), wi)[0]  # d/dw of |d loss / dx|^2
        results.append((y, *grads, only_x, second))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_split_layout_generator_equals_the_default_generator():
    """A whole MCM generator, forward and every parameter gradient (float32 rounding)."""
    _assert_generators_agree("mcm", [dict(split_layout=True), dict(split_layout=False)])


@pytest.mark.parametrize("ws,padding,slices", [((4, 3, 3, 3, 3), (1, 1, 1), 3), ((2, 3, 3, 3, 1), (1, 1, 0), 3),
                                               ((2, 3, 1, 1, 1), (0, 0, 0), 3), ((2, 3, 3, 3, 5), (1, 1, 2), 4)])  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv3d_replicated_equals_conv3d_of_the_copied_slab(ws, padding, slices, channels_last):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 7, 6, 1, generator=g, dtype=torch.float64)
    w, bias = (
        torch.randn(ws, generator=g, dtype=torch.float64),
        torch.randn(ws[0], generator=g, dtype=torch.float64),
    )
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    results = []
    for replicated in (True, False):
        xi, wi, bi = (t.detach().clone().requires_grad_() for t in (x, w, bias))
        if replicated:
            y = conv3d_replicated(xi, wi, bi, padding, slices)
        else:
            y = F.conv3d(xi.expand(*xi.shape[:-1], slices), wi, bi, 1, padding)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        results.append((y, *torch.autograd.grad((y * weights).sum(), (xi, wi, bi))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert results[0][0].is_contiguous(memory_format=torch.channels_last_3d) == channels_last


def test_conv3d_replicated_refuses_a_slab_and_a_depth_changing_kernel():
    with pytest.raises(ValueError, match="single slice"):
        conv3d_replicated(torch.zeros(1, 1, 4, 4, 3), torch.zeros(1, 1, 3, 3, 3), None, (1, 1, 1), 3)
    with pytest.raises(ValueError, match="keeps the slab depth"):
        conv3d_replicated(torch.zeros(1, 1, 4, 4, 1), torch.zeros(1, 1, 3, 3, 3), None, (1, 1, 0), 3)


@pytest.mark.parametrize("planar", [True, False])
def test_conv3d_module_forward_replicated_equals_the_copied_slab(planar):
    """Both the one-conv2d path (planar) and the fallback (3D over the expanded slab) against F.conv3d."""
    conv = Conv3d(3, 4, 3, padding=1, planar=planar).double()
    x = torch.randn(2, 3, 6, 5, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = F.conv3d(x.expand(2, 3, 6, 5, 3), conv.weight, conv.bias, 1, 1)
    torch.testing.assert_close(conv.forward_replicated(x, 3), ref, rtol=1e-12, atol=1e-12)
