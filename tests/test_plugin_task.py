"""A fourth task plugs in by one registration and trains through the shared loop (CLI and API).

Everything between the two ``----`` lines is the whole task: a config, hooks with one
``train_step``, a ``train`` entry point and its registration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from medlearn import api
from medlearn.cli import main
from medlearn.engine import EngineConfig, backward_and_step, read_metrics
from medlearn.engine.loop import LoopSpec, SamplerData, TrainHooks, fit, prepare_run
from medlearn.tasks import Task, register_task, registered_tasks, unregister_task


# ---- the toy task ------------------------------------------------------------------------------
@dataclass
class LineTrain:
    out: str = "runs/line"
    max_steps: int = 2


@dataclass
class LineConfig:
    train: LineTrain = field(default_factory=LineTrain)
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(device="cpu", tensorboard=False))


class LineHooks(TrainHooks):
    def __init__(self, cfg: LineConfig, run) -> None:
        x = torch.linspace(-1, 1, 32).unsqueeze(1)
        self.acc, self.net = run.accelerator, nn.Linear(1, 1)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1)
        self.models, self.optimizers, self.schedulers = {"net": self.net}, {"sgd": self.opt}, {}
        self.data = SamplerData(TensorDataset(x, 3 * x + 1), 8, cfg.engine.seed, self.acc)

    def train_step(self, batch, step: int) -> dict[str, torch.Tensor]:
        loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
        backward_and_step(self.acc, loss, self.opt)
        return {"loss": loss.detach()}


def train_line(cfg: LineConfig) -> dict:
    run = prepare_run(cfg, cfg.train.out, cfg.engine)
    result = fit(run, LineHooks(cfg, run), LoopSpec(run.out / "checkpoints", max_steps=cfg.train.max_steps))
    run.close()
    return {"step": result.step}


LINE = Task(name="line", help="fit a line (a toy task)", schema=LineConfig, train=train_line)
# ---- end of the toy task -----------------------------------------------------------------------


def test_registered_toy_task_trains_two_steps_through_the_cli_and_the_api(tmp_path):
    register_task(LINE)
    try:
        assert "line" in registered_tasks()
        run = tmp_path / "cli_run"
        assert main(["line", "train", f"train.out={run}", "train.max_steps=2", "engine.log_every=1"]) == 0
        log = [m for m in read_metrics(run / "metrics.jsonl") if "loss" in m]
        assert [m["step"] for m in log] == [1, 2] and log[1]["loss"] < log[0]["loss"]
        assert (run / "config.yaml").is_file() and (run / "env.json").is_file()
        assert set(load_file(run / "checkpoints" / "final" / "model_net.safetensors")) == {"weight", "bias"}
        out = api.train("line", None, [f"train.out={tmp_path / 'api_run'}", "train.max_steps=2"])
        assert out == tmp_path / "api_run" and (out / "checkpoints" / "final").is_dir()
    finally:
        unregister_task("line")
    assert "line" not in registered_tasks()
