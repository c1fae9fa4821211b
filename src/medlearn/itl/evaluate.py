"""Slice-wise inference of whole volumes, per-case metrics per site, and nnU-Net-like summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlearn.itl.data import PreparedCase, slice_stack
from medlearn.itl.metrics import case_metrics, largest_component


@torch.no_grad()
def predict_probabilities(
    model: nn.Module, image: np.ndarray, context: int, device: torch.device, batch: int = 16
) -> np.ndarray:
    """Foreground probability (Z, S, S) of a preprocessed (Z, S, S) volume, slice by slice (eval mode)."""
    was = model.training
    model.eval()
    out = []
    for s in range(0, image.shape[0], batch):
        x = np.stack([slice_stack(image, z, context) for z in range(s, min(s + batch, image.shape[0]))])
        logits = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
        out.append(logits.softmax(1)[:, 1].float().cpu().numpy())
    model.train(was)
    return np.concatenate(out)


def segment(prob: np.ndarray, largest_cc: bool) -> np.ndarray:
    """Binary mask from probabilities (> 0.5), optionally only its largest 3D component."""
    mask = (prob > 0.5).astype(np.uint8)
    return largest_component(mask) if largest_cc else mask


def evaluate_cases(
    model: nn.Module,
    cases: list[PreparedCase],
    context: int,
    device: torch.device,
    largest_cc: bool = True,
    surfaces: bool = False,
    batch: int = 16,
) -> dict[str, dict[str, float]]:
    """``{case: {"dice", ["hd95", "asd", "empty"]}}`` on the preprocessed grid (spacing of that grid, in mm).

    Arrays are (Z, S, S); the spacing passed to the surface metrics is reordered to match.
    ``empty`` is 1.0 when the prediction has no foreground voxel (its HD95/ASD are NaN: no surface).
    """
    out = {}
    for c in cases:
        pred = segment(predict_probabilities(model, c.image, context, device, batch), largest_cc)
        sp = (c.spacing[2], c.spacing[0], c.spacing[1])
        m = case_metrics(pred, c.mask, sp, surfaces)
        if surfaces:
            m["empty"] = float(not pred.any())
        out[f"{c.site}/{c.case}"] = m
    return out


def surface_summary(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean Dice, HD95 and ASD of a site with the count of empty predictions, never silently dropped.

    Returns:
        ``{"dice", "hd95", "asd", "n_empty", "n_cases"}``: Dice over all cases (an empty
        prediction scores 0); HD95/ASD over the cases where both masks have a surface (NaN when
        none has); ``n_empty`` cases with an empty prediction, which have no surface distance.
    """
    return {
        "dice": mean_metric(per_case, "dice"),
        "hd95": mean_metric(per_case, "hd95"),
        "asd": mean_metric(per_case, "asd"),
        "n_empty": int(sum(m.get("empty", 0.0) for m in per_case.values())),
        "n_cases": len(per_case),
    }


def mean_metric(per_case: dict[str, dict[str, float]], key: str) -> float:
    """Mean of ``key`` over cases, ignoring NaN (NaN if none is finite)."""
    vals = [v[key] for v in per_case.values() if key in v and not math.isnan(v[key])]
    return float(np.mean(vals)) if vals else math.nan


def json_safe(obj):
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_summary(
    path: Path, per_site: dict[str, dict[str, dict[str, float]]], extra: dict | None = None
) -> Path:
    """nnU-Net-like ``summary.json``: ``foreground_mean`` first, then ``mean`` per site and ``metric_per_case``.

    NaN (e.g. HD95 of an empty prediction) is written as ``null``.
    """
    keys = sorted({k for cases in per_site.values() for m in cases.values() for k in m})
    all_cases = {c: m for cases in per_site.values() for c, m in cases.items()}
    summary = {
        "foreground_mean": {k: mean_metric(all_cases, k) for k in keys},
        "mean": {s: {k: mean_metric(cases, k) for k in keys} for s, cases in per_site.items()},
        "metric_per_case": [{"case": c, **m} for c, m in all_cases.items()],
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(summary), indent=2))
    return path
