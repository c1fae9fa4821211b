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

    # a report that fits is encoded whole, sentences after the chosen one included (as in training)
    assert L.fit_context(s, 1, lambda t: True) == ("a b c. d e. f g h i. j.", 1)
    text, j = L.fit_context(s, 2, fits)  # the whole report has 10 words -> drop from the start
    assert text == "f g h i. j." and j == 0 and L.split_sentences(text)[j] == s[2]
    assert L.fit_context(s, 1, fits) == ("d e. f g h i.", 0)  # then from the end
    assert L.fit_context(s, 2, lambda t: False) == ("f g h i.", 0)
    assert L.fit_context(s, 3, None) == ("a b c. d e. f g h i. j.", 3)


@pytest.mark.parametrize("sentence_batchnorm", ["per_report", "batch"])
def test_heatmap_is_the_similarity_sla_trains(sentence_batchnorm):
    """Issue 13 check (a): the heatmap of sentence j is row j of the SLA similarity block of a training step
    (same patch tokens, heads, normalisation, sign and direction).  ``per_report``: each report's own
    sentence statistics, not the running-statistics variant; ``batch``: training normalises over the
    batch's sentences, and one image has no batch, so the map uses the running statistics, which is
    the training forward with the sentence head's BatchNorm in eval mode."""
    from medlearn.config import load_config
    from medlearn.mama.config import MamaConfig
    from medlearn.mama.eval.evaluate import MamaEncoder
    from medlearn.mama.modeling.model import MamaModel

    try:
        from tests.mama.pt_fakes import TINY
    except ImportError:
        from pt_fakes import TINY
    cfg = load_config(MamaConfig, TINY, [f"model.heads.sentence_batchnorm={sentence_batchnorm}"])
    torch.manual_seed(0)
    model = MamaModel(cfg.model, cfg.loss)
    model.set_late_phase(True)
    per_report = sentence_batchnorm == "per_report"
    images = torch.randn(3, 3, 32, 32)
    reports = [
        "Procedure reported: MG. Findings: benign. There is an oval mass. Overall: benign.",
        "Procedure reported: MG. Findings: suspicious. There are fine calcifications.",
        "Procedure reported: MG. Breast composition: dense. Findings: none. Impression: negative.",
    ]
    enc = model.tokenizer(reports)
    model.train()
    model.text.eval()  # GPT-2's own dropout off, so both paths see the same token states
    model.heads.img_local.eval()  # patches use running statistics in both paths; sentences are the question
    if not per_report:
        with torch.no_grad():  # give the running statistics values of their own (not the initial 0 / 1)
            for _ in range(3):
                model(images, enc["input_ids"], enc["attention_mask"], images, late=True)
        model.heads.txt_local.eval()
    with torch.no_grad():
        out = model(images, enc["input_ids"], enc["attention_mask"], images, late=True)
    model.eval()
    encoder = MamaEncoder(model, "cpu")
    for i, j in ((0, 2), (1, 2), (2, 1)):
        (m,) = L.sentence_maps(encoder, images[i : i + 1], [reports[i]], [j])
        trained = out["patches"][i] @ out["sentences"][i, j]  # the (i, i, :, j) slice of sla_scores' block
        torch.testing.assert_close(m.flatten(), trained, rtol=1e-4, atol=1e-5)
        assert L.hottest_cell(m) == np.unravel_index(int(trained.argmax()), m.shape)
        if per_report:
            (old,) = L.sentence_maps(encoder, images[i : i + 1], [reports[i]], [j], sentence_stats="running")
            assert (old.flatten() - trained).abs().max() > 1e-2  # the former heatmap is a different map


def test_chance_hit_rate_counts_cells_by_hand():
    size, grid = (64, 64), (4, 4)  # 16-px cells
    assert L.chance_hit_rate([(36.0, 20.0, 44.0, 28.0)], size, grid) == 1 / 16  # inside cell (2, 1)
    assert L.chance_hit_rate([(10.0, 10.0, 20.0, 20.0)], size, grid) == 4 / 16  # touches cells (0-1, 0-1)
    assert (
        L.chance_hit_rate([(10.0, 10.0, 20.0, 20.0)], size, grid, mode="center") == 0.0
    )  # no centre at 8/24
    assert L.chance_hit_rate([(0.0, 0.0, 64.0, 64.0)], size, grid) == 1.0


