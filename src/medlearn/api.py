"""The stable Python surface of medlearn: presets, models, training and trained predictors per task.

Every function looks the task up in the registry of :mod:`medlearn.tasks` (no per-task code
here), so a notebook needs only::

    import medlearn
    net = medlearn.build_model("itl", "tiny")            # nn.Module from the packaged itl/tiny.yaml
    seg = medlearn.load_predictor("itl", "runs/itl")     # a trained run -> ITLSegmenter
    mask = seg.segment(volume, spacing=(0.5, 0.5, 3.0))  # (X, Y, Z) array -> (X, Y, Z) uint8 mask

The names below are re-exported lazily by ``medlearn`` (torch is imported only when first used).
The predictor classes live with their tasks (``medlearn.mrsi.predict.MRSIPredictor``,
``medlearn.itl.predict.ITLSegmenter``, ``medlearn.mama.eval.predict.MamaPredictor``);
``load_mrsi``/``load_itl``/``load_mama`` and the classes are re-exported here for compatibility.

A preset is a name (``paper``, ``small``, ``tiny``, ``demo``) or the path of a YAML file; names are
looked up by :func:`medlearn.config.resolve_preset` (``$MEDLEARN_CONFIGS``, then the presets shipped
in the package).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlearn._meta import PUBLIC_API as _API
from medlearn.config import configs_dir as configs_dir  # re-exported: where named presets are found
from medlearn.config import list_presets as _list_presets
from medlearn.config import load_config, resolve_preset
from medlearn.errors import ConfigError
from medlearn.tasks import Task, get_task, registered_tasks, run_folder

__all__ = list(_API)  # the one list of public names lives in medlearn/_meta.py

# Names kept for code written before the predictors moved into their tasks: name -> module.
_MOVED = {
    "MRSIPredictor": "medlearn.mrsi.predict",
    "load_mrsi": "medlearn.mrsi.predict",
    "ITLSegmenter": "medlearn.itl.predict",
    "load_itl": "medlearn.itl.predict",
    "MamaPredictor": "medlearn.mama.eval.predict",
    "load_mama": "medlearn.mama.eval.predict",
}


def __getattr__(name: str) -> Any:
    """``TASKS`` (the registered task names) and the predictors re-exported from their tasks."""
    if name == "TASKS":
        return tuple(registered_tasks())
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'medlearn.api' has no attribute '{name}'")


def _required(task: Task, what: str) -> Any:
    fn = getattr(task, what)
    if fn is None:
        raise ConfigError(f"task '{task.name}' does not provide {what}")
    return fn


def list_presets(task: str) -> list[str]:
    """Names of the presets of ``task`` (``demo``, ``paper``, ``small``, ``tiny`` ...), sorted.

    Raises:
        ConfigError: unknown task.

    Example:
        >>> "tiny" in list_presets("mrsi")
        True
    """
    return _list_presets(get_task(task).name)


def _yaml_value(value: Any) -> str:
    """A Python value as an override string (JSON is valid YAML for numbers, strings, lists, dicts)."""
    return json.dumps(str(value) if isinstance(value, Path) else value)


def load_preset(task: str, preset: str | Path | None = "tiny", overrides: Sequence[str] = ()) -> Any:
    """The typed config of ``task`` from a preset name (or YAML path) and dotted overrides.

    Args:
        task: a registered task (``mrsi``, ``itl``, ``mama``).
        preset: a preset name (``paper``, ``small``, ``tiny``, ``demo``) or a YAML path; None =
            the schema's defaults.
        overrides: ``key=value`` strings as on the command line (``"train.epochs=1"``).
    Returns:
        The task's config dataclass (``MRSIConfig``, ``ITLConfig``, ``MamaConfig``).
    Raises:
        ConfigError: unknown task or preset (the valid ones are listed), unknown key or bad value.

    Example:
        >>> load_preset("itl", "tiny", ["model.width=4"]).model.width
        4
    """
    t = get_task(task)
    path = None if preset is None else resolve_preset(t.name, preset)
    return load_config(t.schema, path, list(overrides))


def build_model(
    task: str, preset: str | Path = "tiny", overrides: Sequence[str] = (), **model_keys: Any
) -> Any:
    """A freshly initialised network of ``task`` sized by a preset (eval mode, on the CPU).

    ``model_keys`` are shortcuts for ``model.<key>=<value>`` overrides (``base_width=2``); other
    keys go in ``overrides`` as dotted strings.  What comes back is the task's ``build_model``:

    * ``mrsi``: the generator, ``net(t1, flair, lr, n, met, lam, mask)`` -> (B, 1, H, W);
    * ``itl``: ``MultiSiteExpert``, (B, C, H, W) -> (B, K, H, W) logits (C = ``data.context``);
    * ``mama``: ``MamaModel`` with ``encode_image`` (B, 3, S, S) -> (B, E) and ``encode_text``.

    Raises:
        ConfigError: unknown task, preset or key, or a task without a model builder.

    Example:
        >>> import torch
        >>> net = build_model("itl", "tiny", width=4)
        >>> net(torch.zeros(1, 1, 32, 32)).shape
        torch.Size([1, 2, 32, 32])
    """
    t = get_task(task)
    build = _required(t, "build_model")
    extra = [f"model.{k}={_yaml_value(v)}" for k, v in model_keys.items()]
    return build(load_preset(t.name, preset, [*overrides, *extra])).eval()


def train(task: str, preset: str | Path | None = "tiny", overrides: Sequence[str] = ()) -> Path:
    """Run the task's training entry point on a preset; returns the run folder (``train.out``).

    The same as ``medlearn <task> train --config <preset> key=value ...``: the run folder gets
    ``config.yaml``, ``env.json``, ``metrics.jsonl`` and ``checkpoints/``, and a second call resumes.

    Example:
        >>> run = train("itl", "tiny", ["data.root=data/itl", "train.out=runs/itl"])  # doctest: +SKIP
    """
    t = get_task(task)
    cfg = load_preset(t.name, preset, overrides)
    t.train(cfg)
    return run_folder(cfg)


def load_predictor(task: str, checkpoint: str | Path, device: Any = "cpu") -> Any:
    """The trained model of a run folder or checkpoint, wrapped for inference by its task.

    ``mrsi`` -> ``MRSIPredictor``, ``itl`` -> ``ITLSegmenter``, ``mama`` -> ``MamaPredictor``.

    Raises:
        ConfigError: unknown task, or a task without a predictor.
        DataError: no checkpoint there (the task's loader names what is missing).

    Example:
        >>> seg = load_predictor("itl", "runs/itl")  # doctest: +SKIP
    """
    return _required(get_task(task), "load_predictor")(checkpoint, device)
