"""Supervised classification on images: full fine-tuning of the image tower.

The classifier is the pre-trained image tower followed by a linear head on its pooled feature.
Fine-tuning trains both with the linear-probe SGD recipe (reference); with ``freeze_tower=True``
the same code is the reference's uncached linear probe (tower frozen and kept in eval mode,
forward recomputed every step, training augmentation applied).

Batches are class-balanced and seeded per step (:class:`~medlearn.mama.eval.linear_probe.BalancedBatches`),
so a resumed run sees the same images as an uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from medlearn.mama.eval.linear_probe import (
    BalancedBatches,
    LinearHead,
    ProbeConfig,
    data_signature,
    fit_supervised,
)

log = logging.getLogger(__name__)


class TowerClassifier(nn.Module):
    """Image tower + :class:`LinearHead` on the pooled feature. (B, 3, H, W) -> (B, K) logits.

    Args:
        tower: module returning an object with ``.pooled`` (B, D).
        dim: D.
        num_classes: K.
        freeze_tower: no gradient to the tower, which stays in eval mode.
    """

    def __init__(self, tower: nn.Module, dim: int, num_classes: int, freeze_tower: bool = False) -> None:
        super().__init__()
        self.tower = tower
        self.head = LinearHead(dim, num_classes)
        self.freeze_tower = freeze_tower
        if freeze_tower:
            tower.requires_grad_(False)

    def train(self, mode: bool = True) -> TowerClassifier:
        super().train(mode)
        if self.freeze_tower:
            self.tower.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        if self.freeze_tower:
            with torch.no_grad():
                feats = self.tower(images).pooled
        else:
            feats = self.tower(images).pooled
        return self.head(feats.float())


def _image_batches(loader_factory: Any, task: str) -> Iterator[tuple[Tensor, Tensor]]:
    for b in loader_factory:
        yield b["image"], torch.as_tensor(b["labels"][task]).long()


@torch.no_grad()
def predict_images(
    model: nn.Module, loader: DataLoader, device: torch.device, autocast: Any = None
) -> np.ndarray:
    """(N, K) softmax probabilities of a classifier over a loader of ``MammoDataset`` batches."""
    model.eval()
    out = []
    for b in loader:
        x = b["image"].to(device)
        if autocast is not None:
            with autocast():
                lg = model(x)
        else:
            lg = model(x)
        out.append(torch.softmax(lg.float(), dim=1).cpu())
    return torch.cat(out).numpy()


def train_image_classifier(
    tower: nn.Module,
    dim: int,
    num_classes: int,
    train: pd.DataFrame,
    test: pd.DataFrame,
    image_root: Path,
    image_size: int,
    task: str,
    cfg: ProbeConfig,
    accelerator: Any,
    out_dir: str | Path,
    freeze_tower: bool = False,
    batch_size: int = 32,
    workers: int = 0,
    seed: int = 0,
    ckpt_every: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train tower + head on ``train`` rows, then return (test probabilities (N, K), training info).

    Training items use the dataset's training transforms (augmentation); test items the
    evaluation transforms. Batches of ``cfg.batch_size`` are class-balanced when ``cfg.balanced``.
    """
    from medlearn.mama.data.dataset import MammoDataset, collate_mammo

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TowerClassifier(tower, dim, num_classes, freeze_tower)
    labels = train[task].astype(int).to_numpy()
    sampler = BalancedBatches(labels, cfg.batch_size, seed, cfg.balanced, accelerator.process_index)
    ds = MammoDataset(train.reset_index(drop=True), image_root, train=True, image_size=image_size)
    accum = accelerator.gradient_accumulation_steps

    def make(start: int) -> Iterator[tuple[Tensor, Tensor]]:
        batches = list(sampler.iter_from(start * accum, cfg.steps * accum))
        loader = DataLoader(ds, batch_sampler=batches, num_workers=workers, collate_fn=collate_mammo)
        return _image_batches(loader, task)

    params = list(model.head.parameters()) if freeze_tower else list(model.parameters())
    fp = {**data_signature(labels, num_classes), "freeze_tower": freeze_tower, "image_size": image_size}
    info = fit_supervised(model, params, make, cfg, accelerator, out_dir, ckpt_every=ckpt_every, signature=fp)
    model = accelerator.unwrap_model(model)
    test_ds = MammoDataset(test.reset_index(drop=True), image_root, train=False, image_size=image_size)
    loader = DataLoader(
        test_ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_mammo
    )
    probs = predict_images(model, loader, accelerator.device, accelerator.autocast)
    return probs, info
