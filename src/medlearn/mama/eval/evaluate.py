"""``medlearn mama evaluate``: zero-shot, linear probe or fine-tuning of a pre-trained MaMA checkpoint.

One call evaluates one (mode, task) pair on a prepared dataset (``medlearn mama prepare``):

* ``zero-shot``: per-image prompts (:mod:`medlearn.mama.eval.zero_shot`), no training;
* ``linear-probe``: frozen image tower + linear head on the pooled feature (cached features by
  default), trained on the ``train`` split (:mod:`medlearn.mama.eval.linear_probe`);
* ``finetune``: the same head with the image tower unfrozen (:mod:`medlearn.mama.eval.finetune`).

Metrics (:mod:`medlearn.mama.eval.metrics`) are computed on the full ``test`` split and on the
balanced test subset (per class max(10%, 200) images, seed 42), per image and, where the table has
several views per breast (RSNA; ``breast_level``), per breast (max over the breast's views).
Outputs in ``out``: ``metrics.json``, ``metrics.csv`` (one row per subset and level),
``predictions.csv`` (class probabilities per test image), confusion-matrix and ROC PNGs.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from torch import Tensor, nn
from torch.utils.data import DataLoader

from medlearn.config import save_config
from medlearn.engine import EngineConfig, build_accelerator, seed_everything
from medlearn.errors import ConfigError, DataError, MedlearnError
from medlearn.mama.eval import metrics as M
from medlearn.mama.eval.linear_probe import ProbeConfig
from medlearn.mama.eval.zero_shot import TASK_CLASSES

log = logging.getLogger(__name__)

MODES = ("zero-shot", "linear-probe", "finetune")
SUBSETS = ("balanced", "full")


@dataclass
class EvalConfig:
    """Options of ``medlearn mama evaluate`` (flags ``--mode/--task/--checkpoint/--data/--out`` set the first five).

    Attributes:
        mode: ``zero-shot``, ``linear-probe`` or ``finetune``.
        task: ``birads`` (7 classes), ``density`` (4) or ``cancer`` (2).
        checkpoint: a MaMA checkpoint folder (``<run>/checkpoints/final``) or a run folder.
        data: prepared data folder (``medlearn mama prepare``).
        out: output folder; empty = ``<run>/eval/<mode>_<task>``.
        batch_size: images per forward pass for feature extraction / inference.
        n_boot: bootstrap resamples for the 95% CIs (0 = none).
        balanced_seed: seed of the balanced test subset (42 as in the reference).
        breast_level: also report per-breast metrics (max over views) when breasts have several views.
        max_train: at most this many training images for probe / fine-tuning (0 = all; seeded draw).
        max_test: at most this many test images (0 = all; for quick runs).
        source: rows of which source to use: ``auto`` (EMBED for birads/density, RSNA for cancer, when
            the table has them; else every row), ``embed``, ``rsna`` or ``all``.
        probe: linear-probe recipe (reference defaults).
        finetune: fine-tuning recipe (reference: same SGD recipe with the tower unfrozen).
        engine: devices, precision, checkpoints (``ckpt_every``), seed.
    """

    mode: str = "linear-probe"
    task: str = "density"
    checkpoint: str = ""
    data: str = ""
    out: str = ""
    batch_size: int = 32
    n_boot: int = 1000
    balanced_seed: int = 42
    breast_level: bool = True
    max_train: int = 0
    max_test: int = 0
    source: str = "auto"
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: ProbeConfig = field(default_factory=lambda: ProbeConfig(cache_features=False))
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(tensorboard=False))

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode='{self.mode}' is not one of {', '.join(MODES)}")
        if self.task not in TASK_CLASSES:
            raise ConfigError(f"task='{self.task}' is not one of {', '.join(TASK_CLASSES)}")
        if self.source not in ("auto", "embed", "rsna", "all"):
            raise ConfigError(f"source='{self.source}' is not one of auto, embed, rsna, all")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------- checkpoint loading
def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(checkpoint folder, run config.yaml) for a checkpoint folder or a run folder.

    Raises:
        DataError: when neither a checkpoint nor the run's ``config.yaml`` can be found.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"checkpoint '{p}' does not exist")
    if not (p / "state.pt").is_file():
        from medlearn.engine import Checkpointer

        latest = Checkpointer(p / "checkpoints").latest()
        if latest is None:
            raise DataError(
                f"'{p}' is neither a checkpoint folder (no state.pt) nor a run folder with checkpoints/"
            )
        p = latest
    for cand in (p / "config.yaml", p.parent / "config.yaml", p.parent.parent / "config.yaml"):
        if cand.is_file():
            return p, cand
    raise DataError(f"checkpoint '{p}': no config.yaml of its run found next to it or two folders up")


def load_pretrained(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Any]:
    """Rebuild a pre-trained :class:`~medlearn.mama.modeling.model.MamaModel` from a checkpoint or run folder (eval mode).

    Delegates to :func:`medlearn.mama.modeling.export.load_checkpoint` (image tower + heads from safetensors,
    LoRA from the checkpoint's peft adapter, frozen language model rebuilt from the run config).

    Returns:
        (model, the run's ``MamaConfig``).
    """
    from medlearn.mama.modeling.export import load_checkpoint

    ckpt, cfg_path = resolve_checkpoint(path)
    model, cfg = load_checkpoint(ckpt, cfg_path)
    model.to(device).eval()
    log.info("loaded MaMA checkpoint %s", ckpt)
    return model, cfg


class MamaEncoder:
    """Adapter of a ``MamaModel`` to the zero-shot / probe / localisation interfaces (eval mode, no grad)."""

    def __init__(self, model: nn.Module, device: torch.device | str | None = None) -> None:
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @property
    def logit_scale(self) -> float:
        s = self.model.heads.logit_scale.detach().float()
        return float(s.clamp(max=self.model.max_log_scale).exp())

    @property
    def local_logit_scale(self) -> float:
        s = self.model.heads.local_logit_scale.detach().float()
        return float(s.clamp(max=self.model.max_log_scale).exp())

    @property
    def width(self) -> int:
        return int(self.model.image.width)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, E) normalised global image embeddings."""
        return self.model.encode_image(images.to(self.device))

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> Tensor:
        """B strings -> (B, E) normalised global report embeddings."""
        enc = self.model.tokenizer(list(texts))
        return self.model.encode_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))

    def fits(self, text: str) -> bool:
        """Whether ``text`` fits the text tower's ``max_length`` without truncation."""
        rt = self.model.tokenizer
        return len(rt.tok(rt.mark_sentences(text), truncation=False)["input_ids"]) <= rt.max_length

    @torch.no_grad()
    def pooled(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) pooled image-tower feature (the probe's input)."""
        return self.model.image(images.to(self.device)).pooled

    @torch.no_grad()
    def patch_tokens(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, P, D) the image tower's patch tokens (the SLA image head's input)."""
        return self.model.image(images.to(self.device)).patches

    @torch.no_grad()
    def patch_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, P, El) normalised SLA patch features (running BatchNorm statistics)."""
        import torch.nn.functional as F

        return F.normalize(
            self.model.heads.img_local(self.model.image(images.to(self.device)).patches), dim=-1
        )

    @torch.no_grad()
    def local_features(
        self, images: Tensor, texts: list[str], sentence_stats: str = "report"
    ) -> tuple[Tensor, Tensor, Tensor]:
        """SLA features: patches (B, P, El), sentences (B, S, El), sentence mask (B, S); all normalised.

        The same path as training's :meth:`MamaModel.forward` (patch head on the tower's SLA patch
        tokens, sentence head on the separator states). ``sentence_stats``: ``report`` normalises each
        report's sentences with their own statistics, as SLA trains them with
        ``model.heads.sentence_batchnorm: per_report`` (with ``batch`` the running statistics are
        used); ``running``: the sentence BatchNorms' running statistics (the heatmaps before this
        switch). Patches always use the running statistics (training: the batch's B x P patches).
        """
        import torch.nn.functional as F

        if sentence_stats not in ("report", "running"):
            raise ValueError(f"sentence_stats must be 'report' or 'running', got {sentence_stats!r}")
        heads = self.model.heads
        feats = self.model.image(images.to(self.device))
        enc = self.model.tokenizer(list(texts))
        txt = self.model.text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
        patches = F.normalize(heads.img_local(feats.patches), dim=-1)
        row_stats = sentence_stats == "report" and heads.sentence_per_report
        sents = F.normalize(
            heads.sentence_local(txt.sentences, txt.sentence_mask, row_stats=row_stats), dim=-1
        )
        return patches, sents * txt.sentence_mask.unsqueeze(-1), txt.sentence_mask


