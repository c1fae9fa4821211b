"""Segmentation metrics per case and continual-learning metrics of the accuracy matrix R.

Per case (3D, binary): Dice (MONAI's ``compute_dice``), HD95 and average symmetric surface
distance (ASD) in millimetres from MONAI's surface-distance metrics with the voxel spacing.  (A widely copied prostate evaluation
script reports the average surface distance under the name "Hausdorff"; here HD95 is the 95th
percentile Hausdorff distance and ASD is the average surface distance.)

Continual metrics on R (T, T): ``R[i, j]`` = mean Dice on site j after phase i.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 3D connected component (26-connectivity) of a binary mask."""
    lab, n = ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))
    if n <= 1:
        return (mask > 0).astype(np.uint8)
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    return (lab == (1 + int(np.argmax(sizes)))).astype(np.uint8)


def dice_score(pred: np.ndarray, gt: np.ndarray) -> float:
    """Binary Dice ``2|P&G| / (|P| + |G|)`` of the non-zero voxels; 1.0 when both are empty.

    ``monai.metrics.compute_dice`` on the foreground channel with ``ignore_empty=False`` (an empty
    ground truth scores 1.0 for an empty prediction and 0.0 otherwise), in float64.

    Args:
        pred, gt: masks of the same shape, e.g. (X, Y, Z).
    """
    from monai.metrics import compute_dice

    if pred.shape != gt.shape:
        raise ValueError(f"dice_score: prediction {pred.shape} and ground truth {gt.shape} differ")
    yp, yt = _onehot(pred, torch.float64), _onehot(gt, torch.float64)
    return float(compute_dice(yp, yt, include_background=False, ignore_empty=False).reshape(-1)[0])


def _onehot(mask: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(X, Y, Z) mask -> (1, 2, X, Y, Z) background / foreground one-hot."""
    m = torch.from_numpy(mask > 0).to(dtype)
    return torch.stack([1 - m, m])[None]


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """(HD95, ASD) in mm between binary masks of shape (X, Y, Z) with voxel ``spacing``.

    Uses ``monai.metrics.compute_hausdorff_distance`` (percentile 95, symmetric) and
    ``compute_average_surface_distance`` (symmetric).  Returns (nan, nan) when either mask is empty.
    """
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    if not (pred > 0).any() or not (gt > 0).any():
        return math.nan, math.nan
    yp, yt = _onehot(pred), _onehot(gt)
    sp = [float(s) for s in spacing]
    hd = compute_hausdorff_distance(yp, yt, include_background=False, percentile=95, spacing=sp)
    asd = compute_average_surface_distance(yp, yt, include_background=False, symmetric=True, spacing=sp)
    return float(hd.reshape(-1)[0]), float(asd.reshape(-1)[0])


def case_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], surfaces: bool = True
) -> dict[str, float]:
    """``{"dice", "hd95", "asd"}`` of one case (surface metrics only when ``surfaces``)."""
    out = {"dice": dice_score(pred, gt)}
    if surfaces:
        out["hd95"], out["asd"] = surface_distances(pred, gt, spacing)
    return out


# ---------------------------------------------------------------------------------------------- continual metrics
def _check_square(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"R must be a square (T, T) matrix, got shape {r.shape}")
    if np.isnan(np.tril(r)).any():
        raise ValueError("R has NaN on or below the diagonal")
    return r


def average_accuracy(r: np.ndarray) -> float:
    """ACC = mean_j R[T-1, j].

    Args:
        r: (T, T); r[i, j] = score on site j after phase i.
    """
    r = _check_square(r)
    return float(r[-1].mean())


def backward_transfer(r: np.ndarray) -> float:
    """BWT = mean_{j<T-1} (R[T-1, j] - R[j, j]); negative = forgetting; 0.0 when T == 1.

    Args:
        r: (T, T).
    """
    r = _check_square(r)
    t = r.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([r[-1, j] - r[j, j] for j in range(t - 1)]))


def forgetting(r: np.ndarray) -> float:
    """Mean over j < T-1 of ``max_{l in [j, T-2]} R[l, j] - R[T-1, j]``; 0.0 when T == 1.

    Args:
        r: (T, T).
    """
    r = _check_square(r)
    t = r.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([r[j : t - 1, j].max() - r[-1, j] for j in range(t - 1)]))


def forward_transfer(r: np.ndarray, baseline: np.ndarray) -> float:
    """FWT = mean_{j>=1} (R[j-1, j] - b_j), b = scores of the randomly initialised model.

    Args:
        r: (T, T), with the first super-diagonal filled (sites evaluated before they are trained).
        baseline: (T,).
    Raises:
        ValueError: shape mismatch or NaN on the super-diagonal.
    """
    r = _check_square(r)
    b = np.asarray(baseline, dtype=np.float64)
    t = r.shape[0]
    if b.shape != (t,):
        raise ValueError(f"baseline must have shape ({t},), got {b.shape}")
    if t < 2:
        return 0.0
    vals = [r[j - 1, j] - b[j] for j in range(1, t)]
    if np.isnan(vals).any():
        raise ValueError("R needs the super-diagonal R[j-1, j] for forward transfer")
    return float(np.mean(vals))


def continual_summary(r: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """``{"ACC", "BWT", "forgetting", "FWT"}`` of R."""
    return {
        "ACC": average_accuracy(r),
        "BWT": backward_transfer(r),
        "forgetting": forgetting(r),
        "FWT": forward_transfer(r, baseline),
    }
