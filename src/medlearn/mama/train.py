"""MaMA pre-training loop on the shared engine (accelerate, resumable sampler, atomic checkpoints).

One code path serves one CPU, one GPU and several processes/nodes (``accelerate launch`` or
``torchrun``).  Per optimizer step: AdamW, cosine schedule with warm-up, gradient accumulation,
bf16 autocast on GPU.  Before ``loss.late_loss`` only the global CLIP loss is computed and the local
heads are frozen; from then on all switched-on terms.  Checkpoints hold the image tower and heads
(safetensors), the LoRA adapters (in ``state.pt`` for exact resume and as a peft adapter folder
``text_adapter/``), optimizer, scheduler, RNG and data position.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from medlearn.engine import (
    Checkpointer,
    GracefulStop,
    MetricLogger,
    Progress,
    ResumableSampler,
    backward_and_step,
    build_accelerator,
    build_scheduler,
    describe_device,
    prepare_run_dir,
    seed_everything,
)
from medlearn.errors import ConfigError, DataError
from medlearn.mama.config import MamaConfig
from medlearn.mama.eval.retrieval import embed_batches, retrieval_topk
from medlearn.mama.modeling.distributed import GatherInfo, gather_info
from medlearn.mama.modeling.losses import mama_loss, report_keys
from medlearn.mama.modeling.model import MamaModel, count_trainable

log = logging.getLogger(__name__)

ADAPTER_DIR = "text_adapter"


def lora_state(model: MamaModel) -> dict[str, torch.Tensor]:
    """The LoRA adapter tensors of the text tower (CPU copies), peft's naming."""
    if model.text.cfg.lora_r == 0:
        return {}
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model.text.lm).items()}


def load_lora_state(model: MamaModel, state: dict[str, torch.Tensor]) -> None:
    """Put LoRA tensors saved by :func:`lora_state` back into the text tower."""
    if not state:
        return
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model.text.lm, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ConfigError(f"checkpoint LoRA tensors do not fit this text tower: unexpected {unexpected[:3]}")


def build_datasets(cfg: MamaConfig) -> tuple[Dataset, Dataset]:
    """Training and validation datasets from ``data.prepared_dir`` (output of ``medlearn mama prepare``).

    Only EMBED-format rows (``source == "embed"``) are used: RSNA rows have no report fields.

    Raises:
        ConfigError: when ``data.prepared_dir`` is not set.
        DataError: when the prepared folder has no training or validation images.
    """
    if not cfg.data.prepared_dir:
        raise ConfigError(
            "data.prepared_dir is not set (run `medlearn mama prepare` and pass data.prepared_dir=DIR)"
        )
    from medlearn.mama.data.dataset import MammoDataset, load_prepared

    table, image_root = load_prepared(cfg.data.prepared_dir)
    if "source" in table.columns:
        table = table[table["source"].astype(str) == "embed"]
    d, size = cfg.data, cfg.model.image.image_size
    split = table["split"].astype(str)
    parts = {}
    for name in ("train", "val"):
        sub = table[split == name].reset_index(drop=True)
        if len(sub) == 0:
            raise DataError(f"{cfg.data.prepared_dir}: no EMBED images in the '{name}' split")
        sub.attrs = table.attrs
        parts[name] = MammoDataset(
            sub, image_root, train=name == "train", image_size=size, mask_prob=d.mask_prob,
            multiview_prob=d.multiview_prob, same_breast_only=d.same_breast_only, seed=cfg.engine.seed,
        )  # fmt: skip
    return parts["train"], parts["val"]


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The data package's ``collate_mammo`` (stacked images, list of reports)."""
    from medlearn.mama.data.dataset import collate_mammo

    return collate_mammo(batch)


def build_optimizer(params: list[torch.nn.Parameter], cfg: MamaConfig) -> torch.optim.Optimizer:
    """AdamW over ``params`` (every parameter trainable in the late phase)."""
    o = cfg.optim
    kwargs: dict[str, Any] = {"lr": o.lr, "weight_decay": o.weight_decay, "betas": tuple(o.betas)}
    if o.fused:
        kwargs["fused"] = True
    return torch.optim.AdamW(params, **kwargs)


