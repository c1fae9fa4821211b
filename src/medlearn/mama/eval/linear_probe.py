"""Linear probing of the image tower and the supervised loop it shares with fine-tuning.

Recipe (reference): frozen image tower, ``Linear(D -> K)`` on the pooled feature, SGD with momentum
0.9, lr 5e-4, weight decay 1e-3, cosine schedule with 100 warm-up steps, 8000 steps, class-balanced
sampling. The loop runs through the engine (accelerator: device, bf16, DDP; ``Checkpointer``:
atomic checkpoints and resume; ``MetricLogger``; ``GracefulStop``).

Improvement (switch ``cache_features``, default on): the tower is frozen, so its pooled features
are computed once for the training set and the head is trained on the cached (N, D) tensor; the
reference recomputes the tower forward for every step, which costs ~1000x more for the same head.
``cache_features: false`` reproduces it (and is the only option with image augmentation).

``standardize`` (default off = reference) z-scores features with the training mean/std before the
head; the statistics are buffers of the head, so a saved head applies them by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medlearn.engine import (
    Checkpointer,
    GracefulStop,
    MetricLogger,
    backward_and_step,
    build_scheduler,
)
from medlearn.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    """Supervised head / fine-tuning recipe (defaults = the reference's linear probe).

    Attributes:
        steps: optimizer steps (8000).
        batch_size: samples per step and process.
        lr, momentum, weight_decay: SGD (5e-4, 0.9, 1e-3).
        schedule: ``cosine`` (with linear warm-up), ``constant`` or ``step``.
        warmup_steps: linear warm-up steps (100).
        balanced: class-balanced sampling (each class drawn equally often; reference) or uniform.
        cache_features: probe only; compute the frozen features once (default) or every step.
        standardize: z-score features with training statistics before the head (off = reference).
        resume: continue from the newest checkpoint in the output folder.
    """

    steps: int = 8000
    batch_size: int = 64
    lr: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 100
    balanced: bool = True
    cache_features: bool = True
    standardize: bool = False
    resume: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"probe.steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"probe.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"probe.lr must be > 0, got {self.lr}")


class LinearHead(nn.Module):
    """``Linear(D -> K)`` with optional fixed feature standardisation.

    Shapes: (B, D) -> (B, K) logits.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.fc = nn.Linear(dim, num_classes)

    def set_standardization(self, feats: Tensor) -> None:
        """Store the per-dimension mean/std of (N, D) training features."""
        self.mean.copy_(feats.mean(0))
        self.std.copy_(feats.std(0).clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc((x - self.mean) / self.std)


class BalancedBatches:
    """Seeded batch indices: batch ``step`` is a pure function of (seed, rank, step), so resume is exact.

    With ``balanced`` each sample is drawn with probability proportional to 1 / (count of its
    class) (every class equally likely per draw, with replacement), else uniformly.

    Args:
        labels: (N,) class of each sample.
        batch_size: indices per batch.
        seed: base seed.
        balanced: class-balanced weights.
        rank: process index (each process draws its own batches).
    """

    def __init__(
        self, labels: Any, batch_size: int, seed: int = 0, balanced: bool = True, rank: int = 0
    ) -> None:
        y = torch.as_tensor(np.array(labels, dtype=np.int64))
        if y.numel() == 0:
            raise ValueError("BalancedBatches: no training samples")
        counts = torch.bincount(y).double()
        self.weights = (1.0 / counts[y]) if balanced else torch.ones(len(y), dtype=torch.double)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank

    def batch(self, step: int) -> Tensor:
        """(batch_size,) int64 indices of batch ``step``."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank * 7919 + step) % (2**63 - 1))
        return torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)

    def iter_from(self, start: int, stop: int) -> Iterator[list[int]]:
        """Batches ``start..stop-1`` as index lists (a DataLoader ``batch_sampler``)."""
        for s in range(start, stop):
            yield self.batch(s).tolist()


def recipe_signature(cfg: ProbeConfig) -> dict[str, Any]:
    """The recipe fields that change the result (not ``resume``)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "resume"}


def data_signature(labels: Any, num_classes: int) -> dict[str, Any]:
    """Size, classes and a checksum of the training labels."""
    y = np.asarray(labels, dtype=np.int64)
    return {"n": int(y.size), "classes": int(num_classes), "labels_crc": int(zlib.crc32(y.tobytes()))}


def fit_supervised(
    model: nn.Module,
    params: Iterable[nn.Parameter],
    make_batches: Callable[[int], Iterable[tuple[Tensor, Tensor]]],
    cfg: ProbeConfig,
    accelerator: Any,
    out_dir: str | Path,
    ckpt_every: int = 0,
    keep_last: int = 2,
    log_every: int = 50,
    grad_clip: float = 0.0,
    tensorboard: bool = False,
    signature: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``model`` with cross-entropy for ``cfg.steps`` SGD steps through the engine.

    Resume only continues a checkpoint written with the same ``signature`` (recipe and training
    data); a checkpoint of another recipe in ``out_dir`` is ignored with a warning (and replaced),
    never silently reused.

    Args:
        model: maps a batch input to (B, K) logits.
        params: parameters to optimise (the head only for a probe, everything for fine-tuning).
        make_batches: ``make_batches(start_step)`` -> iterable of (input, (B,) labels) from that step.
        cfg: recipe.
        accelerator: from ``build_accelerator``.
        out_dir: checkpoints under ``out_dir/checkpoints``, metrics in ``out_dir/metrics.jsonl``.
        ckpt_every: steps between periodic checkpoints (0 = final only).
    Returns:
        ``{"start_step", "steps", "final_loss", "checkpoint"}``; ``model`` is trained in place.
    """
    out_dir = Path(out_dir)
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = build_scheduler(opt, cfg.schedule, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps)
    pmodel, opt = accelerator.prepare(model, opt)
    ckpt = Checkpointer(out_dir / "checkpoints", accelerator, keep_last=keep_last)
    logger = MetricLogger(out_dir, enabled=accelerator.is_main_process, tensorboard=tensorboard)
    start = 0
    latest = ckpt.latest() if cfg.resume else None
    signature = {**recipe_signature(cfg), **(signature or {})}
    if latest is not None:
        old = torch.load(latest / "state.pt", map_location="cpu", weights_only=False).get("extra", {})
        if old.get("signature") != signature:
            log.warning("%s was trained with another recipe or data; training from scratch", latest)
            latest = None
    if latest is not None:
        start = ckpt.load(latest, {"classifier": pmodel}, {"sgd": opt}, {"lr": sched})["step"]
        log.info("resuming supervised training from %s (step %d)", latest, start)
    extra = {"signature": signature}
    step, loss_v = start, float("nan")
    loss_fn = nn.CrossEntropyLoss()
    pmodel.train()
    stopped = False
    if start < cfg.steps:
        with GracefulStop() as stop:
            for x, y in make_batches(start):
                x = x.to(accelerator.device, non_blocking=True)
                y = y.to(accelerator.device, non_blocking=True).long()
                with accelerator.accumulate(pmodel), accelerator.autocast():
                    loss = loss_fn(pmodel(x).float(), y)
                stepped = backward_and_step(accelerator, loss, opt, sched, params, grad_clip)
                if not stepped:
                    continue
                step += 1
                loss_v = float(loss.detach())
                if step % log_every == 0 or step == cfg.steps:
                    logger.log(step, loss=loss_v, lr=sched.get_last_lr()[0])
                if ckpt_every and step % ckpt_every == 0 and step < cfg.steps:
                    ckpt.save(step, {"classifier": pmodel}, {"sgd": opt}, {"lr": sched}, extra)
                if stop.requested:
                    ckpt.save(step, {"classifier": pmodel}, {"sgd": opt}, {"lr": sched}, extra)
                    stopped = True
                    break
                if step >= cfg.steps:
                    break
    path = ckpt.latest()
    if not stopped and (path is None or path.name != "final" or start == 0):
        path = ckpt.save(step, {"classifier": pmodel}, {"sgd": opt}, {"lr": sched}, extra, tag="final")
    logger.close()
    pmodel.eval()
    return {
        "start_step": start,
        "steps": step,
        "final_loss": loss_v,
        "checkpoint": str(path),
        "stopped": stopped,
    }


def feature_batches(
    feats: Tensor, labels: Tensor, sampler: BalancedBatches, total_steps: int, grad_accum: int = 1
) -> Callable[[int], Iterator[tuple[Tensor, Tensor]]]:
    """``make_batches`` over cached features: micro-batch m of optimizer step s is batch s*accum + m."""

    def make(start: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(start * grad_accum, total_steps * grad_accum):
            idx = sampler.batch(i)
            yield feats[idx], labels[idx]

    return make


@torch.no_grad()
def extract_features(
    encode: Callable[[Tensor], Tensor],
    batches: Iterable[dict[str, Any]],
    label_key: str,
    accelerator: Any = None,
) -> tuple[Tensor, Tensor, list[str]]:
    """Pooled features of every image of a loader.

    Args:
        encode: (B, 3, H, W) -> (B, D) (e.g. the frozen tower's pooled feature).
        batches: ``MammoDataset`` batches (``image``, ``labels``, ``image_id``).
        label_key: which label to return.
        accelerator: when given, images go to its device.
    Returns:
        feats (N, D) float32 CPU, labels (N,) int64, image ids.
    """
    feats, labels, ids = [], [], []
    for b in batches:
        x = b["image"]
        if accelerator is not None:
            x = x.to(accelerator.device)
            with accelerator.autocast():
                f = encode(x)
        else:
            f = encode(x)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(b["labels"][label_key]).long().cpu())
        ids += [str(i) for i in b["image_id"]]
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), []
    return torch.cat(feats), torch.cat(labels), ids


@contextlib.contextmanager
def _single_thread(enabled: bool) -> Iterator[None]:
    """Run a tiny CPU head with one intra-op thread (restored afterwards).

    A (B, D) x (D, K) step is far below the size where threads pay off; on a busy machine the
    thread hand-off dominates (measured ~10x slower per step with 2 threads under load).
    """
    if not enabled:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_probe_on_features(
    feats: Tensor,
    labels: Tensor,
    num_classes: int,
    cfg: ProbeConfig,
    accelerator: Any,
    out_dir: str | Path,
    seed: int = 0,
    ckpt_every: int = 0,
) -> tuple[LinearHead, dict[str, Any]]:
    """Train a :class:`LinearHead` on cached (N, D) features with (N,) labels in 0..K-1.

    Samples with a negative (unknown) label are ignored.
    """
    keep = labels >= 0
    feats, labels = feats[keep], labels[keep]
    if len(labels) == 0:
        raise ValueError("linear probe: no training sample has a known label")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = LinearHead(feats.shape[1], num_classes)
    if cfg.standardize:
        head.set_standardization(feats)
    sampler = BalancedBatches(labels, cfg.batch_size, seed, cfg.balanced, accelerator.process_index)
    accum = accelerator.gradient_accumulation_steps
    with _single_thread(accelerator.device.type == "cpu"):
        info = fit_supervised(
            head,
            head.parameters(),
            feature_batches(feats, labels, sampler, cfg.steps, accum),
            cfg,
            accelerator,
            out_dir,
            ckpt_every=ckpt_every,
            signature={**data_signature(labels, num_classes), "dim": int(feats.shape[1])},
        )
    return accelerator.unwrap_model(head), info


@torch.no_grad()
def predict_head(head: nn.Module, feats: Tensor, batch_size: int = 4096) -> np.ndarray:
    """(N, D) features -> (N, K) softmax probabilities (numpy)."""
    head.eval()
    dev = next(head.parameters()).device
    out = [
        torch.softmax(head(feats[i : i + batch_size].to(dev)).float(), 1).cpu()
        for i in range(0, len(feats), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0))
