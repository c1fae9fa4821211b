"""Classification metrics for MaMA evaluation (BI-RADS, density, cancer), as pure functions.

Conventions: ``y`` is an (N,) integer array of true classes 0..K-1; ``probs`` is (N, K) class
probabilities (rows need not sum to one for AUC, which only ranks), or (N,) positive-class scores
for a binary task. scikit-learn computes balanced accuracy, the confusion matrix, ROC curves and
binary AUC; what it lacks (specificity at a sensitivity, probabilistic F1, per-breast aggregation,
bootstrap intervals) is written here and documented.

Multi-class AUC is the macro mean of one-vs-rest AUCs over the classes that occur in ``y`` with
at least one negative (a class absent from a test set has no defined AUC; scikit-learn would
raise). When every class occurs this equals ``roc_auc_score(..., multi_class="ovr",
average="macro")``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score, roc_curve

log = logging.getLogger(__name__)

SENS_INTERPOLATIONS = ("step", "linear")


def _as_arrays(y: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).reshape(-1)
    p = np.asarray(probs, dtype=float)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} score rows")
    return y, p


def positive_scores(probs: np.ndarray) -> np.ndarray:
    """(N,) positive-class score from (N,) scores or (N, 2) probabilities."""
    p = np.asarray(probs, dtype=float)
    if p.ndim == 2:
        if p.shape[1] != 2:
            raise ValueError(f"binary scores need (N,) or (N, 2), got {p.shape}")
        return p[:, 1]
    return p


def balanced_accuracy(y: Any, pred: Any) -> float:
    """Mean per-class recall over the classes present in ``y`` (scikit-learn)."""
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected here
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(np.asarray(y).astype(int), np.asarray(pred).astype(int)))


def confusion(y: Any, pred: Any, num_classes: int) -> np.ndarray:
    """(K, K) counts; row = true class, column = predicted class (scikit-learn)."""
    return confusion_matrix(
        np.asarray(y).astype(int), np.asarray(pred).astype(int), labels=list(range(num_classes))
    )


def per_class_accuracy(y: Any, pred: Any, num_classes: int) -> list[float]:
    """Recall of each class (NaN for a class absent from ``y``)."""
    cm = confusion(y, pred, num_classes)
    rows = cm.sum(axis=1)
    return [float(cm[k, k] / rows[k]) if rows[k] else math.nan for k in range(num_classes)]


def auc(y: Any, probs: Any) -> float:
    """Binary ROC AUC, or the one-vs-rest macro AUC for (N, K>2) probabilities.

    Args:
        y: (N,) true classes.
        probs: (N,) positive scores or (N, 2) for binary; (N, K) for K classes.
    Returns:
        AUC in [0, 1], NaN when undefined (one class only in ``y``).
    """
    y, p = _as_arrays(y, probs)
    if p.ndim == 1 or p.shape[1] == 2:
        s = positive_scores(p)
        if len(np.unique(y)) < 2:
            return math.nan
        return float(roc_auc_score(y, s))
    aucs = []
    for k in range(p.shape[1]):
        pos = y == k
        if pos.any() and (~pos).any():
            aucs.append(roc_auc_score(pos.astype(int), p[:, k]))
    return float(np.mean(aucs)) if aucs else math.nan


def sensitivity_specificity(y: Any, scores: Any, threshold: float = 0.5) -> tuple[float, float]:
    """(sensitivity, specificity) of the rule ``score >= threshold`` for binary labels 0/1."""
    y, s = _as_arrays(y, positive_scores(scores))
    pred = s >= threshold
    pos, neg = y == 1, y == 0
    sens = float(pred[pos].mean()) if pos.any() else math.nan
    spec = float((~pred[neg]).mean()) if neg.any() else math.nan
    return sens, spec


def specificity_at_sensitivity(
    y: Any, scores: Any, target: float = 0.8, interpolation: str = "step"
) -> float:
    """Specificity of the ROC operating point at sensitivity ``target``.

    ``interpolation="step"`` (default): the best specificity among the thresholds whose
    sensitivity is at least ``target`` (an operating point that really exists).
    ``"linear"``: read the ROC polyline at sensitivity ``target``, i.e. interpolate linearly on the
    segment that crosses it. Without tied scores the curve only has vertical and horizontal
    segments and both readings agree; tied scores give diagonal segments, where ``linear`` lies
    between achievable points.
    """
    if interpolation not in SENS_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {SENS_INTERPOLATIONS}, got {interpolation!r}")
    y, s = _as_arrays(y, positive_scores(scores))
    if len(np.unique(y)) < 2:
        return math.nan
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    spec = 1.0 - fpr
    ok = tpr >= target - 1e-12
    if interpolation == "step":
        return float(spec[ok].max())
    i = int(np.argmax(ok))  # first vertex at or above the target (tpr is non-decreasing)
    if i == 0 or abs(tpr[i] - target) <= 1e-12:
        return float(spec[i])
    frac = (target - tpr[i - 1]) / (tpr[i] - tpr[i - 1])
    return float(spec[i - 1] + frac * (spec[i] - spec[i - 1]))


def probabilistic_f1(y: Any, scores: Any) -> float:
    """Probabilistic F1 of the RSNA screening-mammography challenge.

    Predicted probabilities are soft counts: soft TP = sum of scores of positives, soft FP = sum
    of scores of negatives; precision = TP / (TP + FP), recall = TP / #positives; pF1 is their
    harmonic mean (0 when both are 0). Scores are clipped to [0, 1].
    """
    y, s = _as_arrays(y, positive_scores(scores))
    s = np.clip(s, 0.0, 1.0)
    n_pos = float((y == 1).sum())
    tp = float(s[y == 1].sum())
    fp = float(s[y == 0].sum())
    if n_pos == 0 or tp + fp == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / n_pos
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: Any,
    scores: Any,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric(y, scores)``.

    Resamples the N rows with replacement ``n_boot`` times (numpy generator seeded by ``seed``);
    resamples where the metric is undefined (NaN, e.g. one class only) are dropped.
    Returns (low, high); (NaN, NaN) when no resample is defined.
    """
    y = np.asarray(y)
    scores = np.asarray(scores)
    rng = np.random.default_rng(seed)
    n = len(y)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        v = metric(y[idx], scores[idx])
        if v == v:
            vals.append(v)
    if not vals:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    lo, hi = np.percentile(vals, [100 * a, 100 * (1 - a)])
    return float(lo), float(hi)


