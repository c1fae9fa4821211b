"""3D operations on thin slabs, computed as the equivalent 2D operations where that is exact.

The MRSI networks work on (B, C, H, W, S) tensors whose last axis S is tiny: 3 MRI slices at the
first level and 1 after the first pooling.  oneDNN's 3D convolutions, pools and trilinear
resampling are several times slower than their 2D versions on such shapes (on a CPU, the critic's
first convolution takes 24 ms as ``conv3d`` and 5 ms as ``conv2d``, forward + backward), so:

* a convolution whose kernel, stride and padding are 1, 1, 0 along S runs as ``conv2d`` with S
  folded into the batch;
* a convolution whose kernel spans all S slices (stride S, no padding: the critic's first layer)
  runs as ``conv2d`` with S folded into the channels;
* max pooling (k, k, 1) and trilinear resampling that leaves S alone (or replicates a single slice
  with ``align_corners=True``) run as their 2D versions;
* a convolution (stride 1) over a slab whose S slices are copies of one slice (the decoder's
  first-level up-convolution, after the single bottleneck slice is resampled to S slices) runs as
  one ``conv2d`` on that slice, with the kernel taps summed per output slice
  (:func:`conv3d_replicated`): a third of the multiply-adds, and no copies of the slice.

The remaining 3D convolutions can run with a *split layout* on CPU (``split_layout=True``): the
forward in the plain NCDHW layout (in channels-last when a group has fewer than
:data:`FEW_INPUT_CHANNELS` input channels) and the backward in channels-last.  On this machine's
oneDNN those are the faster kernels for each pass at the MRSI shapes (the backward of a grouped
per-sample convolution is 2-4x faster in channels-last, its forward 1.3-1.7x faster in the plain
layout; see docs/mrsi.md), whatever layout the activations arrive in.  A grouped backward that
needs only the input gradient stays in the input's layout, where it is as fast without copies.

Every other case falls back to the 3D operation.  The results equal the 3D ones up to float
rounding (a different summation order); ``planar=False`` runs the 3D operations everywhere (the
reference's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FEW_INPUT_CHANNELS",
    "Conv3d",
    "conv3d",
    "conv3d_replicated",
    "max_pool3d",
    "memory_format_of",
    "resize_trilinear",
]

FEW_INPUT_CHANNELS = 4
"""Split layout: a forward whose groups have fewer input channels than this runs channels-last."""


def _triple(v: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _slices_to_batch(x: Tensor) -> Tensor:
    """(B, C, H, W, S) -> (B * S, C, H, W)."""
    b, c, h, w, s = x.shape
    if s == 1:
        return x[..., 0]
    return x.permute(0, 4, 1, 2, 3).reshape(b * s, c, h, w)


def _batch_to_slices(y: Tensor, s: int, like: Tensor) -> Tensor:
    """(B * S, C, H, W) -> (B, C, H, W, S), in the memory format of ``like`` (a 5-D tensor).

    A copy, not a permuted view: later operations (and their backward passes) get the standard
    strides of that memory format.
    """
    if s == 1:
        out = y.unsqueeze(-1)
    else:
        bs, c, h, w = y.shape
        out = y.reshape(bs // s, s, c, h, w).permute(0, 2, 3, 4, 1)
    return out.contiguous(memory_format=memory_format_of(like))


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``channels_last_3d`` for a 5-D tensor stored channels-last (and not also plain contiguous), else contiguous."""
    cl = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    return torch.channels_last_3d if cl else torch.contiguous_format


def conv3d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int, int] = 1,
    padding: int | tuple[int, int, int] = 0,
    groups: int = 1,
    planar: bool = True,
    split_layout: bool = False,
) -> Tensor:
    """``F.conv3d`` over (B, C, H, W, S) with (O, C / groups, kh, kw, ks) kernels, as ``conv2d`` when exact.

    ``split_layout``: a convolution that stays 3D runs with the split layout of the module
    docstring when ``x`` is on the CPU.  Returns (B, O, H', W', S'), in ``x``'s memory format when
    it falls back to ``conv3d`` (in the layout it was computed in with the split layout).
    """
    stride, padding = _triple(stride), _triple(padding)
    ks, s = weight.shape[-1], x.shape[-1]
    if planar and ks == 1 and stride[2] == 1 and padding[2] == 0:
        y = F.conv2d(_slices_to_batch(x), weight[..., 0], bias, stride[:2], padding[:2], 1, groups)
        return _batch_to_slices(y, s, x)
    if planar and ks == s and stride[2] == s and padding[2] == 0:
        b, c, h, w, _ = x.shape
        x2 = x.permute(0, 1, 4, 2, 3).reshape(b, c * s, h, w)  # channel c * S + slice: groups stay contiguous
        o, i = weight.shape[:2]
        w2 = weight.permute(0, 1, 4, 2, 3).reshape(o, i * s, *weight.shape[2:4])
        return _batch_to_slices(F.conv2d(x2, w2, bias, stride[:2], padding[:2], 1, groups), 1, x)
    if split_layout and x.device.type == "cpu":
        return _SplitLayoutConv3d.apply(x, weight, bias, stride, padding, groups)
    return F.conv3d(x, weight, bias, stride, padding, 1, groups)


