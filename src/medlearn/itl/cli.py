"""``medlearn itl ...``: synth, prepare, train, evaluate, predict, demo (task protocol of medlearn.tasks)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlearn.cli_common import add_config_args, add_demo_verb
from medlearn.config import load_config
from medlearn.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medlearn.itl.data import MultiSiteData

HELP = "incremental-transfer learning for multi-site prostate MRI segmentation"
DEMO_STRATEGIES = ("sequential", "itl")


def config_dir() -> Path:
    """``configs/itl`` of the source checkout."""
    return Path(__file__).resolve().parents[3] / "configs" / "itl"


def _default_config(name: str) -> str | None:
    p = config_dir() / f"{name}.yaml"
    return str(p) if p.is_file() else None


def _load(args: argparse.Namespace):
    from medlearn.itl.config import ITLConfig

    return load_config(ITLConfig, args.config, args.overrides)


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
    keys = ("ACC", "BWT", "forgetting", "FWT", "heldout_dice_final", "heldout_hd95_final")
    print(f"strategy {res['strategy']}: " + ", ".join(f"{k}={_f(res[k])}" for k in keys if k in res))


def _cmd_train(args: argparse.Namespace) -> int:
    from medlearn.itl.train import run_sequence

    cfg = _load(args)
    res = run_sequence(cfg)
    if res.get("stopped"):
        print(f"stopped at phase {res['phase']}, step {res['step']}; rerun the same command to resume")
        return 0
    _print_results(res)
    print(f"run folder: {cfg.out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medlearn.itl.data import prepare_dataset
    from medlearn.itl.evaluate import evaluate_cases, write_summary
    from medlearn.itl.predict import load_checkpoint

    run = Path(args.run)
    model, cfg = load_checkpoint(args.checkpoint or run, args.device)
    if args.data_root:
        cfg.data.root = args.data_root
    data = prepare_dataset(cfg.data)
    assert data is not None
    sites = list(cfg.data.sites) + list(cfg.data.heldout)
    per_site = {
        s: evaluate_cases(
            model, data.split(s, "test"), cfg.data.context, args.device, cfg.train.largest_cc, True
        )
        for s in sites
    }
    path = write_summary(
        run / "evaluation" / "summary.json", per_site, {"checkpoint": str(args.checkpoint or run)}
    )
    summary = json.loads(path.read_text())
    for s, m in summary["mean"].items():
        print(f"{s:8s} Dice {_f(m['dice'])}  HD95 {_f(m['hd95'], 2)} mm  ASD {_f(m['asd'], 2)} mm")
    _overlays(run, data, sites, args.checkpoint or run)
    if (run / "results.json").is_file():
        res = json.loads((run / "results.json").read_text())
        write_figures(run, res)
        _print_results(res)
    print(f"summary: {path}")
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
    add_config_args(p, _default_config("small"))
    p.add_argument("--check-only", action="store_true", help="only check every case and stop")
    p.add_argument("--fresh", action="store_true", help="recompute the cache")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train", help="train a strategy over the site sequence (resumes automatically)")
    add_config_args(p, _default_config("small"))
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

    add_demo_verb(sub, "itl", "3-site sequence on synthetic data, with a report")


# ---------------------------------------------------------------------------------------------- figures + demo
def write_figures(run: Path, res: dict[str, Any]) -> dict[str, Path]:
    """R heatmap and per-site curves of a finished run (``results.json``) under ``run/figures``."""
    from medlearn.itl.figures import plot_r_matrix, plot_site_curves

    figs = run / "figures"
    return {
        "R": plot_r_matrix(
            np.array(res["R"]), res["sites"], figs / "R.png", f"{res['strategy']}: Dice R[i, j]"
        ),
        "curves": plot_site_curves(
            res["R_all_sites"], res["sites"], figs / "site_dice.png", f"{res['strategy']}: per-site Dice"
        ),
    }


def _overlays(run: Path, data: MultiSiteData, sites: list[str], checkpoint: str | Path | None = None) -> Path:
    """``run/figures/overlays.png``: the first test case of each site, slice with the largest prostate area."""
    from medlearn.itl.evaluate import predict_probabilities, segment
    from medlearn.itl.figures import plot_overlays
    from medlearn.itl.predict import load_checkpoint

    model, cfg = load_checkpoint(checkpoint or run)
    items = []
    for s in sites:
        c = data.split(s, "test")[0]
        pred = segment(predict_probabilities(model, c.image, cfg.data.context, "cpu"), cfg.train.largest_cc)
        z = int(np.argmax(c.mask.reshape(c.mask.shape[0], -1).sum(1)))
        items.append((f"{s}/{c.case}", c.image[z], c.mask[z], pred[z]))
    return plot_overlays(items, run / "figures" / "overlays.png")


def run_demo(out: Path, report, fresh: bool) -> dict[str, Any]:
    """Synthetic 3-site sequence (RUNMC -> BMC -> I2CVB, HK held out) for sequential and ITL; adds a report section.

    Outputs (data, runs, figures) are reused when ``fresh`` is False.
    """
    import torch

    from medlearn.itl.config import ITLConfig
    from medlearn.itl.data import prepare_dataset
    from medlearn.itl.synth import make_benchmark
    from medlearn.itl.train import run_sequence

    cfg_path = _default_config("demo")
    if cfg_path is None:
        raise ConfigError(
            f"demo config '{config_dir() / 'demo.yaml'}' not found (run from a source checkout)"
        )
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-core machines shared with other jobs: one thread is far faster
    try:
        base = load_config(ITLConfig, cfg_path)
        root = out / "data"
        if not (root / base.data.heldout[0]).is_dir():
            sites = list(base.data.sites) + list(base.data.heldout)
            make_benchmark(root, seed=0, scale="tiny", sites=sites, cases_per_site=5)
        rows, results = [], {}
        data = None
        for strategy in DEMO_STRATEGIES:
            run = out / strategy
            cfg = load_config(
                ITLConfig, cfg_path, [f"data.root={root}", f"out={run}", f"train.strategy={strategy}"]
            )
            if data is None:
                data = prepare_dataset(cfg.data)
            res_file = run / "results.json"
            res = json.loads(res_file.read_text()) if res_file.is_file() else run_sequence(cfg, data)
            if res.get("stopped"):
                raise DataError(f"demo run '{run}' was interrupted; rerun the demo to resume it")
            results[strategy] = res
            rows.append(
                {
                    "strategy": strategy,
                    "ACC": res["ACC"],
                    "BWT": res["BWT"],
                    "forgetting": res["forgetting"],
                    "FWT": res["FWT"],
                    "held-out Dice": res.get("heldout_dice_final", float("nan")),
                    "held-out HD95 (mm)": res.get("heldout_hd95_final", float("nan")),
                    "params": res["params"],
                    "train s": round(sum(res["wall_s_per_phase"]), 1),
                }
            )
        itl = results["itl"]
        figs = write_figures(out / "itl", itl)
        seq_figs = write_figures(out / "sequential", results["sequential"])
        over = _overlays(out / "itl", data, list(itl["sites"]) + list(itl["heldout_sites"]))
    finally:
        torch.set_num_threads(threads)
    sec = report.section(
        "ITL: multi-site prostate segmentation",
        "Synthetic six-site-like prostate T2 data (tiny scale); three sites arrive in sequence "
        f"({' -> '.join(itl['sites'])}), {', '.join(itl['heldout_sites'])} is never trained on. "
        "R[i, j] = Dice on site j after phase i. The numbers of this demo are from a few training steps "
        "and only show the pipeline; see docs/itl.md for the benchmark.",
    )
    sec.table(rows, caption="continual metrics (Dice; forgetting: lower is better)")
    sec.image(figs["R"], "ITL: R matrix")
    sec.image(seq_figs["R"], "sequential fine-tuning: R matrix")
    sec.image(figs["curves"], "ITL: per-site Dice across phases")
    sec.image(over, "ITL final model: green = truth, red = prediction")
    return {"itl_ACC": round(itl["ACC"], 4), "sequential_ACC": round(results["sequential"]["ACC"], 4)}
