"""Evaluate a trained generator on a split: fidelity per n and per lambda, sharpness, tables, figures.

For every (n, lambda) of ``cfg.eval`` and every (patient, slice, metabolite) of the split: the SR map
(masked) and HR are brought back to original units (x the HR max), then PSNR / SSIM
(:mod:`medlearn.mrsi.metrics`) and the sharpness measures are computed on the full map.  The
zero-filled input (k-space truncated, what the scanner gives) and bicubic upsampling of the
truncated low-resolution matrix are scored the same way as references.

Outputs in ``out``: ``per_item.csv`` (one row per method x n x lambda x item), ``summary.csv`` and
``summary.md`` (mean +- std over patients x slices x metabolites), ``summary.json``, and figures
``sr_grid_<met>.png`` and ``psnr_vs_sharpness.png`` (see :mod:`medlearn.mrsi.figures`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate

from medlearn.config import load_config
from medlearn.engine import count_parameters, load_weights
from medlearn.errors import DataError
from medlearn.mrsi import metrics as M
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.kspace import centered_fft2, centered_ifft2

log = logging.getLogger(__name__)

__all__ = [
    "bicubic_from_truncated",
    "evaluate",
    "find_run_config",
    "load_generator",
    "markdown_table",
    "score_item",
    "summarise",
    "super_resolve",
    "trained_sharpness_range",
]


def bicubic_from_truncated(hr: Tensor, n: int) -> Tensor:
    """Bicubic upsampling of the acquired 2n x 2n matrix: (B, 1, H, W) -> (B, 1, H, W).

    The central 2n x 2n k-space of ``hr`` is inverse-transformed on its own 2n x 2n grid (intensity
    rescaled by 2n/H for the orthonormal FFT so a constant map keeps its value), its magnitude bicubically interpolated to H x W.
    """
    h, w = hr.shape[-2:]
    k = centered_fft2(hr)
    cy, cx = h // 2, w // 2
    small = centered_ifft2(k[..., cy - n : cy + n, cx - n : cx + n]).abs() * float(2 * n / np.sqrt(h * w))
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp_min(0)


def find_run_config(checkpoint: str | Path) -> Path:
    """The ``config.yaml`` of the run that holds ``checkpoint`` (searched upwards).

    Raises:
        DataError: when no parent folder has one.
    """
    p = Path(checkpoint).resolve()
    for folder in [p, *p.parents]:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise DataError(f"checkpoint '{checkpoint}': no config.yaml found in it or its parent folders")


def _weights_dir(checkpoint: Path) -> Path:
    """Accept a run folder (best/best, else final, else the latest checkpoint), a checkpoint folder or a .safetensors file."""
    if checkpoint.suffix == ".safetensors" or (checkpoint / "model_generator.safetensors").is_file():
        return checkpoint
    cands = [checkpoint / "best" / "best", checkpoint / "checkpoints" / "final"]
    latest = checkpoint / "checkpoints" / "LATEST"
    if latest.is_file():
        cands.append(checkpoint / "checkpoints" / latest.read_text().strip())
    for cand in cands:
        if (cand / "model_generator.safetensors").is_file():
            return cand
    raise DataError(
        f"checkpoint '{checkpoint}': no model_generator.safetensors (give a run or checkpoint folder)"
    )


def trained_sharpness_range(cfg: Any) -> tuple[float, float]:
    """(lowest, highest) sharpness lambda a run trained with, from its ``MRSIConfig``.

    Non-adversarial: (0, 0).  ``adversarial.fixed_lambda``: that value twice.  Otherwise
    [lambda_low, lambda_low + lambda_span], extended down to 0 when ``zero_fraction`` > 0 (those
    draws are lambda = 0).
    """
    a = cfg.adversarial
    if not a.enabled:
        return (0.0, 0.0)
    if a.fixed_lambda is not None:
        return (float(a.fixed_lambda), float(a.fixed_lambda))
    low = float(a.lambda_low)
    return (min(0.0, low) if a.zero_fraction > 0 else low, low + float(a.lambda_span))


def load_generator(
    checkpoint: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, MRSIConfig]:
    """Rebuild the generator of a run from its ``config.yaml`` and load the weights (eval mode).

    The generator is switched to per-sample conditioning, which computes the same function as the
    reference per-batch grouping and accepts mixed batches.  Its ``sharpness_range`` attribute
    holds the trained lambda range (:func:`trained_sharpness_range`), which
    the predict functions check requests against.
    """
    from medlearn.mrsi.train import build_models

    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise DataError(f"checkpoint '{checkpoint}' does not exist")
    cfg = load_config(MRSIConfig, find_run_config(checkpoint))
    trained = trained_sharpness_range(cfg)
    cfg.adversarial.enabled = False
    gen, _ = build_models(cfg, (0, 0))  # the grid only sizes the critic, not built here
    load_weights(gen, _weights_dir(checkpoint), "generator")
    gen.per_sample = True
    gen.sharpness_range = trained
    return gen.to(device).eval(), cfg


@torch.no_grad()
def super_resolve(
    gen: nn.Module, batch: dict[str, Any], lam: float, device: torch.device | str = "cpu"
) -> Tensor:
    """Masked SR of a collated dataset batch at one lambda -> (B, 1, H, W) normalised units."""
    b = batch["hr"].shape[0]
    dev = torch.device(device)
    return gen(
        batch["t1"].to(dev), batch["flair"].to(dev), batch["lr"].to(dev), batch["n"].to(dev),
        batch["met"].to(dev), torch.full((b,), float(lam), device=dev), batch["mask"].to(dev),
    ).float().cpu()  # fmt: skip


def score_item(hr: np.ndarray, sr: np.ndarray, mask: np.ndarray, n: int) -> dict[str, float]:
    """Fidelity and sharpness of one (H, W) map in original units."""
    return {
        "psnr": M.psnr(hr, sr),
        "ssim": M.ssim(hr, sr),
        "energy_outside": M.energy_outside_window_np(sr, n),
        "gradient": M.mean_gradient(sr, mask),
        "tv": M.total_variation(sr),
        "gmsd": M.gmsd(hr, sr),
    }


def summarise(rows: pd.DataFrame, by: Iterable[str]) -> pd.DataFrame:
    """Mean and std of every metric over items, grouped by ``by`` (columns ``<metric>_mean``, ``<metric>_std``)."""
    metrics = ["psnr", "ssim", "energy_outside", "gradient", "tv", "gmsd"]
    g = rows.groupby(list(by), sort=True)[metrics]
    mean, std = g.mean(), g.std(ddof=0)
    out = pd.concat({"mean": mean, "std": std}, axis=1)
    out.columns = [f"{m}_{s}" for s, m in out.columns]
    out["count"] = g.size()
    return out.reset_index()


def _key(v: Any) -> str:
    if isinstance(v, float):
        return "-" if np.isnan(v) else (str(int(v)) if v.is_integer() else f"{v:g}")
    return str(v)


def markdown_table(df: pd.DataFrame, keys: list[str], metrics: list[str] = ("psnr", "ssim")) -> str:  # type: ignore[assignment]
    """``| keys | metric (mean +- std) |`` markdown table."""
    head = "| " + " | ".join([*keys, *metrics]) + " |"
    sep = "| " + " | ".join(["---"] * (len(keys) + len(metrics))) + " |"
    lines = [head, sep]
    for _, r in df.iterrows():
        cells = [_key(r[k]) for k in keys] + [f"{r[f'{m}_mean']:.4g} +- {r[f'{m}_std']:.2g}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate(
    checkpoint: str | Path,
    out: str | Path,
    cfg: MRSIConfig | None = None,
    split: str | None = None,
    device: str = "cpu",
    figures: bool = True,
) -> dict[str, Any]:
    """Score a trained generator on a data split and write tables/figures to ``out``.

    Args:
        checkpoint: run folder, checkpoint folder or ``.safetensors`` file.
        out: output folder.
        cfg: configuration (data root, eval grid); default: the run's own ``config.yaml``.
        split: ``train``, ``val`` or ``test`` (default ``cfg.eval.split``).
    Returns:
        summary dict (also written to ``summary.json``).
    """
    from medlearn.mrsi.train import load_patients, load_split, make_dataset

    gen, run_cfg = load_generator(checkpoint, device)
    cfg = cfg or run_cfg
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = load_split(cfg)[split or cfg.eval.split]
    patients = load_patients(cfg, ids)
    rows: list[dict[str, Any]] = []
    examples: dict[tuple[int, float], dict[str, Any]] = {}
    for n in cfg.eval.ns:
        ds = make_dataset(cfg, patients, train=False, fixed_n=int(n))
        count = len(ds) if cfg.eval.max_items <= 0 else min(len(ds), cfg.eval.max_items)
        for start in range(0, count, cfg.eval.batch_size):
            items = [ds[i] for i in range(start, min(count, start + cfg.eval.batch_size))]
            batch = default_collate(items)
            scale = batch["scale"].numpy()[:, None, None]
            hr = batch["hr"][:, 0].numpy() * scale
            mask = batch["mask"][:, 0].numpy()
            refs = {
                "zero_filled": (batch["lr"] * batch["mask"])[:, 0].numpy() * scale,
                "bicubic": (bicubic_from_truncated(batch["hr"], int(n)) * batch["mask"])[:, 0].numpy()
                * scale,
            }
            for lam in cfg.eval.lambdas:
                sr = super_resolve(gen, batch, lam, device)[:, 0].numpy() * scale
                outs = {"sr": sr, **(refs if lam == cfg.eval.lambdas[0] else {})}
                for method, maps in outs.items():
                    for i, item in enumerate(items):
                        rows.append({
                            "method": method, "n": int(n), "lambda": float(lam) if method == "sr" else float("nan"),
                            "patient": item["patient"], "slice": item["slice"], "met": int(item["met"]),
                            **score_item(hr[i], maps[i], mask[i], int(n)),
                        })  # fmt: skip
                if start == 0:
                    examples[(int(n), float(lam))] = {
                        "hr": hr,
                        "lr": refs["zero_filled"],
                        "sr": sr,
                        "met": batch["met"].numpy(),
                    }
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(f"evaluation split '{split or cfg.eval.split}' produced no items")
    df.to_csv(out / "per_item.csv", index=False)
    per_n = summarise(df[df["method"] == "sr"], ["n", "lambda"])
    refs_n = summarise(df[df["method"] != "sr"], ["method", "n"])
    per_lambda = summarise(df[df["method"] == "sr"], ["lambda"])
    per_n.to_csv(out / "summary.csv", index=False)
    refs_n.to_csv(out / "references.csv", index=False)
    per_lambda.to_csv(out / "per_lambda.csv", index=False)
    md = [
        "## SR per n and lambda",
        markdown_table(per_n, ["n", "lambda"]),
        "",
        "## Inputs (zero-filled) and bicubic per n",
        markdown_table(refs_n, ["method", "n"]),
        "",
        "## Sharpness per lambda (all n)",
        markdown_table(per_lambda, ["lambda"], ["psnr", "ssim", "energy_outside", "gradient", "tv", "gmsd"]),
    ]
    (out / "summary.md").write_text("\n".join(md) + "\n")
    summary = {
        "checkpoint": str(checkpoint),
        "split": split or cfg.eval.split,
        "patients": ids,
        "items": int((df["method"] == "sr").sum() // max(1, len(cfg.eval.lambdas))),
        "parameters": count_parameters(gen),
        "per_n_lambda": per_n.to_dict(orient="records"),
        "references": refs_n.to_dict(orient="records"),
        "per_lambda": per_lambda.to_dict(orient="records"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    if figures:
        from medlearn.mrsi.figures import lambda_sweep, psnr_vs_sharpness, sr_grid

        figs = [psnr_vs_sharpness(per_n, out / "psnr_vs_sharpness.png")]
        figs += sr_grid(examples, cfg.data.metabolites, out)
        if len(cfg.eval.lambdas) > 1:
            figs += [f for m in cfg.data.metabolites if (f := lambda_sweep(examples, m, out)) is not None]
        summary["figures"] = [str(f) for f in figs]
    log.info("evaluation written to %s", out)
    return summary
