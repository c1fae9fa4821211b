"""The one training loop, shared by every task.

A task describes *what* one step does; this module does *when* and *how often*::

    run = prepare_run(cfg, cfg.train.out, cfg.engine)       # accelerator, run folder, provenance, logger
    hooks = MyTaskHooks(cfg, run)                            # models, optimizers, data, train_step
    result = fit(run, hooks, LoopSpec.from_train(cfg.train))

:func:`fit` reads top to bottom: resume from the newest checkpoint, then for every epoch ask the
task's :class:`EpochData` for this rank's batches (a pure function of seed, epoch and position, so
a resumed run sees what an uninterrupted one would), run ``hooks.train_step`` inside
``accelerator.accumulate``, count optimizer steps, keep the returned tensors on the device and
log their means every ``engine.log_every`` steps with one host sync, validate every
``train.val_every`` steps and keep the best checkpoint, write atomic checkpoints, and stop
cleanly on SIGTERM/SIGINT (:attr:`LoopResult.signal`; :func:`exit_status` turns a summary with a
``"signal"`` into the exit status 130/143 a scheduler expects).

:func:`prepare_run` writes nothing: it checks ``out`` against an earlier run there
(:mod:`medlearn.engine.run_guard`).  Provenance (``config.yaml``, ``env.json``, the config
history) is written when training really starts (:meth:`Run.start`, called by :func:`fit`), and a
command that fails before that leaves no new folder behind when its run is used as a context
manager (``with prepare_run(...) as run:``).

A task's hooks (subclass :class:`TrainHooks`) hold no logging, checkpoint, sampler or signal code.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from medlearn.engine.accelerator import build_accelerator, describe_device
from medlearn.engine.checkpoint import Checkpointer
from medlearn.engine.metrics_log import MetricLogger
from medlearn.engine.options import EngineConfig
from medlearn.engine.progress import Progress
from medlearn.engine.run_dir import prepare_run_dir
from medlearn.engine.run_guard import RunCheck, check_run_folder, move_aside, record_resume
from medlearn.engine.sampler import ResumableSampler
from medlearn.engine.signals import GracefulStop

log = logging.getLogger(__name__)

__all__ = [
    "EpochData", "LoopResult", "LoopSpec", "Run", "SamplerData", "TrainHooks", "exit_status", "fit", "prepare_run",
]  # fmt: skip


# ------------------------------------------------------------------------------------------- run
@dataclass
class Run:
    """A run folder with its accelerator and metric log (one per training command).

    Attributes:
        out: the run folder; created when training starts (or by a task writing into it).
        cfg: the config written to ``config.yaml`` by :meth:`start`.
        check: what :func:`~medlearn.engine.run_guard.check_run_folder` found in ``out``.
        created: ``out`` did not exist when this command began (:meth:`discard` may remove it).
        started: :meth:`start` ran (training began; provenance is written).
        device_info: how the accelerator describes its device (written to ``env.json``).
    """

    out: Path
    accelerator: Accelerator
    engine: EngineConfig
    cfg: Any = None
    check: RunCheck | None = None
    created: bool = False
    started: bool = False
    device_info: str | None = None
    _kernels: Any = field(default=None, repr=False)
    _logger: MetricLogger | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def logger(self) -> MetricLogger:
        """The metric log (``<out>/metrics.jsonl``); using it starts the run (:meth:`start`)."""
        self.start()
        assert self._logger is not None
        return self._logger

    def start(self) -> None:
        """Training really starts: create ``out``, record a resumed config in ``config_history``,
        write ``config.yaml`` + ``env.json`` and open the metric log.  Runs once; later calls return."""
        if self.started:
            return
        self.started = True
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.check is not None:
                record_resume(self.check, {"device": self.device_info})
            prepare_run_dir(self.out, self.cfg, self.engine.seed, self.device_info, True)
        self._logger = MetricLogger(self.out, enabled=self.is_main, tensorboard=self.engine.tensorboard)
        self.accelerator.wait_for_everyone()

    def discard(self) -> None:
        """Remove ``out`` when this command created it and training never started (a failed command
        leaves nothing half-written).  A folder that existed before is never touched."""
        if self.started or not self.created or not self.is_main or not self.out.exists():
            return
        shutil.rmtree(self.out, ignore_errors=True)
        log.info("removed %s: the command failed before training started", self.out)

    def close(self) -> None:
        """Close the metric log (idempotent)."""
        if self._logger is not None:
            self._logger.close()

    def __enter__(self) -> Run:
        # engine.cpu_conv: torch's convolution backend switch is process-wide; set for this run only
        self._kernels = cpu_conv_kernels(self.engine)
        self._kernels.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._kernels is not None:
            self._kernels.__exit__(exc_type, exc, tb)
            self._kernels = None
        if exc_type is not None:
            self.discard()
        self.close()

    def save_snapshot(
        self, tag: str, step: int, models: Mapping[str, nn.Module], extra: Mapping[str, Any]
    ) -> Path:
        """A named checkpoint of ``models`` + ``extra`` under ``<out>/checkpoints/<tag>`` that moves
        ``LATEST`` (for state between loops, e.g. the end of a continual-learning phase)."""
        self.start()
        return Checkpointer(self.out / "checkpoints", self.accelerator, keep_last=0).save(
            step, models, extra=extra, tag=tag
        )

    def load_snapshot(self, models: Mapping[str, nn.Module]) -> dict[str, Any] | None:
        """Load the newest whole ``<out>/checkpoints`` snapshot into ``models``; its ``extra``, or None.

        A damaged snapshot is skipped with a warning for the previous one (:meth:`Checkpointer.load_latest`).
        """
        ckpt = Checkpointer(self.out / "checkpoints", self.accelerator, keep_last=0)
        found = ckpt.load_latest(models, restore_rng=False)
        if found is None:
            return None
        log.info("resuming from %s", found[0])
        return found[1]["extra"]


@contextmanager
def cpu_conv_kernels(engine: EngineConfig) -> Iterator[None]:
    """``engine.cpu_conv`` for the block: oneDNN (``onednn``; also ``auto``, whose size-aware
    convolutions pick the native kernel per call) or PyTorch's native CPU convolution kernels
    (``native``); torch's process-wide switch is restored afterwards, also after an error."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = engine.cpu_conv != "native"
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def prepare_run(cfg: Any, out: str | Path, engine: EngineConfig, find_unused_parameters: bool = False) -> Run:
    """Check ``out`` against an earlier run there and build the accelerator; writes nothing yet.

    The check (:func:`~medlearn.engine.run_guard.check_run_folder`) runs before anything is
    touched and raises one :class:`~medlearn.errors.ConfigError` naming the changed keys when
    ``cfg`` changes the meaning of the run in ``out``.  With ``engine.on_existing_run=move_aside``
    the earlier run is renamed to ``<out>.old-<time>``.  ``config.yaml``, ``env.json`` and the
    metric log are written by :meth:`Run.start` when training starts.
    """
    out = Path(out)
    check = check_run_folder(out, cfg, engine.on_existing_run)
    accelerator = build_accelerator(engine, find_unused_parameters=find_unused_parameters)
    if check.move_aside and accelerator.is_main_process:
        move_aside(out)
    accelerator.wait_for_everyone()
    device = describe_device(accelerator)
    return Run(out, accelerator, engine, cfg, check, created=not out.exists(), device_info=device)


