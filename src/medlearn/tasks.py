"""Tasks as plug-ins: one :class:`Task` object per method, kept in one registry.

``cli.py``, ``api.py`` and ``demo.py`` iterate over :func:`registered_tasks` and never branch on a
task's name.  The built-in tasks register themselves in ``medlearn/<task>/task.py``; a fourth task
is one package plus one call::

    from medlearn.tasks import Task, register_task
    register_task(Task(name="toy", help="...", schema=ToyConfig, train=train_toy, build_model=...))

Everything except ``name``, ``help``, ``schema`` and ``train`` is optional: a task without
``add_verbs`` gets only the generic verbs (``train``, ``presets``, ``show-config``), one without
``run_demo`` is left out of ``medlearn demo``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medlearn.errors import ConfigError

BUILTIN_TASKS = ("mrsi", "mama", "itl")


@dataclass(frozen=True)
class Task:
    """What the toolkit needs to know about one method.

    Attributes:
        name: the word on the command line (``medlearn <name> ...``) and in ``configs/<name>/``.
        help: one line for ``medlearn --help``.
        schema: the config dataclass (loaded by :func:`medlearn.config.load_config`).
        train: ``train(cfg) -> summary dict``: the training entry point; the run folder is
            ``cfg.train.out``.
        build_model: ``build_model(cfg) -> nn.Module``, a freshly initialised network.
        load_predictor: ``load_predictor(checkpoint, device) -> predictor`` for a trained run.
        add_verbs: ``add_verbs(subparsers)``: the task's own verbs (synth, prepare, evaluate ...).
        run_demo: ``run_demo(out, report, fresh) -> summary dict``: the whole loop on synthetic data.
    """

    name: str
    help: str
    schema: type
    train: Callable[[Any], dict[str, Any]]
    build_model: Callable[[Any], Any] | None = None
    load_predictor: Callable[..., Any] | None = None
    add_verbs: Callable[[Any], None] | None = None
    run_demo: Callable[..., dict[str, Any]] | None = None


def lazy(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` as a callable that imports the module on first call, so that
    registering a task (and ``medlearn --help``) does not import its heavy libraries."""
    module, _, name = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = name
    call.__doc__ = f"``{target}``, imported on first use."
    return call


_REGISTRY: dict[str, Task] = {}


def register_task(task: Task, replace: bool = False) -> Task:
    """Add ``task`` to the registry; a second task of the same name is refused unless ``replace``."""
    if task.name in _REGISTRY and not replace and _REGISTRY[task.name] is not task:
        raise ConfigError(f"a task named '{task.name}' is already registered")
    _REGISTRY[task.name] = task
    return task


def unregister_task(name: str) -> None:
    """Remove a task (tests that register a toy task clean up with this)."""
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    for name in BUILTIN_TASKS:
        if name not in _REGISTRY:
            importlib.import_module(f"medlearn.{name}.task")


def registered_tasks() -> dict[str, Task]:
    """``{name: Task}`` of every registered task, built-in ones first."""
    _load_builtins()
    return dict(_REGISTRY)


def get_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        ConfigError: for an unknown name (the registered ones are listed).
    """
    tasks = registered_tasks()
    if name not in tasks:
        raise ConfigError(f"unknown task '{name}'; valid tasks: {', '.join(tasks)}")
    return tasks[name]


def run_folder(cfg: Any) -> Path:
    """The run folder of a loaded task config: ``train.out`` (the same key in every task)."""
    return Path(cfg.train.out)
