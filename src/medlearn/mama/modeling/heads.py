"""Projection heads and learnable temperatures of MaMA (spec section 2).

* global projections: Linear(D_img -> E) and Linear(D_txt -> E);
* SLA heads, one for patches and one for sentences: per-token MLP d -> hidden (BatchNorm, ReLU)
  -> local_dim, BatchNorm without affine.  The reference writes them as ``Conv1d(kernel_size=1)``
  over the token axis, which is the same map as the ``Linear`` layers used here; we apply them to
  the valid (non-padding) tokens only so that padded sentence slots do not enter the BatchNorm
  statistics;
* image-image (SimCLR) head: Linear(D -> D), BatchNorm, ReLU, Linear(D -> ii_dim), BatchNorm;
* two learnable logit scales (global and local), both initialised to ln(1 / init_temperature).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medlearn.mama.config import HeadsConfig


class TokenHead(nn.Module):
    """Per-token MLP with BatchNorm (the SLA projection).

    Args:
        in_dim: token width d.
        hidden: hidden width.
        out_dim: output width.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),
            nn.BatchNorm1d(out_dim, affine=False),
        )
        self.out_dim = out_dim

    def forward(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, L, d) tokens and optional (B, L) bool mask -> (B, L, out_dim), zero at masked slots."""
        b, n, d = tokens.shape
        if mask is None:
            return self.net(tokens.reshape(b * n, d)).reshape(b, n, self.out_dim)
        flat = self.net(tokens[mask])
        out = flat.new_zeros(b, n, self.out_dim)
        return out.index_put((mask.nonzero(as_tuple=True)), flat)


class ImageImageHead(nn.Module):
    """SimCLR-style projection: Linear(D, D), BN, ReLU, Linear(D, out_dim), BN. (B, D) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, in_dim),
            nn.BatchNorm1d(in_dim),
            nn.ReLU(inplace=True),
            nn.Linear(in_dim, out_dim),
            nn.BatchNorm1d(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class MamaHeads(nn.Module):
    """All heads and temperatures.

    Args:
        image_dim: width of the image tower (768 for ViT-B).
        text_dim: width of the text tower (2560 for BioMedLM).
        cfg: head sizes.
        init_temperature: initial temperature of both logit scales (0.07).
    """

    def __init__(
        self, image_dim: int, text_dim: int, cfg: HeadsConfig, init_temperature: float = 0.07
    ) -> None:
        super().__init__()
        self.img_proj = nn.Linear(image_dim, cfg.embed_dim)
        self.txt_proj = nn.Linear(text_dim, cfg.embed_dim)
        self.img_local = TokenHead(image_dim, cfg.local_hidden, cfg.local_dim)
        self.txt_local = TokenHead(text_dim, cfg.local_hidden, cfg.local_dim)
        self.ii_head = ImageImageHead(image_dim, cfg.ii_dim)
        init = math.log(1.0 / init_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.local_logit_scale = nn.Parameter(torch.tensor(init))

    def local_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen before ``late_loss``: the two SLA heads and the local logit scale."""
        return [*self.img_local.parameters(), *self.txt_local.parameters(), self.local_logit_scale]

    def set_late_phase(self, late: bool) -> None:
        """Freeze (``late=False``) or unfreeze the local heads and local temperature."""
        for p in self.local_parameters():
            p.requires_grad_(late)
