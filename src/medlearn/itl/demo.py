"""``medlearn itl demo`` and the figures of a run: R matrix, per-site curves, overlays.

:func:`run_demo` trains sequential fine-tuning and ITL over a synthetic 3-site sequence and adds a
report section; :func:`evaluate_run` is the run-level evaluation behind ``medlearn itl evaluate``
(metrics per case and site, ``evaluation/summary.json`` and the figures).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlearn.errors import DataError

if TYPE_CHECKING:
    from medlearn.itl.data import MultiSiteData

DEMO_STRATEGIES = ("sequential", "itl")


def evaluate_run(
    run: str | Path, checkpoint: str | Path | None = None, data_root: str = "", device: str = "cpu"
) -> dict[str, Any]:
    """Dice/HD95/ASD per test case of every trained and held-out site, with the run's figures.

    Args:
        run: run folder (``train.out``); results go to ``run/evaluation`` and ``run/figures``.
        checkpoint: checkpoint folder (default: the run's ``checkpoints/final``).
        data_root: replaces ``data.root`` of the run's config when not empty.
        device: where the model runs.
    Returns:
        the content of ``evaluation/summary.json`` plus ``path`` (that file) and ``results`` (the
        run's ``results.json`` when the sequence finished, else ``None``).
    """
    from medlearn.itl.data import prepare_dataset
    from medlearn.itl.evaluate import evaluate_cases, write_summary
    from medlearn.itl.predict import load_checkpoint

    run = Path(run)
    ckpt = checkpoint or run
    model, cfg = load_checkpoint(ckpt, device)
    if data_root:
        cfg.data.root = data_root
    data = prepare_dataset(cfg.data)
    assert data is not None  # None only with check_only
    sites = list(cfg.data.sites) + list(cfg.data.heldout)
    per_site = {
        s: evaluate_cases(model, data.split(s, "test"), cfg.data.context, device, cfg.train.largest_cc, True)
        for s in sites
    }
    path = write_summary(run / "evaluation" / "summary.json", per_site, {"checkpoint": str(ckpt)})
    summary = json.loads(path.read_text())
    overlays(run, data, sites, ckpt)
    res = None
    if (run / "results.json").is_file():
        res = json.loads((run / "results.json").read_text())
        write_figures(run, res)
    return {**summary, "path": str(path), "results": res}


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


def overlays(run: Path, data: MultiSiteData, sites: list[str], checkpoint: str | Path | None = None) -> Path:
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


def run_demo(out: Path, report: Any, fresh: bool) -> dict[str, Any]:
    """Synthetic 3-site sequence (RUNMC -> BMC -> I2CVB, HK held out) for sequential and ITL; adds a report section.

    Outputs (data, runs, figures) are reused when ``fresh`` is False.
    """
    import torch

    from medlearn.config import load_config, resolve_preset
    from medlearn.itl.config import ITLConfig
    from medlearn.itl.data import prepare_dataset
    from medlearn.itl.synth import make_benchmark
    from medlearn.itl.train import train as run_sequence

    cfg_path = resolve_preset("itl", "demo")
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
                ITLConfig, cfg_path, [f"data.root={root}", f"train.out={run}", f"train.strategy={strategy}"]
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
        over = overlays(out / "itl", data, list(itl["sites"]) + list(itl["heldout_sites"]))
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
