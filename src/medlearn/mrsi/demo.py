"""``medlearn mrsi demo``: synthesise a small benchmark, train the demo preset, evaluate, report.

Called by :mod:`medlearn.demo` through the task registration (:mod:`medlearn.mrsi.task`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

DEMO_PATIENTS = 6
DEMO_HR_SIZE = 32
DEMO_SLICES = 2


def run_demo(out: Path, report: Any, fresh: bool) -> dict[str, Any]:
    """Synthesise a small benchmark, train a demo MCM network, evaluate it, add a report section.

    Outputs are reused when present unless ``fresh``.  Runs single-threaded: the tiny
    convolutions gain little from a second thread, and on a shared machine OpenMP spinning made
    two threads several times slower.
    """
    import torch

    from medlearn.config import load_config, resolve_preset
    from medlearn.mrsi.config import MRSIConfig
    from medlearn.mrsi.evaluate import evaluate
    from medlearn.mrsi.synth import synthesize
    from medlearn.mrsi.train import train as fit

    out = Path(out)
    cfg_path = resolve_preset("mrsi", "demo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        data = out / "data"
        if fresh and out.exists():
            shutil.rmtree(out)
        if not (data / "synth.json").is_file():
            synthesize(
                data,
                n_patients=DEMO_PATIENTS,
                seed=0,
                hr_size=DEMO_HR_SIZE,
                n_slices=DEMO_SLICES,
                layouts=("npy",),
            )
        t_synth = time.time() - t0
        run = out / "run"
        cfg = load_config(MRSIConfig, cfg_path, [f"data.root={data / 'npy'}", f"train.out={run}"])
        if not (run / "checkpoints" / "final").is_dir():
            fit(cfg)
        t_train = time.time() - t0 - t_synth
        ev = out / "eval"
        if not (ev / "summary.json").is_file():
            evaluate(run, ev, cfg)
        summary = json.loads((ev / "summary.json").read_text())
    finally:
        torch.set_num_threads(threads)
    sec = report.section(
        "MRSI super-resolution",
        "One multi-conditional network (Filter Scaling on upscaling factor and metabolite, conditional "
        f"instance norm on the sharpness weight lambda) trained for {cfg.train.epochs} epochs on "
        f"{DEMO_PATIENTS} synthetic patients ({DEMO_HR_SIZE}x{DEMO_HR_SIZE} maps from MNI152 anatomy with "
        "simulated gliomas), scored on a held-out patient. Demo-sized: numbers show the pipeline, not the "
        "method's quality (see docs/mrsi.md for the benchmark).",
    )
    keys = [
        "n",
        "lambda",
        "psnr_mean",
        "psnr_std",
        "ssim_mean",
        "ssim_std",
        "gradient_mean",
        "gmsd_mean",
        "count",
    ]
    sec.table(
        [{k: r[k] for k in keys} for r in summary["per_n_lambda"]], caption="SR: PSNR/SSIM per n and lambda"
    )
    rkeys = ["method", "n", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std"]
    sec.table(
        [{k: r[k] for k in rkeys} for r in summary["references"]],
        caption="zero-filled input and bicubic per n",
    )
    sec.table([{"parameters": summary["parameters"], "synth_s": round(t_synth, 1), "train_s": round(t_train, 1)}],
              caption="model size and wall time")  # fmt: skip
    for name in ("NAA", "tCho"):
        png = ev / f"sr_grid_{name}.png"
        if png.is_file():
            sec.image(png, f"{name}: HR / zero-filled LR / SR across n and lambda")
    sweep = ev / "lambda_sweep_NAA.png"
    if sweep.is_file():
        sec.image(
            sweep,
            "NAA: one held-out map across the sharpness knob lambda (largest upscaling), with each "
            "output's difference from lambda = 0 below",
        )
    if (ev / "psnr_vs_sharpness.png").is_file():
        sec.image(
            ev / "psnr_vs_sharpness.png",
            "PSNR versus sharpness (k-space energy outside the acquired window) per lambda",
        )
    sr0 = [r for r in summary["per_n_lambda"] if r["lambda"] == min(cfg.eval.lambdas)]
    zf = [r for r in summary["references"] if r["method"] == "zero_filled"]
    return {
        "psnr_sr_lambda0": round(sum(r["psnr_mean"] for r in sr0) / max(1, len(sr0)), 2),
        "psnr_zero_filled": round(sum(r["psnr_mean"] for r in zf) / max(1, len(zf)), 2),
        "parameters": summary["parameters"],
    }
