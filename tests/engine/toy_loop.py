"""A toy task on the shared loop: the engine tests (resume, DDP) and the plug-in test use it.

The task itself is the ~20 lines from ``ToyConfig`` to ``train``: a config, hooks with one
``train_step``, and a ``train`` entry point; :data:`TOY_TASK` registers it like the built-in tasks.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from medlearn.engine import EngineConfig, backward_and_step, build_scheduler, seed_everything
from medlearn.engine.loop import LoopSpec, SamplerData, TrainHooks, fit, prepare_run
from medlearn.errors import DataError
from medlearn.tasks import Task


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


# ----------------------------------------------------------------------------- the toy task
@dataclass
class ToyTrain:
    out: str = "runs/toy"
    max_steps: int = 2
    batch_size: int = 8
    shuffle: bool = True
    data: str = ""  # a torch file holding (x, y); empty = make_data()


@dataclass
class ToyConfig:
    train: ToyTrain = field(default_factory=ToyTrain)
    engine: EngineConfig = field(
        default_factory=lambda: EngineConfig(device="cpu", seed=7, tensorboard=False)
    )


def read_data(path: str) -> TensorDataset:
    """The (x, y) pair saved in ``path`` with ``torch.save``."""
    try:
        x, y = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise DataError(f"toy data file '{path}' cannot be read: {exc}") from exc
    return TensorDataset(x, y)


class ToyHooks(TrainHooks):
    def __init__(self, cfg: ToyConfig, run, kill_at: int = 0) -> None:
        seed_everything(cfg.engine.seed)
        model, opt = make_model(), None
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        self.sched = build_scheduler(opt, "cosine", total_steps=cfg.train.max_steps, warmup_steps=2)
        self.acc, self.kill_at = run.accelerator, kill_at
        self.model, self.opt = self.acc.prepare(model, opt)
        self.models, self.optimizers, self.schedulers = (
            {"model": self.model},
            {"opt": self.opt},
            {"sched": self.sched},
        )
        t = cfg.train
        if run.is_main:  # like a task that writes its split before reading every item
            (run.out / "data.txt").parent.mkdir(parents=True, exist_ok=True)
            (run.out / "data.txt").write_text(t.data or "make_data()")
        dataset = read_data(t.data) if t.data else make_data()
        self.data = SamplerData(dataset, t.batch_size, cfg.engine.seed, self.acc, shuffle=t.shuffle)

    def train_step(self, batch, step: int) -> dict[str, torch.Tensor]:
        x, y = batch
        loss = nn.functional.mse_loss(self.model(x).squeeze(1), y)
        backward_and_step(self.acc, loss, self.opt, self.sched, self.model.parameters(), grad_clip=1.0)
        return {"loss": loss.detach()}

    def on_checkpoint(self, path: Path) -> None:
        if self.kill_at and path.name == f"step_{self.kill_at:08d}":
            raise Killed(f"simulated kill after {path.name}")


def train(cfg: ToyConfig, kill_at: int = 0) -> dict:
    """Train the toy; ``kill_at`` (tests) crashes right after the checkpoint of that step."""
    with prepare_run(cfg, cfg.train.out, cfg.engine) as run:
        hooks = ToyHooks(cfg, run, kill_at)
        result = fit(run, hooks, LoopSpec(run.out / "checkpoints", max_steps=cfg.train.max_steps))
    return {"step": result.step, "final": str(result.final), "signal": result.signal}


TOY_TASK = Task(
    name="toy", help="a linear regression on the shared loop (tests)", schema=ToyConfig, train=train
)


# ------------------------------------------------------------------ helpers of the engine tests
def run_toy(
    out: Path,
    total_steps: int,
    ckpt_every: int = 0,
    kill_at: int | None = None,
    resume: bool = False,
    batch_size: int = 8,
    shuffle: bool = True,
    grad_accum_steps: int = 1,
    keep_last: int = 2,
) -> dict[str, torch.Tensor]:
    """Train the toy task through the shared loop; the final weights (read back from the checkpoint)."""
    cfg = toy_config(out, total_steps, ckpt_every, batch_size, shuffle, grad_accum_steps, keep_last)
    if not resume and (out / "checkpoints").exists():
        raise RuntimeError(f"{out} already holds checkpoints")
    summary = train(cfg, kill_at or 0)
    return load_file(Path(summary["final"]) / "model_model.safetensors")


def toy_config(
    out: Path,
    total_steps: int,
    ckpt_every: int = 0,
    batch_size: int = 8,
    shuffle: bool = True,
    grad_accum_steps: int = 1,
    keep_last: int = 2,
) -> ToyConfig:
    engine = EngineConfig(
        device="cpu", seed=7, ckpt_every=ckpt_every, grad_accum_steps=grad_accum_steps, tensorboard=False,
        progress=False, keep_last=keep_last,
    )  # fmt: skip
    return ToyConfig(ToyTrain(str(out), total_steps, batch_size, shuffle), engine)