def _loader(ds: Dataset, batch: int, sampler: Any, workers: int, collate_fn: Any, seed: int) -> DataLoader:
    """Training loader; its own generator keeps iterator creation from consuming the global RNG."""
    return DataLoader(
        ds, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_fn, drop_last=True,
        pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def validate(
    model: MamaModel, val_ds: Dataset, cfg: MamaConfig, device: torch.device, collate_fn: Any
) -> dict:
    """Retrieval top-1/top-5 (both ways) on at most ``data.val_max`` validation items."""
    n = len(val_ds) if cfg.data.val_max <= 0 else min(len(val_ds), cfg.data.val_max)
    if n < 2:
        return {}
    loader = DataLoader(
        Subset(val_ds, range(n)), batch_size=cfg.data.batch_size, shuffle=False, collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    img, txt, keys = embed_batches(model, loader, device)
    return {f"val_{k}": v for k, v in retrieval_topk(img, txt, keys).items()}


def train(
    cfg: MamaConfig,
    datasets: tuple[Dataset, Dataset] | None = None,
    collate_fn: Any = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Pre-train MaMA as configured; returns a summary (final step, last metrics, run folder).

    Args:
        cfg: the resolved config.
        datasets: optional (train, val) datasets; default :func:`build_datasets`.
        collate_fn: batch collation; default the data package's ``collate_mammo``.
        stop_at: leave after this optimizer step with a checkpoint, as if interrupted (tests).
    """
    accelerator = build_accelerator(cfg.engine, find_unused_parameters=True)
    run = prepare_run_dir(
        cfg.out, cfg, cfg.engine.seed, describe_device(accelerator), accelerator.is_main_process
    )
    train_ds, val_ds = datasets if datasets is not None else build_datasets(cfg)
    collate_fn = collate_fn or collate
    if len(train_ds) < cfg.data.batch_size * accelerator.num_processes:
        raise ConfigError(
            f"training set has {len(train_ds)} items, fewer than one batch of data.batch_size="
            f"{cfg.data.batch_size} per process ({accelerator.num_processes} processes)"
        )
    seed_everything(cfg.engine.seed)  # identical initial weights on every process
    model = MamaModel(cfg.model, cfg.loss)
    seed_everything(cfg.engine.seed + 1000 * accelerator.process_index)  # own dropout/augmentation draws
    model.set_late_phase(True)
    params = [p for p in model.parameters() if p.requires_grad]
    counts = count_trainable(model)
    log.info("trainable parameters: %s; device %s", counts, describe_device(accelerator))
    optimizer = build_optimizer(params, cfg)
    o = cfg.optim
    scheduler = build_scheduler(optimizer, o.schedule, cfg.max_steps, o.warmup_steps, min_ratio=o.min_ratio)
    b = cfg.data.batch_size
    sampler = ResumableSampler(
        len(train_ds),
        cfg.engine.seed,
        True,
        accelerator.process_index,
        accelerator.num_processes,
        drop_last=True,
    )
    workers = cfg.data.num_workers if cfg.data.num_workers >= 0 else cfg.engine.num_workers
    loader = _loader(train_ds, b, sampler, workers, collate_fn, cfg.engine.seed)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    ckpt = Checkpointer(Path(run) / "checkpoints", accelerator, cfg.engine.keep_last)
    metrics = MetricLogger(run, enabled=accelerator.is_main_process, tensorboard=cfg.engine.tensorboard)
    info = gather_info(cfg.loss.gather) if accelerator.num_processes > 1 else GatherInfo()
    step, epoch, pos = 0, 0, 0
    latest = ckpt.latest() if cfg.resume else None
    if latest is not None:
        state = ckpt.load(
            latest, {"image": model.image, "heads": model.heads}, {"adamw": optimizer}, {"lr": scheduler}
        )
        load_lora_state(model, state["extra"].get("lora", {}))
        step, epoch, pos = state["step"], state["extra"]["epoch"], state["extra"]["pos"]
        log.info("resumed from %s at step %d", latest, step)

    def save(tag: str | None = None) -> Path:
        extra = {"lora": lora_state(model), "epoch": epoch, "pos": pos}
        path = ckpt.save(
            step,
            {"image": model.image, "heads": model.heads},
            {"adamw": optimizer},
            {"lr": scheduler},
            extra,
            tag,
        )
        if accelerator.is_main_process and model.text.cfg.lora_r > 0:
            model.text.lm.save_pretrained(str(path / ADAPTER_DIR))
        accelerator.wait_for_everyone()
        return path

    late = step >= cfg.loss.late_loss
    model.set_late_phase(late)
    if step == 0 and cfg.val_every and accelerator.is_main_process:  # the starting point of the curve
        metrics.log(0, **validate(model, val_ds, cfg, accelerator.device, collate_fn))
    accelerator.wait_for_everyone()
    window: dict[str, float] = {}
    last: dict[str, Any] = {}
    n_window, t_window = 0, time.time()
    samples_per_step = b * accelerator.num_processes * cfg.engine.grad_accum_steps
    progress = Progress(
        cfg.max_steps, "mama train", enabled=accelerator.is_main_process and cfg.engine.progress
    )
    progress.n = step
    interrupted = False
    with GracefulStop() as stop:
        while step < cfg.max_steps and not interrupted:
            sampler.set_epoch(epoch, start=pos * b)
            if hasattr(train_ds, "set_epoch"):  # augmentation/masking = f(seed, epoch, index): exact resume
                train_ds.set_epoch(epoch)
            for batch in loader:
                pos += 1
                if (step >= cfg.loss.late_loss) != late:
                    late = not late
                    model.set_late_phase(late)
                    log.info("step %d: late losses on (nt_xent, clip_extra, SLA); local heads unfrozen", step)
                enc = model.tokenizer(list(batch["report"]))
                dev = accelerator.device
                with accelerator.accumulate(ddp_model), accelerator.autocast():
                    out = ddp_model(
                        batch["image"].to(dev), enc["input_ids"].to(dev), enc["attention_mask"].to(dev),
                        batch["extra_image"].to(dev) if late else None, late,
                    )  # fmt: skip
                    terms = mama_loss(out, cfg.loss, late, info, report_keys(batch["report"]))
                    stepped = backward_and_step(
                        accelerator, terms["loss"], optimizer, scheduler, params, cfg.engine.grad_clip
                    )
                for k, v in terms.items():
                    window[k] = window.get(k, 0.0) + float(v.detach())
                n_window += 1
                if not stepped:
                    continue
                step += 1
                progress.update(1, loss=float(terms["loss"].detach()))
                if step % cfg.engine.log_every == 0 or step == cfg.max_steps:
                    dt = max(time.time() - t_window, 1e-9)
                    steps_in_window = n_window / cfg.engine.grad_accum_steps
                    last = {k: v / n_window for k, v in window.items()}
                    last.update(
                        lr=scheduler.get_last_lr()[0],
                        temperature=float(1.0 / out["scale"].detach()),
                        local_temperature=float(1.0 / model.heads.local_logit_scale.detach().exp()),
                        samples_per_s=samples_per_step * steps_in_window / dt,
                        late=int(late),
                    )
                    metrics.log(step, **last)
                    window, n_window, t_window = {}, 0, time.time()
                paused = time.time()
                if (cfg.val_every and step % cfg.val_every == 0) or step == cfg.max_steps:
                    if accelerator.is_main_process:
                        val = validate(model, val_ds, cfg, accelerator.device, collate_fn)
                        metrics.log(step, **val)
                        last.update(val)
                        log.info("step %d validation %s", step, val)
                    accelerator.wait_for_everyone()
                if cfg.engine.ckpt_every and step % cfg.engine.ckpt_every == 0:
                    save()
                t_window += time.time() - paused  # throughput counts training time only
                if stop.requested or (stop_at is not None and step >= stop_at):
                    save()
                    interrupted = True
                    break
                if step >= cfg.max_steps:
                    break
            else:
                epoch, pos = epoch + 1, 0
    progress.close()
    final = save(tag="final") if step >= cfg.max_steps else None
    metrics.close()
    n_val = len(val_ds) if cfg.data.val_max <= 0 else min(len(val_ds), cfg.data.val_max)
    return {
        "step": step,
        "run": str(run),
        "metrics": last,
        "trainable": counts,
        "n_val": n_val,
        "final": str(final) if final else None,
    }
