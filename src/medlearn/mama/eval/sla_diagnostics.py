"""Diagnostics of the local alignment that separate *whether* from *where*, and the map from the features.

The pointing game asks where the finding sentence's heatmap peaks. Two questions come before it:

* :func:`finding_detection_auc`: does the finding sentence's SLA score (its best patch
  similarity, the quantity SLA's text-to-image term trains) rank the image it describes above
  images without findings?  ROC AUC per image with ROIs against every image without ROIs; 0.5 =
  the sentence knows nothing of the finding.
  Both the finding and the rest of the report (density, view: the sentence state of a contextual
  text tower carries them) can produce that ranking.
* :func:`finding_removal`: the finding's own effect.  Each finding is removed (its box filled with
  the median of a 3-pixel ring around it): does the finding sentence's best-patch score drop, and
  does the change of the patch features stay at the finding's grid cells?  The share of the
  change outside those cells is 0 for perfectly local features and about (1 - cells covered / all
  cells) when the finding's information is spread over the whole image.

* :func:`patch_probe_pointing`: is the finding's place in the patch features at all?  A linear
  probe trained on the training split's ROI cells plays the pointing game; high values with a
  poor SLA map say the features see the finding and the sentence direction misses it.

All take the same prepared-table rows, images and boxes as
:func:`~medlearn.mama.eval.localisation.evaluate_pointing`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from medlearn.mama.eval.localisation import (
    Box,
    chosen_sentence_features,
    eval_rows,
    eval_transforms,
    has_roi,
    hit_cells,
    load_eval_input,
    pick_sentence,
    split_sentences,
)


def rank_auc(positive: float, negatives: np.ndarray) -> float:
    """ROC AUC of one positive score against negative scores (ties count one half)."""
    negatives = np.asarray(negatives, float)
    return float(np.mean(positive > negatives) + 0.5 * np.mean(positive == negatives))


@torch.no_grad()
def finding_detection_auc(
    encoder: Any,
    table: Any,
    image_root: str | Path,
    image_size: int,
    builder: Any,
    max_images: int = 200,
    max_negatives: int = 400,
    batch_size: int = 8,
    recrop: bool = False,
    match: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Per image with ROIs: AUC of its finding sentence's best-patch score on its own image against
    the same sentence on the images without ROIs.

    ``encoder``: ``patch_features(images)`` -> (B, P, E) and ``local_features`` (see
    :func:`~medlearn.mama.eval.localisation.chosen_sentence_features`). The sentence is the one the
    pointing game uses (:func:`~medlearn.mama.eval.localisation.pick_sentence`). ``match``: table
    columns (e.g. ``("density",)``) whose values a negative must share with the image, so that
    only the finding separates them; an image without such negatives is skipped.

    Returns:
        ``finding_detection_auc`` (mean over images), ``aucs`` (per image), ``n``, ``n_negatives``.
    """
    missing = [c for c in match if c not in table.columns]
    if missing:
        raise ValueError(f"finding_detection_auc: match columns {missing} are not in the table")
    rows, tfs = eval_rows(table, recrop), eval_transforms(image_size)
    pos = [rc for rc in rows if has_roi(rc[0])][:max_images]
    neg = [rc for rc in rows if not has_roi(rc[0])][:max_negatives]
    if not pos or not neg:
        return {"finding_detection_auc": float("nan"), "aucs": [], "n": len(pos), "n_negatives": len(neg)}
    neg_patches = []
    for start in range(0, len(neg), batch_size):
        imgs = [
            load_eval_input(r, c, image_root, tfs[c], image_size)[0]
            for r, c in neg[start : start + batch_size]
        ]
        neg_patches.append(encoder.patch_features(torch.stack(imgs)).float().cpu())
    negatives = torch.cat(neg_patches)  # (Nn, P, E)
    aucs = []
    for start in range(0, len(pos), batch_size):
        chunk = pos[start : start + batch_size]
        imgs = torch.stack([load_eval_input(r, c, image_root, tfs[c], image_size)[0] for r, c in chunk])
        reports = [builder.build(r) for r, _ in chunk]
        idx = [pick_sentence(split_sentences(rep)) for rep in reports]
        patches, sents = chosen_sentence_features(encoder, imgs, reports, idx)
        patches, sents = patches.float().cpu(), sents.float().cpu()
        own = torch.einsum("bpe,be->bp", patches, sents).max(dim=1).values  # (b,)
        other = torch.einsum("npe,be->bnp", negatives, sents).max(dim=2).values  # (b, Nn)
        for (row, _), o, n in zip(chunk, own, other):
            keep = [all(str(nr.get(c)) == str(row.get(c)) for c in match) for nr, _ in neg]
            if any(keep):
                aucs.append(rank_auc(float(o), n.numpy()[np.array(keep)]))
    return {
        "finding_detection_auc": float(np.mean(aucs)) if aucs else float("nan"),
        "aucs": aucs,
        "n": len(aucs),
        "n_negatives": len(neg),
    }


