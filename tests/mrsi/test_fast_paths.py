"""The fast paths of the MRSI step compute what the plain computations compute.

Each fast path (batched conditioning MLPs, one critic forward for fake/real/x_hat, per-sample MS-SSIM
range, (epoch, index) dataset keys, k-space truncation of the whole batch on the device, fused Adam)
is checked against the straightforward computation written out here or against the library.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_msssim import ms_ssim
from torch.nn import functional as F

from medlearn.mrsi.kspace import truncate_kspace
from medlearn.mrsi.losses import critic_loss, ms_ssim_loss
from medlearn.mrsi.mcm import batched_cin_styles, batched_filter_scales
from medlearn.mrsi.networks import Critic, MCUNet
from medlearn.mrsi.train import load_patients, load_split, make_dataset


def _inputs(b=4, grid=16):
    g = torch.Generator().manual_seed(1)
    t1, fl = (
        torch.rand(b, 1, 3 * grid, 3 * grid, 3, generator=g),
        torch.rand(b, 1, 3 * grid, 3 * grid, 3, generator=g),
    )
    lr = torch.rand(b, 1, grid, grid, generator=g)
    return (
        t1,
        fl,
        lr,
        torch.tensor([3, 4, 5, 6]),
        torch.tensor([0, 1, 2, 6]),
        torch.tensor([0.0, 0.3, 0.7, 1.0]),
    )


@pytest.mark.parametrize("per_sample", [True, False])
def test_batched_conditioning_equals_each_layer_on_its_own(per_sample):
    torch.manual_seed(0)
    net = MCUNet(base_width=4, depth=3, latent=8, per_sample=per_sample)
    t1, fl, lr, n, met, lam = _inputs()
    if not per_sample:
        n, met, lam = n[:1].expand(4), met[:1].expand(4), lam[2:3].expand(4)
    res = {}
    for batched in (False, True):
        net.batched_conditioning = batched
        net.zero_grad()
        y = net(t1, fl, lr, n, met, lam)
        (y * torch.linspace(0, 1, y.numel()).reshape(y.shape)).sum().backward()
        res[batched] = (y.detach(), {k: p.grad.clone() for k, p in net.named_parameters()})
    torch.testing.assert_close(res[True][0], res[False][0], rtol=0, atol=1e-6)
    for k, grad in res[False][1].items():
        torch.testing.assert_close(res[True][1][k], grad, rtol=1e-4, atol=1e-6, msg=k)


def test_batched_mlps_equal_the_modules():
    net = MCUNet(base_width=2, depth=2, latent=8)
    n, met, lam = torch.tensor([8.0, 12.0]), torch.tensor([3, 5]), torch.tensor([0.2, 0.9])
    for layer, s in zip(net._fs_layers, batched_filter_scales(net._fs_layers, n, met)):
        z = torch.cat([layer.map_n(n.reshape(-1, 1)), layer.map_m(layer.embedding(met))], 1)
        ref = layer.style2(F.leaky_relu(layer.style1(z), 0.2)).reshape(2, layer.out_ch, layer.in_ch)
        torch.testing.assert_close(s, ref, rtol=0, atol=1e-6)
    for layer, s in zip(net._cin_layers, batched_cin_styles(net._cin_layers, lam)):
        torch.testing.assert_close(s, layer.style(layer.mapping(lam.reshape(-1, 1))), rtol=0, atol=1e-6)
    assert (
        len(net._fs_layers) == len(net._cin_layers) == 2 * 5
    )  # (2 encoders x 2 levels + 1 decoder block) x 2 convs


def test_critic_loss_in_one_forward_equals_three_forwards():
    torch.manual_seed(0)
    critic = Critic(width=4, n_blocks=2, input_shape=(24, 24, 3), hidden=8)
    real, fake = torch.rand(3, 4, 24, 24, 3), torch.rand(3, 4, 24, 24, 3)
    alpha = torch.tensor([0.1, 0.5, 0.9])
    grads = []
    for one in (False, True):
        critic.zero_grad()
        loss, w = critic_loss(critic, real, fake, 10.0, alpha=alpha, one_forward=one)
        loss.backward()
        grads.append((loss.detach(), w, [p.grad.clone() for p in critic.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[1][2], grads[0][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_per_sample_ssim_range_is_the_mean_of_single_map_ms_ssim():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 1, 16, 16, generator=g) * torch.tensor([1.0, 0.5, 2.0]).reshape(3, 1, 1, 1)
    sr = hr + 0.05 * torch.randn(3, 1, 16, 16, generator=g)
    up = lambda x: F.interpolate(x, size=(48, 48), mode="bicubic", align_corners=True)  # noqa: E731
    w = [0.0448, 0.2856, 0.3001]
    w = [v / sum(w) for v in w]
    each = [1 - ms_ssim(up(sr[i : i + 1]), up(hr[i : i + 1]), data_range=float(up(hr[i : i + 1]).max() - up(hr[i : i + 1]).min()),
                        win_size=3, weights=w) for i in range(3)]  # fmt: skip
    got = ms_ssim_loss(sr, hr, upsample=3, win_size=3, levels=3, data_range="sample")
    torch.testing.assert_close(got, torch.stack(each).mean(), rtol=1e-5, atol=1e-6)
    # the reference's one range for the batch differs when the maps' ranges differ
    assert abs(ms_ssim_loss(sr, hr, 3, 3, 3, data_range="batch").item() - got.item()) > 1e-4


def test_epoch_keys_and_device_truncation_equal_the_item_path(tiny_cfg):
    cfg = tiny_cfg()
    patients = load_patients(cfg, load_split(cfg)["train"])
    with_lr = make_dataset(cfg, patients, train=True)
    without = make_dataset(cfg, patients, train=True, with_lr=False)
    with_lr.set_epoch(3)
    for i in (0, 5, 11):
        a, b = with_lr[i], without[(3, i)]  # the worker's key names the epoch; set_epoch is not needed
        assert "lr" not in b and int(a["n"]) == int(b["n"])
        torch.testing.assert_close(b["hr"], a["hr"], rtol=0, atol=0)
        torch.testing.assert_close(b["t1"], a["t1"], rtol=0, atol=0)
        batch_lr = truncate_kspace(torch.stack([b["hr"]] * 2), torch.stack([b["n"]] * 2))
        torch.testing.assert_close(batch_lr[0], a["lr"], rtol=0, atol=1e-7)
    assert int(without[(0, 5)]["n"]) != int(without[(3, 5)]["n"]) or not torch.equal(
        without[(0, 5)]["hr"], without[(3, 5)]["hr"]
    )  # another epoch, another draw


def test_fused_adam_takes_the_same_steps():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    opts = [torch.optim.Adam([ps[0]], lr=1e-3, betas=(0.5, 0.9), fused=True),
            torch.optim.Adam([ps[1]], lr=1e-3, betas=(0.5, 0.9))]  # fmt: skip
    with torch.no_grad():
        ps[1].copy_(ps[0])
    for step in range(5):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(step))
        for p, o in zip(ps, opts):
            p.grad = g.clone()
            o.step()
    torch.testing.assert_close(ps[0], ps[1], rtol=0, atol=1e-7)


def test_offset_norm_at_lambda_zero_does_not_depend_on_the_lambda_mlp():
    torch.manual_seed(0)
    net = MCUNet(base_width=4, depth=3, latent=8, lambda_offset=True)
    for layer in net._cin_layers:  # (gamma, beta) = base + S(lambda) - S(0), by hand
        s = lambda v, m=layer: m.style(m.mapping(torch.tensor([[v]])))  # noqa: E731
        torch.testing.assert_close(layer.styles(torch.tensor([0.4])), layer.base + s(0.4) - s(0.0))
    t1, fl, lr, n, met, lam = _inputs()
    y0, y = net(t1, fl, lr, n, met, torch.zeros(4)), net(t1, fl, lr, n, met, lam)
    with torch.no_grad():
        for p in net.lambda_path_parameters():
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(net(t1, fl, lr, n, met, torch.zeros(4)), y0, rtol=0, atol=1e-6)
    assert (net(t1, fl, lr, n, met, lam) - y).abs().max() > 1e-3  # at lambda > 0 the MLP acts


def test_lambda_path_routing_gives_the_adversarial_gradient_to_the_lambda_mlps_only():
    from medlearn.mrsi.train import _lambda_path_surrogate

    torch.manual_seed(0)
    net = MCUNet(base_width=4, depth=3, latent=8, lambda_offset=True)
    t1, fl, lr, n, met, lam = _inputs()
    y = net(t1, fl, lr, n, met, lam)
    content, adv = (y - lr).abs().mean(), -(y.flatten(1).sum(1) * lam).mean()  # stand-ins for the two terms
    params = list(net.parameters())
    g_content = torch.autograd.grad(content, params, retain_graph=True)
    g_adv = torch.autograd.grad(adv, params, retain_graph=True)
    (content + _lambda_path_surrogate(adv, net)).backward()
    on_path = {id(p) for p in net.lambda_path_parameters()}
    assert on_path and len(on_path) < len(params)
    for p, gc, ga in zip(params, g_content, g_adv):
        want = gc + ga if id(p) in on_path else gc
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_channels_last_computes_the_same_step(dtype):
    """The same outputs in float32; the same step (outputs and every gradient) in float64.

    float32 gradients are not compared: the two layouts' kernels round differently, and on some
    CPUs (an AVX-512 machine) that flips the argmax of a near-tie in a max-pool window, which sends
    one block's gradient elsewhere. In float64 the two layouts must agree to 1e-9.
    """
    from medlearn.mrsi.networks import Critic

    t1, fl, lr, n, met, lam = (t.to(dtype) if t.is_floating_point() else t for t in _inputs())
    res = []
    for cl in (False, True):
        torch.manual_seed(0)
        # 3D operations only: with the 2D forms as well, one max-pool window of these inputs holds a
        # near-tie whose argmax flips with the rounding (tests/mrsi/test_planar.py covers those)
        net = MCUNet(base_width=4, depth=3, latent=8, channels_last=cl, planar=False).to(dtype)
        critic = Critic(width=4, n_blocks=2, input_shape=(48, 48, 3), hidden=8, channels_last=cl, planar=False)
        critic = critic.to(dtype)
        y = net(t1, fl, lr, n, met, lam)
        d = critic(torch.cat([t1, fl, t1, t1], 1) * y.mean())
        (y.square().sum() + d.sum()).backward()
        grads = [p.grad.clone() for p in (*net.parameters(), *critic.parameters())]
        res.append((y.detach(), d.detach(), grads))
        assert net.enc_a.blocks[0].convs[0].weight.is_contiguous(memory_format=torch.channels_last_3d) == cl
    if dtype == torch.float32:
        torch.testing.assert_close(res[1][0], res[0][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-5, atol=1e-6)
        return
    torch.testing.assert_close(res[1][0], res[0][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-10, atol=1e-12)
    for a, b in zip(res[1][2], res[0][2]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
