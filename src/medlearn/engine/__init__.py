"""Shared training machinery: building blocks, not one rigid ``fit()``.

A task's loop combines: :func:`build_accelerator` (devices, precision, accumulation, DDP),
:func:`seed_everything`, :class:`ResumableSampler` (data order that survives a restart),
:func:`build_scheduler`, :func:`backward_and_step`, :class:`Checkpointer` (atomic save/resume),
:class:`MetricLogger` (JSONL + TensorBoard), :class:`Progress` and :class:`GracefulStop`
(checkpoint on SIGTERM/SIGINT), :func:`prepare_run_dir` (provenance), :class:`Registry` (components
by name) and :func:`count_parameters`.
"""

from medlearn.engine.accelerator import build_accelerator, describe_device
from medlearn.engine.checkpoint import Checkpointer, load_weights
from medlearn.engine.metrics_log import MetricLogger, read_metrics
from medlearn.engine.options import EngineConfig
from medlearn.engine.parameters import count_parameters
from medlearn.engine.progress import Progress, track
from medlearn.engine.registry import Registry
from medlearn.engine.run_dir import environment_info, prepare_run_dir
from medlearn.engine.sampler import ResumableSampler
from medlearn.engine.schedules import build_scheduler
from medlearn.engine.seed import rng_state, seed_everything, set_rng_state
from medlearn.engine.signals import GracefulStop
from medlearn.engine.step import backward_and_step

__all__ = [
    "Checkpointer", "EngineConfig", "GracefulStop", "MetricLogger", "Progress", "Registry", "ResumableSampler",
    "backward_and_step", "build_accelerator", "build_scheduler", "count_parameters", "describe_device",
    "environment_info",
    "load_weights", "prepare_run_dir", "read_metrics", "rng_state", "seed_everything", "set_rng_state", "track",
]  # fmt: skip
