"""Pointing game on constructed similarity maps, ROI geometry, heatmap overlays."""

import math

import numpy as np
import pytest
import torch

from medlearn.mama.eval import localisation as L


def test_similarity_map_is_patch_sentence_cosine():
    patches = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [-3.0, 0.0]])
    sent = torch.tensor([2.0, 0.0])
    m = L.similarity_map(patches, sent)
    torch.testing.assert_close(m, torch.tensor([[1.0, 0.0], [1 / math.sqrt(2), -1.0]]))
    with pytest.raises(ValueError, match="square grid"):
        L.similarity_map(torch.zeros(6, 2), sent)


def test_pointing_game_on_constructed_maps():
    size = (64, 64)  # 4x4 grid of 16-px cells
    hit = np.zeros((4, 4))
    hit[2, 1] = 1.0  # cell rows 32-48, cols 16-32
    miss = np.zeros((4, 4))
    miss[0, 3] = 1.0
    box = [(36.0, 20.0, 44.0, 28.0)]  # inside cell (2, 1)
    assert L.pointing_hit(hit, box, size)
    assert not L.pointing_hit(miss, box, size)
    # a box that only touches the cell's corner region: overlap hit, centre miss
    corner = [(44.0, 28.0, 60.0, 60.0)]
    assert L.pointing_hit(hit, corner, size, mode="overlap")
    assert not L.pointing_hit(hit, corner, size, mode="center")
    res = L.pointing_game([hit, miss, hit], [box, box, []], size)
    assert res == {"pointing_game": 0.5, "n": 2}  # the image without a box is not counted
    with pytest.raises(ValueError, match="mode"):
        L.pointing_hit(hit, box, size, mode="best")


def test_sentences_follow_separator_order():
    rep = "Procedure reported: MG. Patient info: race x; age 50. Findings: benign findings. There is an oval mass."
    s = L.split_sentences(rep)
    assert s[1] == "Patient info: race x" and len(s) == 5
    assert L.pick_sentence(s) == 4
    assert L.pick_sentence(s[:4]) == 3


def test_roi_boxes_follow_prepare_and_eval_geometry():
    """Map a box through the prepare crop/scale and the eval crop/resize; compare with where its pixels land."""
    from medlearn.mama.data.transforms import EvalTransform, foreground_box, resize

    h, w = 200, 160
    img = np.zeros((h, w), np.float32)
    img[30:190, 0:120] = 0.5  # breast
    roi = (100, 40, 130, 70)
    img[roi[0] : roi[2], roi[1] : roi[3]] = 1.0
    # prepare: foreground box with margin 2, resize long side to 100
    y0, x0, y1, x1 = foreground_box(img, margin=2)
    crop = img[y0:y1, x0:x1]
    scale = 100 / max(crop.shape)
    cached = resize(
        torch.from_numpy(np.ascontiguousarray(crop)),
        (round(crop.shape[0] * scale), round(crop.shape[1] * scale)),
    ).numpy()
    row = {"roi_coords": str([list(roi)]), "crop_y0": y0, "crop_x0": x0, "scale": scale}
    size = 64
    (box,) = L.roi_boxes_to_input(row, cached.shape, foreground_box(cached), size)
    x = EvalTransform(size)(cached)[0].numpy()
    ys, xs = np.nonzero(x > 0.5)  # the bright ROI (normalised to > 0.5 only there)
    assert box[0] == pytest.approx(ys.min(), abs=1.5) and box[2] == pytest.approx(ys.max() + 1, abs=1.5)
    assert box[1] == pytest.approx(xs.min(), abs=1.5) and box[3] == pytest.approx(xs.max() + 1, abs=1.5)
    assert L.roi_boxes_to_input({"roi_coords": ""}, cached.shape, None, size) == []


def test_overlay_png_written(tmp_path):
    sim = torch.rand(4, 4)
    p = L.save_overlay(np.random.rand(32, 32), sim, tmp_path / "o.png", [(4, 4, 12, 12)], "Findings")
    assert p.is_file() and p.stat().st_size > 1000


def test_fit_context_keeps_the_chosen_sentence_whole():
    s = ["a b c", "d e", "f g h i", "j"]

    def fits(text):  # at most 6 words
        return len(text.replace(".", " ").split()) <= 6

    text, j = L.fit_context(s, 2, fits)  # "a b c. d e. f g h i." has 9 words -> drop from the start
    assert text == "d e. f g h i." and j == 1 and L.split_sentences(text)[j] == s[2]
    assert L.fit_context(s, 1, fits) == ("a b c. d e.", 1)
    assert L.fit_context(s, 2, lambda t: False) == ("f g h i.", 0)
    assert L.fit_context(s, 3, None) == ("a b c. d e. f g h i. j.", 3)
