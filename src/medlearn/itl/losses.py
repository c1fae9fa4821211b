"""Segmentation and distillation losses (pure functions on logits).

``dice_ce`` is MONAI's ``DiceCELoss`` (softmax, per-sample and per-class Dice); the distillation
and EWC terms have no MONAI counterpart and are written here.  Each loss is registered by name in
:data:`LOSSES`, so a strategy (or a config) names the loss it uses.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor, nn

from medlearn.engine.registry import Registry

LOSSES: Registry[Tensor] = Registry("ITL loss")


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) int64 -> (B, K, H, W) float (a comparison: no host sync, unlike ``F.one_hot``'s range check)."""
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    return (labels[:, None] == classes).float()


@lru_cache(maxsize=8)
def _monai_dice_ce(smooth: float, labels: bool) -> nn.Module:
    from monai.losses import DiceCELoss  # imported on first use: importing MONAI takes seconds

    # its DiceLoss keeps soft_label=False: the classic ratio 2*sum(p*t) / (sum(p) + sum(t)), also for
    # probability targets
    return DiceCELoss(to_onehot_y=labels, softmax=True, smooth_nr=smooth, smooth_dr=smooth)


@LOSSES.register("dice_ce")
def dice_ce(logits: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """Soft Dice (per sample and class, background included, averaged) + cross-entropy.

    MONAI's ``DiceCELoss(softmax=True, smooth_nr=smooth_dr=smooth)``: with D_bk = (2 sum p*t +
    smooth) / (sum p + sum t + smooth) over the pixels of sample b and class k, the loss is
    ``mean_bk (1 - D_bk) + mean over pixels of -sum_k t_k log softmax(logits)_k``.  Probability
    targets (ITL's feature mixing) go through the same formula (MONAI's ``DiceLoss`` default
    ``soft_label=False``) and a probability-target cross-entropy.

    Args:
        logits: (B, K, H, W), K >= 2; no activation applied beforehand.
        target: (B, H, W) int64 labels or (B, K, H, W) class probabilities.
        smooth: added to numerator and denominator of the Dice ratio (MONAI's 1e-5 default).
    Returns:
        scalar loss.
    Raises:
        ValueError: if the shapes do not match or K < 2 (MONAI would switch to a sigmoid loss).
    """
    labels = target.dim() == logits.dim() - 1
    want = (logits.shape[0], *logits.shape[2:]) if labels else tuple(logits.shape)
    if tuple(target.shape) != want:
        raise ValueError(f"dice_ce: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    if logits.shape[1] < 2:
        raise ValueError(
            f"dice_ce: needs at least 2 classes (background + foreground), got {logits.shape[1]}"
        )
    return _monai_dice_ce(float(smooth), labels)(logits, target[:, None] if labels else target)


@LOSSES.register("kl_distill")
def kl_distill(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` summed over classes, averaged over pixels.

    Args:
        student, teacher: (B, K, H, W) logits; the teacher is *not* detached here.
    Returns:
        scalar (0 for an empty batch).
    """
    if student.shape[0] == 0:
        return student.sum() * 0.0
    t = temperature
    log_p_s = (student / t).log_softmax(1)
    log_p_t = (teacher / t).log_softmax(1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    return kl.mean() * t * t


@LOSSES.register("ewc_penalty")
def ewc_penalty(params: dict[str, Tensor], anchors: dict[str, Tensor], fisher: dict[str, Tensor]) -> Tensor:
    """``sum_i F_i (theta_i - theta*_i)^2`` over the named parameters present in ``fisher``."""
    total = None
    for name, f in fisher.items():
        term = (f * (params[name] - anchors[name]) ** 2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total
