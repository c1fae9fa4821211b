"""Two diagnostics of the local alignment that separate *whether* from *where*.

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

Both take the same prepared-table rows, images and boxes as
:func:`~medlearn.mama.eval.localisation.evaluate_pointing`.
"""

from __future__ import annotations

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
