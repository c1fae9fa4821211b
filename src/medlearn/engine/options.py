"""Engine options shared by every task's config (devices, precision, checkpoints, logging)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Precision = Literal["fp32", "bf16", "fp16", "no"]
Device = Literal["auto", "cpu", "cuda"]
OnExistingRun = Literal["resume", "move_aside"]
CpuConv = Literal["onednn", "native", "auto"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
PRECISIONS: tuple[str, ...] = get_args(Precision)[:3]
DEVICES: tuple[str, ...] = get_args(Device)


@dataclass
class EngineConfig:
    """How to run a training loop; every task config has one under the key ``engine``.

    Attributes:
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast (fp16 adds a gradient scaler); ``no``
            (accelerate's word, also YAML's ``false``) means ``fp32``.
        grad_accum_steps: micro-batches accumulated per optimizer step.
        grad_clip: max global gradient norm; 0 disables clipping.
        seed: seed of every random generator (python, numpy, torch, data order).
        log_every: optimizer steps between metric log lines.
        ckpt_every: optimizer steps between periodic checkpoints; 0 = only the final one.
        keep_last: periodic ``step_*`` checkpoints kept on disk, the newest ones (older ones are
            deleted); 0 keeps all.  ``final``, ``best`` and snapshots are never deleted.  With 2 or
            more, a damaged newest checkpoint leaves an older one to resume from.
        progress: show a progress bar (falls back to log lines without a terminal).
        tensorboard: also write TensorBoard events when the package is installed.
        compile: ``torch.compile`` the task's networks (in place; checkpoints are unchanged). Each
            task says what it compiles in its guide (MRSI: the generator, not the critic, whose
            gradient penalty needs a double backward).
        compile_mode: ``torch.compile`` mode: ``default``, ``reduce-overhead`` (CUDA graphs, small
            batches on a GPU), ``max-autotune`` or ``max-autotune-no-cudagraphs``.
        num_workers: data-loader worker processes.
        num_threads: torch intra-op CPU threads for this process; 0 keeps torch's default. On a
            shared or small CPU machine 1 avoids oversubscription (often many times faster).
        cpu_conv: convolution kernels on a CPU while a training command runs (process-wide,
            restored when it ends): ``onednn`` (PyTorch's default), ``native`` (PyTorch's own
            im2col + GEMM kernels, ``torch.backends.mkldnn.enabled = False``) or ``auto`` (oneDNN,
            except that each 2D convolution of ITL's and MaMA's networks whose size favours the
            native kernel takes it: :mod:`medlearn.engine.conv_kernels`; MRSI's are 3D). Measured on a 2-core CPU at one
            thread: ``native`` is faster for tiny feature maps and batches and much slower for
            larger ones and for 3D convolutions; ``auto`` takes the faster of the two per call
            (the ITL ``tiny`` and ``demo`` presets set it). GPUs are not affected.
        on_existing_run: what a training command does when ``train.out`` already holds a run with
            checkpoints: ``resume`` (default) continues it when the configs differ only in keys that
            are safe to change (:data:`medlearn.engine.run_guard.SAFE_ON_RESUME`) and refuses
            otherwise, naming the keys; ``move_aside`` renames the old folder to
            ``<out>.old-<time>`` and starts afresh.
    """

    device: Device = "auto"
    precision: Precision = "fp32"
    grad_accum_steps: int = 1
    grad_clip: float = 0.0
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 0
    keep_last: int = 2
    progress: bool = True
    tensorboard: bool = True
    compile: bool = False
    compile_mode: CompileMode = "default"
    num_workers: int = 0
    num_threads: int = 0
    cpu_conv: CpuConv = "onednn"
    on_existing_run: OnExistingRun = "resume"

    def __post_init__(self) -> None:
        from medlearn.errors import ConfigError

        if self.precision in ("no", False):
            self.precision = "fp32"
        if self.precision not in PRECISIONS:
            raise ConfigError(f"engine.precision='{self.precision}' is not one of {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ConfigError(f"engine.device='{self.device}' is not one of {', '.join(DEVICES)}")
        if self.grad_accum_steps < 1:
            raise ConfigError(f"engine.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.grad_clip < 0:
            raise ConfigError(f"engine.grad_clip must be >= 0, got {self.grad_clip}")
        if self.on_existing_run not in get_args(OnExistingRun):
            raise ConfigError(
                f"engine.on_existing_run='{self.on_existing_run}' is not one of resume, move_aside"
            )
        if self.cpu_conv not in get_args(CpuConv):
            raise ConfigError(f"engine.cpu_conv='{self.cpu_conv}' is not one of onednn, native, auto")
        if self.num_threads < 0:
            raise ConfigError(f"engine.num_threads must be >= 0 (0 = torch default), got {self.num_threads}")