def aggregate_by_breast(
    frame: pd.DataFrame,
    score_cols: Sequence[str],
    label_col: str = "label",
    keys: Sequence[str] = ("patient_id", "laterality"),
    how: str = "max",
) -> pd.DataFrame:
    """One row per breast: scores reduced over the breast's views (``max`` or ``mean``).

    The breast's label is the max over its views (a breast with one cancer view is positive).
    With ``max``: for two columns (negative, positive) the positive score is the max over views and
    the negative one its complement; more columns are each maxed, then renormalised to sum to one.
    """
    if how not in ("max", "mean"):
        raise ValueError(f"how must be 'max' or 'mean', got {how!r}")
    missing = [c for c in [*keys, *score_cols, label_col] if c not in frame.columns]
    if missing:
        raise ValueError(f"aggregate_by_breast: missing column(s) {missing}")
    g = frame.groupby(list(keys), sort=True)
    cols = list(score_cols)
    out = getattr(g[cols], how)()
    if how == "max" and len(cols) == 2:  # binary: the breast's positive score is its max view
        out[cols[0]] = 1.0 - out[cols[1]]
    elif how == "max" and len(cols) > 2:
        out[cols] = out[cols].div(out[cols].sum(axis=1), axis=0)
    out[label_col] = g[label_col].max()
    out["n_views"] = g.size()
    return out.reset_index()


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def classification_report(
    y: Any,
    probs: Any,
    num_classes: int,
    binary_extras: bool = False,
    n_boot: int = 0,
    seed: int = 0,
    sens_target: float = 0.8,
) -> dict[str, Any]:
    """Every metric of the task in one JSON-able dict.

    Args:
        y: (N,) true classes.
        probs: (N, K) class probabilities (argmax = prediction).
        num_classes: K.
        binary_extras: add sensitivity, specificity (threshold 0.5 on class 1), specificity at
            ``sens_target`` sensitivity and probabilistic F1 (cancer).
        n_boot: bootstrap resamples for 95% CIs of balanced accuracy and AUC (0 = none).
    """
    y, p = _as_arrays(y, probs)
    if p.ndim != 2 or p.shape[1] != num_classes:
        raise ValueError(f"probs must be (N, {num_classes}), got {p.shape}")
    pred = p.argmax(axis=1)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "balanced_accuracy": balanced_accuracy(y, pred) if len(y) else math.nan,
        "auc": auc(y, p),
        "accuracy": float((pred == y).mean()) if len(y) else math.nan,
        "per_class_accuracy": per_class_accuracy(y, pred, num_classes),
        "confusion_matrix": confusion(y, pred, num_classes).tolist(),
        "class_counts": np.bincount(y, minlength=num_classes).tolist(),
    }
    if binary_extras:
        s = p[:, 1]
        sens, spec = sensitivity_specificity(y, s)
        out.update(
            sensitivity=sens,
            specificity=spec,
            **{
                f"specificity_at_{int(round(100 * sens_target))}_sensitivity": specificity_at_sensitivity(
                    y, s, sens_target
                )
            },
            pf1=probabilistic_f1(y, s),
        )
    if n_boot > 0 and len(y):
        out["balanced_accuracy_ci95"] = bootstrap_ci(
            lambda a, b: balanced_accuracy(a, b.argmax(axis=1)), y, p, n_boot, seed
        )
        out["auc_ci95"] = bootstrap_ci(auc, y, p, n_boot, seed)
    return {
        k: ([_clean(x) for x in v] if isinstance(v, (list, tuple)) and k != "confusion_matrix" else _clean(v))
        for k, v in out.items()
    }
