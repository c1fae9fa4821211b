"""SLA diagnostics (finding detection AUC, patch locality) on files, with stub encoders of known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medlearn.mama.eval import sla_diagnostics as D

GRID, SIZE = 8, 64


def _table(tmp_path, n_pos=3, n_neg=4):
    """n_pos images with a bright 8 x 8 square on cell (2, 3), n_neg plain ones, as prepared rows on disk."""
    rows = []
    for i in range(n_pos + n_neg):
        img = np.full((SIZE, SIZE), 0.3, np.float32)
        roi = ""
        if i < n_pos:
            img[16:24, 24:32] = 1.0
            roi = json.dumps([[16, 24, 24, 32]])
        np.save(tmp_path / f"i{i}.npy", img)
        rows.append({"image_id": i, "image_path": f"i{i}.npy", "roi_coords": roi, "crop_y0": 0, "crop_x0": 0,
                     "crop_y1": SIZE, "crop_x1": SIZE, "orig_rows": 128, "orig_cols": 128, "scale": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


class _CellMeans:
    """Patch feature of cell k = (mean intensity of the cell, 1) normalised: perfectly local (``spread=False``),
    or every cell carries the image's mean intensity (``spread=True``: the finding's information is everywhere)."""

    def __init__(self, spread: bool, sentence=(1.0, 0.0)):
        self.spread, self.sentence = spread, torch.tensor(sentence)

    def patch_features(self, images):
        cells = (
            images[:, 0]
            .reshape(-1, GRID, SIZE // GRID, GRID, SIZE // GRID)
            .mean(dim=(2, 4))
            .reshape(-1, GRID * GRID)
        )
        if self.spread:
            cells = cells.mean(dim=1, keepdim=True).expand_as(cells)
        return torch.nn.functional.normalize(torch.stack([cells, torch.ones_like(cells)], -1), dim=-1)

    def local_features(self, images, texts):
        b = images.shape[0]
        return (
            self.patch_features(images),
            self.sentence.expand(b, 1, 2).clone(),
            torch.ones(b, 1, dtype=torch.bool),
        )


class _Builder:
    def build(self, row):
        return "There is a mass."


def test_rank_auc_equals_sklearn():
    rng = np.random.default_rng(0)
    neg = np.round(rng.normal(size=30), 1)  # ties included
    for pos in (-0.3, 0.0, 0.4, 2.5):
        want = roc_auc_score([1] + [0] * neg.size, np.r_[pos, neg])
        assert D.rank_auc(pos, neg) == pytest.approx(want, abs=1e-12)


def test_detection_auc_is_one_when_the_sentence_matches_bright_patches(tmp_path):
    table = _table(tmp_path)
    res = D.finding_detection_auc(_CellMeans(spread=False), table, tmp_path, SIZE, _Builder())
    assert res["n"] == 3 and res["n_negatives"] == 4
    assert res["aucs"] == [1.0, 1.0, 1.0]  # a bright cell beats every plain image's best cell
    # the opposite sentence prefers dark patches: images with a finding never score higher
    res = D.finding_detection_auc(
        _CellMeans(spread=False, sentence=(-1.0, 0.0)), table, tmp_path, SIZE, _Builder()
    )
    assert res["finding_detection_auc"] == 0.5  # every image's darkest cell is the plain 0.3: all ties


def test_removal_of_local_and_spread_findings(tmp_path):
    table = _table(tmp_path)
    local = D.finding_removal(_CellMeans(spread=False), table, tmp_path, SIZE, _Builder())
    assert local["n"] == 3
    assert local["drop_positive"] == 1.0  # the sentence's best patch was the bright finding
    assert local["share_outside"] == pytest.approx(0.0, abs=1e-6)
    # the box covers cell (2, 3) only: 63 of 64 cells are outside
    assert local["share_outside_if_spread"] == pytest.approx(63 / 64)
    spread = D.finding_removal(_CellMeans(spread=True), table, tmp_path, SIZE, _Builder())
    assert spread["share_outside"] == pytest.approx(63 / 64, abs=1e-6)  # the same change in every cell
    assert spread["ratio"] == pytest.approx(1.0, abs=1e-5)
    assert spread["drop_positive"] == 1.0  # the image mean falls with the finding: every cell's score drops
    dark = D.finding_removal(
        _CellMeans(spread=False, sentence=(-1.0, 0.0)), table, tmp_path, SIZE, _Builder()
    )
    assert dark["drop_positive"] == 0.0 and dark["score_drop"] == pytest.approx(
        0.0, abs=1e-6
    )  # best cell untouched


def test_remove_findings_fills_the_box_with_the_surrounding_background():
    img = torch.full((1, 16, 16), 0.25)
    img[0, 5:9, 6:10] = 1.0
    out = D.remove_findings(img, [(5.0, 6.0, 9.0, 10.0)])
    assert torch.equal(out, torch.full((1, 16, 16), 0.25))


def test_detection_auc_with_matched_negatives_sees_only_the_finding(tmp_path):
    """A sentence that scores the image's overall brightness tells images apart by density, not by finding:
    against negatives of another density its AUC is 1, against negatives of the same density 0.5 (ties)."""
    table = _table(tmp_path, n_pos=2, n_neg=4)
    table["density"] = [1, 1, 1, 1, 2, 2]  # negatives 2, 3 share the positives' density; 4, 5 do not
    for i in (4, 5):  # the other density is darker overall
        np.save(tmp_path / f"i{i}.npy", np.full((SIZE, SIZE), 0.1, np.float32))
    enc = _CellMeans(spread=True)  # every cell carries the image's mean: the finding moves it only a little
    free = D.finding_detection_auc(enc, table, tmp_path, SIZE, _Builder())
    matched = D.finding_detection_auc(enc, table, tmp_path, SIZE, _Builder(), match=("density",))
    assert free["aucs"] == [1.0, 1.0]  # brighter than every negative (the finding adds to the mean)
    assert matched["aucs"] == [1.0, 1.0]  # ... and than the same-density plain images
    blind = _CellMeans(spread=True)
    blind.patch_features = (
        lambda images: torch.nn.functional.normalize(  # sees the image mean without the box
            torch.stack(
                [images[:, 0, :16].mean(dim=(1, 2))[:, None].expand(-1, 64), torch.ones(images.shape[0], 64)],
                -1,
            ),
            dim=-1,
        )
    )
    assert D.finding_detection_auc(blind, table, tmp_path, SIZE, _Builder())["aucs"] == [0.75, 0.75]
    assert D.finding_detection_auc(blind, table, tmp_path, SIZE, _Builder(), match=("density",))["aucs"] == [
        0.5,
        0.5,
    ]
    with pytest.raises(ValueError, match="tissueden"):
        D.finding_detection_auc(enc, table, tmp_path, SIZE, _Builder(), match=("tissueden",))


def _table_at(tmp_path, cells, n_neg, prefix):
    """One image per (row, col) cell with a bright 8 x 8 square there, and n_neg plain images."""
    rows = []
    for i, cell in enumerate(list(cells) + [None] * n_neg):
        img = np.full((SIZE, SIZE), 0.3, np.float32)
        roi = ""
        if cell is not None:
            y, x = 8 * int(cell[0]), 8 * int(cell[1])
            img[y : y + 8, x : x + 8] = 1.0
            roi = json.dumps([[y + 1, x + 1, y + 7, x + 7]])  # inside the cell: one hit cell
        np.save(tmp_path / f"{prefix}{i}.npy", img)
        rows.append({"image_id": f"{prefix}{i}", "image_path": f"{prefix}{i}.npy", "roi_coords": roi, "crop_y0": 0,
                     "crop_x0": 0, "crop_y1": SIZE, "crop_x1": SIZE, "orig_rows": 128, "orig_cols": 128, "scale": 1.0})  # fmt: skip
    return pd.DataFrame(rows)


def test_pixel_patches_are_the_grid_cells_row_major():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = D.pixel_patches(img, 4)  # 2 x 2 pixel cells
    assert out.shape == (2, 16, 4)
    k = 1 * 4 + 2  # cell (row 1, col 2)
    assert out[1, k].tolist() == img[1, 0, 2:4, 4:6].reshape(-1).tolist()


def test_patch_probe_points_where_the_features_carry_the_finding(tmp_path):
    """A probe on per-cell brightness finds findings at cells it never saw in training (pointing 1);
    a probe on features that carry only the cell's position learns where training findings were,
    and misses findings elsewhere (pointing 0)."""
    rng = np.random.default_rng(0)
    train_cells = [tuple(c) for c in rng.integers(0, 4, (12, 2))]  # training findings: top-left quadrant
    test_cells = [(6, 6), (5, 7), (7, 4)]  # test findings: elsewhere
    train = _table_at(tmp_path, train_cells, 6, "tr")
    test = _table_at(tmp_path, test_cells, 2, "te")
    bright = _CellMeans(spread=False).patch_features
    res = D.patch_probe_pointing(bright, train, test, tmp_path, SIZE)
    assert res["n"] == 3 and res["hits"] == [True, True, True] and res["probe_pointing_game"] == 1.0
    assert res["patch_auc"] == 1.0
    assert res["n_train_images"] == 18 and res["n_train_positive_patches"] == 12

    def position_only(images):  # one-hot of the cell index: no view of the image at all
        return torch.eye(GRID * GRID).expand(images.shape[0], -1, -1)

    res = D.patch_probe_pointing(position_only, train, test, tmp_path, SIZE)
    assert res["hits"] == [False, False, False]


def test_patch_probe_plays_several_feature_sets_from_one_read(tmp_path):
    """A mapping of feature callables gives each the result it gets alone, reading every image once."""
    rng = np.random.default_rng(1)
    train = _table_at(tmp_path, [tuple(c) for c in rng.integers(0, 8, (10, 2))], 4, "tr")
    test = _table_at(tmp_path, [(6, 6), (1, 2)], 2, "te")
    bright = _CellMeans(spread=False).patch_features
    calls = []

    def pixels(images):
        calls.append(images.shape[0])
        return D.pixel_patches(images, GRID)

    both = D.patch_probe_pointing({"bright": bright, "pixels": pixels}, train, test, tmp_path, SIZE)
    assert sum(calls) == 14 + 2  # every training image and every test image with an ROI, once
    for name, fn in (("bright", bright), ("pixels", lambda im: D.pixel_patches(im, GRID))):
        alone = D.patch_probe_pointing(fn, train, test, tmp_path, SIZE)
        assert both[name]["hits"] == alone["hits"] and both[name]["patch_auc"] == alone["patch_auc"], name
