"""The pointing game over a MaMA training run: hottest and coldest cell at every checkpoint.

Trains one model of ``benchmarks/mama_quality.py`` (same data, same configuration, the real
``medlearn.mama.train.train``) with a checkpoint every ``--every`` steps, then scores the SLA
finding-sentence heatmap of each checkpoint on the test images with ROIs: the pointing game of
the hottest cell, and of the coldest cell (high when the map localises with the wrong sign).
Writes ``trajectory.json`` and prints one line per checkpoint.

    python benchmarks/mama_pointing_trajectory.py --out runs/mq-traj --seed 2 --steps 400 --late-loss 66
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import mama_quality  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/mama-trajectory")
    ap.add_argument("--data-from", default=None, help="a mama_quality --out folder whose data to reuse")
    ap.add_argument("--model", default="mama", choices=sorted(mama_quality.MODELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--late-loss", type=int, default=None, help="default steps // 3, as mama_quality")
    ap.add_argument("--every", type=int, default=50, help="checkpoint (and score) every N steps")
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--long-side", type=int, default=384)
    ap.add_argument("--cache-side", type=int, default=160)
    ap.add_argument("--conspicuity", type=float, default=5.0)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-pointing", type=int, default=200)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--override", nargs="*", default=[])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("medlearn.engine", "medlearn.progress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from medlearn.mama.data.report_text import ReportBuilder
    from medlearn.mama.eval.evaluate import EvalConfig, MamaEncoder, load_pretrained, load_split_tables
    from medlearn.mama.eval.localisation import evaluate_pointing
    from medlearn.mama.train import train

    out = Path(args.out)
    prep = mama_quality.make_data(args, Path(args.data_from) if args.data_from else out)
    run = out / "runs" / f"{args.model}_s{args.seed}"
    extra = [*mama_quality.MODELS[args.model], f"engine.ckpt_every={args.every}", "engine.keep_last=0"]
    cfg = mama_quality.run_config(args, run, prep, args.seed, extra)
    if not (run / "checkpoints" / "final").is_dir():
        train(cfg)
    _, test, root = load_split_tables(EvalConfig(mode="zero-shot", task="birads", data=str(prep)))
    builder = ReportBuilder(test.attrs.get("legend"))
    ckpts = {int(p.name.split("_")[-1]): p for p in (run / "checkpoints").glob("step_*") if p.is_dir()}
    ckpts[args.steps] = run / "checkpoints" / "final"  # the same weights as step_<steps> when both exist
    rows = []
    for step, ckpt in sorted(ckpts.items()):
        model, mcfg = load_pretrained(ckpt)
        res = evaluate_pointing(
            MamaEncoder(model),
            test,
            root,
            int(mcfg.model.image.image_size),
            builder,
            max_images=args.max_pointing,
        )
        row = {"checkpoint": ckpt.name, "step": step, "hottest": res["pointing_game"],
               "coldest": res["pointing_game_coldest"], "n": res["n"],
               "chance": sum(res["chance_per_image"]) / max(len(res["chance_per_image"]), 1)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "trajectory.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
