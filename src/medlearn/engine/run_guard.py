"""The run-folder guard: a training command compares its config with the run already in its folder.

Before anything is written, :func:`check_run_folder` reads the ``config.yaml`` of a folder that
holds checkpoints and compares it, key by key, with the new config:

* no difference, or differences only in :data:`SAFE_ON_RESUME` keys: the run resumes, and
  :func:`record_resume` keeps the previous ``config.yaml`` as ``config_history/NNN.yaml`` and
  appends the changed keys to ``config_history.jsonl``;
* any other difference (shapes, losses, data order, optimisation): one :class:`ConfigError`
  naming the changed keys and the two ways out, a new ``train.out`` or
  ``engine.on_existing_run=move_aside``, which renames the old folder to
  ``<out>.old-<YYYYmmdd-HHMMSS>`` (:func:`move_aside`) and starts afresh.

A folder without checkpoints is not a run yet: it is used as it is.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlearn.config import read_yaml, to_dict
from medlearn.errors import ConfigError, MedlearnError

log = logging.getLogger(__name__)

__all__ = ["SAFE_ON_RESUME", "RunCheck", "check_run_folder", "config_changes", "move_aside", "record_resume"]

#: Keys that may differ when a run resumes (``*`` matches any rest of the key).  They say how long
#: to train, how often to log, validate or checkpoint, where things are and which hardware runs
#: the steps; none changes a tensor shape, a loss, the data order or the optimisation.  Data
#: locations are in the list because a run must survive moving its data (another disk or
#: machine); they are logged and recorded like every change.
SAFE_ON_RESUME: tuple[str, ...] = (
    "train.out", "train.epochs", "train.max_steps", "train.val_every", "train.resume", "train.eval_batch",
    "engine.log_every", "engine.ckpt_every", "engine.keep_last", "engine.progress", "engine.tensorboard",
    "engine.num_workers", "engine.num_threads", "engine.device", "engine.compile", "engine.on_existing_run", "engine.cpu_conv",
    "data.root", "data.cache_dir", "data.prepared_dir", "data.num_workers",
    "eval.*",
)  # fmt: skip

HISTORY = "config_history"
_ABSENT = "<absent>"


@dataclass
class RunCheck:
    """What :func:`check_run_folder` found in a run folder.

    Attributes:
        out: the run folder.
        existing: the folder holds checkpoints of an earlier run.
        changes: dotted key -> (saved value, new value) for every key that differs.
        move_aside: the caller asked for the old run to be moved aside.
    """

    out: Path
    existing: bool = False
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    move_aside: bool = False


def has_checkpoints(out: Path) -> bool:
    """True when ``out`` holds a checkpoint directory (a ``LATEST`` marker at any depth up to 3)."""
    patterns = ("LATEST", "*/LATEST", "*/*/LATEST", "*/*/*/LATEST")
    return out.is_dir() and any(p.is_file() for pattern in patterns for p in out.glob(pattern))


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        out.update(_leaves(value, dotted) if isinstance(value, dict) and value else {dotted: value})
    return out


def _renamed(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return key


def _defaults(cfg: Any) -> dict[str, Any]:
    try:
        return _leaves(to_dict(type(cfg)()))
    except (TypeError, MedlearnError):  # a schema with required fields has no defaults to compare with
        return {}


def config_changes(saved: dict[str, Any], cfg: Any) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs between a saved config (plain dict) and ``cfg``.

    Old spellings of renamed keys (the schema's ``RENAMED``) are read as the new ones.  A key the
    saved config lacks counts as unchanged when ``cfg`` has its default there (a key added to the
    schema since); a key only the saved config has is reported with the new value ``<absent>``.

    Returns:
        dotted key -> (saved value, new value), sorted by key.
    """
    renames = dict(getattr(type(cfg), "RENAMED", {}) or {})
    old = {_renamed(k, renames): v for k, v in _leaves(saved).items()}
    new = _leaves(to_dict(cfg))
    defaults = _defaults(cfg)
    changes: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(old) | set(new)):
        if key not in old:
            if key in defaults and defaults[key] == new[key]:
                continue
            changes[key] = (_ABSENT, new[key])
        elif key not in new:
            changes[key] = (old[key], _ABSENT)
        elif old[key] != new[key]:
            changes[key] = (old[key], new[key])
    return changes