# --------------------------------------------------------------------------- data
PREFERRED_SOURCE = {"birads": "embed", "density": "embed", "cancer": "rsna"}


def select_source(table: pd.DataFrame, task: str, source: str) -> pd.DataFrame:
    """Rows of the wanted source (see ``EvalConfig.source``)."""
    if source == "all" or "source" not in table.columns:
        return table
    present = set(table["source"].astype(str))
    want = PREFERRED_SOURCE[task] if source == "auto" else source
    if want not in present:
        if source == "auto":
            return table
        raise DataError(f"prepared table has no rows of source '{want}' (found {sorted(present)})")
    return table[table["source"].astype(str) == want]


def load_split_tables(cfg: EvalConfig) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """(train rows, test rows, image root) with known labels for ``cfg.task``; legend in ``test.attrs``."""
    from medlearn.mama.data.dataset import load_prepared

    if not cfg.data:
        raise ConfigError("--data (prepared data folder) is required")
    table, image_root = load_prepared(cfg.data)
    legend = table.attrs.get("legend")
    for col in ("split", cfg.task):
        if col not in table.columns:
            raise DataError(f"{cfg.data}: prepared table has no '{col}' column")
    table = select_source(table, cfg.task, cfg.source)
    lab = pd.to_numeric(table[cfg.task], errors="coerce").fillna(-1).astype(int)
    known = table[lab >= 0]
    train = known[known["split"].astype(str) == "train"].reset_index(drop=True)
    test = known[known["split"].astype(str) == "test"].reset_index(drop=True)
    if cfg.max_train and len(train) > cfg.max_train:
        train = train.sample(cfg.max_train, random_state=cfg.engine.seed).reset_index(drop=True)
    if cfg.max_test and len(test) > cfg.max_test:
        test = test.sample(cfg.max_test, random_state=cfg.engine.seed).reset_index(drop=True)
    if test.empty:
        raise DataError(f"{cfg.data}: no test image with a known '{cfg.task}' label")
    train.attrs["legend"] = test.attrs["legend"] = legend
    return train, test, Path(image_root)


