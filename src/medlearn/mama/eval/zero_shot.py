"""Zero-shot classification with per-image prompts.

Each test image gets one prompt per class: its own *unmasked* meta segments (procedure, reason,
patient, image info) followed by a class-specific tail (density: the breast-composition segment of
class k; BI-RADS: findings + impression + assessment of category k). RSNA cancer uses the two
fixed prompts ``report_text.RSNA_PROMPTS`` (negative/benign, suspicious/malignant). The score of
class k is ``logit_scale * cos(image embedding, prompt-k embedding)``; the prediction is the argmax
and the class probabilities are the softmax of the scores.

Prompts repeat across images (many share their meta fields), so each distinct prompt is encoded
once and cached for the whole evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

TASK_CLASSES = {"birads": 7, "density": 4, "cancer": 2}


class ZeroShotEncoder(Protocol):
    """What zero-shot needs from a pre-trained model (see ``evaluate.load_encoder``)."""

    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, E) global image embeddings (any norm)."""

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """B strings -> (B, E) global text embeddings (any norm)."""

    @property
    def logit_scale(self) -> float:
        """The learned global scale exp(s) (multiplies cosines)."""


def zero_shot_logits(image_emb: Tensor, class_emb: Tensor, logit_scale: float | Tensor) -> Tensor:
    """Scores = logit_scale x cosine.

    Args:
        image_emb: (N, E) image embeddings.
        class_emb: (K, E) shared prompts, or (N, K, E) per-image prompts.
        logit_scale: multiplier (exp of the learned log-scale).
    Returns:
        (N, K) logits.
    """
    v = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    t = torch.nn.functional.normalize(class_emb.float(), dim=-1)
    if t.ndim == 2:
        cos = v @ t.T
    elif t.ndim == 3:
        if t.shape[0] != v.shape[0]:
            raise ValueError(f"{v.shape[0]} images but per-image prompts for {t.shape[0]}")
        cos = torch.einsum("ne,nke->nk", v, t)
    else:
        raise ValueError(f"class_emb must be (K, E) or (N, K, E), got {tuple(t.shape)}")
    return float(logit_scale) * cos


def prompts_for_rows(
    rows: Iterable[Mapping[str, Any]], task: str, builder: Any, rsna_prompts: Sequence[str] | None = None
) -> list[list[str]]:
    """One list of K prompts per row: ``builder.zero_shot_prompts(row, task)``, or the RSNA pair for cancer.

    Raises:
        ValueError: for an unknown task.
    """
    if task not in TASK_CLASSES:
        raise ValueError(f"zero-shot task {task!r}: expected one of {sorted(TASK_CLASSES)}")
    if task == "cancer":
        if rsna_prompts is None:
            from medlearn.mama.data.report_text import RSNA_PROMPTS

            rsna_prompts = RSNA_PROMPTS
        return [list(rsna_prompts) for _ in rows]
    return [list(builder.zero_shot_prompts(row, task)) for row in rows]


class PromptCache:
    """Encodes each distinct prompt once: ``embed(prompts)`` -> (len, E) on CPU float32."""

    def __init__(self, encode: Callable[[Sequence[str]], Tensor], batch_size: int = 64) -> None:
        self.encode = encode
        self.batch_size = batch_size
        self._cache: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self._cache)

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> Tensor:
        new = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        for i in range(0, len(new), self.batch_size):
            chunk = new[i : i + self.batch_size]
            emb = self.encode(chunk).detach().float().cpu()
            for p, e in zip(chunk, emb):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])


@torch.no_grad()
def zero_shot_batch(
    encoder: ZeroShotEncoder, images: Tensor, prompts: Sequence[Sequence[str]], cache: PromptCache
) -> Tensor:
    """(B, 3, H, W) images and B lists of K prompts -> (B, K) logits on CPU."""
    k = len(prompts[0])
    if any(len(p) != k for p in prompts):
        raise ValueError("every image needs the same number of class prompts")
    img = encoder.encode_images(images).float().cpu()
    flat = [p for row in prompts for p in row]
    txt = cache.embed(flat).view(len(prompts), k, -1)
    return zero_shot_logits(img, txt, encoder.logit_scale)


@torch.no_grad()
def run_zero_shot(
    encoder: ZeroShotEncoder,
    batches: Iterable[Mapping[str, Any]],
    rows_by_id: Mapping[str, Mapping[str, Any]],
    task: str,
    builder: Any,
    label_key: str | None = None,
) -> dict[str, Any]:
    """Zero-shot over a loader of ``MammoDataset`` batches.

    Args:
        encoder: image/text encoders and logit scale.
        batches: dicts with ``image`` (B, 3, H, W), ``image_id`` (B strings), ``labels`` {task: (B,)}.
        rows_by_id: per-image table rows keyed by ``image_id`` (for the prompts' meta fields).
        task: ``birads``, ``density`` or ``cancer``.
        builder: a ``ReportBuilder`` (unused for cancer).
    Returns:
        ``{"image_id": [N], "labels": (N,) int64, "logits": (N, K), "probs": (N, K)}`` (numpy).
    """
    label_key = label_key or task
    cache = PromptCache(encoder.encode_texts)
    ids: list[str] = []
    labels, logits = [], []
    for batch in batches:
        bids = [str(i) for i in batch["image_id"]]
        rows = [rows_by_id[i] for i in bids]
        prompts = prompts_for_rows(rows, task, builder)
        logits.append(zero_shot_batch(encoder, batch["image"], prompts, cache))
        labels.append(torch.as_tensor(batch["labels"][label_key]).cpu())
        ids += bids
    log.info("zero-shot %s: %d images, %d distinct prompts encoded", task, len(ids), len(cache))
    lg = torch.cat(logits) if logits else torch.zeros(0, TASK_CLASSES[task])
    return {
        "image_id": ids,
        "labels": torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64),
        "logits": lg.numpy(),
        "probs": torch.softmax(lg, dim=1).numpy(),
    }
