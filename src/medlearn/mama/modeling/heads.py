"""Projection heads and learnable temperatures of MaMA.

* global projections: Linear(D_img -> E) and Linear(D_txt -> E);
* SLA heads, one for patches and one for sentences: per-token MLP d -> hidden (BatchNorm, ReLU)
  -> local_dim, BatchNorm without affine.  The reference writes them as ``Conv1d(kernel_size=1)``
  over the token axis, which is the same map as the ``Linear`` layers used here; we apply them to
  the valid (non-padding) tokens only so that padded sentence slots do not enter the BatchNorm
  statistics.  Patch BatchNorms take their statistics over all B x P patches; sentence
  BatchNorms over all sentences of the batch (``sentence_batchnorm: batch``, the default) or over
  each report's own sentences (``per_report``, the reference, which calls the head once per report);
* image-image (SimCLR) head: Linear(D -> D, no bias), BatchNorm, ReLU, Linear(D -> ii_dim, no
  bias), BatchNorm, applied to the anchors and to the extra images separately
  (``ii_batchnorm: per_view``, the reference) or to both views as one batch (``joint``);
* two learnable logit scales (global and local), both initialised to ln(1 / init_temperature).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medlearn.mama.config import HeadsConfig


def row_batch_norm(x: Tensor, mask: Tensor, bn: nn.BatchNorm1d, row_stats: bool | None = None) -> Tensor:
    """BatchNorm of ``bn`` with statistics over each row's valid tokens instead of the whole batch.

    Training (or no running statistics): row b is normalised with the mean and biased variance of
    its valid tokens, exactly as ``bn`` called on that row alone; a row with one valid token
    normalises to 0. The running statistics are updated once per row with >= 2 tokens, in row
    order, as successive calls of ``bn`` would. Evaluation: the running statistics. Computed in
    float32, returned in ``x``'s dtype.

    Args:
        x: (B, S, C) tokens.
        mask: (B, S) bool, True at valid tokens.
        bn: the BatchNorm1d(C) whose parameters, eps, momentum and buffers are used.
        row_stats: force each row's own statistics (True) or the running ones (False) whatever
            ``bn.training`` says; the running statistics are only updated in training mode.
    Returns:
        (B, S, C), zero at invalid tokens.
    """
    m = mask.unsqueeze(-1).float()
    xf = x.float()
    use_batch = (bn.training or not bn.track_running_stats) if row_stats is None else row_stats
    if use_batch:
        n = m.sum(dim=1)  # (B, 1)
        mean = (xf * m).sum(dim=1) / n.clamp_min(1)
        var = ((xf - mean[:, None]) ** 2 * m).sum(dim=1) / n.clamp_min(1)
        if bn.training and bn.track_running_stats:
            _update_running_stats(bn, mean.detach(), var.detach(), n.squeeze(1))
    else:
        mean, var = bn.running_mean[None].float(), bn.running_var[None].float()
    y = (xf - mean[:, None]) * torch.rsqrt(var[:, None] + bn.eps)
    if bn.affine:
        y = y * bn.weight.float() + bn.bias.float()
    return (y * m).to(x.dtype)


@torch.no_grad()
def _update_running_stats(bn: nn.BatchNorm1d, mean: Tensor, var: Tensor, n: Tensor) -> None:
    """Successive running-statistics updates of ``bn``, one per row with n >= 2 (unbiased variance).

    Closed form of k updates r <- (1 - m) r + m s_i: r_k = (1 - m)^k r_0 + sum_i m (1 - m)^(rows after i) s_i
    (cumulative average when ``bn.momentum`` is None). No host synchronisation.
    """
    keep = (n >= 2).float()  # (B,)
    k = keep.sum()
    unbiased = var * (n / (n - 1).clamp_min(1))[:, None]
    if bn.momentum is None:  # cumulative average over all calls so far
        t0 = bn.num_batches_tracked.float()
        w_old, w = t0 / (t0 + k).clamp_min(1), keep / (t0 + k).clamp_min(1)
    else:
        decay = 1.0 - float(bn.momentum)
        after = keep.flip(0).cumsum(0).flip(0) - keep  # kept rows after row i
        w_old, w = decay**k, keep * float(bn.momentum) * decay**after
    bn.running_mean.mul_(w_old).add_((w[:, None] * mean).sum(0).to(bn.running_mean.dtype))
    bn.running_var.mul_(w_old).add_((w[:, None] * unbiased).sum(0).to(bn.running_var.dtype))
    bn.num_batches_tracked.add_(k.long())


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

    def forward(
        self, tokens: Tensor, mask: Tensor | None = None, per_row: bool = False, row_stats: bool | None = None
    ) -> Tensor:
        """(B, L, d) tokens and optional (B, L) bool mask -> (B, L, out_dim), zero at masked slots.

        ``per_row``: BatchNorm statistics over each row's valid tokens (:func:`row_batch_norm`;
        ``row_stats`` forces them, or the running ones, in either mode), else over all valid tokens
        of the batch.
        """
        b, n, d = tokens.shape
        if per_row:
            lin1, bn1, act, lin2, bn2 = self.net
            valid = torch.ones(b, n, dtype=torch.bool, device=tokens.device) if mask is None else mask
            h = act(row_batch_norm(lin1(tokens), valid, bn1, row_stats))
            return row_batch_norm(lin2(h), valid, bn2, row_stats)
        if mask is None:
            return self.net(tokens.reshape(b * n, d)).reshape(b, n, self.out_dim)
        lin1, bn1, act, lin2, bn2 = self.net  # BatchNorm over the valid tokens, without boolean indexing
        flat = mask.reshape(1, b * n)
        h = act(row_batch_norm(lin1(tokens).reshape(1, b * n, -1), flat, bn1))
        return row_batch_norm(lin2(h), flat, bn2).reshape(b, n, self.out_dim)


class ImageImageHead(nn.Module):
    """SimCLR-style projection: Linear(D, D), BN, ReLU, Linear(D, out_dim), BN. (B, D) -> (B, out_dim).

    The Linear layers have no bias: the BatchNorm after each removes it anyway (reference).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, in_dim, bias=False),
            nn.BatchNorm1d(in_dim),
            nn.ReLU(inplace=True),
            nn.Linear(in_dim, out_dim, bias=False),
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
        self.ii_per_view = cfg.ii_batchnorm == "per_view"
        self.sentence_per_report = cfg.sentence_batchnorm == "per_report"
        init = math.log(1.0 / init_temperature)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.local_logit_scale = nn.Parameter(torch.tensor(init))

    def image_image(self, anchors: Tensor, extras: Tensor) -> tuple[Tensor, Tensor]:
        """(B, D) anchor and (B, D) extra-image features -> two (B, ii_dim) projections."""
        if self.ii_per_view:
            return self.ii_head(anchors), self.ii_head(extras)
        both = self.ii_head(torch.cat([anchors, extras]))
        return both[: anchors.shape[0]], both[anchors.shape[0] :]

    def sentence_local(self, sentences: Tensor, mask: Tensor, row_stats: bool | None = None) -> Tensor:
        """(B, S, D) sentence states and (B, S) mask -> (B, S, local_dim), zero at absent sentences.

        ``row_stats=True`` (with ``sentence_batchnorm: per_report``) normalises each report with its
        own sentences' statistics also in evaluation mode, as training does; ``None``: the module's mode.
        """
        return self.txt_local(sentences, mask, per_row=self.sentence_per_report, row_stats=row_stats)

    def local_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen before ``late_loss``: the two SLA heads and the local logit scale."""
        return [*self.img_local.parameters(), *self.txt_local.parameters(), self.local_logit_scale]

    def set_late_phase(self, late: bool) -> None:
        """Freeze (``late=False``) or unfreeze the local heads and local temperature."""
        for p in self.local_parameters():
            p.requires_grad_(late)
