"""``medlearn mama predict``: class probabilities for new mammograms (DICOM or PNG), per image and per breast.

Inputs are files and/or folders (searched recursively for ``*.dcm``, ``*.dicom``, ``*.png``). Each
image goes through the evaluation pipeline of training: DICOM -> [0, 1] (modality LUT, VOI window,
MONOCHROME1 inversion; ``prepare.dicom_to_unit``) or 8/16-bit PNG -> [0, 1], then Otsu crop, resize
and normalisation (``transforms.EvalTransform``).

Classifier: zero-shot with the task's prompts (default; the meta fields the DICOM header provides,
laterality and view, go into the per-image prompts, the rest reads "unknown"), or a head trained
by ``medlearn mama evaluate`` (``--head EVAL_DIR``: linear probe or fine-tuned classifier).

A file that cannot be read is listed in the CSV (``status=error`` and the message) and in the log,
and does not stop the run (``strict=True`` raises instead). Per-breast rows (max over the breast's
views; ``<out stem>_breast.csv``) group images by (patient, laterality): patient from the DICOM
PatientID, else the parent folder name (RSNA layout ``<patient>/<image>.dcm``).

:class:`MamaPredictor` (from :func:`load_mama`, also ``medlearn.load_mama``) is the Python entry
point: embeddings, zero-shot probabilities, and the same file preprocessing on arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medlearn.errors import ConfigError, DataError
from medlearn.mama.eval.zero_shot import TASK_CLASSES

log = logging.getLogger(__name__)

SUFFIXES = (".dcm", ".dicom", ".png")
CLASS_LABELS = {
    "density": ["A", "B", "C", "D"],
    "birads": [str(k) for k in range(7)],
    "cancer": ["negative", "cancer"],
}
TAIL_SENTENCE = {"density": ("Breast composition",), "birads": ("Findings",), "cancer": ("Findings",)}


def collect_inputs(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly (any suffix) plus the DICOM/PNG files under named folders, sorted, unique."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
        else:
            out.append(p)  # missing files are reported as errors later, not here
    return list(dict.fromkeys(out))


@dataclass
class InputImage:
    """One readable input: pixels in [0, 1] and what the header says."""

    path: Path
    pixels: np.ndarray
    patient_id: str
    laterality: str
    view: str
    age: float


def read_input(path: Path, window: str = "voi") -> InputImage:
    """Read a DICOM (any suffix but .png) or PNG file.

    Raises:
        DataError: missing, unreadable or non-image file (the message names the file).
    """
    from medlearn.mama.data.prepare import dicom_to_unit, load_image

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".png":
        return InputImage(path, load_image(path), path.parent.name, "", "", float("nan"))
    from medlearn.io.dicom import read_dicom_header

    header = read_dicom_header(path)
    pixels = dicom_to_unit(path, window)
    patient, age = path.parent.name, float("nan")
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True)
        patient = str(getattr(ds, "PatientID", "") or patient)
        age_txt = str(getattr(ds, "PatientAge", "") or "")
        if age_txt[:3].isdigit():
            age = float(age_txt[:3])
    except Exception as exc:  # header extras are optional: the pixels were already read  # noqa: BLE001
        log.debug("%s: no PatientID/PatientAge (%s)", path, exc)
    return InputImage(path, pixels, patient, header.laterality or "", header.view or "", age)


def _meta_row(img: InputImage) -> dict[str, Any]:
    return {"laterality": img.laterality, "view": img.view, "age": img.age, "image_type": "2D"}


def load_head(eval_dir: str | Path, model: nn.Module, task: str) -> nn.Module:
    """The classifier trained by ``medlearn mama evaluate`` in ``eval_dir`` (linear probe or fine-tune).

    Returns a module mapping (B, 3, S, S) images to (B, K) logits.

    Raises:
        DataError: no trained classifier in ``eval_dir``, or one for another task.
    """
    import yaml

    from medlearn.engine import load_weights
    from medlearn.mama.eval.finetune import TowerClassifier

    eval_dir = Path(eval_dir)
    cfg_file = eval_dir / "eval_config.yaml"
    if not cfg_file.is_file():
        raise DataError(f"--head {eval_dir}: no eval_config.yaml (not an output of `medlearn mama evaluate`)")
    ecfg = yaml.safe_load(cfg_file.read_text())
    if ecfg.get("task") != task:
        raise DataError(f"--head {eval_dir}: trained for task '{ecfg.get('task')}', not '{task}'")
    mode = ecfg.get("mode")
    sub = {"linear-probe": "probe", "finetune": "finetune"}.get(mode)
    if sub is None:
        raise DataError(f"--head {eval_dir}: mode '{mode}' has no trained head")
    ckpt = eval_dir / sub / "checkpoints" / "final"
    clf = TowerClassifier(
        model.image, int(model.image.width), TASK_CLASSES[task], freeze_tower=(mode == "linear-probe")
    )
    f = ckpt / "model_classifier.safetensors"
    if not f.is_file():
        raise DataError(f"--head {eval_dir}: no trained classifier at {f}")
    if mode == "linear-probe" and ecfg.get("probe", {}).get("cache_features", True):
        load_weights(clf.head, ckpt, "classifier")  # the cached-feature probe saved the head alone
    else:
        load_weights(clf, ckpt, "classifier")
    return clf.eval()


def _pick_tail_sentence(report: str, task: str) -> int:
    from medlearn.mama.eval.localisation import pick_sentence, split_sentences

    return pick_sentence(split_sentences(report), TAIL_SENTENCE[task])


@torch.no_grad()
def predict_files(
    paths: Sequence[str | Path],
    model: nn.Module,
    image_size: int,
    task: str,
    head: nn.Module | None = None,
    batch_size: int = 16,
    window: str = "voi",
    heatmap_dir: str | Path | None = None,
    strict: bool = False,
    legend: Any = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image and per-breast probability tables for ``paths`` (files or folders).

    Returns:
        (images, breasts): ``images`` has one row per input with ``file``, ``status`` (ok/error),
        ``error``, ids, ``p_<class>`` columns, ``pred``; ``breasts`` one row per (patient, laterality).
    """
    from medlearn.mama.data.report_text import ReportBuilder
    from medlearn.mama.data.transforms import EvalTransform
    from medlearn.mama.eval.evaluate import MamaEncoder
    from medlearn.mama.eval.localisation import save_overlay, sentence_maps
    from medlearn.mama.eval.zero_shot import PromptCache, prompts_for_rows, zero_shot_batch

    if task not in TASK_CLASSES:
        raise ConfigError(f"task='{task}' is not one of {', '.join(TASK_CLASSES)}")
    files = collect_inputs(paths)
    if not files:
        raise DataError(f"no DICOM/PNG input found in {list(map(str, paths))}")
    names = CLASS_LABELS[task]
    enc = MamaEncoder(model)
    builder = ReportBuilder(legend)
    cache = PromptCache(enc.encode_texts)
    tf = EvalTransform(image_size)
    rows: list[dict[str, Any]] = []
    n_bad = 0
    for start in range(0, len(files), batch_size):
        good: list[InputImage] = []
        for f in files[start : start + batch_size]:
            try:
                good.append(read_input(f, window))
            except DataError as exc:
                if strict:
                    raise
                n_bad += 1
                log.warning("skipped %s", exc)
                rows.append({"file": str(f), "image_id": f.stem, "status": "error", "error": str(exc)})
        if not good:
            continue
        x = torch.stack([tf(g.pixels) for g in good]).to(enc.device)
        prompts = prompts_for_rows([_meta_row(g) for g in good], task, builder)
        if head is None:
            logits = zero_shot_batch(enc, x, prompts, cache)
        else:
            logits = head(x).float().cpu()
        probs = torch.softmax(logits, dim=1).numpy()
        for g, p in zip(good, probs):
            row = {"file": str(g.path), "image_id": g.path.stem, "status": "ok", "error": "",
                   "patient_id": g.patient_id, "laterality": g.laterality, "view": g.view}  # fmt: skip
            row.update({f"p_{n}": float(v) for n, v in zip(names, p)})
            row["pred"] = names[int(p.argmax())]
            rows.append(row)
        if heatmap_dir is not None:
            texts = [pr[int(p.argmax())] for pr, p in zip(prompts, probs)]
            idx = [_pick_tail_sentence(t, task) for t in texts]
            for g, xi, m in zip(good, x.cpu(), sentence_maps(enc, x, texts, idx)):
                save_overlay(
                    xi.numpy(),
                    m,
                    Path(heatmap_dir) / f"{g.path.parent.name}_{g.path.stem}.png",
                    title=g.path.name,
                )
    images = pd.DataFrame(rows)
    for c in ("patient_id", "laterality", "view", *[f"p_{n}" for n in names], "pred"):
        if c not in images.columns:
            images[c] = np.nan if c.startswith("p_") else ""
    images = images.sort_values("file", kind="stable").reset_index(drop=True)
    breasts = breast_table(images, names)
    if n_bad:
        log.warning("%d of %d input file(s) could not be read (status=error in the CSV)", n_bad, len(files))
    return images, breasts