def is_safe(key: str) -> bool:
    """True when ``key`` may change on resume (:data:`SAFE_ON_RESUME`)."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in SAFE_ON_RESUME)


def check_run_folder(out: str | Path, cfg: Any, on_existing_run: str = "resume") -> RunCheck:
    """Compare ``cfg`` with the run in ``out`` before anything is written (reads only).

    Args:
        out: the run folder (``train.out``).
        cfg: the new config (a dataclass config or a plain dict).
        on_existing_run: ``resume`` (refuse when an unsafe key changed) or ``move_aside``.
    Returns:
        a :class:`RunCheck`.
    Raises:
        ConfigError: the folder holds checkpoints and an unsafe key changed, its ``config.yaml``
            is missing or unreadable, or ``on_existing_run`` is not a known choice.
    """
    out = Path(out)
    if on_existing_run not in ("resume", "move_aside"):
        raise ConfigError(f"engine.on_existing_run must be resume or move_aside, got {on_existing_run!r}")
    check = RunCheck(out)
    if not has_checkpoints(out):
        return check
    check.existing = True
    if on_existing_run == "move_aside":
        check.move_aside = True
        return check
    ways_out = (
        "train into a new train.out, or set engine.on_existing_run=move_aside to move the old run aside"
    )
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(
            f"{out} holds checkpoints but no config.yaml, so they cannot be checked against this config; "
            + ways_out
        )
    try:
        saved = read_yaml(saved_path.read_text()) or {}
    except Exception as exc:  # YAML errors and OS errors alike: the file cannot be compared
        raise ConfigError(f"{saved_path} cannot be read ({exc}); {ways_out}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{saved_path} is not a mapping of config keys; {ways_out}")
    check.changes = config_changes(saved, cfg)
    unsafe = {k: v for k, v in check.changes.items() if not is_safe(k)}
    if unsafe:
        listed = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in unsafe.items())
        raise ConfigError(
            f"{out} holds a run trained with another config; changed keys: {listed}. "
            f"Resuming it would mix two runs: {ways_out}"
        )
    return check


def move_aside(out: Path) -> Path:
    """Rename ``out`` to ``<out>.old-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... if taken); the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out.with_name(f"{out.name}.old-{stamp}")
    k = 2
    while target.exists():
        target = out.with_name(f"{out.name}.old-{stamp}-{k}")
        k += 1
    os.replace(out, target)
    log.warning("moved the earlier run in %s aside to %s (engine.on_existing_run=move_aside)", out, target)
    return target


def record_resume(check: RunCheck, extra: dict[str, Any] | None = None) -> Path | None:
    """Keep the config an earlier command wrote, before this command replaces ``config.yaml``.

    Appends ``{"time", "changed": {key: [old, new]}, "previous": "config_history/NNN.yaml", ...extra}``
    to ``<out>/config_history.jsonl``; the previous ``config.yaml`` is copied to ``previous`` when a
    key changed.  Returns the history file, or ``None`` for a folder without an earlier run.
    """
    if not check.existing or check.move_aside:
        return None
    out = check.out
    entry: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": "resume"}
    entry["changed"] = {k: [old, new] for k, (old, new) in check.changes.items()}
    if check.changes and (out / "config.yaml").is_file():
        folder = out / HISTORY
        folder.mkdir(exist_ok=True)
        previous = folder / f"{len(list(folder.glob('*.yaml'))):03d}.yaml"
        previous.write_text((out / "config.yaml").read_text())
        entry["previous"] = str(previous.relative_to(out))
        log.warning(
            "resuming %s with changed keys: %s (recorded in %s.jsonl)",
            out, ", ".join(f"{k}={new!r}" for k, (_, new) in check.changes.items()), HISTORY,
        )  # fmt: skip
    entry.update(extra or {})
    path = out / f"{HISTORY}.jsonl"
    with path.open("a") as fh:
        fh.write(json.dumps(entry, default=str) + "\n")
    return path
