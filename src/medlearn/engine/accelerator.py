"""Device, mixed precision, gradient accumulation and DDP set-up through Hugging Face accelerate.

The same code serves one CPU, one GPU and many processes on one or several machines: launch with
``accelerate launch`` or ``torchrun`` and the process group is created from the environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...); gloo is used on CPU, NCCL on GPU.
"""

from __future__ import annotations

import logging

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from medlearn.engine.options import EngineConfig

log = logging.getLogger(__name__)

_MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def build_accelerator(cfg: EngineConfig, find_unused_parameters: bool = False) -> Accelerator:
    """An :class:`accelerate.Accelerator` configured from ``cfg``.

    Args:
        cfg: engine options (device, precision, gradient accumulation).
        find_unused_parameters: forwarded to DDP; needed when some parameters get no gradient in a
            step (e.g. heads frozen until a later phase).

    Notes:
        bf16/fp16 on a CPU-only machine fall back to fp32 with a warning (CPU autocast is slow and
        not what a user asking for mixed precision on a GPU wants).
    """
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        from medlearn.errors import ConfigError

        raise ConfigError("engine.device='cuda' but no CUDA device is visible (use engine.device=auto)")
    mixed = _MIXED[cfg.precision]
    if cpu and mixed != "no":
        log.warning("engine.precision=%s requested on CPU: running in fp32", cfg.precision)
        mixed = "no"
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)]
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        kwargs_handlers=kwargs,
        step_scheduler_with_optimizer=False,
    )


def describe_device(accelerator: Accelerator) -> str:
    """One line such as ``cuda:0 (NVIDIA H200), 4 processes, bf16``."""
    dev = accelerator.device
    name = str(dev)
    if dev.type == "cuda":
        name += f" ({torch.cuda.get_device_name(dev)})"
    return f"{name}, {accelerator.num_processes} process(es), mixed precision {accelerator.mixed_precision}"