def breast_table(images: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Max over each breast's views of the class probabilities (renormalised for > 2 classes)."""
    from medlearn.mama.eval.metrics import aggregate_by_breast

    cols = [f"p_{n}" for n in names]
    ok = images[(images["status"] == "ok") & (images["laterality"].astype(str) != "")].copy()
    if ok.empty:
        return pd.DataFrame(columns=["patient_id", "laterality", *cols, "n_views", "pred"])
    ok["_label"] = 0
    br = aggregate_by_breast(ok, cols, "_label", how="max").drop(columns="_label")
    br["pred"] = [names[i] for i in br[cols].to_numpy().argmax(1)]
    return br


# ------------------------------------------------------------------------------------ Python API
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
        from medlearn.mama.eval.evaluate import MamaEncoder

        self.model = model
        self.config = config
        self.device = device
        self._encoder = MamaEncoder(model, device)

    @property
    def image_size(self) -> int:
        """Input side S in pixels."""
        return int(self.config.model.image.image_size)

    @property
    def logit_scale(self) -> float:
        """exp of the learned (clamped) global logit scale that multiplies cosines."""
        return self._encoder.logit_scale

    def encode_images(self, images: Any) -> np.ndarray:
        """(B, 3, S, S) array or tensor -> (B, E) float32 L2-normalised global image embeddings."""
        return self._encoder.encode_images(_images(images, self.image_size)).float().cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N report sentences/prompts -> (N, E) float32 L2-normalised global text embeddings.

        Sentences are split at "." and ";" as in training (the tokenizer adds separator tokens).
        """
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
            raise DataError("texts: expected a non-empty list of strings")
        return self._encoder.encode_texts(list(texts)).float().cpu().numpy()

    def zero_shot(self, images: Any, prompts: Sequence[str] | Sequence[Sequence[str]]) -> np.ndarray:
        """Class probabilities by image-prompt similarity (softmax of ``logit_scale`` x cosine).

        Args:
            images: (B, 3, S, S) model inputs.
            prompts: K class prompts shared by every image, or B lists of K prompts (one per image,
                as the paper's per-image meta prompts).
        Returns:
            (B, K) float32 probabilities (rows sum to 1).

        Example:
            >>> from medlearn import build_model, load_preset
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
        from medlearn.io.arrays import as_float_array
        from medlearn.mama.data.transforms import EvalTransform

        return EvalTransform(self.image_size)(as_float_array(pixels, "pixels", 2)).numpy()

    def load_images(self, paths: Sequence[str | Path], window: str = "voi") -> np.ndarray:
        """DICOM or PNG files -> (B, 3, S, S) model inputs (the pipeline of ``medlearn mama predict``).

        Raises:
            DataError: a file is missing or unreadable (the message names it).
        """
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
