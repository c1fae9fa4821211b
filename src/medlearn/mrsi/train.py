"""Training loop of the MRSI super-resolution GAN through the shared engine.

One iteration: the generator super-resolves a batch; the critic takes ``n_critic`` WGAN-GP steps
on that batch (fake detached); the generator then steps on ``content + lambda * adversarial``.
Validation (every ``train.val_every`` steps; 0 = after every epoch, as the reference) selects the
model on the content loss only (lambda = 0, no adversarial term) and writes it to ``<out>/best/``.
The loop itself (resume, logging, checkpoints, signals) is :func:`medlearn.engine.loop.fit`; this
module holds only the MRSI step, its data order and its validation.

Conditioning (``model.per_sample``):
    true (ours, default): mixed batches; n comes from each item, lambda is drawn per sample.
    false (reference): batches hold one metabolite; one n and one lambda are drawn per batch and
    the low-resolution input is recomputed from HR with that n.

Everything random is a pure function of (seed, epoch, step): the data order and augmentation
(:class:`ResumableSampler` / dataset), and a per-step generator for n, lambda and the GP mixing
weights; so a run resumed from a checkpoint ends with the same weights as an uninterrupted one.
The per-sample draws of a step (lambda, GP mixing weights) are drawn for the whole global batch
and each rank takes its samples' entries (global position ``j * world + rank`` of its local
sample ``j``, the order in which :class:`ResumableSampler` shards an epoch), so 2 ranks with half
the batch train exactly like 1 process with the whole batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate

from medlearn.engine import ResumableSampler, backward_and_step, build_scheduler, seed_everything
from medlearn.engine.compile import compile_modules
from medlearn.engine.loop import LoopSpec, Run, TrainHooks, fit, prepare_run
from medlearn.errors import ConfigError
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.constants import METABOLITES
from medlearn.mrsi.data import MRSIDataset, PatientData, list_patients, load_patient
from medlearn.mrsi.kspace import truncate_kspace
from medlearn.mrsi.losses import content_loss, critic_input, critic_loss, generator_adv_loss, sample_lambda
from medlearn.mrsi.registry import build_critic, build_generator
from medlearn.mrsi.splits import kfold_patient_splits, read_splits, write_splits

log = logging.getLogger(__name__)

__all__ = [
    "MRSIHooks",
    "build_models",
    "epoch_batches",
    "load_split",
    "make_dataset",
    "step_generator",
    "train",
    "train_step",
    "validate",
]


# ----------------------------------------------------------------------------------------- data
def load_split(cfg: MRSIConfig, out: Path | None = None) -> dict[str, list[str]]:
    """The fold's ``{"train", "val", "test"}`` patient ids (from ``splits_file`` or a seeded k-fold draw).

    When ``out`` is given the splits are written to ``<out>/splits.json``.
    """
    d = cfg.data
    if d.splits_file:
        folds = read_splits(d.splits_file)
    else:
        ids = list_patients(d.root, d.layout)
        folds = kfold_patient_splits(ids, k=d.k_folds, n_val=d.n_val, n_test=d.n_test, seed=d.split_seed)
        if out is not None:
            write_splits(Path(out) / "splits.json", folds)
    if not 0 <= d.fold < len(folds):
        raise ConfigError(f"data.fold={d.fold} is outside 0..{len(folds) - 1}")
    return folds[d.fold]


def load_patients(cfg: MRSIConfig, ids: list[str]) -> list[PatientData]:
    """Read and validate the patients ``ids``."""
    d = cfg.data
    return [load_patient(d.root, pid, d.layout, d.metabolites, d.conc_kind) for pid in ids]


def make_dataset(
    cfg: MRSIConfig,
    patients: list[PatientData],
    train: bool,
    fixed_n: int | None = None,
    with_lr: bool = True,
) -> MRSIDataset:
    """Training (random n, augmentation) or evaluation (seed-fixed n or ``fixed_n``) dataset.

    ``with_lr=False``: items carry no ``lr``; the trainer truncates k-space for the whole batch on
    its device (the same values).
    """
    d = cfg.data
    return MRSIDataset(
        patients,
        d.metabolites,
        train=train,
        n_choices=d.n_choices,
        fixed_n=fixed_n,
        augment=d.augment and train,
        seed=cfg.engine.seed,
        mask_rule=d.mask_rule,
        max_shift=d.max_shift,
        with_lr=with_lr,
    )


def epoch_batches(
    dataset: MRSIDataset,
    epoch: int,
    batch_size: int,
    seed: int,
    group_by_metabolite: bool,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """This rank's batches of ``epoch`` as index lists (a pure function of seed and epoch).

    Mixed batches follow :class:`ResumableSampler`'s order.  With ``group_by_metabolite`` (the
    reference) the shuffled indices are split per metabolite into batches and the batch order is
    shuffled, so every batch holds one metabolite.
    """
    sampler = ResumableSampler(len(dataset), seed=seed, shuffle=True, rank=rank, world_size=world_size)
    sampler.set_epoch(epoch)
    order = list(sampler)
    if not group_by_metabolite:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    groups: dict[int, list[int]] = {}
    for idx in order:
        groups.setdefault(dataset.index[idx][2], []).append(idx)
    batches = [g[i : i + batch_size] for _, g in sorted(groups.items()) for i in range(0, len(g), batch_size)]
    perm = np.random.default_rng([seed, epoch, 7]).permutation(len(batches))
    return [batches[i] for i in perm]


# --------------------------------------------------------------------------------------- models
def build_models(cfg: MRSIConfig, grid: tuple[int, int]) -> tuple[nn.Module, nn.Module | None]:
    """(generator, critic or None) for maps of size ``grid`` (H, W)."""
    m = cfg.model
    gen = build_generator(
        m.arch,
        base_width=m.base_width,
        depth=m.depth,
        latent=m.latent,
        num_metabolites=len(METABOLITES),
        met_embed_dim=m.met_embed_dim,
        per_sample=m.per_sample,
        data_consistency=m.data_consistency,
        gamma_init=m.gamma_init,
        lambda_scale=lambda_scale(cfg),
        batched_conditioning=m.batched_conditioning,
        lambda_offset=m.lambda_offset,
        channels_last=m.channels_last,
        planar=m.planar_ops,
        split_layout=m.split_conv_layout,
    )
    if not cfg.adversarial.enabled:
        return gen, None
    f = gen.mri_factor
    crit = build_critic(
        cfg.critic.arch,
        in_ch=4,
        width=cfg.critic.width,
        n_blocks=cfg.critic.n_blocks,
        input_shape=(f * grid[0], f * grid[1], gen.slab_depth),
        hidden=cfg.critic.hidden,
        channels_last=m.channels_last,
        planar=m.planar_ops,
    )
    return gen, crit


def lambda_scale(cfg: MRSIConfig) -> float:
    """``model.lambda_scale``, or 1 / (largest trained lambda) when it is null (1 if that is 0)."""
    if cfg.model.lambda_scale is not None:
        return float(cfg.model.lambda_scale)
    adv = cfg.adversarial
    top = adv.fixed_lambda if adv.fixed_lambda is not None else adv.lambda_low + adv.lambda_span
    return 1.0 / top if top and top > 0 else 1.0


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for the draws of one step (n, lambda, GP weights), independent of history."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def draw_conditions(
    cfg: MRSIConfig, batch: dict[str, Any], g: torch.Generator, rank: int = 0, world: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """(lr, n, lambda) of a training batch according to the conditioning mode (see module docstring).

    Per-sample lambdas are drawn for the global batch (``world`` x the local one) and this rank
    keeps positions ``rank, rank + world, ...``; the low-resolution input is truncated here, on the
    device, for the whole batch when the items do not carry it.
    """
    hr = batch["hr"]
    b = hr.shape[0]
    adv = cfg.adversarial
    if cfg.model.per_sample:
        n = batch["n"]
        lr = batch["lr"] if "lr" in batch else truncate_kspace(hr, n)
    else:
        choices = cfg.data.n_choices
        n = torch.full(
            (b,), int(choices[int(torch.randint(len(choices), (1,), generator=g))]), device=hr.device
        )
        lr = truncate_kspace(hr, n)
    if not adv.enabled:
        lam = torch.zeros(b, device=hr.device)
    elif adv.fixed_lambda is not None:
        lam = torch.full((b,), float(adv.fixed_lambda), device=hr.device)
    else:
        lam = sample_lambda(
            b * world, adv.lambda_low, adv.lambda_span, adv.zero_fraction, cfg.model.per_sample, g, hr.device
        )[rank::world]
    return lr, n, lam


# ----------------------------------------------------------------------------------------- steps
@dataclass
class Nets:
    """The networks, optimisers and schedulers of a run (critic parts are None without adversary)."""

    gen: nn.Module
    opt_g: torch.optim.Optimizer
    sched_g: Any
    critic: nn.Module | None = None
    opt_d: torch.optim.Optimizer | None = None
    sched_d: Any = None


def train_step(
    cfg: MRSIConfig, nets: Nets, batch: dict[str, Any], accelerator: Any, step: int
) -> dict[str, Tensor]:
    """One generator iteration with ``n_critic`` critic steps; returns detached scalar tensors (no host sync)."""
    g = step_generator(cfg.engine.seed, step)
    batch = _to(batch, accelerator.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    lr, n, lam = draw_conditions(cfg, batch, g, rank, world)
    t1, flair, hr, mask = batch["t1"], batch["flair"], batch["hr"], batch["mask"]
    b = hr.shape[0]
    nets.gen.train()
    gen = accelerator.unwrap_model(nets.gen)
    # route=decoupled: the forward at the drawn lambda trains the lambda path only (through a
    # surrogate, outside DDP's hooks); the DDP-wrapped forward at lambda = 0 trains everything
    decoupled = nets.critic is not None and cfg.adversarial.route == "decoupled" and bool(
        getattr(gen, "_cin_layers", None)
    )
    with accelerator.autocast():
        args = (t1, flair, lr, n, batch["met"], lam, mask)
        sr = forward_lambda_path_only(gen, *args) if decoupled else nets.gen(*args)
    sr = sr.float()
    out: dict[str, Tensor] = {}
    adv_term = sr.new_zeros(())
    adv_grad: Tensor | None = None
    if nets.critic is not None:
        nets.critic.train()
        real, fake = critic_input(t1, flair, lr, hr), critic_input(t1, flair, lr, sr)
        nets.critic.requires_grad_(True)
        # GP mixing weights of every critic step for the global batch; this rank's samples' entries
        alphas = torch.rand(cfg.adversarial.n_critic, b * world, generator=g)[:, rank::world]
        for i in range(cfg.adversarial.n_critic):
            with accelerator.autocast():
                loss_d, wdist = critic_loss(
                    nets.critic, real, fake.detach(), cfg.adversarial.gp_weight, alpha=alphas[i]
                )
            backward_and_step(accelerator, loss_d, nets.opt_d, nets.sched_d)
        nets.critic.requires_grad_(False)
        with accelerator.autocast():
            adv_term = generator_adv_loss(nets.critic, fake, lam).float()
        nets.critic.requires_grad_(True)
        if cfg.adversarial.route == "lambda_path" and getattr(gen, "_cin_layers", None):
            adv_grad = _lambda_path_surrogate(adv_term, gen)
        out.update(loss_d=loss_d.detach(), wdist=torch.as_tensor(wdist).detach())
    terms = configured_content_loss(cfg, sr, hr)
    loss = terms["content"] + adv_term
    trained = loss if adv_grad is None else terms["content"] + adv_grad
    if decoupled:
        with accelerator.autocast():
            sr0 = nets.gen(t1, flair, lr, n, batch["met"], torch.zeros_like(lam), mask)
        content0 = configured_content_loss(cfg, sr0.float(), hr)["content"]
        trained = content0 + _lambda_path_surrogate(loss, gen, retain_graph=False)  # lambda graph done
        out["content0"] = content0.detach()
    backward_and_step(
        accelerator, trained, nets.opt_g, nets.sched_g, nets.gen.parameters(), cfg.engine.grad_clip
    )
    out.update(
        loss=loss.detach(),
        l1=terms["l1"].detach(),
        ssim=terms["ssim"].detach(),
        adv=adv_term.detach(),
        lam=lam.detach().float().mean(),
    )
    if world > 1:  # log the global batch's means: one small all-reduce, no host sync
        means = accelerator.reduce(torch.stack([v.float() for v in out.values()]), reduction="mean")
        out = dict(zip(out, means))
    return out


def forward_lambda_path_only(gen: nn.Module, *args: Any) -> Tensor:
    """``gen(*args)`` with every parameter outside :meth:`MCUNet.lambda_path_parameters` detached.

    The graph then reaches the lambda MLPs only (``route=decoupled`` uses nothing else from this
    forward), so its backward computes no weight gradient of the shared layers.
    """
    keep = {id(p) for p in gen.lambda_path_parameters()}
    frozen = {k: p.detach() for k, p in gen.named_parameters() if id(p) not in keep}
    return torch.func.functional_call(gen, frozen, args, strict=False)


def configured_content_loss(cfg: MRSIConfig, sr: Tensor, hr: Tensor) -> dict[str, Tensor]:
    """:func:`~medlearn.mrsi.losses.content_loss` (L1 + MS-SSIM) with the weights and window of ``cfg.loss``."""
    lc = cfg.loss
    return content_loss(
        sr, hr, lc.l1_weight, lc.ssim_weight, lc.ssim_upsample, lc.ssim_win, lc.ssim_levels, lc.ssim_data_range
    )


def _lambda_path_surrogate(adv_term: Tensor, gen: nn.Module, retain_graph: bool = True) -> Tensor:
    """A term whose gradient is the adversarial term's gradient on the lambda-path parameters only.

    ``sum_p <p, d adv / d p>`` over :meth:`MCUNet.lambda_path_parameters` (gradients detached):
    added to the content loss, one backward (and DDP's one all-reduce) gives every parameter its
    content gradient and the lambda MLPs the adversarial gradient as well.  ``retain_graph=False``
    frees ``adv_term``'s graph when nothing backpropagates through it again (``route=decoupled``).
    """
    params = gen.lambda_path_parameters()
    grads = torch.autograd.grad(adv_term, params, retain_graph=retain_graph, allow_unused=True)
    terms = [(p * g.detach()).sum() for p, g in zip(params, grads) if g is not None]
    return torch.stack(terms).sum() if terms else adv_term.new_zeros(())


@torch.no_grad()
def validate(cfg: MRSIConfig, gen: nn.Module, dataset: MRSIDataset, device: torch.device) -> dict[str, float]:
    """Mean content loss (L1 + MS-SSIM terms, lambda = 0) over ``dataset``; the selection criterion.

    The generator runs in per-sample mode (the same function as per-batch grouping, tested), so a
    reference-mode model is validated on mixed batches too.
    """
    gen.eval()
    per_sample = gen.per_sample
    gen.per_sample = True
    try:
        n_items = len(dataset) if cfg.train.val_max_items <= 0 else min(len(dataset), cfg.train.val_max_items)
        bs = cfg.train.batch_size
        totals = {k: torch.zeros((), device=device) for k in ("l1", "ssim", "content")}
        for i in range(0, n_items, bs):
            batch = _to(default_collate([dataset[j] for j in range(i, min(n_items, i + bs))]), device)
            b = batch["hr"].shape[0]
            lam = torch.zeros(b, device=device)
            sr = gen(batch["t1"], batch["flair"], batch["lr"], batch["n"], batch["met"], lam, batch["mask"])
            terms = configured_content_loss(cfg, sr.float(), batch["hr"])
            for k in totals:
                totals[k] += terms[k] * b
    finally:
        gen.per_sample = per_sample
    values = torch.stack(list(totals.values())).cpu().tolist()  # one host sync
    return {f"val_{k}": v / max(1, n_items) for k, v in zip(totals, values)}


# ------------------------------------------------------------------------------------- the hooks
def _make_nets(cfg: MRSIConfig, grid: tuple[int, int], steps_per_epoch: int) -> Nets:
    gen, crit = build_models(cfg, grid)
    o = cfg.optim
    opt_g = torch.optim.Adam(gen.parameters(), lr=o.lr, betas=tuple(o.betas), fused=o.fused)
    sched_g = build_scheduler(opt_g, "step", step_size=o.step_epochs * steps_per_epoch, gamma=o.gamma)
    nets = Nets(gen, opt_g, sched_g)
    if crit is not None:
        nets.critic = crit
        nets.opt_d = torch.optim.Adam(crit.parameters(), lr=o.critic_lr, betas=tuple(o.betas), fused=o.fused)
        step_d = o.step_epochs * steps_per_epoch * cfg.adversarial.n_critic
        nets.sched_d = build_scheduler(nets.opt_d, "step", step_size=step_d, gamma=o.gamma)
    return nets


class MetaboliteBatches:
    """This rank's batches of an epoch (:func:`epoch_batches`) through one DataLoader built once.

    The loader's batch sampler is this object: each batch is a list of ``(epoch, index)`` keys, so
    the dataset draws that epoch's n and augmentation in the worker that loads it, and workers
    persist across epochs (``engine.num_workers`` > 0); memory is pinned when CUDA is present.
    """

    def __init__(self, dataset: MRSIDataset, cfg: MRSIConfig, rank: int, world: int) -> None:
        self.dataset, self.cfg, self.rank, self.world = dataset, cfg, rank, world
        self.group = not cfg.model.per_sample
        self._len = len(self._batches(0))
        self._epoch, self._start = 0, 0
        workers = cfg.engine.num_workers
        self.loader = DataLoader(
            dataset, batch_sampler=self, num_workers=workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )  # fmt: skip

    def _batches(self, epoch: int) -> list[list[int]]:
        c = self.cfg
        return epoch_batches(
            self.dataset, epoch, c.train.batch_size, c.engine.seed, self.group, self.rank, self.world
        )

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        for batch in self._batches(self._epoch)[self._start :]:
            yield [(self._epoch, i) for i in batch]

    def epoch(self, epoch: int, start: int) -> DataLoader:
        self.dataset.set_epoch(epoch)
        self._epoch, self._start = epoch, start
        return self.loader


class MRSIHooks(TrainHooks):
    """The MRSI GAN plugged into the shared loop: data, networks, one iteration, validation."""

    def __init__(self, cfg: MRSIConfig, run: Run) -> None:
        acc = run.accelerator
        self.cfg, self.device = cfg, acc.device
        seed_everything(cfg.engine.seed)
        split = load_split(cfg, run.out if run.is_main else None)
        train_ds = make_dataset(cfg, load_patients(cfg, split["train"]), train=True, with_lr=False)
        self.val_ds = (
            make_dataset(cfg, load_patients(cfg, split["val"]), train=False) if split["val"] else None
        )
        self.data = MetaboliteBatches(train_ds, cfg, acc.process_index, acc.num_processes)
        nets = _make_nets(cfg, train_ds.grid, len(self.data))
        if cfg.engine.compile and cfg.adversarial.route in ("lambda_path", "decoupled") and nets.critic is not None:
            # the lambda-path surrogate backpropagates the adversarial term with retain_graph=True,
            # which compiled backward functions only allow without donated buffers (a memory saving)
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
        compile_modules(cfg.engine, nets.gen)  # not the critic: its gradient penalty is a double backward
        if nets.critic is not None:
            nets.gen, nets.critic, nets.opt_g, nets.opt_d = acc.prepare(
                nets.gen, nets.critic, nets.opt_g, nets.opt_d
            )
        else:
            nets.gen, nets.opt_g = acc.prepare(nets.gen, nets.opt_g)
        self.nets, self.accelerator = nets, acc
        self.models = {"generator": nets.gen} | ({"critic": nets.critic} if nets.critic is not None else {})
        self.optimizers = {"generator": nets.opt_g} | (
            {"critic": nets.opt_d} if nets.opt_d is not None else {}
        )
        self.schedulers = {"generator": nets.sched_g} | (
            {"critic": nets.sched_d} if nets.sched_d is not None else {}
        )
        self.best_models = {"generator": nets.gen}
        self.samples_per_step = cfg.train.batch_size * acc.num_processes

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, Tensor]:
        return train_step(self.cfg, self.nets, batch, self.accelerator, step)

    def evaluate(self) -> dict[str, float]:
        if self.val_ds is None:
            return {}
        return validate(self.cfg, self.accelerator.unwrap_model(self.nets.gen), self.val_ds, self.device)


def train(cfg: MRSIConfig) -> dict[str, Any]:
    """Train (or resume) a run in ``cfg.train.out`` (``medlearn mrsi train``); returns a summary dict.

    Writes ``config.yaml``, ``env.json``, ``splits.json``, ``metrics.jsonl``, ``checkpoints/``
    (resumable state) and ``best/best/`` (the generator with the lowest validation content loss;
    the last generator when there is no validation split).
    """
    t = cfg.train
    with prepare_run(cfg, t.out, cfg.engine) as run:  # a failure before training removes the folder
        hooks = MRSIHooks(cfg, run)
        spec = LoopSpec(
            checkpoint_dir=run.out / "checkpoints", epochs=t.epochs, max_steps=t.max_steps, val_every=t.val_every,
            select="val_content" if hooks.val_ds is not None else None, mode="min", best_dir=run.out / "best",
            resume=t.resume, desc="mrsi train",
        )  # fmt: skip
        result = fit(run, hooks, spec)
    full = t.epochs * len(hooks.data)
    return {
        "out": str(run.out),
        "steps": result.step,
        "best_val": result.best,
        "stopped_early": result.step < full,
        "signal": result.signal,
        **result.last,
    }
