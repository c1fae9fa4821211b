"""The Multi-Conditional Module (MCM) and the conditioning layers of the baselines.

Dong et al., "Multi-scale Super-resolution Magnetic Resonance Spectroscopic Imaging with Adjustable
Sharpness", MICCAI 2022 (arXiv 2206.08984).  Our implementation of the layer shapes of
the paper's Multi-Conditional Module:

* :class:`FilterScaling` - condition (n) or (n, metabolite) -> one scale per (out, in) kernel pair.
* :class:`HyperKernel` - condition n -> a whole convolution kernel (hypernetwork baseline).
* :class:`ConditionalInstanceNorm` - lambda -> (gamma, beta) around an instance norm.
* :class:`AdaptiveModulationNorm` - n and the feature's channel mean/std -> (gamma, beta).
* :func:`batched_conv3d` - one convolution per sample with its own kernel, as one grouped conv.

Every layer takes conditions as per-sample tensors ``(B,)``; the network decides whether a batch
shares one condition (reference behaviour) or each sample has its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlearn.mrsi.planar import conv3d, memory_format_of

__all__ = [
    "AdaptiveModulationNorm",
    "ConditionalInstanceNorm",
    "FilterScaling",
    "HyperKernel",
    "batched_cin_styles",
    "batched_conv3d",
    "batched_filter_scales",
    "mapping_mlp",
]


def mapping_mlp(in_dim: int, latent: int, depth: int = 4, slope: float = 0.2) -> nn.Sequential:
    """``depth`` x (Linear -> LeakyReLU(slope)); the first maps ``in_dim`` to ``latent``."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else latent, latent), nn.LeakyReLU(slope)]
    return nn.Sequential(*layers)


def batched_conv3d(
    x: Tensor, weight: Tensor, padding: tuple[int, int, int], planar: bool = True, split_layout: bool = False
) -> Tensor:
    """Convolve each sample with its own kernel (a batched modulated convolution).

    Args:
        x: (B, I, D, H, W) input.
        weight: (B, O, I, kd, kh, kw) one kernel per sample, or (O, I, kd, kh, kw) shared.
        padding: zero padding per spatial axis.
        planar: run thin-slab cases as 2D convolutions (:func:`medlearn.mrsi.planar.conv3d`).
        split_layout: 3D cases with the split layout of :func:`medlearn.mrsi.planar.conv3d`.
    Returns:
        (B, O, D', H', W').  With a per-sample kernel the batch is folded into the channel axis and
        run as one grouped convolution (``groups=B``), so a mixed batch costs one launch.
    """
    fmt = memory_format_of(x)
    if weight.dim() == 5:
        return conv3d(x, weight.contiguous(memory_format=fmt), padding=padding, planar=planar, split_layout=split_layout)
    b, i = x.shape[:2]
    o = weight.shape[1]
    if weight.shape[0] != b or weight.shape[2] != i:
        raise ValueError(f"batched_conv3d: weight {tuple(weight.shape)} does not fit input {tuple(x.shape)}")
    if b == 1:
        return conv3d(x, weight[0].contiguous(memory_format=fmt), padding=padding, planar=planar, split_layout=split_layout)
    out = conv3d(
        x.reshape(1, b * i, *x.shape[2:]).contiguous(memory_format=fmt),
        weight.reshape(b * o, i, *weight.shape[3:]).contiguous(memory_format=fmt),
        padding=padding,
        groups=b,
        planar=planar,
        split_layout=split_layout,
    )
    return out.reshape(b, o, *out.shape[2:]).contiguous(memory_format=fmt)


def _stacked_mlp(mlps: list[nn.Sequential], x: Tensor, slope: float = 0.2) -> Tensor:
    """Evaluate K :func:`mapping_mlp` stacks of identical shape in one batched pass.

    Args:
        mlps: K ``Linear -> LeakyReLU`` stacks with the same layer sizes.
        x: (B, in) input shared by all K, or (K, B, in) one input per stack.
    Returns:
        (K, B, latent), equal (up to float rounding) to ``torch.stack([m(x) for m in mlps])``.
    """
    linears = [[layer for layer in m if isinstance(layer, nn.Linear)] for m in mlps]
    h = x
    for j in range(len(linears[0])):
        w = torch.stack([lin[j].weight for lin in linears])  # (K, out, in)
        b = torch.stack([lin[j].bias for lin in linears])  # (K, out)
        if h.dim() == 2:  # shared input: (B, in) x (K, out, in) -> (K, B, out)
            h = torch.einsum("bi,koi->kbo", h, w) + b[:, None]
        else:
            h = torch.baddbmm(b[:, None], h, w.transpose(1, 2))
        h = F.leaky_relu(h, slope)
    return h