def exit_status(summary: Mapping[str, Any]) -> int:
    """Process exit status of a training command from its summary: 0, or 128 + the signal number
    when ``summary["signal"]`` says a signal stopped it (130 for SIGINT, 143 for SIGTERM), so a
    scheduler can tell a stopped run from a finished one."""
    signum = summary.get("signal")
    return 128 + int(signum) if signum else 0


# ------------------------------------------------------------------------------------------ data
class EpochData(Protocol):
    """This rank's batches, epoch by epoch, restartable at any position."""

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        ...

    def epoch(self, epoch: int, start: int) -> Iterable[Any]:
        """The batches ``start, start+1, ...`` of ``epoch`` (a pure function of seed and epoch)."""
        ...


class SamplerData:
    """:class:`EpochData` over a map-style dataset: :class:`ResumableSampler` + one ``DataLoader``.

    The loader is built once; ``epoch(e, start)`` moves the sampler (and the dataset, when it has a
    ``set_epoch`` for its own random draws) and iterates again.  Workers persist across epochs
    unless the dataset draws per-epoch randomness in ``set_epoch`` (a worker's copy would not see it).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        seed: int,
        accelerator: Accelerator,
        collate_fn: Any = None,
        num_workers: int = 0,
        drop_last: bool = True,
        shuffle: bool = True,
    ) -> None:
        from torch.utils.data import DataLoader

        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = ResumableSampler(
            len(dataset), seed, shuffle, accelerator.process_index, accelerator.num_processes, drop_last
        )
        per_epoch = hasattr(dataset, "set_epoch")
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            drop_last=drop_last,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=num_workers > 0 and not per_epoch,
            generator=torch.Generator().manual_seed(seed),
        )

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start: int) -> Iterator[Any]:
        self.sampler.set_epoch(epoch, start=start * self.batch_size)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return iter(self.loader)


# ----------------------------------------------------------------------------------------- hooks
class TrainHooks:
    """What a task plugs into :func:`fit`.  Subclasses set the attributes and override ``train_step``.

    Attributes:
        models: checkpointed networks by name (the trained ones already ``accelerator.prepare``-d).
        optimizers, schedulers: checkpointed by name.
        data: this rank's batches (:class:`EpochData`).
        accumulate: the modules whose gradients accumulate over micro-batches (default: ``models``).
        best_models: what the best checkpoint holds (default: ``models``).
        samples_per_step: samples in one optimizer step on all ranks (for ``samples_per_s``; 0 = not logged).
    """

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    data: EpochData
    accumulate: list[nn.Module] | None = None
    best_models: dict[str, nn.Module] | None = None
    samples_per_step: int = 0

    def train_step(self, batch: Any, step: int) -> Mapping[str, Tensor]:
        """One micro-batch: forward, backward and (on a sync boundary) optimizer step.

        ``step`` is the number of optimizer steps taken before this one.  Returns detached
        scalar tensors to log; no host synchronisation (no ``.item()``/``float()``) here.
        """
        raise NotImplementedError(f"{type(self).__name__} must define train_step")

    def before_step(self, step: int) -> None:
        """Called before the micro-batches of optimizer step ``step`` (e.g. switch a loss phase)."""

    #: call :meth:`evaluate` on every process (it shares the work out and returns the metrics on
    #: the main process); otherwise it runs on the main process while the others wait
    evaluate_on_all_ranks: bool = False

    def evaluate(self) -> dict[str, float]:
        """Validation metrics (on the main process); empty when the task has no validation."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Task state beyond models/optimizers/schedulers to checkpoint (picklable)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def on_checkpoint(self, path: Path) -> None:
        """Write extra files into a just-written checkpoint folder (main process only)."""


