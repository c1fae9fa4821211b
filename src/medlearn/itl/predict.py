"""Apply a trained checkpoint to new NIfTI volumes; masks are written on the input's grid.

The volume is preprocessed like the training data (z-score, in-plane resampling, crop/pad), segmented
slice by slice, and the foreground probability is mapped back (un-crop, bilinear resampling to
the input's in-plane size) before thresholding, so the output has the input's shape and affine.

:class:`ITLSegmenter` (from :func:`load_itl`, also ``medlearn.load_itl``) offers the same on numpy
arrays through :func:`volume_probabilities`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from medlearn.config import load_config
from medlearn.engine import load_weights
from medlearn.errors import DataError
from medlearn.itl.config import ITLConfig
from medlearn.itl.data import preprocess, read_volume, restore_probabilities
from medlearn.itl.evaluate import predict_probabilities, segment
from medlearn.itl.model import MultiSiteExpert, build_model

log = logging.getLogger(__name__)


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[MultiSiteExpert, ITLConfig]:
    """Model and config of a checkpoint folder written by :func:`medlearn.itl.train.run_sequence`.

    ``path`` may be a checkpoint folder (``checkpoints/final``) or a run folder (its ``final`` is used).

    Raises:
        DataError: no checkpoint there.
    """
    path = Path(path)
    if (path / "checkpoints" / "final").is_dir():
        path = path / "checkpoints" / "final"
    state = path / "state.pt"
    if not state.is_file():
        raise DataError(f"'{path}' is not an itl checkpoint folder (no state.pt)")
    extra = torch.load(state, map_location="cpu", weights_only=False).get("extra", {})
    if "config" not in extra:
        raise DataError(f"checkpoint '{path}' carries no config (not written by medlearn itl train)")
    cfg_dict = extra["config"]
    cfg_dict["model"]["pretrained"] = ""  # weights come from the checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        cfg_file = Path(tmp) / "config.yaml"
        cfg_file.write_text(json.dumps(cfg_dict))
        cfg = load_config(ITLConfig, cfg_file)
    model = build_model(cfg.model, cfg.data.context)
    load_weights(model, path, "model")
    return model.to(device).eval(), cfg


def volume_probabilities(
    model: MultiSiteExpert,
    cfg: ITLConfig,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """(X, Y, Z) image with voxel spacing in mm -> (X, Y, Z) float32 foreground probability.

    Preprocessed like the training data (``cfg.data``), predicted slice by slice, mapped back.
    """
    img, _, geom = preprocess(image, spacing, cfg.data.spacing_mm, cfg.data.size)
    prob = predict_probabilities(model, img, cfg.data.context, torch.device(device), cfg.train.eval_batch)
    return restore_probabilities(prob, geom)


def predict_file(
    model: MultiSiteExpert, cfg: ITLConfig, src: Path, dst: Path, device: torch.device | str = "cpu"
) -> Path:
    """Segment one NIfTI file and write the uint8 mask (input shape and affine) to ``dst``."""
    image, affine, spacing = read_volume(src, "input image")
    mask = segment(volume_probabilities(model, cfg, image, spacing, device), cfg.train.largest_cc)
    ref = nib.load(str(src))
    out = nib.Nifti1Image(mask, affine, header=ref.header)
    out.set_data_dtype(np.uint8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(dst))
    return dst


def predict_paths(
    checkpoint: str | Path, inputs: list[str | Path], out: str | Path, device: str = "cpu"
) -> list[Path]:
    """Segment files or folders of ``.nii(.gz)`` files.

    One input file: ``out`` is the output file (or a folder when it has no NIfTI suffix).  Folders
    or several files: ``out`` is a folder and each mask is named after its input.

    Raises:
        DataError: an input does not exist or a folder holds no NIfTI file.
    """
    model, cfg = load_checkpoint(checkpoint, device)
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p
                for p in item.iterdir()
                if p.name.endswith((".nii.gz", ".nii")) and "segmentation" not in p.name.lower()
            )
            if not found:
                raise DataError(f"input folder '{item}' holds no .nii/.nii.gz image")
            files.extend(found)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"input '{item}' does not exist")
    out = Path(out)
    single = len(files) == 1 and out.name.endswith((".nii.gz", ".nii"))
    written = []
    for f in files:
        dst = out if single else out / f.name
        written.append(predict_file(model, cfg, f, dst, device))
        log.info("wrote %s", dst)
    return written


# ------------------------------------------------------------------------------------ Python API
class ITLSegmenter:
    """A trained ITL segmentation model with array and NIfTI entry points (see :func:`load_itl`).

    Volumes go through :func:`volume_probabilities` (the training preprocessing, slice-by-slice
    prediction, mapped back to the input grid); masks are thresholded at 0.5 and reduced to the
    largest 3D component when ``config.train.largest_cc``.

    Attributes:
        model: :class:`medlearn.itl.model.MultiSiteExpert` (eval mode); config: its ``ITLConfig``.
    """

    def __init__(self, model: MultiSiteExpert, config: ITLConfig, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = device

    def probabilities(self, volume: Any, spacing: Sequence[float]) -> np.ndarray:
        """(X, Y, Z) image and its voxel spacing in mm -> (X, Y, Z) float32 foreground probability."""
        from medlearn.io.arrays import as_float_array

        vol = as_float_array(volume, "volume", 3)
        sp = tuple(float(s) for s in spacing)
        if len(sp) != 3 or min(sp) <= 0:
            raise DataError(f"spacing must be 3 positive values in mm (x, y, z), got {tuple(spacing)}")
        return volume_probabilities(self.model, self.config, vol, (sp[0], sp[1], sp[2]), self.device)

    def segment(self, volume: Any, spacing: Sequence[float]) -> np.ndarray:
        """Segment one volume.

        Args:
            volume: (X, Y, Z) image in any intensity units (axial slices along Z).
            spacing: voxel size (x, y, z) in mm (``nibabel`` ``header.get_zooms()``).
        Returns:
            (X, Y, Z) uint8 mask (1 = prostate) on the input grid.
        Raises:
            DataError: not 3D, non-finite values, or a bad spacing.

        Example:
            >>> from medlearn import build_model, load_preset
            >>> s = ITLSegmenter(build_model("itl", "tiny"), load_preset("itl", "tiny"), torch.device("cpu"))
            >>> s.segment(np.random.default_rng(0).normal(size=(40, 36, 5)), (2.0, 2.0, 3.0)).shape
            (40, 36, 5)
        """
        return segment(self.probabilities(volume, spacing), self.config.train.largest_cc)

    def segment_file(self, src: str | Path, dst: str | Path) -> Path:
        """Segment a NIfTI file; the uint8 mask at ``dst`` has the input's shape, affine and header."""
        return predict_file(self.model, self.config, Path(src), Path(dst), self.device)


def load_itl(checkpoint: str | Path, device: str | torch.device = "cpu") -> ITLSegmenter:
    """Load a trained ITL model: a run folder (its ``checkpoints/final``) or a checkpoint folder.

    Raises:
        DataError: no ``state.pt`` there, or a checkpoint without its config.

    Example:
        >>> seg = load_itl("runs/itl-tiny")  # doctest: +SKIP
        >>> seg.segment_file("scan.nii.gz", "scan_mask.nii.gz")  # doctest: +SKIP
    """
    model, cfg = load_checkpoint(checkpoint, device)
    return ITLSegmenter(model, cfg, torch.device(device))
