"""``medlearn mama demo``: synthesise EMBED-format data, prepare it, pre-train the demo preset, evaluate.

Called by :mod:`medlearn.demo` through the task registration (:mod:`medlearn.mama.task`); the
loss and retrieval curves of the run are drawn here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

DEMO_PATIENTS = 48
DEMO_LONG_SIDE = 256


def _curves(metrics: list[dict], out: Path, n_val: int = 0) -> tuple[Path, Path]:
    import matplotlib.pyplot as plt

    from medlearn.report import save_figure

    terms = ("clip", "clip_extra", "nt_xent", "sla_t2i", "sla_i2t")  # the total jumps at late_loss: not drawn
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in terms:
        pts = [(m["step"], m[t]) for m in metrics if t in m]
        if pts:
            ax.plot(*zip(*pts), label=t)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss term (unweighted)")
    ax.legend(fontsize=8)
    ax.set_title("MaMA demo: loss terms")
    loss_png = save_figure(fig, out / "loss_curves.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for t in ("val_i2t_top1", "val_i2t_top5", "val_t2i_top1", "val_t2i_top5"):
        pts = [(m["step"], m[t]) for m in metrics if t in m]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=t[4:])
    if n_val:
        for k, style in ((1, ":"), (5, "--")):
            ax.axhline(
                min(1.0, k / n_val), color="gray", linestyle=style, linewidth=1, label=f"chance top-{k}"
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation retrieval accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("MaMA demo: image <-> report retrieval")
    ret_png = save_figure(fig, out / "retrieval_curve.png")
    plt.close("all")
    return loss_png, ret_png


def loss_overview(records: list[dict], late_loss: int) -> dict[str, float | None]:
    """First and last values that can be compared: the CLIP term (on from step 1) and the total after
    ``late_loss`` (the total jumps there, when four more terms switch on, so its first value overall
    would read as divergence).

    Args:
        records: ``metrics.jsonl`` records with ``loss`` (logged optimizer steps, counted from 1).
        late_loss: the step index from which the late terms are on (logged step ``late_loss + 1``).
    """

    def pick(rows: list[dict], key: str, i: int) -> float | None:
        rows = [r for r in rows if key in r]
        return round(float(rows[i][key]), 3) if rows else None

    late = [r for r in records if r["step"] > late_loss]
    return {
        "clip_loss_first": pick(records, "clip", 0),
        "clip_loss_last": pick(records, "clip", -1),
        "total_loss_first_after_late": pick(late, "loss", 0),
        "total_loss_last": pick(late or records, "loss", -1),
    }


def run_demo(out: Path, report: Any, fresh: bool) -> dict[str, Any]:
    """Synthesise EMBED-format data, prepare it, pre-train the ``demo`` preset, report the curves."""
    from medlearn.config import load_config, resolve_preset
    from medlearn.engine import read_metrics
    from medlearn.mama.config import MamaConfig
    from medlearn.mama.data.prepare import PrepareConfig, prepare_dataset
    from medlearn.mama.data.synth import SynthConfig, generate
    from medlearn.mama.train import train

    out = Path(out)
    t0 = time.time()
    synth_dir, prep_dir, run_dir = out / "synth", out / "prepared", out / "run"
    if fresh or not (synth_dir / "synth_summary.json").is_file():
        generate(
            synth_dir, SynthConfig(n_patients=DEMO_PATIENTS, n_rsna_patients=1, long_side=DEMO_LONG_SIDE)
        )
    if fresh or not (prep_dir / "table.csv").is_file():
        prepare_dataset(prep_dir, embed_dir=synth_dir / "embed", cfg=PrepareConfig(long_side=128))
    t_data = time.time() - t0
    cfg = load_config(
        MamaConfig, resolve_preset("mama", "demo"), [f"train.out={run_dir}", f"data.prepared_dir={prep_dir}"]
    )
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    summary = train(cfg)
    metrics = read_metrics(run_dir / "metrics.jsonl")
    n_val = int(summary.get("n_val", 0))
    loss_png, ret_png = _curves(metrics, out, n_val)
    vals = [m for m in metrics if "val_i2t_top1" in m]
    first, last = (vals[0], vals[-1]) if vals else ({}, {})
    losses = [m for m in metrics if "loss" in m]
    sec = report.section(
        "MaMA pre-training",
        f"Synthetic EMBED-format data ({DEMO_PATIENTS} patients, DICOM + tables) was prepared and the demo preset "
        f"(random small DINOv2-with-registers + pre-trained MiniLM with LoRA) pre-trained for {summary['step']} "
        f"steps; the multi-view and local losses start at step {cfg.loss.late_loss}, so the total loss jumps "
        "there (five terms instead of one): compare the CLIP term over the whole run, and the total only "
        f"after step {cfg.loss.late_loss}. Retrieval over the "
        f"{n_val} validation images counts a hit when the retrieved report text equals the query's report "
        "(chance about k / N for top-k; the reports also hold patient facts no image shows).",
    )
    from medlearn.mama.data.synth_figure import exam_figure

    exams_png = exam_figure(synth_dir / "embed", out / "sample_exams.png", n_exams=2)
    sec.image(exams_png, "sample synthetic exams (4 views; findings outlined from ROI_coords)")
    sec.image(loss_png, "loss terms per optimizer step")
    sec.image(ret_png, "validation retrieval top-1 / top-5")
    rows = [
        {"step": m["step"], **{k[4:]: round(m[k], 3) for k in m if k.startswith("val_")}}
        for m in (first, last)
        if m
    ]
    sec.table(rows, caption="validation retrieval at the first and last evaluation")
    sec.table(
        [{"group": k, "trainable parameters": v} for k, v in summary["trainable"].items()],
        caption="trainable",
    )
    from medlearn.mama.eval.evaluate import demo_evaluate

    evaluation = demo_evaluate(summary["final"], prep_dir, out / "eval", sec)
    res = {
        "steps": summary["step"],
        "data_s": round(t_data, 1),
        **loss_overview(losses, cfg.loss.late_loss),
        "val_i2t_top1": round(last.get("val_i2t_top1", float("nan")), 3),
        "val_t2i_top5": round(last.get("val_t2i_top5", float("nan")), 3),
        **{k: v for k, v in evaluation.items() if isinstance(v, (int, float))},
    }
    return res
