"""MaMA pre-training: the task's hooks for the shared loop (:func:`medlearn.engine.loop.fit`).

One code path serves one CPU, one GPU and several processes/nodes (``accelerate launch`` or
``torchrun``).  Per optimizer step: AdamW, cosine schedule with warm-up, gradient accumulation,
bf16 autocast on GPU.  Before ``loss.late_loss`` only the global CLIP loss is computed and the local
heads are frozen; from then on all switched-on terms.  Checkpoints hold the image tower and heads
(safetensors), the LoRA adapters (in ``state.pt`` for exact resume and as a peft adapter folder
``text_adapter/``), optimizer, scheduler, RNG and data position.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from medlearn.engine import backward_and_step, build_scheduler, describe_device, seed_everything
from medlearn.engine.compile import compile_modules
from medlearn.engine.conv_kernels import apply_cpu_conv
from medlearn.engine.loop import LoopSpec, Run, SamplerData, TrainHooks, fit, prepare_run
from medlearn.errors import ConfigError, DataError
from medlearn.mama.config import MamaConfig
from medlearn.mama.eval.retrieval import embed_batches, retrieval_topk
from medlearn.mama.modeling.distributed import GatherInfo, gather_info
from medlearn.mama.modeling.losses import mama_loss, report_keys, sentence_keys
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
            recrop=d.recrop, augment=d.augment.transform_kwargs(),
        )  # fmt: skip
    return parts["train"], parts["val"]


def training_sets(
    cfg: MamaConfig, accelerator: Any, datasets: tuple[Dataset, Dataset] | None = None
) -> tuple[Dataset, Dataset]:
    """``datasets`` or :func:`build_datasets`, checked to hold one batch per process.

    Raises:
        ConfigError: when the training set is smaller than ``data.batch_size`` x processes.
    """
    train_ds, val_ds = datasets if datasets is not None else build_datasets(cfg)
    b, n = cfg.data.batch_size, accelerator.num_processes
    if len(train_ds) < b * n:
        raise ConfigError(
            f"training set has {len(train_ds)} items, fewer than one batch of data.batch_size="
            f"{b} per process ({n} processes)"
        )
    return train_ds, val_ds


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """The data package's ``collate_mammo`` (stacked images, list of reports)."""
    from medlearn.mama.data.dataset import collate_mammo

    return collate_mammo(batch)


class TokenizingCollate:
    """``collate_mammo`` plus the reports' ``input_ids`` / ``attention_mask`` (B, L).

    Runs in the DataLoader workers, so tokenisation overlaps the training step; with
    ``model.text.padding: max_length`` every batch has the same L.
    """

    def __init__(self, tokenizer: Any, collate_fn: Any = None) -> None:
        self.tokenizer, self.collate_fn = tokenizer, collate_fn or collate

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate_fn(items)
        batch.update(self.tokenizer(list(batch["report"])))
        return batch


class LateKeys(torch.utils.data.Sampler):
    """``(epoch, index, with_extra)`` keys over a :class:`ResumableSampler` (see ``MammoDataset``).

    ``with_extra`` is true for the micro-batches of optimizer steps >= ``late_loss`` (step of a
    micro-batch = (epoch x batches per epoch + its position) // accumulation, as the loop counts)
    when a loss term uses the extra image; before that, the extra image is neither read nor augmented.
    """

    def __init__(self, base: Any, batch_size: int, per_epoch: int, accum: int, late_from: int | None) -> None:
        self.base, self.batch_size, self.per_epoch, self.accum, self.late_from = (
            base, batch_size, per_epoch, accum, late_from
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):  # noqa: ANN204 - an iterator of keys
        epoch, start = self.base.epoch, self.base.start
        for k, index in enumerate(self.base):
            micro = epoch * self.per_epoch + (start + k) // self.batch_size
            late = self.late_from is not None and micro // self.accum >= self.late_from
            yield (epoch, index, late)


