"""The command tree: ``medlearn <task> <verb> --config PRESET key=value ...``, ``medlearn demo``, ``medlearn env``.

The tasks come from the registry of :mod:`medlearn.tasks`; each adds its own verbs, and every task
gets the generic ones: ``presets`` (names of its presets), ``show-config`` (a preset resolved with
every default, as YAML to copy and edit), ``demo`` (when it has one) and ``train`` (when it adds no
``train`` of its own).  ``python -m medlearn`` runs the same :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from medlearn.cli_common import add_config_args, load_task_config, setup_logging
from medlearn.errors import MedlearnError
from medlearn.tasks import Task, registered_tasks


# ------------------------------------------------------------------------------------- top level
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
    print(f"tasks: {', '.join(tasks) if tasks else '(none registered)'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medlearn.demo import run_demos

    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else []
    path, rows = run_demos(args.out, tasks, fresh=args.fresh, report_name=args.report_name)
    for row in rows:
        print(f"{row['task']}: {row['seconds']} s; {row['key results']}")
    print(f"report: {path}")
    return 0


class _VersionAction(argparse.Action):
    """``--version``: package version and, from a source checkout, its git revision (computed on use)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from medlearn.engine.run_dir import provenance

        print(provenance())
        parser.exit()


# ----------------------------------------------------------------------------------- task verbs
def _cmd_presets(task: Task, args: argparse.Namespace) -> int:
    from medlearn.config import list_presets, resolve_preset

    for name in list_presets(task.name):
        print(f"{name}\t{resolve_preset(task.name, name)}" if args.paths else name)
    return 0


def _cmd_show_config(task: Task, args: argparse.Namespace) -> int:
    from medlearn.config import resolve_preset, to_yaml

    cfg = load_task_config(task.name, args)
    print(f"# medlearn {task.name}: preset '{args.config}' ({resolve_preset(task.name, args.config)})")
    if args.overrides:
        print(f"# overrides: {' '.join(args.overrides)}")
    print(to_yaml(cfg), end="")
    return 0


def _cmd_train(task: Task, args: argparse.Namespace) -> int:
    from medlearn.engine.loop import exit_status

    summary = task.train(load_task_config(task.name, args))
    print(json.dumps(summary, indent=2, default=str))
    return exit_status(summary)  # 130/143 when SIGINT/SIGTERM stopped it


def _cmd_task_demo(task: Task, args: argparse.Namespace) -> int:
    ns = argparse.Namespace(
        out=args.out, fresh=args.fresh, tasks=task.name, report_name=f"report_{task.name}.html"
    )
    return _cmd_demo(ns)


def add_generic_verbs(verbs: argparse._SubParsersAction, task: Task) -> None:
    """``presets``, ``show-config``, and ``train`` / ``demo`` where the task adds none of its own."""
    if "train" not in verbs.choices:
        p = verbs.add_parser("train", help="train on a preset (the run folder is train.out)")
        add_config_args(p)
        p.set_defaults(func=lambda a, t=task: _cmd_train(t, a))
    p = verbs.add_parser("presets", help="list the presets (--config NAME)")
    p.add_argument("--paths", action="store_true", help="also print the YAML file of each preset")
    p.set_defaults(func=lambda a, t=task: _cmd_presets(t, a))
    p = verbs.add_parser("show-config", help="print a preset with every default filled in, as YAML to edit")
    p.add_argument("config", metavar="PRESET", help="preset name or YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides applied first")
    p.set_defaults(func=lambda a, t=task: _cmd_show_config(t, a))
    if task.run_demo is not None and "demo" not in verbs.choices:
        p = verbs.add_parser(
            "demo", help="the whole loop on synthetic data, with a report (see medlearn demo)"
        )
        p.add_argument(
            "--out", default="runs/demo", help="demo folder (default runs/demo; shared with medlearn demo)"
        )
        p.add_argument("--fresh", action="store_true", help="recompute instead of reusing earlier outputs")
        p.set_defaults(func=lambda a, t=task: _cmd_task_demo(t, a))


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The command tree, one sub-command per registered task.

    With ``argv``, only the task named there gets its verbs: the others' ``add_verbs`` import
    heavy libraries (transformers, MONAI) that a command of another task never needs.
    """
    tasks = registered_tasks()
    named = [a for a in (argv or []) if not a.startswith("-")][:1]
    wanted = set(tasks) if argv is None else set(named) & set(tasks)
    parser = argparse.ArgumentParser(
        prog="medlearn",
        description="Data-efficient medical-imaging methods, one command per task; "
        "`medlearn <task> presets` lists its presets, `medlearn <task> <verb> --help` the options.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="package version (and git revision of a checkout)"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, including third-party warnings and progress bars",
    )
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
    p_demo.set_defaults(func=_cmd_demo, report_name="report.html")
    for name, task in tasks.items():
        p_task = sub.add_parser(name, help=task.help, description=task.help)
        verbs = p_task.add_subparsers(dest="verb", metavar="VERB")
        if name not in wanted:
            continue
        if task.add_verbs is not None:
            task.add_verbs(verbs)
        add_generic_verbs(verbs, task)
        p_task.set_defaults(func=lambda a, p=p_task: (p.print_help(), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the verb; clear errors exit with code 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    setup_logging(bool({"-v", "--verbose"} & set(argv)))  # before the task modules import libraries
    parser = build_parser(argv)
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