# ------------------------------------------------------------------------------------------ spec
@dataclass
class LoopSpec:
    """Length and cadence of one call of :func:`fit`.

    Attributes:
        epochs: passes over the data (0 = until ``max_steps``).
        max_steps: optimizer steps (0 = until ``epochs``); with both set the first limit wins.
        val_every: optimizer steps between validations; 0 = at the end of every epoch. The last
            step is always validated.
        select: validation metric that chooses the best checkpoint (None: no best checkpoint).
        mode: ``min`` or ``max`` for ``select``.
        checkpoint_dir: resumable checkpoints (``LATEST`` + ``step_*`` + ``final``).
        best_dir: the best checkpoint (tag ``best``; never resumed from); when nothing was
            validated, the last models are written there at the end.
        resume: continue from ``checkpoint_dir``'s newest checkpoint when there is one.
        validate_at_start: log validation metrics before the first step (the start of the curve).
        log_offset: added to the step in the metric log (a phase's steps after earlier phases).
        desc: progress label.
        stop_at: leave after this step with a checkpoint, as if signalled (tests and staged runs).
    """

    checkpoint_dir: Path
    epochs: int = 0
    max_steps: int = 0
    val_every: int = 0
    select: str | None = None
    mode: Literal["min", "max"] = "min"
    best_dir: Path | None = None
    resume: bool = True
    validate_at_start: bool = False
    log_offset: int = 0
    desc: str = "train"
    stop_at: int | None = None
    extra_log: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ValueError("LoopSpec needs epochs > 0 or max_steps > 0")