class MamaData:
    """:class:`EpochData` of MaMA: keyed sampler, one DataLoader with persistent workers and prefetch.

    Randomness of an item is a function of (seed, epoch, index) carried by its key, so the workers
    persist across epochs; tokenisation runs in the workers (:class:`TokenizingCollate`);
    ``pin_memory`` on CUDA (the step copies with ``non_blocking``).
    """

    def __init__(
        self, dataset: Any, batch_size: int, seed: int, accelerator: Any, collate_fn: Any, workers: int,
        accum: int, late_from: int | None, groups: Any = None,
    ) -> None:  # fmt: skip
        from torch.utils.data import DataLoader

        from medlearn.engine.sampler import ResumableSampler

        self.batch_size = batch_size
        self.sampler = ResumableSampler(
            len(dataset), seed, True, accelerator.process_index, accelerator.num_processes, drop_last=True,
            groups=groups,
        )  # fmt: skip
        per_epoch = len(self.sampler) // batch_size
        keys = LateKeys(self.sampler, batch_size, per_epoch, accum, late_from)
        extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=keys, num_workers=workers, collate_fn=collate_fn,
            drop_last=True, pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(seed),
            **extra,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start: int) -> Any:
        self.sampler.set_epoch(epoch, start=start * self.batch_size)
        return iter(self.loader)


def needs_unused_detection(cfg: MamaConfig) -> bool:
    """Whether DDP must look for parameters without a gradient (``find_unused_parameters``).

    Needed when a trained module idles in some step: before ``loss.late_loss`` (image-image head,
    local heads and local scale), or always when a term that uses them is switched off. Not needed
    when every term runs from step 0.
    """
    lo = cfg.loss
    return lo.late_loss > 0 or not (lo.clip and lo.nt_xent and lo.clip_extra and lo.sla)


