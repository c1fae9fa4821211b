"""``engine.cpu_conv: auto``: every 2D convolution on a CPU takes the kernel that suits its size.

PyTorch picks one CPU convolution kernel for the whole process (``torch.backends.mkldnn.enabled``):
oneDNN, or its own im2col + GEMM kernel (``native``).  Neither wins everywhere.  Forward +
backward, one thread, channels_last, measured on this machine (2 CPU cores, AMD EPYC, without a
GPU; docs/itl.md, speed section):

* oneDNN costs about 0.2 ms per convolution whatever its size, then runs the arithmetic 1.3-5x
  faster than the native kernel once the matrix product is large (16 x 16 maps and up, or 16
  images with 16 channels or more);
* the native kernel loops over the images with one small product each: 1.1-3x faster than
  oneDNN for a few images on maps of 8 x 8 and smaller, which is where a U-Net's deep stages
  run at CPU-test sizes.

:class:`SizeAwareConv2d` (an ``nn.Conv2d``, so parameters, state-dict keys and checkpoints are
unchanged) sends each call on a CPU to the native kernel when :func:`prefers_native` says so and
to the process-wide choice otherwise; ``engine.cpu_conv: auto`` turns oneDNN on for the run
(:func:`medlearn.engine.loop.cpu_conv_kernels`) and swaps the task's ``nn.Conv2d`` modules in
place (:func:`apply_cpu_conv`).  Both kernels compute the same convolution (results agree to
float round-off); the choice depends only on shapes, so a run and its resumption pick alike.
Off the CPU, under CPU autocast, and for grouped, dilated or non-zero-padded convolutions,
nothing changes.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from medlearn.engine.options import EngineConfig

log = logging.getLogger(__name__)

NATIVE_MAX_ROWS = 512
"""The native kernel is chosen up to this many output positions per call (images x Ho x Wo) ..."""
NATIVE_MAX_IMAGE_CHANNELS = 384
"""... and this many input planes (images x input channels)."""


def prefers_native(images: int, out_pixels: int, in_channels: int) -> bool:
    """True when PyTorch's native kernel beats oneDNN for a convolution of this size (on a CPU).

    Args:
        images: batch size B.
        out_pixels: output positions per image, Ho * Wo.
        in_channels: input channels C_in.
    """
    return images * out_pixels <= NATIVE_MAX_ROWS and images * in_channels <= NATIVE_MAX_IMAGE_CHANNELS


def _nhwc(t: Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class SizeAwareConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose CPU calls use the native kernel when :func:`prefers_native` (same maths).

    Shapes:
        input (B, C_in, H, W) -> (B, C_out, Ho, Wo), as ``nn.Conv2d``.
    """

    def _native_applies(self, x: Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype in (torch.float32, torch.float64)
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and not torch.is_autocast_enabled("cpu")  # autocast picks the dtype through F.conv2d
        )

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self._native_applies(input):
            (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
            ho = (input.shape[2] + 2 * ph - kh) // sh + 1
            wo = (input.shape[3] + 2 * pw - kw) // sw + 1
            if prefers_native(input.shape[0], ho * wo, input.shape[1]):
                # the native kernel directly (its backward too), whatever the process-wide switch
                # says; like torch's own dispatch, NHWC when the input or the weight is
                fmt = torch.channels_last if _nhwc(input) or _nhwc(weight) else torch.contiguous_format
                return torch._C._nn.thnn_conv2d(
                    input.contiguous(memory_format=fmt),
                    weight.contiguous(memory_format=fmt),
                    self.kernel_size,
                    bias,
                    self.stride,
                    self.padding,
                )
        return super()._conv_forward(input, weight, bias)


def use_size_aware_convs(*modules: nn.Module | None) -> int:
    """Turn every plain ``nn.Conv2d`` inside ``modules`` into a :class:`SizeAwareConv2d`, in place.

    Only the class changes (parameters, buffers and hooks stay), so state dicts, optimizers and
    copies made later are unaffected.  Subclasses of ``nn.Conv2d`` are left alone.

    Returns:
        the number of convolutions swapped.
    """
    n = 0
    for module in modules:
        if module is None:
            continue
        for m in module.modules():
            if type(m) is nn.Conv2d:
                m.__class__ = SizeAwareConv2d
                n += 1
    return n


def apply_cpu_conv(engine: EngineConfig, *modules: nn.Module | None) -> None:
    """With ``engine.cpu_conv: auto``, :func:`use_size_aware_convs` on ``modules``; otherwise a no-op."""
    if engine.cpu_conv != "auto":
        return
    n = use_size_aware_convs(*modules)
    log.info("engine.cpu_conv=auto: %d 2D convolutions choose their CPU kernel by size", n)