@dataclass
class LoopResult:
    """How :func:`fit` ended."""

    step: int
    epoch: int
    finished: bool
    last: dict[str, float]
    best: float | None
    signal: int | None = None
    final: Path | None = None


# ------------------------------------------------------------------------------------------- fit
def _total_steps(spec: LoopSpec, per_epoch: int) -> int:
    by_epochs = spec.epochs * per_epoch if spec.epochs > 0 else math.inf
    by_steps = spec.max_steps if spec.max_steps > 0 else math.inf
    return int(min(by_epochs, by_steps))


def _lr(hooks: TrainHooks) -> float | None:
    for opt in hooks.optimizers.values():
        return float(opt.param_groups[0]["lr"])
    return None


def fit(run: Run, hooks: TrainHooks, spec: LoopSpec) -> LoopResult:
    """Train ``hooks`` as ``spec`` says; resumable, signal-safe, with validation and best checkpoint.

    The CPU convolution kernels of ``engine.cpu_conv`` are in force while it runs (and for the whole
    command when the run is used as a context manager)."""
    with cpu_conv_kernels(run.engine):
        return _fit(run, hooks, spec)


def _fit(run: Run, hooks: TrainHooks, spec: LoopSpec) -> LoopResult:
    acc, engine = run.accelerator, run.engine
    per_epoch = len(hooks.data)
    if per_epoch < engine.grad_accum_steps:
        raise ValueError(f"{per_epoch} batches per epoch is fewer than engine.grad_accum_steps")
    steps_per_epoch = per_epoch // engine.grad_accum_steps
    total = _total_steps(spec, steps_per_epoch)
    ckpt = Checkpointer(spec.checkpoint_dir, acc, keep_last=engine.keep_last)
    # the best model is written by the main process alone (no barriers inside: the other ranks never call it)
    best_ckpt = Checkpointer(spec.best_dir, None, keep_last=0) if spec.best_dir else None

    def best_models() -> dict[str, nn.Module]:
        return {k: acc.unwrap_model(m) for k, m in (hooks.best_models or hooks.models).items()}

    better = (lambda a, b: a < b) if spec.mode == "min" else (lambda a, b: a > b)

    # ---- resume (from the newest whole checkpoint: a damaged one is skipped with a warning)
    step, epoch, pos, best = 0, 0, 0, None
    found = ckpt.load_latest(hooks.models, hooks.optimizers, hooks.schedulers) if spec.resume else None
    if found is not None:
        latest, state = found
        loop = state["extra"].get("loop", {})
        step, epoch, pos, best = state["step"], loop.get("epoch", 0), loop.get("pos", 0), loop.get("best")
        hooks.load_state_dict(state["extra"].get("task", {}))
        log.info("resumed from %s (step %d, epoch %d, batch %d)", latest, step, epoch, pos)
    run.start()  # provenance is written once the data, models and state are in place

    def save(tag: str | None = None) -> Path:
        extra = {"loop": {"epoch": epoch, "pos": pos, "best": best}, "task": hooks.state_dict()}
        path = ckpt.save(step, hooks.models, hooks.optimizers, hooks.schedulers, extra, tag)
        if run.is_main:
            hooks.on_checkpoint(path)
        acc.wait_for_everyone()
        return path

    def validate() -> dict[str, float]:
        nonlocal best
        metrics: dict[str, float] = {}
        if run.is_main or hooks.evaluate_on_all_ranks:
            metrics = hooks.evaluate()
        if run.is_main:
            if metrics:
                run.logger.log(step + spec.log_offset, **metrics)
                log.info("step %d validation %s", step, {k: round(v, 4) for k, v in metrics.items()})
            value = metrics.get(spec.select) if spec.select else None
            if value is not None and best_ckpt is not None and (best is None or better(value, best)):
                best = float(value)
                best_ckpt.save(step, best_models(), extra={"epoch": epoch, **metrics}, tag="best",
                               update_latest=False)  # fmt: skip
        acc.wait_for_everyone()
        return metrics

    # ---- loop
    window: dict[str, Tensor] = {}
    n_window, t_window = 0, time.time()
    last: dict[str, float] = {}
    signal_num: int | None = None
    trained = hooks.accumulate if hooks.accumulate is not None else list(hooks.models.values())
    if step == 0 and spec.validate_at_start:
        last.update(validate())
    with (
        GracefulStop() as stop,
        Progress(total, spec.desc, engine.progress and run.is_main) as bar,
    ):
        bar.update(min(step, total))
        while step < total and signal_num is None:
            hooks.before_step(step)
            for batch in hooks.data.epoch(epoch, pos):
                pos += 1
                with acc.accumulate(*trained):
                    out = hooks.train_step(batch, step)
                for k, v in out.items():
                    v = v.detach().float()
                    window[k] = window[k] + v if k in window else v
                n_window += 1
                if not acc.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                if step % max(1, engine.log_every) == 0 or step == total:
                    values = torch.stack(list(window.values())).cpu().tolist() if window else []  # one sync
                    last = {k: v / n_window for k, v in zip(window, values)}
                    lr = _lr(hooks)
                    if lr is not None:
                        last["lr"] = lr
                    if hooks.samples_per_step:
                        dt = max(time.time() - t_window, 1e-9)
                        last["samples_per_s"] = (
                            hooks.samples_per_step * n_window / engine.grad_accum_steps / dt
                        )
                    run.logger.log(step + spec.log_offset, epoch=epoch, **spec.extra_log, **last)
                    bar.update(0, **{k: v for k, v in last.items() if k == "loss"})
                    window, n_window = {}, 0
                paused = time.time()
                end_of_epoch = pos >= per_epoch
                if (
                    step == total
                    or (spec.val_every > 0 and step % spec.val_every == 0)
                    or (spec.val_every == 0 and end_of_epoch)
                ):
                    last.update(validate())
                if engine.ckpt_every > 0 and step % engine.ckpt_every == 0 and step < total:
                    save()
                t_window += time.time() - paused  # throughput counts training time only
                if stop.requested or (spec.stop_at is not None and step >= spec.stop_at and step < total):
                    signal_num = stop.signum or 0
                    break
                if step >= total:
                    break
                if end_of_epoch:
                    break
                hooks.before_step(step)
            if signal_num is not None:
                save()
                break
            if pos >= per_epoch:
                epoch, pos = epoch + 1, 0
                if engine.ckpt_every == 0 and step < total:
                    save()  # one resumable checkpoint per epoch when no step cadence is set
    finished = step >= total
    if finished and best_ckpt is not None and best is None and run.is_main:  # nothing validated: best = last
        best_ckpt.save(step, best_models(), extra={"epoch": epoch}, tag="best", update_latest=False)
    acc.wait_for_everyone()
    final = save(tag="final") if finished else None
    if signal_num is not None and stop.signum is not None:
        log.warning("stopped by signal at step %d; rerun the same command to resume", step)
    return LoopResult(step, epoch, finished, last, best, stop.signum, final)
