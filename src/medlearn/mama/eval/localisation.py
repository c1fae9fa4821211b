"""Localisation from symmetric local alignment (beyond the reference): sentence heatmaps and the pointing game.

For one report sentence, the SLA similarity of every image patch to that sentence (cosine of the
normalised local features, (P,) values on the ViT's patch grid) is a heatmap over the image. The
pointing game asks whether the hottest patch falls on a finding: a hit when the hottest patch's
cell overlaps one of the image's ROI boxes (``mode="overlap"``, default; robust to findings smaller
than a patch) or when the cell's centre lies inside a box (``mode="center"``, stricter).

ROI boxes (EMBED ``ROI_coords``: [ymin, xmin, ymax, xmax] in DICOM pixels) are mapped to model-input
pixels through the same geometry as the images: the prepare crop and scale (table columns
``crop_y0, crop_x0, scale``), the evaluation transform's Otsu crop of the cached image, and the
final resize to S x S.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # (y0, x0, y1, x1), end-exclusive, pixels
SENTENCE_PREFERENCE = ("There is", "There are", "Findings")


def split_sentences(report: str) -> list[str]:
    """The report's sentences in the text tower's order (split at every "." and ";", empty pieces dropped)."""
    return [s.strip() for s in re.split(r"[.;]", report) if s.strip()]


def pick_sentence(sentences: Sequence[str], prefer: Sequence[str] = SENTENCE_PREFERENCE) -> int:
    """Index of the first sentence starting with the first matching prefix of ``prefer`` (else the last one)."""
    for pre in prefer:
        for i, s in enumerate(sentences):
            if s.startswith(pre):
                return i
    return len(sentences) - 1


def similarity_map(patches: Tensor, sentence: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """Cosine similarity of each patch to one sentence on the patch grid.

    Args:
        patches: (P, E) patch features.
        sentence: (E,) sentence feature.
        grid: (gh, gw) with gh * gw = P; default square.
    Returns:
        (gh, gw) similarities in [-1, 1].
    """
    p = patches.shape[0]
    if grid is None:
        g = int(round(math.sqrt(p)))
        if g * g != p:
            raise ValueError(f"{p} patches do not form a square grid; pass grid=(gh, gw)")
        grid = (g, g)
    if grid[0] * grid[1] != p:
        raise ValueError(f"grid {grid} does not hold {p} patches")
    sim = torch.nn.functional.normalize(patches.float(), dim=-1) @ torch.nn.functional.normalize(
        sentence.float(), dim=0
    )
    return sim.reshape(grid)


def hottest_cell(sim: Tensor | np.ndarray) -> tuple[int, int]:
    """(row, col) of the maximum of a (gh, gw) map (first one on ties)."""
    a = np.asarray(sim.detach().cpu() if isinstance(sim, Tensor) else sim)
    r, c = np.unravel_index(int(np.argmax(a)), a.shape)
    return int(r), int(c)


def pointing_hit(
    sim: Tensor | np.ndarray, boxes: Sequence[Box], image_hw: tuple[int, int], mode: str = "overlap"
) -> bool:
    """Is the hottest cell of ``sim`` on one of ``boxes`` (input-image pixels, (y0, x0, y1, x1))?"""
    if mode not in ("overlap", "center"):
        raise ValueError(f"mode must be 'overlap' or 'center', got {mode!r}")
    gh, gw = np.asarray(sim.shape[-2:])
    r, c = hottest_cell(sim)
    ch, cw = image_hw[0] / gh, image_hw[1] / gw
    y0, x0, y1, x1 = r * ch, c * cw, (r + 1) * ch, (c + 1) * cw
    for by0, bx0, by1, bx1 in boxes:
        if mode == "center":
            cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
            if by0 <= cy < by1 and bx0 <= cx < bx1:
                return True
        elif y0 < by1 and by0 < y1 and x0 < bx1 and bx0 < x1:
            return True
    return False


def pointing_game(
    maps: Sequence[Tensor | np.ndarray],
    boxes: Sequence[Sequence[Box]],
    image_hw: tuple[int, int],
    mode: str = "overlap",
) -> dict[str, float]:
    """Fraction of images (with at least one box) whose hottest cell hits a box."""
    hits = [pointing_hit(m, b, image_hw, mode) for m, b in zip(maps, boxes) if len(b)]
    return {"pointing_game": float(np.mean(hits)) if hits else math.nan, "n": len(hits)}


def hit_cells(
    boxes: Sequence[Box], grid: tuple[int, int], image_hw: tuple[int, int], mode: str = "overlap"
) -> np.ndarray:
    """(gh, gw) bool: the cells that would be pointing-game hits for ``boxes`` (see :func:`pointing_hit`)."""
    gh, gw = grid
    out = np.zeros(grid, bool)
    for r in range(gh):
        for c in range(gw):
            one = np.zeros(grid)
            one[r, c] = 1.0
            out[r, c] = pointing_hit(one, boxes, image_hw, mode)
    return out


def chance_hit_rate(
    boxes: Sequence[Box], image_hw: tuple[int, int], grid: tuple[int, int], mode: str = "overlap"
) -> float:
    """Probability that a uniformly random cell of a (gh, gw) grid is a hit (the pointing game's chance)."""
    return float(hit_cells(boxes, grid, image_hw, mode).mean())


def location_prior(
    boxes: Sequence[Sequence[Box]], grid: tuple[int, int], image_hw: tuple[int, int], mode: str = "overlap"
) -> np.ndarray:
    """(gh, gw) map: for each cell, the number of images (e.g. the training split's) in which that
    cell would be a pointing-game hit. Its hottest cell is where findings usually are, without
    looking at an image: the baseline a map must beat to show that it sees the findings."""
    out = np.zeros(grid)
    for b in boxes:
        if len(b):
            out += hit_cells(b, grid, image_hw, mode)
    return out


def has_roi(row: Mapping[str, Any]) -> bool:
    """Whether a prepared-table row has ROI boxes (a non-empty ``roi_coords``)."""
    return str(row.get("roi_coords", "") or "").strip() not in ("", "[]")


def eval_rows(table: Any, recrop: bool = False) -> list[tuple[dict, bool]]:
    """(row, Otsu-crop it?) for every row of a prepared table: images ``prepare`` already cropped
    are not cropped again (as the dataset does; ``recrop=True`` crops every image)."""
    from medlearn.mama.data.dataset import needs_crop

    crop = np.ones(len(table), bool) if recrop else needs_crop(table)
    return [(r, bool(c)) for r, c in zip(table.to_dict(orient="records"), crop)]


def eval_transforms(image_size: int) -> dict[bool, Callable]:
    """The evaluation transform with and without the Otsu crop, keyed by the crop flag."""
    from medlearn.mama.data.transforms import EvalTransform

    return {c: EvalTransform(image_size, crop=c) for c in (True, False)}


def table_roi_boxes(
    table: Any, image_root: str | Path, image_size: int, recrop: bool = False
) -> list[list[Box]]:
    """ROI boxes in input pixels (S x S) of every row with ROIs, through the evaluation geometry."""
    from medlearn.mama.data.prepare import load_image
    from medlearn.mama.data.transforms import foreground_box

    out = []
    for r, c in eval_rows(table, recrop):
        if has_roi(r):
            cached = load_image(Path(image_root) / str(r["image_path"]))
            out.append(roi_boxes_to_input(r, cached.shape, foreground_box(cached) if c else None, image_size))
    return out


def roi_boxes_to_input(
    row: Mapping[str, Any], cached_hw: tuple[int, int], otsu_box: tuple[int, int, int, int] | None, size: int
) -> list[Box]:
    """ROI boxes of a prepared-table row in model-input pixels (S x S).

    Args:
        row: with ``roi_coords`` (DICOM pixels) and the prepare columns ``crop_y0``, ``crop_x0``,
            ``scale`` (missing: identity).
        cached_hw: (h, w) of the cached image.
        otsu_box: (y0, x0, y1, x1) of the evaluation transform's crop of the cached image (None: no crop).
        size: S.
    """
    from medlearn.mama.data.tables import parse_roi_coords

    boxes = parse_roi_coords(str(row.get("roi_coords", "") or ""))
    if not boxes:
        return []

    def num(key: str, default: float) -> float:
        try:
            v = float(row.get(key, default))
        except (TypeError, ValueError):
            return default
        return v if math.isfinite(v) else default

    cy, cx, sc = num("crop_y0", 0.0), num("crop_x0", 0.0), num("scale", 1.0)
    oy0, ox0, oy1, ox1 = otsu_box if otsu_box is not None else (0, 0, cached_hw[0], cached_hw[1])
    fy, fx = size / max(oy1 - oy0, 1), size / max(ox1 - ox0, 1)
    out = []
    for y0, x0, y1, x1 in boxes:
        ys = [((y - cy) * sc - oy0) * fy for y in (y0, y1)]
        xs = [((x - cx) * sc - ox0) * fx for x in (x0, x1)]
        b = (max(0.0, ys[0]), max(0.0, xs[0]), min(float(size), ys[1]), min(float(size), xs[1]))
        if b[2] > b[0] and b[3] > b[1]:
            out.append(b)
    return out


def save_overlay(
    image: np.ndarray, sim: Tensor | np.ndarray, path: str | Path, boxes: Sequence[Box] = (), title: str = ""
) -> Path:
    """PNG of a grey image with the similarity map (bilinearly upsampled) overlaid and ROI boxes drawn.

    Args:
        image: (H, W) grey image (any range) or (3, H, W) normalised model input.
        sim: (gh, gw) map.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from medlearn.report import save_figure

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[0]
    s = torch.as_tensor(
        np.asarray(sim.detach().cpu() if isinstance(sim, Tensor) else sim), dtype=torch.float32
    )
    up = torch.nn.functional.interpolate(s[None, None], size=img.shape, mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()
    fig, ax = plt.subplots(figsize=(4, 4 * img.shape[0] / max(img.shape[1], 1)))
    ax.imshow(img, cmap="gray")
    hm = ax.imshow(up, cmap="jet", alpha=0.4)
    for y0, x0, y1, x1 in boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.5))
    r, c = hottest_cell(s)
    gh, gw = s.shape
    ax.plot([(c + 0.5) * img.shape[1] / gw], [(r + 0.5) * img.shape[0] / gh], "w+", ms=10, mew=2)
    fig.colorbar(hm, ax=ax, fraction=0.046, pad=0.04, label="patch-sentence cosine")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    return save_figure(fig, path)


def fit_context(sentences: Sequence[str], j: int, fits: Callable[[str], bool] | None) -> tuple[str, int]:
    """The report as training encodes it, or the longest run of sentences around sentence ``j`` that fits.

    The whole report is kept when it fits the text tower's ``max_length``: the sentence features
    depend on the other sentences (an encoder attends both ways; the per-report sentence
    BatchNorm takes its statistics over all of them), so the heatmap must see what training saw.
    A longer report is truncated by the tokenizer, which can cut sentence ``j`` away (its separator
    then never exists): leading sentences are then dropped until it fits, then trailing ones.

    Returns:
        (text, index of sentence ``j`` in it).
    """
    n = len(sentences)
    for end in range(n, j, -1):
        for k in range(j + 1):
            text = ". ".join(sentences[k:end]) + "."
            if fits is None or fits(text):
                return text, j - k
    return sentences[j] + ".", 0


@torch.no_grad()
def sentence_maps(
    encoder: Any,
    images: Tensor,
    reports: Sequence[str],
    sentence_idx: Sequence[int],
    sentence_stats: str | None = None,
) -> list[Tensor]:
    """SLA heatmaps, one per image: patch similarity to sentence ``sentence_idx[i]`` of ``reports[i]``.

    ``encoder.local_features(images, texts[, sentence_stats])`` -> patches (B, P, E), sentences
    (B, S, E), mask (B, S); ``encoder.fits(text)`` (optional) says whether a text fits untruncated
    (see :func:`fit_context`). ``sentence_stats`` (None: the encoder's default, the training
    normalisation) is passed on.
    """
    patches, chosen = chosen_sentence_features(encoder, images, reports, sentence_idx, sentence_stats)
    return [similarity_map(p.cpu(), c.cpu()) for p, c in zip(patches, chosen)]


def chosen_sentence_features(
    encoder: Any,
    images: Tensor,
    reports: Sequence[str],
    sentence_idx: Sequence[int],
    sentence_stats: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Patch features (B, P, E) of ``images`` and the (B, E) feature of sentence ``sentence_idx[i]``
    of ``reports[i]``, each report encoded whole when it fits (:func:`fit_context`)."""
    fits = getattr(encoder, "fits", None)
    texts, idx = zip(*(fit_context(split_sentences(r), j, fits) for r, j in zip(reports, sentence_idx)))
    kw = {} if sentence_stats is None else {"sentence_stats": sentence_stats}
    patches, sents, mask = encoder.local_features(images, list(texts), **kw)
    n = mask.sum(dim=1)
    jj = torch.minimum(torch.as_tensor(idx, device=n.device), (n - 1).clamp_min(0))
    return patches, sents[torch.arange(len(idx), device=sents.device), jj]


def load_eval_input(
    row: Mapping[str, Any], crop: bool, image_root: str | Path, transform: Callable, image_size: int
) -> tuple[Tensor, list[Box]]:
    """A prepared-table row's model input (``transform`` of the cached image) and its ROI boxes in
    input pixels; ``crop``: whether the evaluation transform Otsu-crops this image."""
    from medlearn.mama.data.prepare import load_image
    from medlearn.mama.data.transforms import foreground_box

    cached = load_image(Path(image_root) / str(row["image_path"]))
    boxes = roi_boxes_to_input(row, cached.shape, foreground_box(cached) if crop else None, image_size)
    return transform(cached), boxes


@torch.no_grad()
def evaluate_pointing(
    encoder: Any,
    table: Any,
    image_root: str | Path,
    image_size: int,
    builder: Any,
    max_images: int = 64,
    batch_size: int = 8,
    mode: str = "overlap",
    heatmap_dir: str | Path | None = None,
    n_heatmaps: int = 4,
    sentence_stats: str | None = None,
    recrop: bool = False,
) -> dict[str, Any]:
    """Pointing game on the rows of a prepared table that have ROI boxes and a finding sentence.

    The report is the row's unmasked report (``builder.build(row)``); the sentence is chosen by
    :func:`pick_sentence` (the mass / calcification sentence, else "Findings"). Writes up to
    ``n_heatmaps`` overlay PNGs to ``heatmap_dir``. ``sentence_stats``: see
    :meth:`MamaEncoder.local_features`. Images that ``prepare`` already cropped are not Otsu-cropped
    again (as the dataset does; ``recrop=True`` crops every image, the former behaviour).

    Returns:
        ``pointing_game``, ``n``, ``hits`` (per scored image), ``chance_per_image`` (the hit
        probability of a uniformly random cell), ``heatmaps`` (PNG path, caption), and the
        diagnostic ``hits_coldest`` / ``pointing_game_coldest`` (the same game played with each
        map's coldest cell: high when a map localises with the wrong sign); ``grid`` (gh, gw).
    """
    rows = [(r, c) for r, c in eval_rows(table, recrop) if has_roi(r)][:max_images]
    tfs = eval_transforms(image_size)
    maps, boxes, pngs = [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        imgs, reports, idx, bxs = [], [], [], []
        for r, c in chunk:
            img, b = load_eval_input(r, c, image_root, tfs[c], image_size)
            imgs.append(img)
            bxs.append(b)
            rep = builder.build(r)
            reports.append(rep)
            idx.append(pick_sentence(split_sentences(rep)))
        ms = sentence_maps(encoder, torch.stack(imgs), reports, idx, sentence_stats)
        for k, (m, b) in enumerate(zip(ms, bxs)):
            maps.append(m)
            boxes.append(b)
            if heatmap_dir is not None and len(pngs) < n_heatmaps and b:
                sent = split_sentences(reports[k])[idx[k]]
                iid = chunk[k][0]["image_id"]
                p = save_overlay(imgs[k].numpy(), m, Path(heatmap_dir) / f"sla_{iid}.png", b, sent[:60])
                pngs.append((p, f"{iid}: '{sent[:60]}'"))
    hw = (image_size, image_size)
    res = pointing_game(maps, boxes, hw, mode)
    scored = [(m, b) for m, b in zip(maps, boxes) if len(b)]
    res["hits"] = [bool(pointing_hit(m, b, hw, mode)) for m, b in scored]
    res["grid"] = tuple(int(v) for v in maps[0].shape[-2:]) if maps else None
    # diagnostic: the coldest cell (a map whose sign came out flipped points with its minimum)
    res["hits_coldest"] = [bool(pointing_hit(-m, b, hw, mode)) for m, b in scored]
    res["pointing_game_coldest"] = float(np.mean(res["hits_coldest"])) if scored else float("nan")
    res["chance_per_image"] = [chance_hit_rate(b, hw, tuple(m.shape[-2:]), mode) for m, b in scored]
    res["heatmaps"] = pngs
    return res
