"""``engine.compile``: ``torch.compile`` of a task's modules, in place (state-dict keys unchanged)."""

from __future__ import annotations

import logging

from torch import nn

from medlearn.engine.options import EngineConfig

log = logging.getLogger(__name__)


def compile_modules(engine: EngineConfig, *modules: nn.Module | None) -> None:
    """Compile each module's ``forward`` with ``torch.compile(mode=engine.compile_mode)`` when
    ``engine.compile`` is on; a no-op otherwise.

    ``nn.Module.compile`` works in place, so checkpoints keep their parameter names and load into
    an eager model.  What a task compiles is its choice (e.g. not a critic whose gradient penalty
    needs a double backward, which compiled graphs do not support).
    """
    if not engine.compile:
        return
    for module in modules:
        if module is not None:
            module.compile(mode=None if engine.compile_mode == "default" else engine.compile_mode)
            log.info("compiled %s (mode %s)", type(module).__name__, engine.compile_mode)
