"""Apply a trained checkpoint to new NIfTI volumes; masks are written on the input's grid.

The volume is preprocessed like the training data (z-score, in-plane resampling, crop/pad), segmented
slice by slice, and the foreground probability is mapped back (un-crop, bilinear resampling to
the input's in-plane size) before thresholding, so the output has the input's shape and affine.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medlearn.config import load_config
from medlearn.engine import load_weights
from medlearn.errors import DataError
from medlearn.itl.config import ITLConfig
from medlearn.itl.data import preprocess, read_volume, restore_probabilities
from medlearn.itl.evaluate import predict_probabilities
from medlearn.itl.metrics import largest_component
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


def predict_file(
    model: MultiSiteExpert, cfg: ITLConfig, src: Path, dst: Path, device: torch.device | str = "cpu"
) -> Path:
    """Segment one NIfTI file and write the uint8 mask (input shape and affine) to ``dst``."""
    image, affine, spacing = read_volume(src, "input image")
    img, _, geom = preprocess(image, spacing, cfg.data.spacing_mm, cfg.data.size)
    prob = predict_probabilities(model, img, cfg.data.context, torch.device(device), cfg.train.eval_batch)
    back = restore_probabilities(prob, geom)
    mask = (back > 0.5).astype(np.uint8)
    if cfg.train.largest_cc:
        mask = largest_component(mask)
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
