"""``medlearn itl <verb>``: synth, prepare, train, evaluate, predict (added by :mod:`medlearn.itl.task`).

The generic verbs (``presets``, ``show-config``, ``demo``) come from :mod:`medlearn.cli`.
"""

from __future__ import annotations

import argparse
from typing import Any

from medlearn.cli_common import add_config_args, load_task_config

DEFAULT_PRESET = "small"


def _load(args: argparse.Namespace) -> Any:
    return load_task_config("itl", args, DEFAULT_PRESET)


# ---------------------------------------------------------------------------------------------- verbs
def _cmd_synth(args: argparse.Namespace) -> int:
    from medlearn.itl.synth import SITE_ORDER, make_benchmark

    sites = args.sites.split(",") if args.sites else list(SITE_ORDER)
    out = make_benchmark(args.out, args.seed, args.scale, args.nnunet, sites, args.cases)
    print(
        f"synthetic multi-site prostate benchmark ({args.scale}, {'nnU-Net' if args.nnunet else 'site'} layout): {out}"
    )
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from medlearn.itl.data import cache_folder, prepare_dataset

    cfg = _load(args)
    data = prepare_dataset(cfg.data, fresh=args.fresh, check_only=args.check_only)
    if data is None:
        print("dataset check passed")
        return 0
    for site, parts in data.cases.items():
        print(f"{site:8s} " + "  ".join(f"{k}={len(v)}" for k, v in parts.items()))
    print(f"prepared volumes: {cache_folder(cfg.data)}")
    return 0


def _f(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _print_results(res: dict[str, Any]) -> None:
    keys = ("ACC", "BWT", "forgetting", "FWT", "mean_diag", "heldout_dice_final", "heldout_hd95_final",
            "heldout_asd_final")  # fmt: skip
    line = ", ".join(f"{k}={_f(res[k])}" for k in keys if k in res)
    if "heldout_empty_final" in res:  # HD95/ASD exist only for non-empty predictions: say how many were empty
        line += f", empty held-out predictions {res['heldout_empty_final']}/{res['heldout_cases']}"
    print(f"strategy {res['strategy']}: {line}")


def _cmd_train(args: argparse.Namespace) -> int:
    from medlearn.itl.train import train as run_sequence
    from medlearn.tasks import run_folder

    cfg = _load(args)
    res = run_sequence(cfg)
    if res.get("stopped"):
        from medlearn.engine.loop import exit_status

        print(f"stopped at phase {res['phase']}, step {res['step']}; rerun the same command to resume")
        return exit_status(res)  # 130/143 when SIGINT/SIGTERM stopped it
    _print_results(res)
    print(f"run folder: {run_folder(cfg)}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medlearn.itl.demo import evaluate_run

    summary = evaluate_run(args.run, args.checkpoint or None, args.data_root, args.device)
    for s, m in summary["mean"].items():
        print(f"{s:8s} Dice {_f(m['dice'])}  HD95 {_f(m['hd95'], 2)} mm  ASD {_f(m['asd'], 2)} mm")
    if summary["results"] is not None:
        _print_results(summary["results"])
    print(f"summary: {summary['path']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from medlearn.itl.predict import predict_paths

    written = predict_paths(args.checkpoint, args.inputs, args.out, args.device)
    for w in written:
        print(w)
    return 0


def add_verbs(sub: argparse._SubParsersAction) -> None:
    """Add the itl verbs to the ``medlearn itl`` sub-parser collection."""
    p = sub.add_parser("synth", help="write the synthetic six-site prostate benchmark")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", choices=("tiny", "small", "full"), default="small")
    p.add_argument("--nnunet", action="store_true", help="nnU-Net layout (imagesTr/labelsTr/dataset.json)")
    p.add_argument("--sites", default="", help="comma-separated subset of RUNMC,BMC,I2CVB,UCL,BIDMC,HK")
    p.add_argument(
        "--cases", type=int, default=None, help="cases per site (default: the real counts; tiny: 3)"
    )
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("prepare", help="check, split and preprocess the dataset (cached)")
    add_config_args(p, DEFAULT_PRESET)
    p.add_argument("--check-only", action="store_true", help="only check every case and stop")
    p.add_argument("--fresh", action="store_true", help="recompute the cache")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train a strategy over the site sequence (resumes automatically)")
    add_config_args(p, DEFAULT_PRESET)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="Dice/HD95/ASD per case and site of a run's checkpoint, figures")
    p.add_argument("--run", required=True, help="run folder (train's out)")
    p.add_argument("--checkpoint", default="", help="checkpoint folder (default: RUN/checkpoints/final)")
    p.add_argument("--data-root", default="", help="override data.root")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="segment NIfTI files or folders; masks keep the input geometry")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    p.add_argument("inputs", nargs="+", help="IN.nii.gz files or folders")
    p.add_argument("--out", required=True, help="MASK.nii.gz (one input) or an output folder")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_predict)
