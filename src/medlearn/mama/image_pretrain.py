"""Masked-image pre-training of the image tower alone, on the prepared mammograms (no reports).

MaMA starts from a pre-trained DINOv2, whose patch tokens are already *learnt* and *local*: a
patch's token says what is at that patch.  Where that model cannot be downloaded, this gives the
tower such features from the user's own images first:

* each image has ``image_pretrain.mask_ratio`` of its patches replaced by the tower's mask token
  (``bool_masked_pos`` of the Hugging Face model; the same token count masked in every image);
* a linear head maps every output patch token (after the final LayerNorm) to its patch's pixels;
* the loss is the mean squared error over the patches chosen by ``loss_patches`` (``all``: a visible
  patch's token must keep its own content; ``masked``: SimMIM's masked patches only), against the
  pixels standardised per patch (``normalise_targets``, MAE's ``norm_pix_loss``).

Training runs in the shared loop (:func:`medlearn.engine.loop.fit`): the training split's images
through the same dataset and augmentation as ``medlearn mama train``, AdamW with the cosine
schedule of ``optim``, atomic checkpoints and exact resume, DDP.  At the end the tower (without
the pixel head) is written as a Hugging Face model folder, which ``model.image.name=<dir>`` loads.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from medlearn.engine import backward_and_step, build_scheduler, seed_everything
from medlearn.engine.compile import compile_modules
from medlearn.engine.conv_kernels import apply_cpu_conv
from medlearn.engine.loop import LoopSpec, Run, TrainHooks, fit, prepare_run
from medlearn.mama.config import ImagePretrainConfig, ImageTowerConfig, MamaConfig

log = logging.getLogger(__name__)


def patchify(images: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, P, patch * patch * C), patches in row-major grid order (the tower's order)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_patch_mask(batch: int, patches: int, ratio: float, generator: torch.Generator) -> Tensor:
    """(batch, patches) bool with exactly ``round(ratio * patches)`` (at least 1) True per row."""
    k = max(1, round(ratio * patches))
    order = torch.rand(batch, patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask


def patch_targets(patches: Tensor, normalise: bool, eps: float = 1e-6) -> Tensor:
    """Per-patch standardised pixels (B, P, D) when ``normalise``, else the pixels themselves."""
    if not normalise:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, unbiased=False, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_patch_loss(pred: Tensor, target: Tensor, mask: Tensor, on: str) -> Tensor:
    """Mean over the scored patches of the per-patch mean squared error.

    Args:
        pred, target: (B, P, D).
        mask: (B, P) bool, True = masked.
        on: ``all`` (every patch) or ``masked`` (masked patches only).
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)
    if on == "all":
        return per_patch.mean()
    weight = mask.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def reconstruction_loss(
    pred: Tensor, images: Tensor, mask: Tensor, patch: int, cfg: ImagePretrainConfig
) -> Tensor:
    """The configured loss of predicted patch pixels (B, P, D) for ``images`` (B, C, H, W) (scalar)."""
    target = patch_targets(patchify(images.float(), patch), cfg.normalise_targets)
    return masked_patch_loss(pred, target, mask, cfg.loss_patches)


class MaskedImageModel(nn.Module):
    """The image tower's backbone plus a linear pixel head for masked-image pre-training.

    Shapes:
        forward: images (B, 3, H, W), mask (B, P) bool -> predicted patch pixels (B, P, patch^2 * 3).
    """

    def __init__(self, cfg: ImageTowerConfig) -> None:
        super().__init__()
        from medlearn.mama.modeling.image_tower import build_dinov2, enable_checkpointing

        self.backbone = build_dinov2(cfg)
        hf = self.backbone.config
        self.patch = int(hf.patch_size)
        self.num_prefix = 1 + int(getattr(hf, "num_register_tokens", 0))
        self.pixel_head = nn.Linear(int(hf.hidden_size), self.patch * self.patch * int(hf.num_channels))
        if cfg.gradient_checkpointing:
            enable_checkpointing(self.backbone, cfg.checkpoint_every_n_layers)

    def forward(self, images: Tensor, mask: Tensor) -> Tensor:
        out = self.backbone(pixel_values=images, bool_masked_pos=mask)
        return self.pixel_head(out.last_hidden_state[:, self.num_prefix :])

    def loss(self, images: Tensor, mask: Tensor, cfg: ImagePretrainConfig) -> Tensor:
        """The configured reconstruction loss of one batch (scalar)."""
        return reconstruction_loss(self(images, mask), images, mask, self.patch, cfg)


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The mask generator of one micro-batch of one optimizer step (resume draws the same masks)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step) * 1009 + int(micro))