def batched_filter_scales(layers: list[FilterScaling], n: Tensor, met: Tensor | None) -> list[Tensor]:
    """Every layer's Filter Scaling scales for the shared conditions, the hidden MLPs run once, stacked.

    All ``layers`` must have the same latent width and metabolite branch.  Equal (up to float
    rounding) to ``[layer(n, met) for layer in layers]``: the K mapping MLPs on n, the K embeddings
    and mapping MLPs on the metabolite and the K ``style1`` layers are each one batched matmul;
    only the last layer (its width C_out x C_in differs per conv) runs per layer.

    Shapes:
        n: (B,), met: (B,) -> K tensors (B, out_ch_k, in_ch_k).
    """
    z = _stacked_mlp([m.map_n for m in layers], n.float().reshape(-1, 1))  # (K, B, L)
    if not layers[0].use_met:
        return [
            F.linear(z[k], m.style.weight, m.style.bias).reshape(-1, m.out_ch, m.in_ch)
            for k, m in enumerate(layers)
        ]
    if met is None:
        raise ValueError("FilterScaling with a metabolite branch needs `met`")
    table = torch.stack([m.embedding.weight for m in layers])  # (K, M, E)
    zm = _stacked_mlp([m.map_m for m in layers], table[:, met.long().reshape(-1)])  # (K, B, L)
    h = torch.cat([z, zm], dim=2)
    w1 = torch.stack([m.style1.weight for m in layers])
    b1 = torch.stack([m.style1.bias for m in layers])
    h = F.leaky_relu(torch.baddbmm(b1[:, None], h, w1.transpose(1, 2)), 0.2)
    return [
        F.linear(h[k], m.style2.weight, m.style2.bias).reshape(-1, m.out_ch, m.in_ch)
        for k, m in enumerate(layers)
    ]


def batched_cin_styles(layers: list[ConditionalInstanceNorm], lam: Tensor) -> list[Tensor]:
    """Every conditional instance norm's (gamma, beta) for the shared lambda in one batched pass.

    Equal (up to float rounding) to ``[layer.style(layer.mapping(lam)) for layer in layers]``.

    Shapes:
        lam: (B,) -> K tensors (B, 2 C_k).
    """
    lam = lam.float().reshape(-1, 1)
    b = lam.shape[0]
    offset = any(m.offset for m in layers)
    h = _stacked_mlp([m.mapping for m in layers], torch.cat([lam, lam.new_zeros(1, 1)]) if offset else lam)
    out = []
    for k, m in enumerate(layers):
        s = F.linear(h[k], m.style.weight, m.style.bias)
        out.append(m.base + s[:b] - s[b:] if m.offset else s[:b])
    return out


class FilterScaling(nn.Module):
    """Scales for a conv kernel from the upscaling condition n and, optionally, the metabolite.

    ``s = style2(LeakyReLU(style1([MLP_n(n), MLP_m(Embedding(m))])))`` with MLPs of 4 linear layers
    (latent ``latent`` , LeakyReLU 0.2).  Without the metabolite branch a single linear layer maps
    ``MLP_n(n)`` to the scales (the "Filter Scaling on n" ablation).

    Args:
        in_ch, out_ch: kernel shape (one scale per (out, in) pair, shared across the kernel taps).
        latent: MLP width.
        num_metabolites: embedding rows; 0 disables the metabolite branch.
        met_embed_dim: embedding width (3 in the reference).
    Shapes:
        n: (B,) float, met: (B,) long -> (B, out_ch, in_ch).
    """

    def __init__(
        self, in_ch: int, out_ch: int, latent: int = 32, num_metabolites: int = 0, met_embed_dim: int = 3
    ):
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.use_met = num_metabolites > 0
        self.map_n = mapping_mlp(1, latent)
        if self.use_met:
            self.embedding = nn.Embedding(num_metabolites, met_embed_dim)
            self.map_m = mapping_mlp(met_embed_dim, latent)
            self.style1 = nn.Linear(2 * latent, 2 * latent)
            self.style2 = nn.Linear(2 * latent, out_ch * in_ch)
        else:
            self.style = nn.Linear(latent, out_ch * in_ch)

    def forward(self, n: Tensor, met: Tensor | None = None) -> Tensor:
        z = self.map_n(n.float().reshape(-1, 1))
        if self.use_met:
            if met is None:
                raise ValueError("FilterScaling with a metabolite branch needs `met`")
            zm = self.map_m(self.embedding(met.long().reshape(-1)))
            s = self.style2(F.leaky_relu(self.style1(torch.cat([z, zm], dim=1)), 0.2))
        else:
            s = self.style(z)
        return s.reshape(-1, self.out_ch, self.in_ch)


