"""``medlearn demo``: every registered task's demo on bundled synthetic data, one HTML report.

Each task's ``run_demo(out / <task>, report, fresh)`` adds its section to the report and returns a
small summary; this module adds the overview (wall time and headline numbers per task) and the
environment, and writes the report.  Outputs under ``out`` are reused unless ``fresh``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlearn.errors import ConfigError
from medlearn.tasks import registered_tasks

log = logging.getLogger(__name__)

__all__ = ["run_demos"]


def _headline(summary: dict[str, Any]) -> str:
    """``key=value; ...`` of the scalar entries of a task's demo summary."""
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    return "; ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items())


def run_demos(
    out: str | Path,
    tasks: Sequence[str] = (),
    fresh: bool = False,
    report_name: str = "report.html",
) -> tuple[Path, list[dict[str, Any]]]:
    """Run the demos of ``tasks`` (default: every registered task that has one) into ``out``.

    Args:
        out: demo folder; task ``t`` writes under ``out/t`` and the report is ``out/report_name``.
        tasks: task names, in the order to run them.
        fresh: recompute everything instead of reusing earlier outputs.
        report_name: file name of the HTML report.
    Returns:
        (report path, one row per task: ``task``, ``seconds``, ``key results``).
    Raises:
        ConfigError: a name is not a registered task with a demo (the valid ones are listed).
    """
    from medlearn.engine.run_dir import environment_info
    from medlearn.report import Report

    demos = {name: t for name, t in registered_tasks().items() if t.run_demo is not None}
    wanted = list(tasks) or list(demos)
    unknown = [t for t in wanted if t not in demos]
    if unknown:
        raise ConfigError(
            f"no demo for task(s) {', '.join(unknown)}; tasks with a demo: {', '.join(demos) or '(none)'}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report("medlearn demo report")
    overview = report.section("Overview", "Each task ran its whole loop on bundled synthetic data.")
    rows = []
    for name in wanted:
        log.info("== demo: %s ==", name)
        t0 = time.time()
        summary = demos[name].run_demo(out / name, report, fresh) or {}
        dt = time.time() - t0
        rows.append({"task": name, "seconds": round(dt, 1), "key results": _headline(summary)})
        log.info("== demo: %s done in %.1f s ==", name, dt)
    overview.table(rows, caption="tasks and wall time")
    env = environment_info()
    envsec = report.section("Environment")
    envsec.table([{"library": k, "version": v} for k, v in env["libraries"].items()], caption="libraries")
    machine = {"medlearn": env["medlearn"], "git": env["git"], "python": env["python"],
               "platform": env["platform"], "cpus": env["cpu_count"], "gpus": len(env["gpus"])}  # fmt: skip
    envsec.table([machine], caption="machine")
    return report.write(out / report_name), rows
