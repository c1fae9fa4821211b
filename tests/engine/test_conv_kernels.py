"""``engine.cpu_conv: auto``: size-aware 2D convolutions compute ``F.conv2d`` with the kernel their size favours."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medlearn.engine import EngineConfig
from medlearn.engine.conv_kernels import (
    SizeAwareConv2d,
    apply_cpu_conv,
    prefers_native,
    use_size_aware_convs,
)
from medlearn.engine.loop import cpu_conv_kernels

NATIVE, ONEDNN = "aten::_slow_conv2d_forward", "aten::mkldnn_convolution"


@contextmanager
def _onednn(enabled: bool):
    """torch's process-wide switch for the block (``torch.backends.mkldnn.flags`` also sets TF32 and warns)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _kernels(fn) -> set[str]:
    """The aten ops that ``fn`` dispatches to (torch profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize(
    "images,pixels,channels,native",
    [
        (6, 8 * 8, 64, True),  # a U-Net's deep stage at test size: 384 rows, 384 planes
        (6, 16 * 16, 8, False),  # 1,536 rows: oneDNN
        (16, 4 * 4, 16, True),  # 256 rows, 256 planes
        (16, 4 * 4, 32, False),  # 512 planes: oneDNN
        (2, 16 * 16, 8, True),  # exactly 512 rows
        (2, 257, 8, False),  # 514 rows
        (1, 1, 384, True),
        (1, 1, 385, False),
    ],
)
def test_the_rule_at_its_edges(images, pixels, channels, native):
    assert prefers_native(images, pixels, channels) is native


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    "shape,conv,native",
    [
        ((3, 8, 8, 8), dict(in_channels=8, out_channels=16, kernel_size=3, padding=1), True),
        (
            (3, 8, 9, 7),
            dict(in_channels=8, out_channels=5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
            True,
        ),
        (
            (2, 3, 32, 32),
            dict(in_channels=3, out_channels=8, kernel_size=7, stride=2, padding=3, bias=False),
            True,
        ),
        ((8, 4, 24, 24), dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), False),
    ],
)
def test_size_aware_convolution_equals_f_conv2d(shape, conv, native, channels_last):
    """Forward and both gradients against ``F.conv2d`` in float64, on the kernel the rule names."""
    torch.manual_seed(0)
    ref = nn.Conv2d(**conv).double()
    sized = copy.deepcopy(ref)
    assert use_size_aware_convs(sized) == 1 and type(sized) is SizeAwareConv2d
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
    out_size = ref(x).shape
    assert prefers_native(shape[0], out_size[2] * out_size[3], shape[1]) is native
    grad_out = torch.randn(out_size, dtype=torch.float64)

    def run(module):
        xi = x.clone().requires_grad_()
        y = module(xi)
        y.backward(grad_out)
        return y, xi.grad, module.weight.grad

    with _onednn(True):
        ops = _kernels(lambda: run(copy.deepcopy(sized)))
        got = run(sized)
    expected_y = F.conv2d(x, ref.weight, ref.bias, ref.stride, ref.padding)
    want = run(ref)
    torch.testing.assert_close(got[0], expected_y, rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    if native:  # (oneDNN has no float64 kernel, so a large call's route is checked in float32 below)
        assert NATIVE in ops and ONEDNN not in ops


def test_float32_native_and_onednn_agree_and_the_switch_is_followed():
    """The native path ignores the process-wide switch; a large call follows it."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    use_size_aware_convs(conv)
    small, large = torch.randn(4, 16, 8, 8), torch.randn(8, 16, 32, 32)
    for enabled in (True, False):
        with _onednn(enabled):
            assert NATIVE in _kernels(lambda: conv(small)) and ONEDNN not in _kernels(lambda: conv(small))
            assert (ONEDNN in _kernels(lambda: conv(large))) is enabled
    with torch.no_grad(), _onednn(True):
        torch.testing.assert_close(
            conv(small), F.conv2d(small, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(8, 8, 3, padding="same"),
    ],
)
def test_what_the_native_kernel_does_not_do_goes_to_torch(conv):
    use_size_aware_convs(conv)
    x = torch.randn(2, 8, 6, 6)
    with _onednn(True):
        assert NATIVE not in _kernels(lambda: conv(x))
        torch.testing.assert_close(conv(x), nn.Conv2d.forward(conv, x))


def test_swapping_keeps_state_dict_parameters_and_subclasses():
    class Custom(nn.Conv2d):
        pass

    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 4, 1)), Custom(4, 2, 1)
    )
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = [id(p) for p in net.parameters()]
    assert use_size_aware_convs(net, None) == 2
    assert [type(m) for m in (net[0], net[2][0], net[3])] == [SizeAwareConv2d, SizeAwareConv2d, Custom]
    assert [id(p) for p in net.parameters()] == params
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert type(copy.deepcopy(net)[0]) is SizeAwareConv2d


def test_apply_cpu_conv_acts_only_for_auto_and_the_run_keeps_onednn_on():
    for choice, swapped in (("onednn", False), ("native", False), ("auto", True)):
        net = nn.Sequential(nn.Conv2d(1, 2, 3))
        apply_cpu_conv(EngineConfig(cpu_conv=choice), net)
        assert (type(net[0]) is SizeAwareConv2d) is swapped
    before = torch.backends.mkldnn.enabled
    for choice, enabled in (("auto", True), ("onednn", True), ("native", False)):
        with cpu_conv_kernels(EngineConfig(cpu_conv=choice)):
            assert torch.backends.mkldnn.enabled is enabled
        assert torch.backends.mkldnn.enabled == before


def test_cpu_autocast_is_left_to_torch():
    """Under CPU autocast the call goes through ``F.conv2d``, so the output has autocast's dtype."""
    conv = nn.Conv2d(8, 8, 3, padding=1)
    use_size_aware_convs(conv)
    x = torch.randn(2, 8, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = nn.Conv2d.forward(conv, x)
        got = conv(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
