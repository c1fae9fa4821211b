"""The command tree: ``medlearn <task> <verb> --config FILE key=value ...``, ``medlearn demo``, ``medlearn env``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from medlearn import __version__
from medlearn.cli_common import setup_logging
from medlearn.errors import MedlearnError
from medlearn.tasks import registered_tasks


def _cmd_env(args: argparse.Namespace) -> int:
    from medlearn.engine.run_dir import OPTIONAL, environment_info

    info = environment_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"medlearn {info['medlearn']}  (git {info['git'] or 'n/a'})")
    print(f"python {info['python']} on {info['platform']}")
    print(f"CPU cores: {info['cpu_count']}  torch threads: {info['torch_threads']}")
    if info["gpus"]:
        for g in info["gpus"]:
            print(f"GPU {g['index']}: {g['name']} ({g['memory_gib']} GiB), CUDA {info['cuda']}")
    else:
        print("GPU: none visible (training runs on CPU)")
    print("libraries:")
    for name, ver in info["libraries"].items():
        print(f"  {name:16s} {ver or 'NOT INSTALLED'}")
    print("optional extras:")
    for mod, ok in info["extras"].items():
        print(f"  {'yes' if ok else 'no ':3s}  {mod:22s} {OPTIONAL[mod]}")
    tasks = registered_tasks()
    print(f"tasks: {', '.join(tasks) if tasks else '(none built yet)'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medlearn.engine.run_dir import environment_info
    from medlearn.report import Report

    tasks = registered_tasks()
    wanted = args.tasks.split(",") if args.tasks else list(tasks)
    unknown = [t for t in wanted if t not in tasks]
    if unknown:
        print(f"error: unknown or unbuilt task(s) {unknown}; available: {list(tasks)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report("medlearn demo report")
    report.section("Overview", "Each registered task ran its whole loop on bundled synthetic data.")
    timings = []
    for name in wanted:
        print(f"== demo: {name} ==", flush=True)
        t0 = time.time()
        summary = tasks[name].run_demo(out / name, report, fresh=args.fresh) or {}
        dt = time.time() - t0
        scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
        headline = "; ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items()
        )
        timings.append({"task": name, "seconds": round(dt, 1), "key results": headline})
        print(f"== demo: {name} done in {dt:.1f} s ==", flush=True)
    if not wanted:
        print("no task is built yet; registered tasks: none")
    env = environment_info()
    report.section("Overview").table(
        timings or [{"task": "(none)", "seconds": 0}], caption="tasks and wall time"
    )
    envsec = report.section("Environment")
    envsec.table([{"library": k, "version": v} for k, v in env["libraries"].items()], caption="libraries")
    envsec.table(
        [
            {
                "python": env["python"],
                "platform": env["platform"],
                "cpus": env["cpu_count"],
                "gpus": len(env["gpus"]),
                "git": env["git"],
            }
        ],
        caption="machine",
    )
    path = report.write(out / getattr(args, "report_name", "report.html"))
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    tasks = registered_tasks()
    parser = argparse.ArgumentParser(
        prog="medlearn",
        description="Data-efficient medical-imaging methods: "
        + ", ".join(f"{n} ({getattr(m, 'HELP', '')})" for n, m in tasks.items()),
    )
    parser.add_argument("--version", action="version", version=f"medlearn {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p_env = sub.add_parser("env", help="versions, devices and optional extras")
    p_env.add_argument("--json", action="store_true")
    p_env.set_defaults(func=_cmd_env)
    p_demo = sub.add_parser("demo", help="run every task's demo on synthetic data and write one report")
    p_demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p_demo.add_argument("--tasks", default="", help="comma-separated subset, e.g. mrsi,itl")
    p_demo.add_argument(
        "--fresh", action="store_true", help="recompute everything instead of reusing outputs"
    )
    p_demo.set_defaults(func=_cmd_demo)
    for name, mod in tasks.items():
        p_task = sub.add_parser(name, help=getattr(mod, "HELP", name))
        verbs = p_task.add_subparsers(dest="verb", metavar="VERB")
        mod.add_verbs(verbs)
        p_task.set_defaults(func=lambda a, p=p_task: (p.print_help(), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except MedlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