def remove_findings(image: Tensor, boxes: list[Box], ring: int = 3) -> Tensor:
    """(C, H, W) image with each box (grown by 1 px) filled with the median of a ``ring``-px band around it."""
    out = image.clone()
    h, w = image.shape[-2:]
    for y0, x0, y1, x1 in boxes:
        y0, x0 = max(int(np.floor(y0)) - 1, 0), max(int(np.floor(x0)) - 1, 0)
        y1, x1 = min(int(np.ceil(y1)) + 1, h), min(int(np.ceil(x1)) + 1, w)
        band = torch.cat([
            image[:, max(y0 - ring, 0) : y0, x0:x1].flatten(), image[:, y1 : y1 + ring, x0:x1].flatten(),
            image[:, y0:y1, max(x0 - ring, 0) : x0].flatten(), image[:, y0:y1, x1 : x1 + ring].flatten(),
        ])  # fmt: skip
        out[:, y0:y1, x0:x1] = band.median() if band.numel() else image.median()
    return out


@torch.no_grad()
def finding_removal(
    encoder: Any,
    table: Any,
    image_root: str | Path,
    image_size: int,
    builder: Any,
    max_images: int = 200,
    recrop: bool = False,
) -> dict[str, Any]:
    """What removing each finding does to the SLA features of its image (the finding's own effect).

    Per image with ROIs: the drop of its finding sentence's best-patch score (with - without the
    finding), and how the change of the patch features splits between the finding's grid cells
    and the rest.

    Returns:
        ``drop_positive`` (share of images whose score drops: 0.5 = the sentence does not respond
        to the finding), ``score_drop`` (median drop), ``share_outside`` (median share of the
        patch-feature change outside the finding's cells), ``share_outside_if_spread`` (median
        share of cells outside: an evenly spread change), ``ratio`` (median of mean change at the
        finding's cells / mean change elsewhere), per-image lists, ``n``.
    """
    rows, tfs = eval_rows(table, recrop), eval_transforms(image_size)
    drops, shares, spread, ratios = [], [], [], []
    for r, c in [rc for rc in rows if has_roi(rc[0])][:max_images]:
        img, boxes = load_eval_input(r, c, image_root, tfs[c], image_size)
        report = builder.build(r)
        patches, sent = chosen_sentence_features(
            encoder, img[None], [report], [pick_sentence(split_sentences(report))]
        )
        removed = encoder.patch_features(remove_findings(img, boxes)[None])
        with_f, without = patches[0].float().cpu(), removed[0].float().cpu()
        s = sent[0].float().cpu()
        drops.append(float((with_f @ s).max() - (without @ s).max()))
        change = (with_f - without).norm(dim=-1).numpy()  # (P,)
        g = int(round(change.size**0.5))
        inside = hit_cells(boxes, (g, g), (image_size, image_size)).reshape(-1)
        if inside.all() or not inside.any():
            continue
        shares.append(float(change[~inside].sum() / max(change.sum(), 1e-12)))
        spread.append(float((~inside).mean()))
        ratios.append(float(change[inside].mean() / max(change[~inside].mean(), 1e-12)))
    med = lambda v: float(np.median(v)) if v else float("nan")  # noqa: E731
    return {"drop_positive": float(np.mean(np.array(drops) > 0)) if drops else float("nan"),
            "score_drop": med(drops), "share_outside": med(shares), "share_outside_if_spread": med(spread),
            "ratio": med(ratios), "drops": drops, "shares": shares, "n": len(drops)}  # fmt: skip


def pixel_patches(images: Tensor, grid: int) -> Tensor:
    """(B, C, S, S) images -> (B, grid * grid, (S / grid)^2) raw pixels of channel 0 per grid cell, row-major."""
    b, _, s, _ = images.shape
    p = s // grid
    cells = images[:, 0, : grid * p, : grid * p].reshape(b, grid, p, grid, p)
    return cells.permute(0, 1, 3, 2, 4).reshape(b, grid * grid, p * p)


