"""Torch Dataset over a prepared MaMA folder: image, extra view, structured report, labels, ids.

The per-image table (``prepare`` writes it as ``table.csv``; columns in ``tables.IMAGE_COLUMNS``
plus ``image_path`` relative to the image root and ``split``) is the only input; filter it to one
split before building the Dataset, so that extra views are drawn from that split only.

Randomness of training samples (augmentation, report masking, pairing):

* after ``set_epoch(e)``: a generator seeded with ``(seed, e, index)`` per fetch, so every epoch
  draws new masks and augmentations, and a run resumed mid-epoch (or run with another number of
  DataLoader workers) sees exactly the same samples. Call it next to the sampler's ``set_epoch``
  (with non-persistent workers, which receive the dataset at each epoch's iterator creation);
* otherwise: one stream seeded with ``(seed, torch.initial_seed())``, re-seeded whenever that
  changes (a new DataLoader worker), so each fetch differs and a seeded run is reproducible.

Evaluation samples use a generator seeded with ``(seed, index)``: the same output every time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medlearn.errors import DataError
from medlearn.mama.data.pairing import PairingIndex
from medlearn.mama.data.prepare import load_image
from medlearn.mama.data.report_text import ReportBuilder
from medlearn.mama.data.tables import validate_columns
from medlearn.mama.data.transforms import EvalTransform, TrainTransform

REQUIRED = ("image_id", "patient_id", "exam_id", "image_path", "laterality", "birads", "density", "cancer")
STRING_COLUMNS = (
    "image_id", "patient_id", "exam_id", "source", "dicom_path", "laterality", "view", "study_description",
    "image_type", "race", "ethnicity", "asses", "massshape", "massdens", "calcfind", "calcdistri", "roi_coords",
    "image_path", "split",
)  # fmt: skip


def load_prepared(prepared_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """(per-image table, image root) of a folder written by ``prepare``.

    The legend used for reports is attached as ``table.attrs["legend"]`` ({header: {code: meaning}}).
    """
    from medlearn.mama.data.tables import read_legend

    root = Path(prepared_dir)
    path = root / "table.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `medlearn mama prepare` first")
    table = pd.read_csv(
        path,
        dtype={c: str for c in STRING_COLUMNS},
        keep_default_na=False,
        na_values={"age": [""], "tissueden": [""], "path_severity": [""]},
    )
    validate_columns(table, REQUIRED, path)
    if (root / "legend.csv").is_file():
        table.attrs["legend"] = read_legend(root / "legend.csv")
    return table, root


class MammoDataset(Dataset):
    """One item per row of a per-image table.

    Args:
        table: per-image table (see module docstring); rows of one split.
        image_root: folder that ``image_path`` is relative to.
        train: training transform, report masking and random pairing; else evaluation transform.
        image_size: output side S.
        report_builder: default ``ReportBuilder(table.attrs.get("legend"))``.
        mask_prob: meta-field masking probability (training only; 0.8 reference).
        multiview_prob: probability that the extra image is another image of the exam (0.5 reference).
        same_breast_only: pair only with the other views of the same breast (default False: reference).
        seed: base seed.
        recrop: Otsu-crop every cached image again (the reference crops online). Default False: only
            rows that ``prepare`` did not crop (no ``crop_*`` columns, or a crop box equal to the
            whole image) are cropped; see :func:`needs_crop`.
        augment: keyword arguments of :class:`~medlearn.mama.data.transforms.TrainTransform`
            (training only; default the reference recipe; ``data.augment`` of ``medlearn mama train``).

    An index may also be a key ``(epoch, index, with_extra)`` (the training loader's sampler sends
    these): randomness is then a function of (seed, epoch, index) without ``set_epoch``, so
    persistent workers stay valid, and ``with_extra=False`` skips loading and augmenting the extra
    image (before ``late_loss``). The anchor, its report and the extra image use separate random
    streams, so the anchor and report do not depend on whether the extra image is drawn.

    Items: ``image`` and ``extra_image`` float32 (3, S, S) in [-1, 1]; ``report`` str; ``labels`` dict of
    int64 tensors ``birads`` (0-6), ``density`` (0-3), ``cancer`` (0/1), -1 where unknown; ``image_id``,
    ``exam_id``, ``patient_id`` str; ``extra_image_id`` str (equal to ``image_id`` when the extra image
    is a second augmentation of the same image).
    """

    accepts_keys = True  # __getitem__ takes (epoch, index, with_extra) keys (see the class docstring)

    def __init__(
        self,
        table: pd.DataFrame,
        image_root: str | Path,
        train: bool,
        image_size: int,
        report_builder: ReportBuilder | None = None,
        mask_prob: float = 0.8,
        multiview_prob: float = 0.5,
        same_breast_only: bool = False,
        seed: int = 0,
        recrop: bool = False,
        augment: Mapping[str, Any] | None = None,
    ) -> None:
        validate_columns(table, REQUIRED, "per-image table (MammoDataset)")
        if len(table) == 0:
            raise DataError("MammoDataset: the per-image table is empty")
        self.table = table.reset_index(drop=True)
        self.root = Path(image_root)
        self.train = train
        self.mask_prob = mask_prob if train else 0.0
        self.multiview_prob = multiview_prob
        self.seed = seed
        self.builder = report_builder or ReportBuilder(table.attrs.get("legend"))
        records = self.table.to_dict("records")
        self.parts = [self.builder.parts(r) for r in records]
        self.paths = [self.root / str(p) for p in self.table["image_path"]]
        self.ids = self.table[["image_id", "exam_id", "patient_id"]].astype(str).to_numpy()
        self.labels = self.table[["birads", "density", "cancer"]].fillna(-1).astype(np.int64).to_numpy()
        self.pairs = PairingIndex(self.table, same_breast_only=same_breast_only)
        if train:
            kw = dict(augment or {})
            self.transforms = {c: TrainTransform(image_size, crop=c, **kw) for c in (True, False)}
        else:
            self.transforms = {c: EvalTransform(image_size, crop=c) for c in (True, False)}
        self.crop = np.ones(len(self.table), bool) if recrop else needs_crop(self.table)
        self.epoch: int | None = None
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.table)

    def set_epoch(self, epoch: int) -> None:
        """Make training randomness a function of (seed, epoch, index) (module docstring)."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> np.random.Generator:
        if not self.train:
            return np.random.default_rng([self.seed, index])
        if self.epoch is not None:
            return np.random.default_rng([self.seed, self.epoch, index])
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or key != self._rng_key:
            self._rng = np.random.default_rng([self.seed, key[1] % (2**63)])
            self._rng_key = key
        return self._rng

    def _load(self, i: int) -> np.ndarray:
        path = self.paths[i]
        if not path.is_file():
            raise DataError(f"{path}: cached image missing (image_id {self.ids[i, 0]}); re-run prepare")
        return load_image(path, raw=True)

    def _transform(self, i: int, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return self.transforms[bool(self.crop[i])](img, rng)

    def __getitem__(self, key: int | tuple[int, int, bool]) -> dict[str, Any]:
        with_extra = True
        if isinstance(key, tuple):
            epoch, index, with_extra = int(key[0]), int(key[1]), bool(key[2])
            rng = np.random.default_rng([self.seed, epoch, index]) if self.train else self._generator(index)
        else:
            index = int(key)
            rng = self._generator(index)
        extra_rng = np.random.default_rng(rng.integers(2**63))  # own stream: the anchor does not depend on it
        img = self._load(index)
        image = self._transform(index, img, rng)
        report = self.builder.render(self.parts[index], mask_prob=self.mask_prob, rng=rng)
        j = None
        if with_extra:
            j = self.pairs.sample(index, extra_rng, self.multiview_prob)
            if j is not None:
                extra = self._transform(j, self._load(j), extra_rng)
            else:  # a second augmentation (evaluation transforms are deterministic: reuse)
                extra = self._transform(index, img, extra_rng) if self.train else image.clone()
        b, d, c = self.labels[index]
        image_id, exam_id, patient_id = self.ids[index]
        item = {
            "image": image,
            "report": report,
            "labels": {
                "birads": torch.tensor(b, dtype=torch.int64),
                "density": torch.tensor(d, dtype=torch.int64),
                "cancer": torch.tensor(c, dtype=torch.int64),
            },
            "image_id": image_id,
            "exam_id": exam_id,
            "patient_id": patient_id,
        }
        if with_extra:
            item["extra_image"] = extra
            item["extra_image_id"] = self.ids[j, 0] if j is not None else image_id
        return item


def needs_crop(table: pd.DataFrame) -> np.ndarray:
    """(N,) bool: rows whose cached image ``prepare`` did not foreground-crop (they get the Otsu crop).

    A row was cropped by ``prepare`` when it has the ``crop_y0, crop_x0, crop_y1, crop_x1`` columns
    and a box smaller than the DICOM (``orig_rows`` x ``orig_cols``, when known).
    """
    cols = ("crop_y0", "crop_x0", "crop_y1", "crop_x1")
    if not all(c in table.columns for c in cols):
        return np.ones(len(table), bool)
    box = table[list(cols)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    known = np.isfinite(box).all(axis=1)
    whole = np.zeros(len(table), bool)
    if "orig_rows" in table.columns and "orig_cols" in table.columns:
        rows = pd.to_numeric(table["orig_rows"], errors="coerce").to_numpy(float)
        cols_ = pd.to_numeric(table["orig_cols"], errors="coerce").to_numpy(float)
        whole = (box[:, 0] <= 0) & (box[:, 1] <= 0) & (box[:, 2] >= rows) & (box[:, 3] >= cols_)
    return ~known | whole


def collate_mammo(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors (images (B, 3, S, S), labels (B,)), keep strings as lists."""
    out: dict[str, Any] = {}
    for key, value in batch[0].items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.stack([b[key] for b in batch])
        elif isinstance(value, dict):
            out[key] = {k: torch.stack([b[key][k] for b in batch]) for k in value}
        else:
            out[key] = [b[key] for b in batch]
    return out