class ImagePretrainHooks(TrainHooks):
    """Masked-image pre-training of the image tower in the shared loop."""

    def __init__(self, cfg: MamaConfig, run: Run, datasets: tuple[Dataset, Dataset] | None = None) -> None:
        from medlearn.mama.data.dataset import collate_mammo
        from medlearn.mama.train import MamaData, build_optimizer, training_sets

        acc = run.accelerator
        self.cfg, self.accelerator = cfg, acc
        train_ds, self.val_ds = training_sets(cfg, acc, datasets)
        b = cfg.data.batch_size
        seed_everything(cfg.engine.seed)
        model = MaskedImageModel(cfg.model.image)
        seed_everything(cfg.engine.seed + 1000 * acc.process_index)
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(self.params, cfg)
        apply_cpu_conv(cfg.engine, model.backbone)
        compile_modules(cfg.engine, model.backbone)
        o = cfg.optim
        self.scheduler = build_scheduler(
            optimizer, o.schedule, cfg.train.max_steps, o.warmup_steps, min_ratio=o.min_ratio
        )
        workers = cfg.data.num_workers if cfg.data.num_workers >= 0 else cfg.engine.num_workers
        grouping = cfg.data.batch_grouping
        groups = None
        if grouping != "none" and getattr(train_ds, "accepts_keys", False):
            groups = train_ds.table[f"{grouping}_id"].astype(str).tolist()
        self.data = MamaData(
            train_ds,
            b,
            cfg.engine.seed,
            acc,
            collate_mammo,
            workers,
            cfg.engine.grad_accum_steps,
            None,
            groups,
        )
        self.ddp_model, self.optimizer = acc.prepare(model, optimizer)
        self.model = model
        self.models = {"mim": model}
        self.optimizers = {"adamw": self.optimizer}
        self.schedulers = {"lr": self.scheduler}
        self.accumulate = [self.ddp_model]
        self.samples_per_step = b * acc.num_processes * cfg.engine.grad_accum_steps
        self._step, self._micro = -1, 0  # the optimizer step and micro-batch of the last train_step

    def _mask(self, batch: int, generator: torch.Generator) -> Tensor:
        n = (self.cfg.model.image.image_size // self.model.patch) ** 2
        return random_patch_mask(batch, n, self.cfg.image_pretrain.mask_ratio, generator)

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        acc = self.accelerator
        images = batch["image"].to(acc.device, non_blocking=True)
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        # masks drawn for the whole (all-process) micro-batch; this process takes the rows of its items:
        # the sampler deals item i of a step's global order to rank i % N, so N processes x B images
        # draw exactly what one process with N x B images draws
        gen = step_generator(self.cfg.engine.seed, step, self._micro)
        n = acc.num_processes
        mask = self._mask(images.shape[0] * n, gen)[acc.process_index :: n]
        mask = mask.to(acc.device)
        with acc.autocast():
            pred = self.ddp_model(images, mask)
            loss = reconstruction_loss(pred, images, mask, self.model.patch, self.cfg.image_pretrain)
            backward_and_step(
                acc, loss, self.optimizer, self.scheduler, self.params, self.cfg.engine.grad_clip
            )
        logs = {"mim_loss": loss.detach()}
        if acc.num_processes > 1:
            logs = {"mim_loss": acc.reduce(logs["mim_loss"], reduction="mean")}
        return logs

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``val_mim_loss``: the loss on the validation images with fixed masks (seed 0)."""
        n = len(self.val_ds) if self.cfg.data.val_max <= 0 else min(len(self.val_ds), self.cfg.data.val_max)
        if n == 0:
            return {}
        from medlearn.mama.data.dataset import collate_mammo

        keys = [(0, i, False) for i in range(n)] if getattr(self.val_ds, "accepts_keys", False) else range(n)
        loader = DataLoader(
            self.val_ds, batch_size=self.cfg.data.batch_size, sampler=keys, collate_fn=collate_mammo
        )
        gen, total, count = torch.Generator().manual_seed(0), 0.0, 0
        was_training = self.model.training
        self.model.eval()
        for batch in loader:
            images = batch["image"].to(self.accelerator.device)
            mask = self._mask(images.shape[0], gen).to(images.device)
            total += float(self.model.loss(images, mask, self.cfg.image_pretrain)) * images.shape[0]
            count += images.shape[0]
        self.model.train(was_training)
        return {"val_mim_loss": total / count}


def export_tower(backbone: nn.Module, out: str | Path) -> Path:
    """Write ``backbone`` as a Hugging Face model folder at ``out``, atomically (temp folder + rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    backbone.save_pretrained(str(tmp))
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def pretrain_image(
    cfg: MamaConfig, datasets: tuple[Dataset, Dataset] | None = None, stop_at: int | None = None
) -> dict[str, Any]:
    """Masked-image pre-training of the image tower (``medlearn mama pretrain-image``); returns a summary.

    Args:
        cfg: the resolved MaMA config (``model.image``, ``optim``, ``data``, ``train``, ``engine``
            and ``image_pretrain`` are read).
        datasets: optional (train, val) datasets; default the prepared folder's EMBED splits.
        stop_at: leave after this optimizer step with a checkpoint, as if interrupted (tests).
    """
    t = cfg.train
    with prepare_run(cfg, t.out, cfg.engine) as run:
        hooks = ImagePretrainHooks(cfg, run, datasets)
        spec = LoopSpec(
            checkpoint_dir=run.out / "checkpoints", epochs=t.epochs, max_steps=t.max_steps,
            val_every=t.val_every, resume=t.resume, validate_at_start=t.val_every > 0,
            desc="mama pretrain-image", stop_at=stop_at,
        )  # fmt: skip
        result = fit(run, hooks, spec)
        exported = None
        if result.final and run.accelerator.is_main_process:
            exported = export_tower(
                hooks.model.backbone, cfg.image_pretrain.export_dir or run.out / "image_tower"
            )
            log.info("image tower written to %s (load it with model.image.name=%s)", exported, exported)
        run.accelerator.wait_for_everyone()
    return {
        "step": result.step,
        "run": str(run.out),
        "metrics": result.last,
        "image_tower": str(exported) if exported else None,
        "final": str(result.final) if result.final else None,
        "signal": result.signal,
    }
