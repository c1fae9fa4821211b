"""Atomic, resumable checkpoints: weights as safetensors, optimizer/scheduler/RNG/step as torch.

Layout under ``directory``::

    step_00000100/            one folder per checkpoint (or ``final/``)
        model_<name>.safetensors
        state.pt              optimizers, schedulers, step, user ``extra``
        rng_rank<r>.pt        every process's RNG state
        meta.json             step, names, time
    LATEST                    name of the newest complete checkpoint folder

A checkpoint is written into a hidden temporary folder and renamed into place, and ``LATEST`` is
replaced atomically afterwards, so a run killed at any moment leaves either the previous or the new
checkpoint, never a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from medlearn.engine.seed import rng_state, set_rng_state
from medlearn.errors import DataError

log = logging.getLogger(__name__)

LATEST = "LATEST"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _unwrap(model: nn.Module, accelerator: Any | None) -> nn.Module:
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


class Checkpointer:
    """Save and restore training state atomically.

    Args:
        directory: folder that holds the checkpoints.
        accelerator: optional ``accelerate.Accelerator``; with several processes only the main
            process writes weights, every process writes its own RNG state.
        keep_last: number of periodic ``step_*`` checkpoints kept (``final`` is never deleted).
    """

    def __init__(self, directory: str | Path, accelerator: Any | None = None, keep_last: int = 2) -> None:
        self.directory = Path(directory)
        self.accelerator = accelerator
        self.keep_last = keep_last

    # ------------------------------------------------------------------ helpers
    @property
    def _rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    @property
    def _is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def _barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ save
    def save(
        self,
        step: int,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, Any] | None = None,
        schedulers: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        tag: str | None = None,
        update_latest: bool = True,
    ) -> Path:
        """Write a checkpoint for ``step`` (folder ``tag`` or ``step_<step>``) and return its path.

        ``update_latest=False`` writes a side checkpoint (e.g. ``tag="best"``) that resume ignores.
        """
        name = tag or f"step_{step:08d}"
        final = self.directory / name
        tmp = self.directory / f".tmp-{name}"
        if self._is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        self._barrier()
        torch.save(rng_state(), tmp / f"rng_rank{self._rank}.pt")
        self._barrier()
        if self._is_main:
            for key, model in models.items():
                save_model(_unwrap(model, self.accelerator), str(tmp / f"model_{key}.safetensors"))
            state = {
                "step": step,
                "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
                "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
                "extra": dict(extra or {}),
            }
            torch.save(state, tmp / "state.pt")
            meta = {"step": step, "models": sorted(models), "time": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            if final.exists():
                old = self.directory / f".old-{name}-{os.getpid()}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            if update_latest:
                _atomic_write_text(self.directory / LATEST, name)
            self._prune()
            log.info("checkpoint written: %s", final)
        self._barrier()
        return final

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        steps = sorted(p for p in self.directory.glob("step_*") if p.is_dir())
        for p in steps[: -self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ load
    def latest(self) -> Path | None:
        """Newest complete checkpoint folder, or ``None`` when there is none."""
        marker = self.directory / LATEST
        if not marker.is_file():
            return None
        path = self.directory / marker.read_text().strip()
        return path if (path / "state.pt").is_file() else None

    def load(
        self,
        path: str | Path,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, Any] | None = None,
        schedulers: Mapping[str, Any] | None = None,
        restore_rng: bool = True,
        strict: bool = True,
    ) -> dict[str, Any]:
        """Restore state saved by :meth:`save`; returns ``{"step": int, "extra": dict}``.

        Raises:
            DataError: if the folder or one of its files is missing.
        """
        path = Path(path)
        state_file = path / "state.pt"
        if not state_file.is_file():
            raise DataError(f"checkpoint '{path}' is incomplete or missing (no state.pt)")
        for key, model in models.items():
            f = path / f"model_{key}.safetensors"
            if not f.is_file():
                raise DataError(f"checkpoint '{path}' has no weights for model '{key}' ({f.name})")
            missing, unexpected = load_model(_unwrap(model, self.accelerator), str(f), strict=strict)
            if missing or unexpected:
                log.warning("loading %s: missing %s, unexpected %s", f, missing, unexpected)
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        for key, opt in (optimizers or {}).items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sch in (schedulers or {}).items():
            sch.load_state_dict(state["schedulers"][key])
        if restore_rng:
            rng_file = path / f"rng_rank{self._rank}.pt"
            if rng_file.is_file():
                set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
            else:
                log.warning("no RNG state for rank %d in %s; continuing with current RNG", self._rank, path)
        return {"step": int(state["step"]), "extra": state.get("extra", {})}


def load_weights(model: nn.Module, path: str | Path, name: str = "model", strict: bool = True) -> nn.Module:
    """Load ``model_<name>.safetensors`` from a checkpoint folder (or a ``.safetensors`` file) into ``model``.

    Raises:
        DataError: when the file does not exist.
    """
    path = Path(path)
    f = path if path.suffix == ".safetensors" else path / f"model_{name}.safetensors"
    if not f.is_file():
        raise DataError(f"checkpoint weights '{f}' not found")
    load_model(model, str(f), strict=strict)
    return model
