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

Damage that happens later (a truncated copy, a corrupt ``state.pt``, a ``LATEST`` naming a folder
that is gone) is caught on resume: :meth:`Checkpointer.latest` and :meth:`Checkpointer.load_latest`
skip such a checkpoint with a warning naming the bad file and use the newest older one that is
whole.  Retention: only the newest ``keep_last`` ``step_*`` folders are kept; tagged ones
(``final``, ``best``, snapshots) are never pruned.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from medlearn.engine.seed import rng_state, set_rng_state
from medlearn.errors import DataError

log = logging.getLogger(__name__)

LATEST = "LATEST"
_STEP_NAME = re.compile(r"step_(\d+)$")


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
        keep_last: number of periodic ``step_*`` checkpoints kept, the newest ones; 0 keeps all.
            Tagged checkpoints (``final``, ``best``, snapshots) are never deleted.  Keep at least 2
            for :meth:`load_latest` to have an older checkpoint to fall back to.
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
            meta = {"step": step, "models": sorted(models), "time": time.time(), "resumable": update_latest}
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
    def candidates(self) -> list[Path]:
        """Checkpoint folders to resume from, best first: the one ``LATEST`` names (even when it is
        missing), then the others newest first (never one newer than a ``LATEST`` target)."""
        marker = self.directory / LATEST
        if not marker.is_file():
            return []
        target = self.directory / marker.read_text().strip()
        newest = _step_of(target)
        others = [
            p for p in self.directory.iterdir()
            if p.is_dir() and not p.name.startswith(".") and p != target and _resumable(p)
        ]  # fmt: skip
        steps = {p: _step_of(p) for p in others}
        others = [p for p in others if newest is None or (steps[p] is not None and steps[p] <= newest)]
        others.sort(key=lambda p: (steps[p] if steps[p] is not None else -1, p.stat().st_mtime), reverse=True)
        return [target, *others]

    def latest(self) -> Path | None:
        """Newest whole checkpoint folder (:meth:`verify`), or ``None`` when there is none.

        A damaged newer checkpoint is skipped with a warning naming the bad file.

        Raises:
            DataError: when ``LATEST`` exists but no checkpoint folder is whole.
        """
        problems = []
        for path in self.candidates():
            problem = self.verify(path)
            if problem is None:
                return path
            problems.append(problem)
            log.warning("%s; falling back to the previous checkpoint", problem)
        if problems:
            raise _no_usable_checkpoint(self.directory, problems)
        return None

    def verify(self, path: str | Path) -> str | None:
        """``None`` when the checkpoint folder looks whole, else what is wrong (naming the file).

        Checks that the folder and ``state.pt`` exist, that ``state.pt`` and the RNG files are
        complete zip archives with matching CRCs, and that every ``model_*.safetensors`` has a
        readable header that covers the whole file (a truncated copy fails).  It does not detect a
        flipped byte inside safetensors data (the format has no checksum).
        """
        path = Path(path)
        if not path.is_dir():
            return f"checkpoint folder '{path}' (named by {self.directory / LATEST}) does not exist"
        state = path / "state.pt"
        if not state.is_file():
            return f"checkpoint '{path}' is incomplete (no state.pt)"
        for f in [state, *sorted(path.glob("rng_rank*.pt"))]:
            problem = _zip_problem(f)
            if problem:
                return f"checkpoint file '{f}' is damaged ({problem})"
        for f in sorted(path.glob("model_*.safetensors")):
            try:
                with safe_open(str(f), "pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                return f"checkpoint file '{f}' is damaged ({exc})"
        return None

    def load_latest(
        self,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, Any] | None = None,
        schedulers: Mapping[str, Any] | None = None,
        restore_rng: bool = True,
        strict: bool = True,
    ) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest whole checkpoint (see :meth:`load`); ``(folder, state)``, or ``None``
        when the directory holds none.

        A checkpoint that fails :meth:`verify` or cannot be read is skipped with a warning naming
        the bad file, and the next older one is tried.

        Raises:
            DataError: when ``LATEST`` exists but no checkpoint can be loaded.
        """
        problems = []
        for path in self.candidates():
            problem = self.verify(path)
            if problem is None:
                try:
                    return path, self.load(path, models, optimizers, schedulers, restore_rng, strict)
                except _Damaged as exc:
                    problem = str(exc)
            problems.append(problem)
            log.warning("%s; falling back to the previous checkpoint", problem)
        if problems:
            raise _no_usable_checkpoint(self.directory, problems)
        return None

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
            DataError: if the folder or one of its files is missing or damaged (unreadable).
        """
        path = Path(path)
        state_file = path / "state.pt"
        if not state_file.is_file():
            raise DataError(f"checkpoint '{path}' is incomplete or missing (no state.pt)")
        state = _read_torch(state_file)  # read everything that can be damaged before changing anything
        rng = None
        rng_file = path / f"rng_rank{self._rank}.pt"
        if restore_rng and rng_file.is_file():
            rng = _read_torch(rng_file)
        elif restore_rng:
            log.warning("no RNG state for rank %d in %s; continuing with current RNG", self._rank, path)
        for key, model in models.items():
            f = path / f"model_{key}.safetensors"
            if not f.is_file():
                raise DataError(f"checkpoint '{path}' has no weights for model '{key}' ({f.name})")
            try:
                missing, unexpected = load_model(_unwrap(model, self.accelerator), str(f), strict=strict)
            except SafetensorError as exc:
                raise _Damaged(f"checkpoint file '{f}' is damaged ({exc})") from exc
            if missing or unexpected:
                log.warning("loading %s: missing %s, unexpected %s", f, missing, unexpected)
        for key, opt in (optimizers or {}).items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sch in (schedulers or {}).items():
            sch.load_state_dict(state["schedulers"][key])
        if rng is not None:
            set_rng_state(rng)
        return {"step": int(state["step"]), "extra": state.get("extra", {})}


class _Damaged(DataError):
    """A checkpoint file exists but cannot be read (truncated, corrupt)."""


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on damage
        raise _Damaged(f"checkpoint file '{path}' is damaged ({type(exc).__name__}: {exc})") from exc


def _zip_problem(path: Path) -> str | None:
    """What is wrong with a ``torch.save`` zip archive (missing end, bad CRC), or ``None``."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"not a complete archive: {exc}"
    return f"CRC mismatch in {bad}" if bad else None


def _step_of(path: Path) -> int | None:
    """Step of a checkpoint folder: from its ``meta.json``, else from a ``step_<N>`` name."""
    try:
        return int(json.loads((path / "meta.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        m = _STEP_NAME.match(path.name)
        return int(m.group(1)) if m else None


def _resumable(path: Path) -> bool:
    """A folder written with ``update_latest=True`` (side checkpoints such as ``best`` are not)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("resumable", path.name != "best"))


def _no_usable_checkpoint(directory: Path, problems: list[str]) -> DataError:
    return DataError(
        f"{directory}: no usable checkpoint to resume from ({'; '.join(problems)}). Move the run folder "
        "aside (engine.on_existing_run=move_aside) or train into a new train.out"
    )


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
