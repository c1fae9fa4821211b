"""Two-encoder 3D U-Net with the Multi-Conditional Module, and the WGAN critic.

Dong et al., MICCAI 2022 (arXiv 2206.08984).
One class, :class:`MCUNet`, covers the full model and every ablation/baseline through switches:

* ``kernel_cond``: ``"none"`` (plain kernels), ``"fs_n"`` (Filter Scaling on n), ``"fs_nm"``
  (Filter Scaling on n and metabolite), ``"hyper_n"`` (hypernetwork: MLP(n) -> whole kernel);
* ``norm_cond``: ``"none"`` (instance norm), ``"lambda"`` (conditional IN on the adversarial weight),
  ``"am_n"`` (adaptive modulation on n and feature statistics);
* ``per_sample``: each sample of a batch has its own (n, metabolite, lambda) via a batched
  modulated convolution (ours, default); ``False`` reproduces the reference, where one condition
  (the first sample's) drives the whole batch and a mixed batch is refused.

Layouts: maps (B, 1, H, W); MRI slabs (B, 1, fH, fW, S) with f = ``mri_factor`` (3) and S =
``slab_depth`` (3) MRI slices per MRSI slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlearn.mrsi.kspace import data_consistency
from medlearn.mrsi.mcm import (
    AdaptiveModulationNorm,
    ConditionalInstanceNorm,
    FilterScaling,
    HyperKernel,
    batched_cin_styles,
    batched_conv3d,
    batched_filter_scales,
)
from medlearn.mrsi.planar import Conv3d, max_pool3d, resize_trilinear

__all__ = ["Conditions", "ConvBlock", "Critic", "MCUNet", "KERNEL_CONDS", "NORM_CONDS"]

KERNEL_CONDS = ("none", "fs_n", "fs_nm", "hyper_n")
NORM_CONDS = ("none", "lambda", "am_n")


@dataclass
class Conditions:
    """Per-sample conditions, each (B,) or (1,) when the batch shares one condition.

    Attributes:
        n: half the low-resolution matrix (float; 8..16 for 64x64 maps).
        met: metabolite index (long).
        lam: adversarial weight lambda (float).
        scales: optional precomputed Filter Scaling output per layer (indexed by the layer's
            ``bank_index``), from :func:`batched_filter_scales`.
        styles: optional precomputed conditional-IN (gamma, beta) per layer, from
            :func:`batched_cin_styles`.
    """

    n: Tensor
    met: Tensor
    lam: Tensor
    scales: list[Tensor] | None = None
    styles: list[Tensor] | None = None


class ConvBlock(nn.Module):
    """2 x (conditioned conv without bias -> (conditional) instance norm -> PReLU).

    Args:
        in_ch, out_ch: channels.
        kernel: 3D kernel size; padding keeps the spatial size.
        kernel_cond, norm_cond: see the module docstring.
        latent: width of the conditioning MLPs.
        num_metabolites, met_embed_dim: metabolite embedding (``fs_nm`` only).
        gamma_init: initial gamma bias of the conditional instance norm.
        planar: thin-slab convolutions as 2D ones (:mod:`medlearn.mrsi.planar`; same numbers).
        split_layout: the 3D convolutions with the split layout of :func:`medlearn.mrsi.planar.conv3d`.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: tuple[int, int, int],
        kernel_cond: str = "fs_nm",
        norm_cond: str = "lambda",
        latent: int = 32,
        num_metabolites: int = 7,
        met_embed_dim: int = 3,
        gamma_init: float = 1.0,
        lambda_offset: bool = False,
        planar: bool = True,
        split_layout: bool = False,
    ):
        super().__init__()
        self.kernel_cond, self.norm_cond, self.planar = kernel_cond, norm_cond, planar
        self.split_layout = split_layout
        self.padding = tuple(k // 2 for k in kernel)
        self.convs = nn.ModuleList()
        self.conds = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.acts = nn.ModuleList()
        for i, o in ((in_ch, out_ch), (out_ch, out_ch)):
            if kernel_cond == "hyper_n":
                self.convs.append(nn.Identity())
                self.conds.append(HyperKernel(i, o, kernel, latent))
            else:
                self.convs.append(nn.Conv3d(i, o, kernel, padding=self.padding, bias=False))
                if kernel_cond == "fs_n":
                    self.conds.append(FilterScaling(i, o, latent))
                elif kernel_cond == "fs_nm":
                    self.conds.append(FilterScaling(i, o, latent, num_metabolites, met_embed_dim))
                else:
                    self.conds.append(nn.Identity())
            if norm_cond == "lambda":
                self.norms.append(ConditionalInstanceNorm(o, latent, gamma_init, offset=lambda_offset))
            elif norm_cond == "am_n":
                self.norms.append(AdaptiveModulationNorm(o, latent))
            else:
                self.norms.append(nn.Identity())
            self.acts.append(nn.PReLU(o))

    def _kernel(self, j: int, c: Conditions) -> Tensor:
        """(O, I, k...) shared kernel or (B, O, I, k...) per-sample kernels."""
        if self.kernel_cond == "hyper_n":
            w = self.conds[j](c.n)
        else:
            weight = self.convs[j].weight
            if self.kernel_cond == "none":
                return weight
            cond = self.conds[j]
            if c.scales is not None:
                s = c.scales[cond.bank_index]
            else:
                s = cond(c.n, c.met if self.kernel_cond == "fs_nm" else None)
            w = weight.unsqueeze(0) * s[..., None, None, None]
        return w[0] if w.shape[0] == 1 else w

    def forward(self, x: Tensor, c: Conditions) -> Tensor:
        """(B, in_ch, D, H, W) -> (B, out_ch, D, H, W)."""
        for j in range(2):
            x = batched_conv3d(x, self._kernel(j, c), self.padding, self.planar, self.split_layout)
            if self.norm_cond == "lambda":
                norm = self.norms[j]
                x = norm(x, c.lam, None if c.styles is None else c.styles[norm.bank_index])
            elif self.norm_cond == "am_n":
                x = self.norms[j](x, c.n)
            else:
                x = F.instance_norm(x)
            x = self.acts[j](x)
        return x


class _Encoder(nn.Module):
    """Levels of ConvBlocks with max-pooling between them; returns every level's output."""

    def __init__(self, in_ch: int, widths: list[int], slab_depth: int, **block_kw):
        super().__init__()
        self.blocks = nn.ModuleList()
        prev = in_ch
        for lvl, w in enumerate(widths):
            kernel = (3, 3, 3) if lvl == 0 else (3, 3, 1)
            self.blocks.append(ConvBlock(prev, w, kernel, **block_kw))
            prev = w
        self.pools = [(2, 2, slab_depth)] + [(2, 2, 1)] * (len(widths) - 2)
        self.planar = block_kw.get("planar", True)

    def forward(self, x: Tensor, c: Conditions) -> list[Tensor]:
        feats = []
        for lvl, block in enumerate(self.blocks):
            if lvl > 0:
                x = max_pool3d(x, self.pools[lvl - 1], self.planar)
            x = block(x, c)
            feats.append(x)
        return feats


class MCUNet(nn.Module):
    """Two-encoder 3D U-Net super-resolving a metabolite map under (n, metabolite, lambda).

    Encoder A sees [LR map upsampled to the MRI grid, T1], encoder B [LR map upsampled, FLAIR]; the
    decoder concatenates both bottlenecks and both encoders' skips at each level.  Head: 1x1x1
    conv -> sigmoid -> average pool back to the map grid -> data consistency -> quality mask.

    Args:
        base_width: channels of the first level (8 in the paper; doubles per level).
        depth: number of encoder levels including the bottleneck (5 -> 8-16-32-64-128).
        latent: conditioning MLP width (32).
        num_metabolites, met_embed_dim: metabolite embedding size (7, 3).
        kernel_cond, norm_cond, per_sample: see the module docstring.
        mri_factor: MRI in-plane size / map size (3).
        slab_depth: MRI slices per map slice (3).
        data_consistency: ``"off"`` or a mode of :func:`medlearn.mrsi.kspace.data_consistency`
            (``"reference"`` replaces the central k-space window and takes the magnitude).
        gamma_init: initial gamma bias of the conditional instance norms (reference: 1).
        lambda_scale: lambda is multiplied by this before the conditional-norm MLPs (reference: 1,
            raw lambda; e.g. 1 / lambda_max feeds the MLP values in [0, 1]).
        batched_conditioning: evaluate the conditioning MLPs of every layer once per forward as
            stacked batched matmuls (:func:`batched_filter_scales`, :func:`batched_cin_styles`);
            False runs each layer's MLPs inside its block (same numbers up to float rounding).
        lambda_offset: conditional IN as ``base + S(lambda) - S(0)`` (see
            :class:`ConditionalInstanceNorm`); False = the reference ``S(lambda)``.
        channels_last: keep 5-D activations and kernels in ``channels_last_3d`` memory order (the
            same numbers up to float rounding; oneDNN's 3D convolutions run about 1.5-2x faster so).
        planar: run convolutions, pools and resampling that do not mix the slab axis (or collapse
            it whole) as 2D operations (:mod:`medlearn.mrsi.planar`; the same numbers up to float
            rounding); False = 3D operations everywhere, as the reference.
        split_layout: on CPU, the 3D convolutions run their forward in the plain layout and their
            backward in channels-last (:func:`medlearn.mrsi.planar.conv3d`; the same numbers up to
            float rounding, faster oneDNN kernels for each pass at these shapes).
    Example:
        >>> net = MCUNet(base_width=2, depth=2)
        >>> t1 = torch.rand(2, 1, 12, 12, 3); lr = torch.rand(2, 1, 4, 4)
        >>> n = torch.tensor([1, 2]); met = torch.tensor([0, 6]); lam = torch.tensor([0.0, 0.1])
        >>> net(t1, t1, lr, n, met, lam).shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(
        self,
        base_width: int = 8,
        depth: int = 5,
        latent: int = 32,
        num_metabolites: int = 7,
        met_embed_dim: int = 3,
        kernel_cond: str = "fs_nm",
        norm_cond: str = "lambda",
        per_sample: bool = True,
        mri_factor: int = 3,
        slab_depth: int = 3,
        data_consistency: str = "reference",
        gamma_init: float = 1.0,
        lambda_scale: float = 1.0,
        batched_conditioning: bool = True,
        lambda_offset: bool = False,
        channels_last: bool = False,
        planar: bool = True,
        split_layout: bool = False,
    ):
        super().__init__()
        if kernel_cond not in KERNEL_CONDS:
            raise ValueError(f"kernel_cond='{kernel_cond}' is not one of {KERNEL_CONDS}")
        if norm_cond not in NORM_CONDS:
            raise ValueError(f"norm_cond='{norm_cond}' is not one of {NORM_CONDS}")
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth}")
        self.kernel_cond, self.norm_cond, self.per_sample = kernel_cond, norm_cond, per_sample
        self.mri_factor, self.slab_depth, self.dc_mode = mri_factor, slab_depth, data_consistency
        self.depth, self.lambda_scale = depth, float(lambda_scale)
        widths = [base_width * 2**i for i in range(depth)]
        kw = dict(
            kernel_cond=kernel_cond,
            norm_cond=norm_cond,
            latent=latent,
            num_metabolites=num_metabolites,
            met_embed_dim=met_embed_dim,
            gamma_init=gamma_init,
            lambda_offset=lambda_offset,
            planar=planar,
            split_layout=split_layout,
        )
        self.planar, self.split_layout = bool(planar), bool(split_layout)
        self.enc_a = _Encoder(2, widths, slab_depth, **kw)
        self.enc_b = _Encoder(2, widths, slab_depth, **kw)
        self.up_convs = nn.ModuleList()
        self.dec_blocks = nn.ModuleList()
        prev = 2 * widths[-1]
        for lvl in range(depth - 2, -1, -1):
            kernel = (3, 3, 3) if lvl == 0 else (3, 3, 1)
            pad = tuple(k // 2 for k in kernel)
            self.up_convs.append(
                Conv3d(prev, widths[lvl], kernel, padding=pad, planar=planar, split_layout=split_layout)
            )
            self.dec_blocks.append(ConvBlock(3 * widths[lvl], widths[lvl], kernel, **kw))
            prev = widths[lvl]
        self.head = Conv3d(widths[0], 1, 1, planar=planar, split_layout=split_layout)
        self.batched_conditioning = bool(batched_conditioning)
        self.channels_last = bool(channels_last)
        if (
            self.channels_last
        ):  # 5-D kernels and activations in channels-last order (faster oneDNN convolutions)
            self.to(memory_format=torch.channels_last_3d)
        # plain lists (not registered twice): the layers whose MLPs run once per forward, stacked
        self._fs_layers = [m for m in self.modules() if isinstance(m, FilterScaling)]
        self._cin_layers = [m for m in self.modules() if isinstance(m, ConditionalInstanceNorm)]
        for i, m in enumerate(self._fs_layers):
            m.bank_index = i
        for i, m in enumerate(self._cin_layers):
            m.bank_index = i

    def conditions(self, n: Tensor, met: Tensor, lam: Tensor) -> Conditions:
        """Per-sample conditions, or the batch's single shared condition in per-batch mode.

        Raises:
            ValueError: in per-batch mode when the samples' conditions differ.
        """
        n, met = n.reshape(-1).float(), met.reshape(-1).long()
        lam = lam.reshape(-1).float() * self.lambda_scale
        if not self.per_sample:
            self._check_shared(n, met, lam)
            n, met, lam = n[:1], met[:1], lam[:1]
        c = Conditions(n, met, lam)
        if self.batched_conditioning and self._fs_layers:
            c.scales = batched_filter_scales(self._fs_layers, n, met if self._fs_layers[0].use_met else None)
        if self.batched_conditioning and self._cin_layers:
            c.styles = batched_cin_styles(self._cin_layers, lam)
        return c

    def lambda_path_parameters(self) -> list[nn.Parameter]:
        """The parameters through which lambda acts: each conditional IN's lambda MLP and output
        layer (not the lambda = 0 ``base`` of the offset form)."""
        return [p for m in self._cin_layers for p in (*m.mapping.parameters(), *m.style.parameters())]

    @staticmethod
    def _check_shared(n: Tensor, met: Tensor, lam: Tensor) -> None:
        for name, v in (("n", n), ("metabolite", met), ("lambda", lam)):
            if v.numel() > 1 and not bool((v == v[0]).all()):
                raise ValueError(
                    f"per-batch conditioning (per_sample=False) needs one {name} per batch, got {v.tolist()}; "
                    "group batches by condition or set model.per_sample=true"
                )

    def forward(
        self,
        t1: Tensor,
        flair: Tensor,
        lr: Tensor,
        n: Tensor,
        met: Tensor,
        lam: Tensor,
        mask: Tensor | None = None,
    ) -> Tensor:
        """Super-resolve ``lr``.

        Args:
            t1, flair: (B, 1, fH, fW, S) MRI slabs in [0, 1].
            lr: (B, 1, H, W) low-resolution map on the high-resolution grid (k-space truncated).
            n: (B,) half the low-resolution matrix (int); met: (B,) metabolite index; lam: (B,) lambda.
            mask: optional (B, 1, H, W) quality mask multiplied into the output.
        Returns:
            (B, 1, H, W) super-resolved map.
        """
        if t1.shape != flair.shape:
            raise ValueError(f"T1 {tuple(t1.shape)} and FLAIR {tuple(flair.shape)} differ in shape")
        h, w = lr.shape[-2:]
        f = self.mri_factor
        if t1.shape[-3:] != (f * h, f * w, self.slab_depth):
            raise ValueError(
                f"MRI slab {tuple(t1.shape[-3:])} does not match map {(h, w)} x factor {f} x {self.slab_depth} slices"
            )
        if (f * h) % 2 ** (self.depth - 1) or (f * w) % 2 ** (self.depth - 1):
            raise ValueError(
                f"MRI size {(f * h, f * w)} must be divisible by 2^(depth-1) = {2 ** (self.depth - 1)}"
            )
        c = self.conditions(n, met, lam)
        x = resize_trilinear(lr.unsqueeze(-1), tuple(t1.shape[2:]), self.planar)
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        fa = self.enc_a(torch.cat([x, t1], dim=1).contiguous(memory_format=fmt), c)
        fb = self.enc_b(torch.cat([x, flair], dim=1).contiguous(memory_format=fmt), c)
        y = torch.cat([fa[-1], fb[-1]], dim=1)
        for i, lvl in enumerate(range(self.depth - 2, -1, -1)):
            if lvl == 0 and self.planar and y.shape[4] == 1 and self.slab_depth > 1:
                # resampling one slice to the slab copies it: convolve the single slice instead
                up = resize_trilinear(y, (2 * y.shape[2], 2 * y.shape[3], 1), self.planar)
                y = self.up_convs[i].forward_replicated(up, self.slab_depth)
            else:
                size = (2 * y.shape[2], 2 * y.shape[3], y.shape[4] * (self.slab_depth if lvl == 0 else 1))
                y = self.up_convs[i](resize_trilinear(y, size, self.planar))
            y = self.dec_blocks[i](torch.cat([fa[lvl], fb[lvl], y], dim=1), c)
        y = torch.sigmoid(self.head(y))
        y = F.avg_pool3d(y, (f, f, self.slab_depth)).squeeze(-1)
        if self.dc_mode != "off":  # in fp32: FFTs do not run in bf16
            y = data_consistency(y.float(), lr.float(), n.reshape(-1).long().to(y.device), mode=self.dc_mode)
        if mask is not None:
            y = y * mask
        return y


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class Critic(nn.Module):
    """WGAN critic on [T1, FLAIR, LR up, SR-or-HR up] slabs (B, 4, fH, fW, S) -> (B, 1).

    ``n_blocks`` strided convs (kernel 4x4 in-plane, stride 2; the first collapses the S slices)
    with widths ``width * 2**i``, instance norm and LeakyReLU 0.2, then linear -> ``hidden`` ->
    LeakyReLU -> linear -> 1.  The flattened size is derived from ``input_shape``.

    Args:
        in_ch: input channels (4).
        width: first block's channels (32).
        n_blocks: strided blocks (4).
        input_shape: (fH, fW, S) of the slabs (192, 192, 3 in the paper).
        hidden: width of the first linear layer (16).
        channels_last: keep 5-D activations and kernels in ``channels_last_3d`` order.
        planar: the convolutions as 2D ones where exact (:mod:`medlearn.mrsi.planar`).
    """

    def __init__(
        self,
        in_ch: int = 4,
        width: int = 32,
        n_blocks: int = 4,
        input_shape: tuple[int, int, int] = (192, 192, 3),
        hidden: int = 16,
        channels_last: bool = False,
        planar: bool = True,
    ):
        super().__init__()
        h, w, s = input_shape
        self.channels_last = bool(channels_last)
        self.input_shape = tuple(input_shape)
        layers: list[nn.Module] = []
        prev = in_ch
        for i in range(n_blocks):
            out = width * 2**i
            ks = s if i == 0 else 1
            layers += [
                Conv3d(
                    prev, out, (4, 4, ks), stride=(2, 2, ks), padding=(1, 1, 0), bias=False, planar=planar
                ),
                nn.InstanceNorm3d(out),
                nn.LeakyReLU(0.2),
            ]
            h, w = _conv_out(h, 4, 2, 1), _conv_out(w, 4, 2, 1)
            s = _conv_out(s, ks, ks, 0)
            prev = out
        if min(h, w, s) < 1:
            raise ValueError(f"critic input {input_shape} is too small for {n_blocks} strided blocks")
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(prev * h * w * s, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        if self.channels_last:
            self.to(memory_format=torch.channels_last_3d)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-3:]) != self.input_shape:
            raise ValueError(f"critic built for slabs {self.input_shape}, got {tuple(x.shape[-3:])}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        z = self.features(x).flatten(1)
        return self.fc2(F.leaky_relu(self.fc1(z), 0.2))
