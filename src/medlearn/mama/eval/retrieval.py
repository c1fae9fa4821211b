"""Image <-> report retrieval top-k on a validation set (the pre-training health metric).

Templated reports repeat: several images share an identical report.  A retrieved item counts as a
hit when its report text equals the query's report (``keys``), which reduces to "the paired item is
retrieved" when all reports differ.  Pass ``keys=None`` for the strict index-based definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from medlearn.mama.modeling.losses import report_keys


def retrieval_topk(
    img: Tensor, txt: Tensor, keys: Tensor | None = None, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k retrieval accuracy both ways.

    Args:
        img, txt: (N, E) embeddings of paired images and reports (row i of each is a pair).
        keys: optional (N,) report keys; items with equal keys count as correct matches.
        ks: the k values.
    Returns:
        ``{"i2t_top{k}": ..., "t2i_top{k}": ...}``, fractions in [0, 1].
    """
    n = img.shape[0]
    if txt.shape[0] != n:
        raise ValueError(f"retrieval needs paired embeddings, got {n} images and {txt.shape[0]} reports")
    keys = torch.arange(n) if keys is None else keys.cpu()
    sim = img.float().cpu() @ txt.float().cpu().T  # (N images, N reports)
    same = keys[:, None] == keys[None, :]  # (N, N): report of image i equals report j
    out: dict[str, float] = {}
    for k in ks:
        kk = min(k, n)
        top_t = sim.topk(kk, dim=1).indices  # reports for each image
        out[f"i2t_top{k}"] = same.gather(1, top_t).any(dim=1).float().mean().item()
        top_i = sim.T.topk(kk, dim=1).indices  # images for each report
        out[f"t2i_top{k}"] = same.T.gather(1, top_i).any(dim=1).float().mean().item()
    return out


@torch.no_grad()
def embed_batches(
    model: Any, batches: Iterable[dict[str, Any]], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Embed (image, report) pairs with ``model.encode_image`` / ``encode_text`` in eval mode.

    Args:
        model: an (unwrapped) :class:`~medlearn.mama.modeling.model.MamaModel`.
        batches: collated batches with ``image`` (B, 3, H, W) and ``report`` (list of str).
        device: where to run.
    Returns:
        image embeddings (N, E), report embeddings (N, E), report keys (N,), all on the CPU.
    """
    was_training = model.training
    model.eval()
    imgs, txts, keys = [], [], []
    for batch in batches:
        enc = model.tokenizer(list(batch["report"]))
        imgs.append(model.encode_image(batch["image"].to(device)).float().cpu())
        txts.append(
            model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device)).float().cpu()
        )
        keys.append(report_keys(batch["report"]))
    model.train(was_training)
    return torch.cat(imgs), torch.cat(txts), torch.cat(keys)
