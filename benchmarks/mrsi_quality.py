"""MRSI quality benchmark on the synthetic benchmark with a fixed training budget.

Compares, on held-out synthetic patients, PSNR/SSIM per upscaling condition n of:
zero-filled input, bicubic upsampling of the acquired matrix, one single-scale network per n
("separate networks", ``--per-n``), and ONE multi-conditional (MCM) network for all n, all with
the same number of generator steps each; then the adversarially trained MCM network's PSNR and
sharpness at 5 lambdas spanning its trained range.  Every model is trained by
:func:`medlearn.mrsi.train.train` (what ``medlearn mrsi train`` runs) and scored by
:func:`medlearn.mrsi.evaluate.evaluate`.

Usage::

    python benchmarks/mrsi_quality.py --out runs/bench/mrsi_quality            # 32x32 maps, CPU-sized
    python benchmarks/mrsi_quality.py --hr-size 64 --batch 4 --steps 300 --patients 12 --n-test 3  # the real grid, CPU
    python benchmarks/mrsi_quality.py --quick                                   # smoke run (minutes)
    python benchmarks/mrsi_quality.py --hr-size 64 --steps 20000 --config paper # the real thing (GPU)
    python benchmarks/mrsi_quality.py --adv-overrides model.lambda_offset=false adversarial.route=all \
        adversarial.lambda_span=0.1                                             # the reference knob

Targets checked in the summary line (issue 13): SR >= zero-filled + 2 dB at x4; sharpness rising
monotonically over the 5 lambdas with the k-space energy outside the acquired window >= +15% from
the lowest to the highest lambda, plus the mean gradient magnitude rising too; PSNR at lambda = 0
within 0.3 dB of the non-adversarial MCM network (and, with ``--per-n``, MCM within 0.5 dB of
the per-n networks).  ``results.json`` holds every table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from medlearn.config import load_config
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.evaluate import evaluate
from medlearn.mrsi.synth import synthesize
from medlearn.mrsi.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "mrsi"


def _run(
    name: str, base: list[str], extra: list[str], out: Path, config: str, ns: list[int], lambdas: list[float]
) -> dict:
    run = out / name
    cfg = load_config(MRSIConfig, CONFIGS / f"{config}.yaml", [*base, f"train.out={run}", *extra,
                      f"eval.ns={ns}", f"eval.lambdas={lambdas}"])  # fmt: skip
    t0 = time.time()
    if not (run / "checkpoints" / "LATEST").is_file() or not (run / "done").is_file():
        train(cfg)
        (run / "done").write_text("ok")
    t_train = time.time() - t0
    summary = evaluate(run, run / "eval", cfg, split="test", figures=name.startswith("mcm"))
    return {"summary": summary, "train_s": t_train}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench/mrsi_quality")
    p.add_argument("--config", default="demo", help="preset for sizes/optimiser (demo, small, paper)")
    p.add_argument("--hr-size", type=int, default=32)
    p.add_argument("--patients", type=int, default=8)
    p.add_argument("--n-test", type=int, default=2)
    p.add_argument("--steps", type=int, default=150, help="generator steps per trained model")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n-critic", type=int, default=5, help="critic steps per generator step (the paper's 5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="4 patients, 16x16 maps, 10 steps")
    p.add_argument("--per-n", action="store_true", help="also train one single-scale network per n")
    p.add_argument("--eval-max-items", type=int, default=0, help="cap on test maps per n (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="engine.seed of every trained model (the data stay the same)")
    p.add_argument("--adv-overrides", nargs="*", default=[], help="extra overrides of the adversarial run")
    a = p.parse_args(argv)
    if a.quick:
        a.patients, a.hr_size, a.steps, a.n_test = 4, 16, 10, 1
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    data = out / "data"
    if not (data / "synth.json").is_file():
        synthesize(data, n_patients=a.patients, seed=0, hr_size=a.hr_size, layouts=("npy",))
    h = a.hr_size
    ns = sorted({h // 8, (3 * h) // 16, h // 4})  # x4, x2.67, x2
    all_n = list(range(h // 8, h // 4 + 1))
    base = [
        f"data.root={data / 'npy'}", "data.k_folds=1", "data.n_val=0", f"data.n_test={a.n_test}",
        f"train.batch_size={a.batch}", f"train.max_steps={a.steps}", "train.epochs=100000",
        "engine.device=cpu" if not torch.cuda.is_available() else "engine.device=auto",
        "engine.log_every=25", "engine.progress=false", "engine.tensorboard=false", f"eval.max_items={a.eval_max_items}",
        f"adversarial.n_critic={a.n_critic}", "model.data_consistency=reference", f"engine.seed={a.seed}",
    ]  # fmt: skip
    if 3 * h <= 64:  # pytorch_msssim needs side > (win - 1) * 16
        base.append("loss.ssim_win=3")
    t0 = time.time()
    res: dict[str, dict] = {}
    res["mcm"] = _run("mcm", base, ["model.arch=mcm", "adversarial.enabled=false", f"data.n_choices={all_n}"],
                      out, a.config, ns, [0.0])  # fmt: skip
    for n in ns if a.per_n else []:
        res[f"per_n_{n}"] = _run(f"per_n_{n}", base, ["model.arch=single_scale", "adversarial.enabled=false",
                                 f"data.n_choices=[{n}]"], out, a.config, [n], [0.0])  # fmt: skip
    adv_extra = ["model.arch=mcm", "adversarial.enabled=true", f"data.n_choices={all_n}", *a.adv_overrides]
    adv_cfg = load_config(MRSIConfig, CONFIGS / f"{a.config}.yaml", [*base, *adv_extra])
    low, span = adv_cfg.adversarial.lambda_low, adv_cfg.adversarial.lambda_span
    lambdas = [round(low + span * k / 4, 6) for k in range(5)]  # 5 values spanning the trained range
    res["mcm_adv"] = _run("mcm_adv", base, adv_extra, out, a.config, ns, lambdas)

    rows = []
    refs = pd.DataFrame(res["mcm"]["summary"]["references"])
    mcm = pd.DataFrame(res["mcm"]["summary"]["per_n_lambda"])
    adv = pd.DataFrame(res["mcm_adv"]["summary"]["per_n_lambda"])
    for n in ns:
        row = {"n": n, "upscale": f"x{h / (2 * n):.3g}"}
        for method in ("zero_filled", "bicubic"):
            r = refs[(refs.method == method) & (refs.n == n)].iloc[0]
            row[f"{method} PSNR"], row[f"{method} SSIM"] = r.psnr_mean, r.ssim_mean
        if a.per_n:
            r = pd.DataFrame(res[f"per_n_{n}"]["summary"]["per_n_lambda"]).iloc[0]
            row["per-n nets PSNR"], row["per-n nets SSIM"] = r.psnr_mean, r.ssim_mean
        r = mcm[mcm.n == n].iloc[0]
        row["MCM PSNR"], row["MCM SSIM"] = r.psnr_mean, r.ssim_mean
        r = adv[(adv.n == n) & (adv["lambda"] == 0.0)].iloc[0]
        row["MCM-adv(l=0) PSNR"], row["MCM-adv(l=0) SSIM"] = r.psnr_mean, r.ssim_mean
        rows.append(row)
    table = pd.DataFrame(rows)
    sharp = pd.DataFrame(res["mcm_adv"]["summary"]["per_lambda"])[
        ["lambda", "psnr_mean", "ssim_mean", "energy_outside_mean", "gradient_mean", "tv_mean", "gmsd_mean"]
    ]

    def fmt(df: pd.DataFrame) -> str:
        return df.to_markdown(index=False, floatfmt=".4g")

    try:
        t1, t2 = fmt(table), fmt(sharp)
    except ImportError:  # tabulate not installed
        t1, t2 = table.to_string(index=False), sharp.to_string(index=False)
    print("PSNR (dB) / SSIM per n on held-out synthetic patients")
    print(t1)
    print("\nMCM-adv sharpness per lambda (all n)")
    print(t2)
    x4 = table.iloc[0]
    gain = x4["MCM PSNR"] - x4["zero_filled PSNR"]
    gap = (table["per-n nets PSNR"] - table["MCM PSNR"]).max() if a.per_n else float("nan")

    def monotone(col: str) -> bool:
        v = sharp[col].tolist()
        return all(b > a for a, b in zip(v, v[1:]))

    measures = {c: monotone(f"{c}_mean") for c in ("energy_outside", "gradient", "tv")}
    e, gr = sharp["energy_outside_mean"].tolist(), sharp["gradient_mean"].tolist()
    rise = (e[-1] - e[0]) / e[0] if e[0] else float("nan")
    grad_rise = (gr[-1] - gr[0]) / gr[0] if gr[0] else float("nan")
    mono = measures["energy_outside"] and measures["gradient"] and rise >= 0.15
    adv0 = (table["MCM PSNR"] - table["MCM-adv(l=0) PSNR"]).max()  # how far lambda = 0 falls behind
    results = {
        "table": table.to_dict(orient="records"), "sharpness": sharp.to_dict(orient="records"),
        "per_n_lambda": res["mcm_adv"]["summary"]["per_n_lambda"], "lambdas": lambdas,
        "gain_x4_db": gain, "max_gap_to_per_n_db": gap, "sharpness_monotone": measures, "sharpness_rise": rise,
        "gradient_rise": grad_rise, "adv_lambda0_vs_noadv_db": adv0, "steps": a.steps, "batch": a.batch,
        "hr_size": h, "seed": a.seed, "adv_overrides": a.adv_overrides, "wall_s": time.time() - t0,
        "train_s": {k: v["train_s"] for k, v in res.items()},
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    print(
        f"\nsummary: {h}x{h} maps, {a.steps} steps/model, batch {a.batch}: MCM vs zero-filled at x4 {gain:+.2f} dB "
        f"(target +2: {ok(gain >= 2)}); sharpness over lambdas {lambdas}: {ok(mono)} (monotone: "
        f"{', '.join(k for k, v in measures.items() if v) or 'none'}; energy outside the window {100 * rise:+.1f}% "
        f"(target +15%), mean gradient {100 * grad_rise:+.1f}%); PSNR(l=0) below non-adversarial by at most "
        f"{adv0:.2f} dB (target <= 0.3: {ok(adv0 <= 0.3)})"
        + (f"; max per-n advantage {gap:.2f} dB (target <= 0.5: {ok(gap <= 0.5)})" if a.per_n else "")
        + f"; wall {(time.time() - t0) / 60:.1f} min"
    )
    return 0 if not math.isnan(gain) else 1


if __name__ == "__main__":
    raise SystemExit(main())