def build_optimizer(
    params: list[torch.nn.Parameter], cfg: MamaConfig, image_params: list[torch.nn.Parameter] | None = None
) -> torch.optim.Optimizer:
    """AdamW over ``params`` (every parameter trainable in the late phase).

    ``image_params`` (a subset of ``params``, the image backbone's) get ``optim.lr`` x
    ``optim.image_lr_scale`` in a group of their own when that scale is not 1; the schedule scales
    both groups alike.
    """
    o = cfg.optim
    kwargs: dict[str, Any] = {"lr": o.lr, "weight_decay": o.weight_decay, "betas": tuple(o.betas)}
    if o.fused:
        kwargs["fused"] = True
    if image_params and o.image_lr_scale != 1.0:
        ids = {id(p) for p in image_params}
        rest = [p for p in params if id(p) not in ids]
        image = [p for p in params if id(p) in ids]
        groups = [{"params": rest}, {"params": image, "lr": o.lr * o.image_lr_scale}]
        return torch.optim.AdamW(groups, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def validate(
    model: MamaModel,
    val_ds: Dataset,
    cfg: MamaConfig,
    device: torch.device,
    collate_fn: Any,
    accelerator: Any = None,
) -> dict:
    """Retrieval top-1/top-5 (both ways) on at most ``data.val_max`` validation items.

    With an ``accelerator`` of several processes every process embeds its share of the items
    (item i on process i mod world) and the embeddings are gathered, so validation takes 1/world
    of the time and no process waits idle; the metrics are returned on the main process ({} on
    the others).
    """
    n = len(val_ds) if cfg.data.val_max <= 0 else min(len(val_ds), cfg.data.val_max)
    if n < 2:
        return {}
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    per_rank = -(-n // world)
    # equal shares for the gather: the last process repeats item n - 1, dropped after the gather
    index = [min(rank + j * world, n - 1) for j in range(per_rank)]
    loader = DataLoader(
        Subset(val_ds, index), batch_size=cfg.data.batch_size, shuffle=False, collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    img, txt, keys = embed_batches(model, loader, device)
    if world > 1:
        img, txt, keys = (accelerator.gather(t.to(device)).cpu() for t in (img, txt, keys))
        # gathered row r * per_rank + j holds item r + j * world
        item = torch.arange(world)[:, None] + torch.arange(per_rank)[None, :] * world
        item = item.flatten()
        keep = (item < n).nonzero().flatten()
        order = keep[item[keep].argsort()]
        img, txt, keys = img[order], txt[order], keys[order]
        if not accelerator.is_main_process:
            return {}
    return {f"val_{k}": v for k, v in retrieval_topk(img, txt, keys).items()}


class MamaHooks(TrainHooks):
    """MaMA plugged into the shared loop: towers + heads, the five-term loss, the late-loss switch.

    Checkpoints hold the image tower and heads (safetensors), the LoRA adapters (task state for
    exact resume, and a peft adapter folder ``text_adapter/`` in every checkpoint).
    """

    def __init__(
        self,
        cfg: MamaConfig,
        run: Run,
        datasets: tuple[Dataset, Dataset] | None = None,
        collate_fn: Any = None,
    ) -> None:
        acc = run.accelerator
        self.cfg, self.accelerator = cfg, acc
        train_ds, self.val_ds = training_sets(cfg, acc, datasets)
        b = cfg.data.batch_size
        seed_everything(cfg.engine.seed)  # identical initial weights on every process
        model = MamaModel(cfg.model, cfg.loss)
        seed_everything(cfg.engine.seed + 1000 * acc.process_index)  # own dropout/augmentation draws
        model.set_late_phase(True)  # every parameter goes into the optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.counts = count_trainable(model)
        log.info("trainable parameters: %s; device %s", self.counts, describe_device(acc))
        optimizer = build_optimizer(self.params, cfg, list(model.image.parameters()))
        apply_cpu_conv(cfg.engine, model.image, model.text)
        compile_modules(cfg.engine, model.image, model.text)  # in place; peft's LoRA layers included
        o = cfg.optim
        self.scheduler = build_scheduler(
            optimizer, o.schedule, cfg.train.max_steps, o.warmup_steps, min_ratio=o.min_ratio
        )
        workers = cfg.data.num_workers if cfg.data.num_workers >= 0 else cfg.engine.num_workers
        self.collate_fn = TokenizingCollate(model.tokenizer, collate_fn)
        lo = cfg.loss
        grouping = cfg.data.batch_grouping
        if getattr(train_ds, "accepts_keys", False):  # extra images only from late_loss on
            late_from = lo.late_loss if (lo.clip_extra or lo.nt_xent) else None
            groups = None if grouping == "none" else train_ds.table[f"{grouping}_id"].astype(str).tolist()
            self.data = MamaData(
                train_ds,
                b,
                cfg.engine.seed,
                acc,
                self.collate_fn,
                workers,
                cfg.engine.grad_accum_steps,
                late_from,
                groups,
            )
        elif grouping != "none":
            raise ConfigError(
                f"data.batch_grouping={grouping} needs the prepared-table dataset (exam_id / patient_id "
                f"columns); this training set is a {type(train_ds).__name__}"
            )
        else:  # any map-style dataset of items with an extra image
            self.data = SamplerData(
                train_ds, b, cfg.engine.seed, acc, self.collate_fn, workers, drop_last=True
            )
        self.ddp_model, self.optimizer = acc.prepare(model, optimizer)
        self.model = model
        self.info = gather_info(cfg.loss.gather) if acc.num_processes > 1 else GatherInfo()
        self.models = {"image": model.image, "heads": model.heads}
        self.optimizers = {"adamw": self.optimizer}
        self.schedulers = {"lr": self.scheduler}
        self.accumulate = [self.ddp_model]
        self.samples_per_step = b * acc.num_processes * cfg.engine.grad_accum_steps
        self.late: bool | None = None

    def before_step(self, step: int) -> None:
        late = step >= self.cfg.loss.late_loss
        if late != self.late:
            if self.late is not None:
                lo = self.cfg.loss
                on = [
                    n
                    for n, used in (("nt_xent", lo.nt_xent), ("clip_extra", lo.clip_extra), ("SLA", lo.sla))
                    if used
                ]
                log.info("step %d: late losses on (%s); local heads unfrozen", step, ", ".join(on) or "none")
            self.late = late
            self.model.set_late_phase(late)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        acc, late = self.accelerator, bool(self.late)
        if "input_ids" not in batch:  # a caller's collate without tokenisation
            batch.update(self.model.tokenizer(list(batch["report"])))
        lo = self.cfg.loss
        if late and (lo.clip_extra or lo.nt_xent) and "extra_image" not in batch:
            raise DataError(
                f"step {step}: the batch has no extra image although loss.late_loss={lo.late_loss}"
            )
        dev = acc.device

        def put(x: Tensor) -> Tensor:
            return x.to(dev, non_blocking=True)

        keys = report_keys(batch["report"]) if lo.dedup_reports else None
        sent_keys = None
        if late and lo.sla and lo.sla_shared_sentences == "detach":  # on the host, before the copy
            sent_keys = sentence_keys(
                batch["input_ids"], batch["attention_mask"], self.model.tokenizer.sep_id
            )
        with acc.autocast():
            out = self.ddp_model(
                put(batch["image"]), put(batch["input_ids"]), put(batch["attention_mask"]),
                put(batch["extra_image"]) if late and "extra_image" in batch else None, late,
            )  # fmt: skip
            terms = mama_loss(out, lo, late, self.info, keys, sent_keys)
            backward_and_step(
                acc, terms["loss"], self.optimizer, self.scheduler, self.params, self.cfg.engine.grad_clip
            )
        logs = {k: v.detach() for k, v in terms.items()}
        logs["temperature"] = 1.0 / out["scale"].detach()
        logs["local_temperature"] = 1.0 / self.model.heads.local_logit_scale.detach().exp()
        logs["late"] = torch.tensor(float(late), device=logs["loss"].device)
        if acc.num_processes > 1:  # the logged losses are means over all processes (one all-reduce, no sync)
            names = list(logs)
            mean = acc.reduce(torch.stack([logs[k].float() for k in names]), reduction="mean")
            logs = dict(zip(names, mean.unbind()))
        return logs

    evaluate_on_all_ranks = True  # each process embeds its share of the validation items

    def evaluate(self) -> dict[str, float]:
        acc = self.accelerator
        return validate(self.model, self.val_ds, self.cfg, acc.device, self.collate_fn, acc)

    def state_dict(self) -> dict[str, Any]:
        return {"lora": lora_state(self.model)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        load_lora_state(self.model, state.get("lora", {}))

    def on_checkpoint(self, path: Path) -> None:
        if self.model.text.cfg.lora_r > 0:
            self.model.text.lm.save_pretrained(str(path / ADAPTER_DIR))


def train(
    cfg: MamaConfig,
    datasets: tuple[Dataset, Dataset] | None = None,
    collate_fn: Any = None,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Pre-train MaMA as configured (``medlearn mama train``); returns a summary.

    Args:
        cfg: the resolved config.
        datasets: optional (train, val) datasets; default :func:`build_datasets`.
        collate_fn: batch collation; default the data package's ``collate_mammo``.
        stop_at: leave after this optimizer step with a checkpoint, as if interrupted (tests).
    """
    t = cfg.train
    with prepare_run(cfg, t.out, cfg.engine, find_unused_parameters=needs_unused_detection(cfg)) as run:
        hooks = MamaHooks(cfg, run, datasets, collate_fn)
        spec = LoopSpec(
            checkpoint_dir=run.out / "checkpoints", epochs=t.epochs, max_steps=t.max_steps,
            val_every=t.val_every, resume=t.resume, validate_at_start=t.val_every > 0, desc="mama train",
            stop_at=stop_at,
        )  # fmt: skip
        result = fit(run, hooks, spec)
    n_val = len(hooks.val_ds) if cfg.data.val_max <= 0 else min(len(hooks.val_ds), cfg.data.val_max)
    return {
        "step": result.step,
        "run": str(run.out),
        "metrics": result.last,
        "trainable": hooks.counts,
        "n_val": n_val,
        "final": str(result.final) if result.final else None,
        "signal": result.signal,
    }
