"""Which tasks exist: each task package may provide ``<task>/cli.py`` with the task protocol.

A task's ``cli`` module defines:

* ``HELP: str`` - one line for ``medlearn --help``;
* ``add_verbs(sub)`` - adds its verbs (``synth``, ``prepare``, ``train``, ``evaluate``,
  ``predict``, ``demo`` ...) to an ``argparse`` sub-parser collection; each verb sets
  ``func=callable(args) -> int``;
* ``run_demo(out: Path, report: Report, fresh: bool) -> dict`` - the whole loop on bundled
  synthetic data, adding a section to ``report``; returns a small summary dict.

A task whose ``cli`` module is not there yet is simply absent from the command tree.
"""

from __future__ import annotations

import importlib
from types import ModuleType

KNOWN_TASKS = ("mrsi", "mama", "itl")


def load_task(name: str) -> ModuleType | None:
    """The task's cli module, or ``None`` when that task is not built."""
    module = f"medlearn.{name}.cli"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name in (module, f"medlearn.{name}"):
            return None
        raise


def registered_tasks() -> dict[str, ModuleType]:
    """``{task name: cli module}`` for every task that is built."""
    out = {}
    for name in KNOWN_TASKS:
        mod = load_task(name)
        if mod is not None:
            out[name] = mod
    return out
