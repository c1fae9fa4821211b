"""Segmentation and distillation losses (pure functions on logits).

``dice_ce`` equals MONAI's ``DiceCELoss(softmax=True, to_onehot_y=True)`` on hard labels (tested)
and also accepts soft targets, which the feature-mixing term of ITL needs.  Each loss is registered
by name in :data:`LOSSES`, so a strategy (or a config) names the loss it uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medlearn.engine.registry import Registry

LOSSES: Registry[Tensor] = Registry("ITL loss")


def one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) int64 -> (B, K, H, W) float."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


@LOSSES.register("dice_ce")
def dice_ce(logits: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """Soft Dice (per sample and class, all classes, averaged) + cross-entropy.

    Args:
        logits: (B, K, H, W).
        target: (B, H, W) int64 labels or (B, K, H, W) class probabilities.
        smooth: added to numerator and denominator of the Dice ratio (MONAI's 1e-5 default).
    Returns:
        scalar ``(1 - mean Dice) + mean CE``.
    """
    if target.dim() == logits.dim() - 1:
        target = one_hot(target, logits.shape[1])
    if target.shape != logits.shape:
        raise ValueError(f"dice_ce: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    prob = logits.softmax(1)
    dims = (2, 3)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    dice = 1.0 - (2 * inter + smooth) / (denom + smooth)
    ce = -(target * logits.log_softmax(1)).sum(1).mean()
    return dice.mean() + ce


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