class HyperKernel(nn.Module):
    """Hypernetwork baseline: MLP(n) -> the whole kernel (B, O, I, kd, kh, kw)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int, int], latent: int = 32):
        super().__init__()
        self.shape = (out_ch, in_ch, *kernel)
        self.map_n = mapping_mlp(1, latent)
        numel = out_ch * in_ch * kernel[0] * kernel[1] * kernel[2]
        self.style = nn.Linear(latent, numel)

    def forward(self, n: Tensor) -> Tensor:
        return self.style(self.map_n(n.float().reshape(-1, 1))).reshape(-1, *self.shape)


class ConditionalInstanceNorm(nn.Module):
    """``(1 + gamma(lam)) * InstanceNorm(x) + beta(lam)`` with an MLP of 4 layers (width 2*latent).

    ``(gamma, beta) = S(lam)`` with ``S = style(mapping(lam))`` (the reference), or with ``offset``
    ``(gamma, beta) = base + S(lam) - S(0)``: a plain learned affine at lambda = 0, which the
    lambda MLP only moves away from as lambda grows (so at lambda = 0 the layer does not depend on
    the MLP at all).

    Args:
        channels: C.
        latent: half the MLP width (the reference uses 2*32 = 64).
        gamma_init: initial bias of the gamma output (the reference sets 1, i.e. an initial
            scale of 2; ``0`` starts as plain instance norm); with ``offset`` the initial ``base``.
        offset: the lambda = 0 anchored form above (adds 2C parameters ``base``).
    Shapes:
        x: (B, C, D, H, W), lam: (B,) -> (B, C, D, H, W).
    """

    def __init__(
        self,
        channels: int,
        latent: int = 32,
        gamma_init: float = 1.0,
        eps: float = 1e-5,
        offset: bool = False,
    ):
        super().__init__()
        self.channels, self.eps, self.offset = channels, eps, bool(offset)
        self.mapping = mapping_mlp(1, 2 * latent)
        self.style = nn.Linear(2 * latent, 2 * channels)
        with torch.no_grad():
            self.style.bias[:channels].fill_(gamma_init)
            self.style.bias[channels:].zero_()
        if self.offset:
            self.base = nn.Parameter(
                torch.cat([torch.full((channels,), float(gamma_init)), torch.zeros(channels)])
            )

    def styles(self, lam: Tensor) -> Tensor:
        """(B,) -> (B, 2C): [gamma, beta] for each lambda."""
        lam = lam.reshape(-1, 1)
        if not self.offset:
            return self.style(self.mapping(lam))
        s = self.style(self.mapping(torch.cat([lam, lam.new_zeros(1, 1)])))
        return self.base + s[:-1] - s[-1:]

    def forward(self, x: Tensor, lam: Tensor, style: Tensor | None = None) -> Tensor:
        """``style``: this layer's precomputed (B, 2C) output of :func:`batched_cin_styles` (optional)."""
        if style is None:
            style = self.styles(lam.to(x.dtype))
        style = style.to(x.dtype)
        gamma, beta = style[:, : self.channels], style[:, self.channels :]
        view = (-1, self.channels) + (1,) * (x.dim() - 2)
        return (1.0 + gamma.reshape(view)) * F.instance_norm(x, eps=self.eps) + beta.reshape(view)


class AdaptiveModulationNorm(nn.Module):
    """Adaptive-modulation baseline: gamma/beta from MLP(n) and each channel's mean/std of ``x``.

    ``e = Linear(MLP(n))`` (C), ``beta = MLP_b([e, mean_c(x)])``, ``gamma = MLP_g([e, std_c(x)])``
    (each 4 hidden layers of width ``latent`` + a linear output of C), then
    ``(1 + gamma) * InstanceNorm(x) + beta``.

    Shapes:
        x: (B, C, D, H, W), n: (B,) -> (B, C, D, H, W).
    """

    def __init__(self, channels: int, latent: int = 32, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.mapping = mapping_mlp(1, latent)
        self.style = nn.Linear(latent, channels)
        with torch.no_grad():
            self.style.bias.fill_(1.0)
        self.beta_net = nn.Sequential(mapping_mlp(2 * channels, latent), nn.Linear(latent, channels))
        self.gamma_net = nn.Sequential(mapping_mlp(2 * channels, latent), nn.Linear(latent, channels))

    def forward(self, x: Tensor, n: Tensor) -> Tensor:
        e = self.style(self.mapping(n.to(x.dtype).reshape(-1, 1))).expand(x.shape[0], -1)
        dims = tuple(range(2, x.dim()))
        mean, std = x.mean(dim=dims), x.std(dim=dims)
        beta = self.beta_net(torch.cat([e, mean], dim=1))
        gamma = self.gamma_net(torch.cat([e, std], dim=1))
        view = (-1, self.channels) + (1,) * (x.dim() - 2)
        return (1.0 + gamma.reshape(view)) * F.instance_norm(x, eps=self.eps) + beta.reshape(view)