@pytest.mark.parametrize(
    "side,view,box", [("R", "CC", (150, 90, 190, 130)), ("L", "MLO", (220, 160, 252, 192))]
)
def test_planted_finding_through_real_prepare_lands_in_its_box(tmp_path, side, view, box):
    """Issue 13 check (b): a bright square at known DICOM pixels, through the prepare worker (Otsu crop, resize,
    8-bit PNG) and the evaluation transform at 64 px, lies where its mapped ROI box says, on the same patch cells."""
    import json

    from medlearn.io.dicom_write import write_dicom_mg
    from medlearn.mama.data.prepare import _process, load_image
    from medlearn.mama.data.synth_image import Breast, render_view
    from medlearn.mama.data.transforms import EvalTransform, foreground_box

    img, _ = render_view(
        Breast(side, 2, 180.0, 200.0, seed=3), view, (384, 307), 300 / 384, np.random.default_rng(0)
    )
    y0, x0, y1, x1 = box
    img[y0:y1, x0:x1] = 1.0
    src = write_dicom_mg(tmp_path / "a.dcm", np.round(img * 4095).astype(np.uint16), laterality=side, view=view,
                         bits_stored=12)  # fmt: skip
    opts = {"window": "voi", "crop": True, "long_side": 160, "bits": 8, "fmt": "png"}
    info = _process((str(src), str(tmp_path / "a.png"), opts))
    cached = load_image(tmp_path / "a.png")
    row = {"roi_coords": json.dumps([list(box)]), **info}
    for crop in (False, True):  # the dataset no longer re-crops prepared images; both must map right
        x = EvalTransform(64, crop=crop)(cached)[0].numpy()
        (b,) = L.roi_boxes_to_input(row, cached.shape, foreground_box(cached) if crop else None, 64)
        ys, xs = np.nonzero(x > 0.95)  # only the planted square saturates
        seen = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        np.testing.assert_allclose(b, seen, atol=1.5)  # antialiased edges: within 1.5 px at 64 px
        cells = {(int(r) // 8, int(c) // 8) for r, c in zip(ys, xs)}
        hot = np.zeros((8, 8))
        for r, c in cells:  # every 8x8 cell the finding covers is a pointing-game hit for its box
            hot[:] = 0
            hot[r, c] = 1
            assert L.pointing_hit(hot, [b], (64, 64))


class _StubEncoder:
    """Patch features chosen per image: the finding cell at -e1 (image 0) or e2 (image 1)."""

    def local_features(self, images, texts):
        b = images.shape[0]
        patches = torch.zeros(b, 64, 2)
        patches[0, :, 0] = 1.0
        patches[0, 1 * 8 + 1] = torch.tensor([-1.0, 0.0])  # cell (1, 1): the coldest
        patches[1, :, 0] = 1.0
        patches[1, 4 * 8 + 4] = torch.tensor([0.0, 1.0])
        sentences = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(b, 2, 2).clone()
        sentences[0, 1] = torch.tensor([1.0, 0.0])  # image 0: cosine +1 everywhere but the finding
        sentences[1, 1] = torch.tensor([0.0, 1.0])  # image 1: cosine 1 at the finding, 0 elsewhere
        return patches, sentences, torch.ones(b, 2, dtype=torch.bool)


class _StubBuilder:
    def build(self, row):
        return "Findings: breast tissue. There is a mass."


def test_evaluate_pointing_scores_hottest_and_coldest_cells_on_files(tmp_path):
    """Through the real file path: cached images on disk, prepare's crop columns, ROI boxes in DICOM pixels."""
    import json

    import pandas as pd

    rows = []
    for i, (y0, x0) in enumerate([(8, 8), (32, 32)]):  # boxes on cell (1, 1) and cell (4, 4) of the 8 x 8 grid
        np.save(tmp_path / f"img{i}.npy", np.full((64, 64), 0.5, np.float32))
        rows.append({"image_id": i, "image_path": f"img{i}.npy", "roi_coords": json.dumps([[y0, x0, y0 + 8, x0 + 8]]),
                     "crop_y0": 0, "crop_x0": 0, "crop_y1": 64, "crop_x1": 64, "orig_rows": 128, "orig_cols": 128,
                     "scale": 1.0})  # fmt: skip
    res = L.evaluate_pointing(_StubEncoder(), pd.DataFrame(rows), tmp_path, 64, _StubBuilder())
    # image 0: the map is +1 everywhere but -1 on the finding: the hottest cell (0, 0) misses, the coldest hits;
    # image 1: 1 on the finding, 0 elsewhere: the hottest hits, the coldest (0, 0) misses
    assert res["hits"] == [False, True]
    assert res["hits_coldest"] == [True, False]
    assert res["pointing_game"] == 0.5 and res["pointing_game_coldest"] == 0.5
    assert res["chance_per_image"] == [1 / 64, 1 / 64]


def test_location_prior_counts_hit_cells_and_points_at_the_usual_place():
    size, grid = (64, 64), (8, 8)
    train = [[(16.0, 24.0, 24.0, 32.0)], [(16.0, 24.0, 24.0, 40.0)], [(40.0, 40.0, 48.0, 48.0)], []]
    prior = L.location_prior(train, grid, size)
    want = np.zeros(grid)
    want[2, 3] = 2  # boxes 1 and 2 cover cell (2, 3); box 2 also (2, 4); box 3 cell (5, 5)
    want[2, 4] = 1
    want[5, 5] = 1
    np.testing.assert_array_equal(prior, want)
    assert L.pointing_hit(prior, [(20.0, 26.0, 22.0, 28.0)], size)  # a test finding in the usual place
    assert not L.pointing_hit(prior, [(40.0, 40.0, 48.0, 48.0)], size)
