"""A small training loop built from the engine's blocks, used by the engine tests (and the DDP script)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medlearn.engine import (
    Checkpointer,
    EngineConfig,
    MetricLogger,
    ResumableSampler,
    backward_and_step,
    build_accelerator,
    build_scheduler,
    seed_everything,
)


class Killed(RuntimeError):
    """Simulates a crash right after a checkpoint."""


def make_data(n: int = 64, seed: int = 123) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x @ torch.randn(6, 1, generator=g)).squeeze(1) + 0.1 * torch.randn(n, generator=g)
    return TensorDataset(x, y)


def make_model() -> nn.Module:
    # dropout makes the result depend on the RNG state, which resume must restore; the DDP test
    # turns it off (MEDLEARN_TOY_DROPOUT=0) because each process draws its own masks
    p = float(os.environ.get("MEDLEARN_TOY_DROPOUT", "0.2"))
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 1))


def train(
    out: Path,
    total_steps: int,
    ckpt_every: int = 0,
    kill_at: int | None = None,
    resume: bool = False,
    batch_size: int = 8,
    shuffle: bool = True,
    grad_accum_steps: int = 1,
) -> nn.Module:
    """Train ``total_steps`` optimizer steps; optionally crash after the checkpoint at ``kill_at``."""
    cfg = EngineConfig(
        device="cpu", seed=7, ckpt_every=ckpt_every, grad_accum_steps=grad_accum_steps, tensorboard=False
    )
    acc = build_accelerator(cfg)
    seed_everything(cfg.seed)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = build_scheduler(opt, "cosine", total_steps=total_steps, warmup_steps=2)
    data = make_data()
    sampler = ResumableSampler(
        len(data),
        seed=cfg.seed,
        shuffle=shuffle,
        rank=acc.process_index,
        world_size=acc.num_processes,
        drop_last=True,
    )
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler)
    model, opt = acc.prepare(model, opt)
    ckpt = Checkpointer(out / "checkpoints", acc, keep_last=2)
    logger = MetricLogger(out, enabled=acc.is_main_process, tensorboard=False)
    micro = 0  # micro-batches consumed
    if resume and ckpt.latest() is not None:
        micro = ckpt.load(ckpt.latest(), {"model": model}, {"opt": opt}, {"sched": sched})["extra"]["micro"]
    per_epoch = len(loader)
    step = micro // grad_accum_steps
    while step < total_steps:
        epoch, start = divmod(micro, per_epoch)
        sampler.set_epoch(epoch, start * batch_size)
        for x, y in loader:
            with acc.accumulate(model):
                loss = nn.functional.mse_loss(model(x).squeeze(1), y)
                stepped = backward_and_step(acc, loss, opt, sched, model.parameters(), grad_clip=1.0)
            micro += 1
            if stepped:
                step += 1
                logger.log(step, loss=loss.detach(), lr=sched.get_last_lr()[0])
                if ckpt_every and step % ckpt_every == 0:
                    ckpt.save(step, {"model": model}, {"opt": opt}, {"sched": sched}, extra={"micro": micro})
                    if kill_at is not None and step == kill_at:
                        raise Killed(f"simulated kill after step {step}")
            if step >= total_steps:
                break
    ckpt.save(step, {"model": model}, {"opt": opt}, {"sched": sched}, extra={"micro": micro}, tag="final")
    return acc.unwrap_model(model)