def make_loader(
    table: pd.DataFrame,
    image_root: Path,
    image_size: int,
    batch_size: int,
    train: bool = False,
    workers: int = 0,
) -> DataLoader:
    """A sequential loader of ``MammoDataset`` items (eval transforms unless ``train``)."""
    from medlearn.mama.data.dataset import MammoDataset, collate_mammo

    ds = MammoDataset(table, image_root, train=train, image_size=image_size)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_mammo)


def balanced_mask(test: pd.DataFrame, task: str, seed: int = 42) -> np.ndarray:
    """(N,) bool: rows of ``test`` in the balanced test subset."""
    from medlearn.mama.data.splits import balanced_test_subset

    sub = balanced_test_subset(test, task, seed=seed)
    return test["image_id"].astype(str).isin(set(sub["image_id"].astype(str))).to_numpy()


# --------------------------------------------------------------------------- metrics + outputs
def compute_metrics(
    test: pd.DataFrame,
    y: np.ndarray,
    probs: np.ndarray,
    task: str,
    masks: dict[str, np.ndarray],
    n_boot: int,
    breast_level: bool,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``{subset: {"image": metrics, "breast": metrics?}}``."""
    k = TASK_CLASSES[task]
    out: dict[str, dict[str, Any]] = {}
    done: dict[bytes, dict[str, Any]] = {}
    for name, mask in masks.items():
        key = np.asarray(mask, dtype=bool).tobytes()
        if key in done:  # e.g. the balanced subset is the whole split when every class is small
            out[name] = copy.deepcopy(done[key])
            continue
        levels = {}
        levels["image"] = M.classification_report(y[mask], probs[mask], k, task == "cancer", n_boot, seed)
        if breast_level and {"patient_id", "laterality"} <= set(test.columns):
            frame = test.loc[mask, ["patient_id", "laterality"]].copy()
            cols = [f"p{j}" for j in range(k)]
            frame[cols] = probs[mask]
            frame["label"] = y[mask]
            if frame.groupby(["patient_id", "laterality"]).size().max() > 1:
                br = M.aggregate_by_breast(frame, cols, "label", how="max")
                levels["breast"] = M.classification_report(
                    br["label"].to_numpy(), br[cols].to_numpy(), k, task == "cancer", n_boot, seed
                )
        out[name] = done[key] = levels
    return out


def write_outputs(
    out: Path,
    results: dict[str, Any],
    test: pd.DataFrame,
    y: np.ndarray,
    probs: np.ndarray,
    masks: dict[str, np.ndarray],
) -> list[tuple[Path, str]]:
    """``metrics.json``, ``metrics.csv``, ``predictions.csv`` and figures; returns the figures."""
    from medlearn.mama.eval.figures import summary_rows, write_figures

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2, default=str))
    pd.DataFrame(summary_rows(results)).to_csv(out / "metrics.csv", index=False)
    pred = pd.DataFrame({"image_id": test["image_id"].astype(str).to_numpy(), "label": y})
    for c in ("patient_id", "exam_id", "laterality", "view"):
        if c in test.columns:
            pred[c] = test[c].to_numpy()
    for j in range(probs.shape[1]):
        pred[f"p{j}"] = probs[:, j]
    pred["pred"] = probs.argmax(1)
    for name, m in masks.items():
        pred[f"in_{name}"] = m
    pred.to_csv(out / "predictions.csv", index=False)
    return write_figures(results, y, probs, masks, out)


# --------------------------------------------------------------------------- the modes
def _zero_shot(
    encoder: MamaEncoder, test: pd.DataFrame, image_root: Path, size: int, cfg: EvalConfig, legend: Any = None
) -> np.ndarray:
    from medlearn.mama.data.report_text import ReportBuilder
    from medlearn.mama.eval.zero_shot import run_zero_shot

    loader = make_loader(test, image_root, size, cfg.batch_size, workers=cfg.engine.num_workers)
    rows = {str(r["image_id"]): r for r in test.to_dict(orient="records")}
    res = run_zero_shot(encoder, loader, rows, cfg.task, ReportBuilder(legend or test.attrs.get("legend")))
    return res["probs"]


def _probe_or_finetune(
    accelerator: Any,
    encoder: MamaEncoder,
    train: pd.DataFrame,
    test: pd.DataFrame,
    image_root: Path,
    size: int,
    cfg: EvalConfig,
    out: Path,
) -> tuple[np.ndarray, dict[str, Any]]:
    from medlearn.mama.eval.finetune import train_image_classifier
    from medlearn.mama.eval.linear_probe import extract_features, predict_head, train_probe_on_features

    if train.empty:
        raise DataError(f"{cfg.data}: no training image with a known '{cfg.task}' label")
    k = TASK_CLASSES[cfg.task]
    workers = cfg.engine.num_workers
    if cfg.mode == "linear-probe" and cfg.probe.cache_features:
        t0 = time.time()
        tr = extract_features(
            encoder.pooled,
            make_loader(train, image_root, size, cfg.batch_size, workers=workers),
            cfg.task,
            accelerator,
        )
        te = extract_features(
            encoder.pooled,
            make_loader(test, image_root, size, cfg.batch_size, workers=workers),
            cfg.task,
            accelerator,
        )
        log.info(
            "features cached: %d train, %d test images in %.1f s", len(tr[1]), len(te[1]), time.time() - t0
        )
        head, info = train_probe_on_features(
            tr[0], tr[1], k, cfg.probe, accelerator, out / "probe", cfg.engine.seed, cfg.engine.ckpt_every
        )
        probs = predict_head(head, te[0])
        return probs, info
    recipe = cfg.probe if cfg.mode == "linear-probe" else cfg.finetune
    # fine-tuning trains a copy: the caller's pre-trained model stays as it was
    tower = encoder.model.image if cfg.mode == "linear-probe" else copy.deepcopy(encoder.model.image)
    return train_image_classifier(
        tower, encoder.width, k, train, test, image_root, size, cfg.task, recipe,
        accelerator, out / ("probe" if cfg.mode == "linear-probe" else "finetune"),
        freeze_tower=cfg.mode == "linear-probe", batch_size=cfg.batch_size, workers=workers,
        seed=cfg.engine.seed, ckpt_every=cfg.engine.ckpt_every,
    )  # fmt: skip


def evaluate(cfg: EvalConfig, model: nn.Module | None = None, model_cfg: Any = None) -> dict[str, Any]:
    """Run one evaluation and write its outputs; returns the results dict (also ``metrics.json``).

    Args:
        cfg: evaluation options.
        model, model_cfg: an already loaded model and its ``MamaConfig`` (skips loading ``cfg.checkpoint``).
    """
    t0 = time.time()
    if model is None:
        if not cfg.checkpoint:
            raise ConfigError("--checkpoint is required")
        model, model_cfg = load_pretrained(cfg.checkpoint)
    ckpt_dir = resolve_checkpoint(cfg.checkpoint)[0] if cfg.checkpoint else None
    out = (
        Path(cfg.out)
        if cfg.out
        else (ckpt_dir.parent.parent / "eval" / f"{cfg.mode}_{cfg.task}" if ckpt_dir else Path("eval"))
    )
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "eval_config.yaml")
    size = int(model_cfg.model.image.image_size)
    train, test, image_root = load_split_tables(cfg)
    accelerator = build_accelerator(cfg.engine)
    seed_everything(cfg.engine.seed)
    model.to(accelerator.device)
    encoder = MamaEncoder(model, accelerator.device)
    y = test[cfg.task].astype(int).to_numpy()
    info: dict[str, Any] = {}
    if cfg.mode == "zero-shot":
        with accelerator.autocast():
            probs = _zero_shot(encoder, test, image_root, size, cfg)
    else:
        probs, info = _probe_or_finetune(accelerator, encoder, train, test, image_root, size, cfg, out)
        if info.get("stopped"):
            raise MedlearnError(
                f"{cfg.mode} interrupted at step {info['steps']}; checkpoint {info['checkpoint']} "
                "(run the same command again to resume)"
            )
    masks = {
        "balanced": balanced_mask(test, cfg.task, cfg.balanced_seed),
        "full": np.ones(len(test), dtype=bool),
    }
    results: dict[str, Any] = {
        "mode": cfg.mode,
        "task": cfg.task,
        "checkpoint": str(cfg.checkpoint),
        "data": str(cfg.data),
        "n_train": int(len(train)) if cfg.mode != "zero-shot" else 0,
        "n_test": int(len(test)),
        "metrics": compute_metrics(
            test, y, probs, cfg.task, masks, cfg.n_boot, cfg.breast_level, cfg.engine.seed
        ),
        "training": {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))},
        "seconds": round(time.time() - t0, 2),
    }
    results["out"] = str(out)
    headline = results["metrics"].get("balanced", results["metrics"]["full"])["image"]
    auc_text = "undefined"
    if headline["auc"] is not None:
        auc_text = f"{headline['auc']:.3f}"
    elif len(np.unique(y)) < 2:  # one class: no AUC, no ROC; say why instead of "None"
        from medlearn.mama.eval.figures import ONE_CLASS

        results["auc_note"] = ONE_CLASS
        auc_text = f"undefined ({ONE_CLASS})"
    if PartialState().is_main_process:  # under torchrun / accelerate launch only rank 0 writes
        results["figures"] = [str(p) for p, _ in write_outputs(out, results, test, y, probs, masks)]
        (out / "metrics.json").write_text(json.dumps(results, indent=2, default=str))
    log.info(
        "%s %s: balanced accuracy %.3f, AUC %s (%s test subset) -> %s",
        cfg.mode, cfg.task, headline["balanced_accuracy"] or math.nan, auc_text,
        "balanced" if "balanced" in results["metrics"] else "full", out,
    )  # fmt: skip
    return results


# --------------------------------------------------------------------------- demo
def demo_evaluate(
    checkpoint_dir: str | Path,
    prepared_dir: str | Path,
    out_dir: str | Path,
    report_section: Any,
    probe_steps: int = 1000,
    n_boot: int = 200,
) -> dict[str, Any]:
    """Quick density evaluation for ``medlearn demo mama``: zero-shot + linear probe + SLA heatmaps.

    Adds to ``report_section`` (a :class:`medlearn.report.Section`) a table of both evaluations,
    their confusion matrices and up to two SLA finding-sentence heatmaps with the pointing-game
    score. The probe uses the reference recipe except ``probe_steps`` (reference 8000) and feature
    standardisation (on, so that few steps suffice).

    Returns:
        ``{"zero_shot_bacc", "zero_shot_auc", "probe_bacc", "probe_auc", "pointing_game", "n_pointing", "seconds"}``.
    """
    from medlearn.mama.data.report_text import ReportBuilder
    from medlearn.mama.eval.figures import summary_rows
    from medlearn.mama.eval.localisation import evaluate_pointing

    t0 = time.time()
    out = Path(out_dir)
    model, mcfg = load_pretrained(checkpoint_dir)
    engine = EngineConfig(device="auto", tensorboard=False, progress=False, seed=0)
    common = {
        "task": "density",
        "checkpoint": str(checkpoint_dir),
        "data": str(prepared_dir),
        "n_boot": n_boot,
        "engine": engine,
    }
    zs = evaluate(EvalConfig(mode="zero-shot", out=str(out / "zero-shot_density"), **common), model, mcfg)
    probe = ProbeConfig(
        steps=probe_steps, warmup_steps=min(100, probe_steps // 10), standardize=True, resume=False
    )
    lp = evaluate(
        EvalConfig(mode="linear-probe", out=str(out / "linear-probe_density"), probe=probe, **common),
        model,
        mcfg,
    )
    _, test, image_root = load_split_tables(EvalConfig(mode="zero-shot", **common))
    point = evaluate_pointing(
        MamaEncoder(model), test, image_root, int(mcfg.model.image.image_size), ReportBuilder(test.attrs.get("legend")),
        max_images=32, heatmap_dir=out / "heatmaps", n_heatmaps=2,
    )  # fmt: skip

    def head(r: dict[str, Any]) -> dict[str, Any]:
        return r["metrics"].get("balanced", r["metrics"]["full"])["image"]

    rows = [row for r in (zs, lp) for row in summary_rows(r) if row["level"] == "image"]
    keep = ("mode", "subset", "n", "balanced_accuracy", "balanced_accuracy_ci95", "auc", "auc_ci95")
    report_section.text(
        "Breast-density evaluation (4 classes, A-D) of the pre-trained checkpoint on the synthetic test split: "
        "zero-shot with per-image prompts (logit scale x cosine), and a linear probe on the frozen image "
        f"tower's pooled feature ({probe_steps} SGD steps, class-balanced batches, standardised cached features). "
        "The balanced subset takes per class max(10%, 200) test images (here: all of them)."
    )
    report_section.table(
        [{k: r.get(k, "") for k in keep} for r in rows], caption="density: test metrics (95% bootstrap CIs)"
    )
    for r, name in ((zs, "zero-shot"), (lp, "linear probe")):
        cm = Path(r["out"]) / "confusion_full.png"
        if cm.is_file():
            report_section.image(cm, f"{name} density confusion matrix (full test split)", width=300)
    report_section.text(
        f"Localisation: SLA patch-sentence similarity of the finding sentence; pointing game (hottest patch on a "
        f"finding's ROI) {point['pointing_game']:.3f} over {point['n']} test images with ROIs."
        if point["n"]
        else "Localisation: no test image with an ROI in this dataset."
    )
    for p, caption in point["heatmaps"]:
        report_section.image(p, f"SLA heatmap, {caption} (green: ROI, +: hottest patch)", width=300)
    return {
        "zero_shot_bacc": head(zs)["balanced_accuracy"],
        "zero_shot_auc": head(zs)["auc"],
        "probe_bacc": head(lp)["balanced_accuracy"],
        "probe_auc": head(lp)["auc"],
        "pointing_game": point["pointing_game"],
        "n_pointing": point["n"],
        "seconds": round(time.time() - t0, 1),
    }