def _probe_inputs(
    features: Mapping[str, Any], rows: list, image_root: str | Path, image_size: int, batch_size: int
) -> tuple[dict[str, np.ndarray], list[list[Box]]]:
    """{name: (N, P, D) features} of ``rows`` ((row, crop) pairs), each image loaded once, and their
    ROI boxes in input pixels."""
    tfs = eval_transforms(image_size)
    feats: dict[str, list[np.ndarray]] = {name: [] for name in features}
    boxes: list[list[Box]] = []
    for start in range(0, len(rows), batch_size):
        loaded = [
            load_eval_input(r, c, image_root, tfs[c], image_size) for r, c in rows[start : start + batch_size]
        ]
        images = torch.stack([img for img, _ in loaded])
        for name, fn in features.items():
            feats[name].append(fn(images).float().cpu().numpy())
        boxes += [b for _, b in loaded]
    return {name: np.concatenate(v) for name, v in feats.items()}, boxes


def _probe_play(
    x_train: np.ndarray, train_boxes: list, x_test: np.ndarray, test_boxes: list, image_size: int, c: float
) -> dict[str, Any]:
    """Fit the patch probe on (N, P, D) training features and play the pointing game on the test ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medlearn.mama.eval.localisation import pointing_hit

    n, p, d = x_train.shape
    g = int(round(p**0.5))
    if g * g != p:
        raise ValueError(f"patch_probe_pointing: {p} patches do not form a square grid")
    hw = (image_size, image_size)
    y_train = np.stack(
        [hit_cells(b, (g, g), hw).reshape(-1) if b else np.zeros(p, bool) for b in train_boxes]
    )
    if not y_train.any() or not len(x_test):
        return {"probe_pointing_game": float("nan"), "hits": [], "patch_auc": float("nan"), "n": 0,
                "n_train_images": n, "n_train_positive_patches": int(y_train.sum())}  # fmt: skip
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000))
    probe.fit(x_train.reshape(n * p, d), y_train.reshape(-1))
    scores = probe.decision_function(x_test.reshape(-1, d)).reshape(len(x_test), g, g)
    keep = [i for i, b in enumerate(test_boxes) if b]
    hits = [bool(pointing_hit(scores[i], test_boxes[i], hw)) for i in keep]
    y_test = np.stack([hit_cells(test_boxes[i], (g, g), hw) for i in keep])
    return {
        "probe_pointing_game": float(np.mean(hits)) if hits else float("nan"),
        "hits": hits,
        "patch_auc": float(roc_auc_score(y_test.reshape(-1), scores[keep].reshape(-1))),
        "n": len(hits),
        "n_train_images": n,
        "n_train_positive_patches": int(y_train.sum()),
    }


@torch.no_grad()
def patch_probe_pointing(
    features: Any,
    train_table: Any,
    test_table: Any,
    image_root: str | Path,
    image_size: int,
    max_train: int = 600,
    max_test: int = 200,
    batch_size: int = 16,
    recrop: bool = False,
    c: float = 1.0,
) -> dict[str, Any]:
    """The pointing game a *linear read-out* of the patch features plays: is the finding's place in them?

    A logistic regression (scikit-learn, standardised inputs, balanced classes, inverse
    regularisation ``c``) learns from the training split's patches whether a patch is a
    pointing-game hit cell of its image (every patch of an image without ROIs is a negative).
    On the test images with ROIs its score map is played like an SLA heatmap. High values say the
    features carry where the finding is, so an SLA map that misses it has learnt the wrong thing;
    values near the location prior say the features do not carry it.

    Args:
        features: callable (B, 3, S, S) images -> (B, P, D) patch features, P a square grid
            (e.g. the image tower's patch tokens, or :func:`pixel_patches`); or a mapping of names
            to such callables, which reads every image once for all of them.
        train_table, test_table: prepared-table rows (as :func:`~medlearn.mama.eval.localisation.evaluate_pointing`).
    Returns:
        ``probe_pointing_game``, ``hits`` (per test image with ROIs), ``patch_auc`` (ROC AUC of
        the probe over the test patches), ``n_train_images``, ``n_train_positive_patches``, ``n``;
        for a mapping, {name: that dict}.
    """
    single = callable(features)
    named = {"": features} if single else dict(features)
    train = eval_rows(train_table, recrop)[:max_train]
    test = [rc for rc in eval_rows(test_table, recrop) if has_roi(rc[0])][:max_test]
    x_train, train_boxes = _probe_inputs(named, train, image_root, image_size, batch_size)
    if test:
        x_test, test_boxes = _probe_inputs(named, test, image_root, image_size, batch_size)
    else:
        x_test, test_boxes = {name: np.zeros((0,)) for name in named}, []
    out = {
        name: _probe_play(x_train[name], train_boxes, x_test[name], test_boxes, image_size, c) for name in named
    }
    return out[""] if single else out