def conv3d_replicated(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    padding: tuple[int, int, int],
    slices: int,
) -> Tensor:
    """``F.conv3d`` (stride 1) of the slab made of ``slices`` copies of the single slice ``x``, as one ``conv2d``.

    Output slice j sums the kernel taps t whose input slice ``j + t - padding[2]`` exists; all of
    them read the same slice, so slice j is ``conv2d(x, sum of those taps)``, and the ``slices``
    summed kernels run as one ``conv2d`` with ``slices`` x O output channels.

    Shapes:
        x: (B, C, H, W, 1), weight: (O, C, kh, kw, ks) -> (B, O, H', W', slices), in ``x``'s
        memory format; equal to ``F.conv3d(x.expand(..., slices), ...)`` up to float rounding.
    """
    if x.shape[-1] != 1:
        raise ValueError(f"conv3d_replicated needs a single slice, got {tuple(x.shape)}")
    o, ks, ps = weight.shape[0], weight.shape[-1], padding[2]
    if ks != 2 * ps + 1:
        raise ValueError(
            f"conv3d_replicated keeps the slab depth: kernel {ks} along S needs padding {(ks - 1) // 2}"
        )
    kernels = []
    for j in range(slices):
        taps = [t for t in range(ks) if 0 <= j + t - ps < slices]
        kernels.append(weight[..., taps].sum(-1))
    stacked = torch.cat(kernels)  # (slices * O, C, kh, kw): slice-major, as the reshape below reads it
    y = F.conv2d(x[..., 0], stacked, None if bias is None else bias.repeat(slices), 1, padding[:2])
    b, _, h, w = y.shape
    out = y.reshape(b, slices, o, h, w).permute(0, 2, 3, 4, 1)
    return out.contiguous(memory_format=memory_format_of(x))


class _SplitLayoutConv3d(torch.autograd.Function):
    """``F.conv3d`` (dilation 1) with the split layout of the module docstring.

    The result comes in the layout it was computed in, the gradients in the layouts of ``x`` and
    ``weight``.  The backward is written with differentiable operations, so double backward works.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, groups, bias is not None)
        fmt = torch.channels_last_3d if weight.shape[1] < FEW_INPUT_CHANNELS else torch.contiguous_format
        return F.conv3d(
            x.contiguous(memory_format=fmt),
            weight.contiguous(memory_format=fmt),
            bias,
            stride,
            padding,
            1,
            groups,
        )

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, groups, has_bias = ctx.conf
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], has_bias and ctx.needs_input_grad[2]]
        # channels-last, except an input-gradient-only grouped backward: as fast in x's layout, no copies
        fmt = torch.channels_last_3d if (need[1] or groups == 1) else memory_format_of(x)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad.contiguous(memory_format=fmt),
            x.contiguous(memory_format=fmt),
            weight.contiguous(memory_format=fmt),
            [weight.shape[0]] if has_bias else None,
            list(stride),
            list(padding),
            [1, 1, 1],
            False,
            [0, 0, 0],
            groups,
            need,
        )
        if gx is not None:
            gx = gx.contiguous(memory_format=memory_format_of(x))
        if gw is not None:
            gw = gw.contiguous(memory_format=memory_format_of(weight))
        return gx, gw, gb, None, None, None


def max_pool3d(x: Tensor, kernel: tuple[int, int, int], planar: bool = True) -> Tensor:
    """``F.max_pool3d(x, kernel)`` (stride = kernel) over (B, C, H, W, S); 2D when the S kernel is 1."""
    if planar and kernel[2] == 1:
        return _batch_to_slices(F.max_pool2d(_slices_to_batch(x), kernel[:2]), x.shape[-1], x)
    return F.max_pool3d(x, kernel)


def resize_trilinear(x: Tensor, size: tuple[int, int, int], planar: bool = True) -> Tensor:
    """``F.interpolate(x, size, mode="trilinear", align_corners=True)`` over (B, C, H, W, S).

    Bilinear in-plane when S is kept, or when a single slice is replicated to ``size[2]`` slices
    (with ``align_corners=True`` every output slice samples source position 0).
    """
    s_in, s_out = x.shape[-1], size[2]
    if planar and (s_in == s_out or s_in == 1):
        y = F.interpolate(_slices_to_batch(x), size=size[:2], mode="bilinear", align_corners=True)
        y = _batch_to_slices(y, s_in, x)
        return (
            y
            if s_in == s_out
            else y.expand(*y.shape[:-1], s_out).contiguous(memory_format=memory_format_of(x))
        )
    return F.interpolate(x, size=size, mode="trilinear", align_corners=True)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state dict) whose forward uses :func:`conv3d`.

    ``planar=False`` keeps the plain 3D convolution; ``split_layout`` see :func:`conv3d`.
    """

    def __init__(self, *args, planar: bool = True, split_layout: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.planar, self.split_layout = planar, split_layout

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: A002
        if (
            self.padding_mode != "zeros"
            or isinstance(self.padding, str)
            or any(d != 1 for d in self.dilation)
        ):
            return super()._conv_forward(input, weight, bias)
        return conv3d(
            input, weight, bias, self.stride, self.padding, self.groups, self.planar, self.split_layout
        )

    def forward_replicated(self, x: Tensor, slices: int) -> Tensor:
        """This convolution over ``slices`` copies of the single slice ``x`` (B, C, H, W, 1).

        :func:`conv3d_replicated` when ``planar`` and the convolution is a plain one (stride 1,
        zero padding, no dilation or groups); otherwise the 3D convolution of the expanded slab.
        """
        plain = (
            self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and all(d == 1 for d in self.dilation)
            and all(st == 1 for st in self.stride)
            and self.groups == 1
            and self.kernel_size[2] == 2 * self.padding[2] + 1
        )
        if self.planar and plain and x.shape[-1] == 1:
            return conv3d_replicated(x, self.weight, self.bias, self.padding, slices)
        fmt = memory_format_of(x)
        return self(x.expand(*x.shape[:-1], slices).contiguous(memory_format=fmt))
