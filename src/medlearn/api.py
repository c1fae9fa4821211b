"""The stable Python surface of medlearn: presets, models, checkpoints and inference per task.

Everything here wraps the task packages (:mod:`medlearn.mrsi`, :mod:`medlearn.itl`,
:mod:`medlearn.mama`) without re-implementing their maths, so a notebook needs only::

    import medlearn
    net = medlearn.build_model("itl", "tiny")            # nn.Module from configs/itl/tiny.yaml
    seg = medlearn.load_itl("runs/itl-tiny")             # a trained checkpoint -> ITLSegmenter
    mask = seg.segment(volume, spacing=(0.5, 0.5, 3.0))  # (X, Y, Z) array -> (X, Y, Z) uint8 mask

The names below are re-exported lazily by ``medlearn`` (``medlearn.load_mrsi`` imports torch only
when first used).  Arrays in and out are numpy; torch tensors are accepted where images go in.

Presets are the YAML files ``configs/<task>/<preset>.yaml`` of the source checkout (found next to
the package, or in the folder named by the ``MEDLEARN_CONFIGS`` environment variable); a path to
any YAML file works as a preset too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medlearn import _API
from medlearn.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = list(_API)  # the one list of public names lives in medlearn/__init__.py

TASKS = ("mrsi", "itl", "mama")
CONFIGS_ENV = "MEDLEARN_CONFIGS"


# ------------------------------------------------------------------------------------------ presets
def configs_dir() -> Path:
    """The folder holding ``<task>/<preset>.yaml``: ``$MEDLEARN_CONFIGS`` or ``configs/`` of the checkout.

    Raises:
        ConfigError: when the folder does not exist (the message names the path that was tried).
    """
    env = os.environ.get(CONFIGS_ENV, "")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "configs"
    if not path.is_dir():
        raise ConfigError(
            f"preset folder '{path}' not found: run from a source checkout (configs/ next to src/) or set "
            f"{CONFIGS_ENV} to a folder with <task>/<preset>.yaml files"
        )
    return path


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"unknown task '{task}'; valid tasks: {', '.join(TASKS)}")
    return task


def list_presets(task: str) -> list[str]:
    """Names of the presets of ``task`` (``paper``, ``small``, ``tiny``, ``demo`` ...), sorted.

    Example:
        >>> "tiny" in list_presets("mrsi")
        True
    """
    folder = configs_dir() / _check_task(task)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _schema(task: str) -> type:
    if task == "mrsi":
        from medlearn.mrsi.config import MRSIConfig

        return MRSIConfig
    if task == "itl":
        from medlearn.itl.config import ITLConfig

        return ITLConfig
    from medlearn.mama.config import MamaConfig

    return MamaConfig


def _preset_path(task: str, preset: str | Path) -> Path:
    p = Path(preset)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"preset file '{p}' does not exist")
        return p
    path = configs_dir() / task / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown {task} preset '{preset}' ({path} not found); valid presets: "
            f"{', '.join(list_presets(task)) or '(none)'}"
        )
    return path


def _yaml_value(value: Any) -> str:
    """A Python value as an override string (JSON is valid YAML for numbers, strings, lists, dicts)."""
    return json.dumps(value) if not isinstance(value, Path) else json.dumps(str(value))


def load_preset(task: str, preset: str | Path = "tiny", overrides: Sequence[str] = ()) -> Any:
    """The typed config of ``task`` from a preset name (or YAML path) and dotted overrides.

    Args:
        task: ``mrsi``, ``itl`` or ``mama``.
        preset: a name in ``configs/<task>/`` (``paper``, ``small``, ``tiny``, ``demo``) or a YAML path.
        overrides: ``key=value`` strings as on the command line (``"train.epochs=1"``).
    Returns:
        ``MRSIConfig``, ``ITLConfig`` or ``MamaConfig``.
    Raises:
        ConfigError: unknown task or preset (the valid ones are listed), unknown key or bad value.

    Example:
        >>> load_preset("itl", "tiny", ["model.width=4"]).model.width
        4
    """
    from medlearn.config import load_config

    task = _check_task(task)
    return load_config(_schema(task), _preset_path(task, preset), list(overrides))


def build_model(
    task: str, preset: str | Path = "tiny", overrides: Sequence[str] = (), **model_keys: Any
) -> nn.Module:
    """A freshly initialised network of ``task`` sized by a preset (eval mode, on the CPU).

    ``model_keys`` are shortcuts for ``model.<key>=<value>`` overrides (``base_width=2``); other
    keys go in ``overrides`` as dotted strings.  What comes back, per task:

    * ``mrsi``: the generator (:class:`medlearn.mrsi.networks.MCUNet`), called as
      ``net(t1, flair, lr, n, met, lam, mask)`` with t1/flair (B, 1, 3H, 3W, 3), lr (B, 1, H, W),
      n/met (B,) int64, lam (B,) float, mask (B, 1, H, W) or None -> (B, 1, H, W);
    * ``itl``: :class:`medlearn.itl.model.MultiSiteExpert`, (B, C, H, W) -> (B, K, H, W) logits
      (C = ``data.context``; a ``model.pretrained`` file is loaded when set);
    * ``mama``: :class:`medlearn.mama.modeling.model.MamaModel` with ``encode_image`` (B, 3, S, S) -> (B, E)
      and ``encode_text`` (towers named by ``model.image.name`` / ``model.text.name``).

    Raises:
        ConfigError: unknown task, preset or key.

    Example:
        >>> import torch
        >>> net = build_model("itl", "tiny", width=4)
        >>> net(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """
    extra = [f"model.{k}={_yaml_value(v)}" for k, v in model_keys.items()]
    cfg = load_preset(task, preset, [*overrides, *extra])
    if task == "mrsi":
        from medlearn.mrsi.train import build_models

        cfg.adversarial.enabled = False  # the critic is a training-only network
        net, _ = build_models(cfg, (0, 0))
    elif task == "itl":
        from medlearn.itl.model import build_model as build_itl

        net = build_itl(cfg.model, cfg.data.context)
    else:
        from medlearn.mama.modeling.model import MamaModel

        net = MamaModel(cfg.model, cfg.loss)
    return net.eval()


def train(task: str, preset: str | Path = "tiny", overrides: Sequence[str] = ()) -> Path:
    """Run the task's own training entry point on a preset; returns the run folder.

    The same as ``medlearn <task> train --config configs/<task>/<preset>.yaml key=value ...``:
    the run folder (``train.out`` for mrsi, ``out`` for itl and mama) gets ``config.yaml``,
    ``env.json``, ``metrics.jsonl`` and ``checkpoints/``, and a second call resumes.

    Example:
        >>> run = train("itl", "tiny", ["data.root=data/itl", "out=runs/itl"])  # doctest: +SKIP
    """
    cfg = load_preset(task, preset, overrides)
    if task == "mrsi":
        from medlearn.mrsi.train import fit

        fit(cfg)
        return Path(cfg.train.out)
    if task == "itl":
        from medlearn.itl.train import run_sequence

        run_sequence(cfg)
        return Path(cfg.out)
    from medlearn.mama.train import train as train_mama

    train_mama(cfg)
    return Path(cfg.out)


# --------------------------------------------------------------------------------------------- mrsi
def _array(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != ndim:
        raise DataError(f"{name}: expected a {ndim}D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise DataError(f"{name}: values must be finite numbers")
    return arr.astype(np.float32, copy=False)


class MRSIPredictor:
    """A trained MRSI generator with array and NIfTI entry points (see :func:`load_mrsi`).

    Attributes:
        model: the generator (eval mode); config: the run's ``MRSIConfig``; device: where it runs.
    """

    def __init__(self, model: nn.Module, config: Any, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = device

    @property
    def sharpness_range(self) -> tuple[float, float]:
        """(lowest, highest) sharpness lambda seen in training; 0 = smoothest, highest PSNR."""
        a = self.config.adversarial
        if not a.enabled:
            return (0.0, 0.0)
        if a.fixed_lambda is not None:
            return (float(a.fixed_lambda), float(a.fixed_lambda))
        return (float(a.lambda_low), float(a.lambda_low + a.lambda_span))

    def super_resolve(
        self,
        lr_map: Any,
        t1: Any,
        flair: Any,
        metabolite: str = "NAA",
        lowres_matrix: int = 16,
        sharpness: float = 0.0,
        mask: Any = None,
    ) -> np.ndarray:
        """Super-resolve one metabolite map, slice by slice.

        Args:
            lr_map: (H, W, S) low-resolution map on the high-resolution grid (e.g. zero-filled), or
                (2n, 2n, S) on its acquired matrix, which is zero-filled in k-space to (H, W, S).
            t1, flair: (3H, 3W, 3S) MRI volumes on the map grid subdivided 3x.
            metabolite: ``NAA``, ``tCr``, ``tCho``, ``Glu``, ``Gln``, ``Gly``, ``Ins`` (or an alias).
            lowres_matrix: the acquired matrix 2n (even; e.g. 16 for a x4 upscaling of 64x64).
            sharpness: lambda, see :attr:`sharpness_range` (0 = smoothest).
            mask: optional (H, W, S) quality mask (non-zero = keep), else every voxel is predicted.
        Returns:
            (H, W, S) float32 in the units of ``lr_map`` (each slice is normalised by its maximum
            and scaled back).
        Raises:
            DataError: odd matrix, unknown metabolite, or shapes that do not fit together.

        Example:
            >>> import numpy as np
            >>> p = MRSIPredictor(build_model("mrsi", "tiny"), load_preset("mrsi", "tiny"), torch.device("cpu"))
            >>> lr, mri = np.ones((16, 16, 2)), np.ones((48, 48, 6))
            >>> p.super_resolve(lr, mri, mri, "NAA", lowres_matrix=8).shape
            (16, 16, 2)
        """
        from medlearn.mrsi.constants import MRI_FACTOR
        from medlearn.mrsi.predict import metabolite_from_name, predict_volume, zero_fill

        if lowres_matrix < 2 or lowres_matrix % 2:
            raise DataError(f"lowres_matrix must be an even number >= 2 (it is 2n), got {lowres_matrix}")
        met = metabolite_from_name(metabolite)
        lr = _array(lr_map, "lr_map", 3)
        t1a, fla = _array(t1, "t1", 3), _array(flair, "flair", 3)
        if t1a.shape != fla.shape:
            raise DataError(f"flair shape {fla.shape} differs from t1 shape {t1a.shape}")
        f = MRI_FACTOR
        if any(d % f for d in t1a.shape):
            raise DataError(f"t1 shape {t1a.shape} is not a multiple of {f} on every axis")
        grid = tuple(d // f for d in t1a.shape)
        if lr.shape != grid:
            if lr.shape[:2] == (lowres_matrix, lowres_matrix) and lr.shape[2] == grid[2]:
                lr = zero_fill(lr, grid[:2])
            else:
                raise DataError(
                    f"lr_map shape {lr.shape} matches neither the MRI grid / {f} = {grid} (t1 is {t1a.shape}) "
                    f"nor the low-resolution matrix {lowres_matrix}x{lowres_matrix}"
                )
        n = lowres_matrix // 2
        if n > min(grid[:2]) // 2:
            raise DataError(f"lowres_matrix {lowres_matrix} is larger than the {grid[:2]} map grid")
        m = None
        if mask is not None:
            m = np.asarray(mask)
            if m.shape != grid:
                raise DataError(f"mask shape {m.shape} differs from the map grid {grid}")
        return predict_volume(self.model, lr, t1a, fla, met, n, float(sharpness), m)

    def predict_file(
        self,
        map_path: str | Path,
        t1_path: str | Path,
        flair_path: str | Path,
        out_path: str | Path,
        metabolite: str = "NAA",
        lowres_matrix: int = 16,
        sharpness: float = 0.0,
        mask_path: str | Path | None = None,
    ) -> Path:
        """NIfTI in, NIfTI out (:func:`medlearn.mrsi.predict.predict_file`): the output keeps the map's affine.

        Example:
            >>> p = load_mrsi("runs/mrsi/tiny")  # doctest: +SKIP
            >>> p.predict_file("NAA.nii.gz", "T1.nii.gz", "FLAIR.nii.gz", "SR_NAA.nii.gz", "NAA", 16)  # doctest: +SKIP
        """
        from medlearn.mrsi.predict import predict_file

        return predict_file(self.model, map_path, t1_path, flair_path, out_path, metabolite, lowres_matrix,
                            sharpness, mask_path)  # fmt: skip

    def predict_folder(
        self,
        map_dir: str | Path,
        t1_path: str | Path,
        flair_path: str | Path,
        out_dir: str | Path,
        lowres_matrix: int = 16,
        sharpness: float = 0.0,
        mask_path: str | Path | None = None,
    ) -> list[Path]:
        """Every ``<metabolite>.nii.gz`` of ``map_dir`` -> ``out_dir`` (metabolite from the file name)."""
        from medlearn.mrsi.predict import predict_folder

        return predict_folder(self.model, map_dir, t1_path, flair_path, out_dir, lowres_matrix, sharpness,
                              mask_path)  # fmt: skip


def load_mrsi(checkpoint: str | Path, device: str | torch.device = "cpu") -> MRSIPredictor:
    """Load a trained MRSI generator: a run folder, a checkpoint folder or a ``.safetensors`` file.

    A run folder uses ``best/best``, else ``checkpoints/final``, else the latest checkpoint; the
    architecture comes from the run's ``config.yaml``.

    Raises:
        DataError: no checkpoint or no ``config.yaml`` there.

    Example:
        >>> p = load_mrsi("runs/mrsi/tiny")  # doctest: +SKIP
        >>> sr = p.super_resolve(lr_map, t1, flair, "NAA", lowres_matrix=16)  # doctest: +SKIP
    """
    from medlearn.config import load_config
    from medlearn.mrsi.config import MRSIConfig
    from medlearn.mrsi.evaluate import find_run_config, load_generator

    gen, _ = load_generator(checkpoint, device)
    cfg = load_config(MRSIConfig, find_run_config(checkpoint))  # as trained (load_generator drops the critic)
    return MRSIPredictor(gen, cfg, torch.device(device))


# ---------------------------------------------------------------------------------------------- itl
class ITLSegmenter:
    """A trained ITL segmentation model with array and NIfTI entry points (see :func:`load_itl`).

    Volumes are preprocessed like the training data (z-score, in-plane resampling to
    ``config.data.spacing_mm``, crop/pad to ``config.data.size``), segmented slice by slice and
    mapped back to the input grid; thresholded at 0.5 and reduced to the largest 3D component
    when ``config.train.largest_cc``.

    Attributes:
        model: :class:`medlearn.itl.model.MultiSiteExpert` (eval mode); config: its ``ITLConfig``.
    """

    def __init__(self, model: nn.Module, config: Any, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = device

    def probabilities(self, volume: Any, spacing: Sequence[float]) -> np.ndarray:
        """(X, Y, Z) image and its voxel spacing in mm -> (X, Y, Z) float32 foreground probability."""
        from medlearn.itl.data import preprocess, restore_probabilities
        from medlearn.itl.evaluate import predict_probabilities

        vol = _array(volume, "volume", 3)
        sp = tuple(float(s) for s in spacing)
        if len(sp) != 3 or min(sp) <= 0:
            raise DataError(f"spacing must be 3 positive values in mm (x, y, z), got {tuple(spacing)}")
        d = self.config.data
        img, _, geom = preprocess(vol, sp, d.spacing_mm, d.size)
        prob = predict_probabilities(self.model, img, d.context, self.device, self.config.train.eval_batch)
        return restore_probabilities(prob, geom)

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
            >>> import numpy as np
            >>> s = ITLSegmenter(build_model("itl", "tiny"), load_preset("itl", "tiny"), torch.device("cpu"))
            >>> s.segment(np.random.default_rng(0).normal(size=(40, 36, 5)), (2.0, 2.0, 3.0)).shape
            (40, 36, 5)
        """
        from medlearn.itl.evaluate import segment

        return segment(self.probabilities(volume, spacing), self.config.train.largest_cc)

    def segment_file(self, src: str | Path, dst: str | Path) -> Path:
        """Segment a NIfTI file; the uint8 mask at ``dst`` has the input's shape, affine and header."""
        from medlearn.itl.predict import predict_file

        return predict_file(self.model, self.config, Path(src), Path(dst), self.device)


def load_itl(checkpoint: str | Path, device: str | torch.device = "cpu") -> ITLSegmenter:
    """Load a trained ITL model: a run folder (its ``checkpoints/final``) or a checkpoint folder.

    Raises:
        DataError: no ``state.pt`` there, or a checkpoint without its config.

    Example:
        >>> seg = load_itl("runs/itl-tiny")  # doctest: +SKIP
        >>> seg.segment_file("scan.nii.gz", "scan_mask.nii.gz")  # doctest: +SKIP
    """
    from medlearn.itl.predict import load_checkpoint

    model, cfg = load_checkpoint(checkpoint, device)
    return ITLSegmenter(model, cfg, torch.device(device))


# --------------------------------------------------------------------------------------------- mama
def _images(images: Any, size: int) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim != 4 or x.shape[1] != 3:
        raise DataError(f"images: expected (B, 3, {size}, {size}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise DataError("images: values must be finite")
    return x.float()


class MamaPredictor:
    """A pre-trained MaMA model: image/text embeddings and zero-shot classification (see :func:`load_mama`).

    Images are model inputs (B, 3, S, S), S = :attr:`image_size`, normalised as in training
    (:meth:`preprocess` / :meth:`load_images` make them from [0, 1] pixels or DICOM/PNG files).

    Attributes:
        model: :class:`medlearn.mama.modeling.model.MamaModel` (eval mode); config: its ``MamaConfig``.
    """

    def __init__(self, model: nn.Module, config: Any, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = device

    @property
    def image_size(self) -> int:
        """Input side S in pixels."""
        return int(self.config.model.image.image_size)

    @property
    def logit_scale(self) -> float:
        """exp of the learned (clamped) global logit scale that multiplies cosines."""
        s = self.model.heads.logit_scale.detach().float()
        return float(s.clamp(max=self.model.max_log_scale).exp())

    @torch.no_grad()
    def encode_images(self, images: Any) -> np.ndarray:
        """(B, 3, S, S) array or tensor -> (B, E) float32 L2-normalised global image embeddings."""
        x = _images(images, self.image_size).to(self.device)
        return self.model.encode_image(x).float().cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N report sentences/prompts -> (N, E) float32 L2-normalised global text embeddings.

        Sentences are split at "." and ";" as in training (the tokenizer adds separator tokens).
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
            raise DataError("texts: expected a non-empty list of strings")
        enc = self.model.tokenizer(list(texts))
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        return self.model.encode_text(ids, mask).float().cpu().numpy()

    def zero_shot(self, images: Any, prompts: Sequence[str] | Sequence[Sequence[str]]) -> np.ndarray:
        """Class probabilities by image-prompt similarity (softmax of ``logit_scale`` x cosine).

        Args:
            images: (B, 3, S, S) model inputs.
            prompts: K class prompts shared by every image, or B lists of K prompts (one per image,
                as the paper's per-image meta prompts).
        Returns:
            (B, K) float32 probabilities (rows sum to 1).

        Example:
            >>> m = MamaPredictor(build_model("mama", "tiny"), load_preset("mama", "tiny"), torch.device("cpu"))
            >>> m.zero_shot(torch.zeros(2, 3, 32, 32), ["Findings: negative.", "Findings: mass."]).shape
            (2, 2)
        """
        from medlearn.mama.eval.zero_shot import zero_shot_logits

        img = torch.from_numpy(self.encode_images(images))
        if prompts and all(isinstance(p, str) for p in prompts):
            cls = torch.from_numpy(self.encode_texts(list(prompts)))  # (K, E)
        else:
            rows = [list(p) for p in prompts]
            k = len(rows[0]) if rows else 0
            if len(rows) != img.shape[0] or k == 0 or any(len(r) != k for r in rows):
                raise DataError(
                    f"prompts: expected K strings, or {img.shape[0]} lists of the same K strings (one per image)"
                )
            cls = torch.from_numpy(self.encode_texts([p for r in rows for p in r])).view(len(rows), k, -1)
        logits = zero_shot_logits(img, cls, self.logit_scale)
        return torch.softmax(logits, dim=1).numpy()

    def preprocess(self, pixels: Any) -> np.ndarray:
        """(H, W) grey image in [0, 1] -> (3, S, S) model input (Otsu crop, resize, normalise)."""
        from medlearn.mama.data.transforms import EvalTransform

        img = _array(pixels, "pixels", 2)
        return EvalTransform(self.image_size)(img).numpy()

    def load_images(self, paths: Sequence[str | Path], window: str = "voi") -> np.ndarray:
        """DICOM or PNG files -> (B, 3, S, S) model inputs (the pipeline of ``medlearn mama predict``).

        Raises:
            DataError: a file is missing or unreadable (the message names it).
        """
        from medlearn.mama.eval.predict import read_input

        return np.stack([self.preprocess(read_input(Path(p), window).pixels) for p in paths])


def load_mama(checkpoint: str | Path, device: str | torch.device = "cpu") -> MamaPredictor:
    """Load a pre-trained MaMA model: a checkpoint folder or a run folder (its latest checkpoint).

    The towers are rebuilt from the run's ``config.yaml`` (hub names or local folders there must
    be reachable), the image tower and heads read from safetensors and the LoRA adapter applied.

    Raises:
        DataError: no checkpoint, weights or run config there.

    Example:
        >>> m = load_mama("runs/mama/checkpoints/final")  # doctest: +SKIP
        >>> m.zero_shot(images, ["Breast composition: fatty.", "Breast composition: dense."])  # doctest: +SKIP
    """
    from medlearn.mama.eval.evaluate import load_pretrained

    model, cfg = load_pretrained(checkpoint, device)
    return MamaPredictor(model, cfg, torch.device(device))
