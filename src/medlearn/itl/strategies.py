"""Continual-learning strategies as registered components inside one phase loop.

Each strategy is a small :class:`Strategy` class registered by name in :data:`STRATEGIES`.  It
answers the same questions for the loop in :mod:`medlearn.itl.train`:

* which data phase k trains on (``cumulative``: joint training on sites 0..k);
* whether the model is reset before each phase (``fresh_model``: individual);
* whether it uses the exemplar memory (``uses_memory``), a frozen previous model
  (``uses_teacher``), the EWC Fisher state (``uses_ewc``) or the source decoder
  (``uses_source_decoder``);
* ``loss(...)`` for one step, given the new-site batch and (maybe) an exemplar batch.

| strategy   | data of phase k | memory | extra term                                             |
| ---------- | --------------- | ------ | ------------------------------------------------------ |
| individual | site k, fresh model | no | -                                                      |
| joint      | sites 0..k      | no     | - (upper bound)                                        |
| sequential | site k          | no     | - (lower bound)                                        |
| replay     | site k          | yes    | exemplars in the batch                                 |
| lwf        | site k          | no     | KL to the previous model's outputs (temperature T)      |
| ewc        | site k          | no     | Fisher-weighted distance to the previous weights        |
| itl        | site k          | yes    | feature mixing, source decoder, site-level KL (ASSUMPTIONs) |

The losses are looked up by name in :data:`medlearn.itl.losses.LOSSES` (``seg_loss``,
``distill_loss``).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor, nn

from medlearn.engine.registry import Registry
from medlearn.itl.config import ITLConfig, ITLOptions
from medlearn.itl.losses import LOSSES, dice_ce, ewc_penalty, one_hot
from medlearn.itl.model import MultiSiteExpert, batch_stats_frozen


def mix_features(z_old: list[Tensor], z_new: list[Tensor], lam: Tensor) -> list[Tensor]:
    """Convex mix ``lam * z_old + (1 - lam) * z_new`` at every encoder level (ITL ASSUMPTION).

    Args:
        z_old, z_new: lists of (M, C_l, H_l, W_l) feature maps (same shapes).
        lam: (M,) mixing weights in [0, 1].
    """
    return [lam.view(-1, 1, 1, 1) * a + (1 - lam.view(-1, 1, 1, 1)) * b for a, b in zip(z_old, z_new)]


def _membership(site_ids: Tensor, n_sites: int) -> Tensor:
    """(M, n_sites) float one-hot of the site index of each row (no host synchronisation)."""
    return (site_ids[:, None] == torch.arange(n_sites, device=site_ids.device)[None]).float()


def site_weights(site_ids: Tensor, n_sites: int, mode: str) -> Tensor:
    """(n_sites,) weights of the site-level loss: ``uniform`` over present sites, or ``size`` ~ count."""
    counts = _membership(site_ids, n_sites).sum(0)
    w = (counts > 0).float() if mode == "uniform" else counts
    return w / w.sum().clamp_min(1e-8)


def site_level_kl(
    student: Tensor, teacher: Tensor, site_ids: Tensor, n_sites: int, mode: str, temperature: float
) -> Tensor:
    """``sum_s w_s * KL_T(teacher || student)`` averaged over the rows of site s (ITL ASSUMPTION 4).

    Equal to ``sum_s w_s * kl_distill(student[site == s], teacher[site == s], T)`` (each row has
    the same number of pixels), computed for all sites at once: no per-site loop, no host sync.

    Args:
        student, teacher: (M, K, H, W) logits (the teacher is not detached here).
        site_ids: (M,) int64 site index of each row, in [0, n_sites).
        n_sites: number of past sites (known on the host).
        mode: ``uniform`` or ``size`` (:func:`site_weights`).
    Returns:
        scalar.
    """
    t = temperature
    log_s = (student / t).log_softmax(1)
    log_t = (teacher / t).log_softmax(1)
    per_row = (log_t.exp() * (log_t - log_s)).sum(1).flatten(1).mean(1) * (t * t)  # (M,)
    member = _membership(site_ids, n_sites)
    w = site_weights(site_ids, n_sites, mode)
    row_w = member @ (w / member.sum(0).clamp_min(1.0))  # w_s / count_s for each row
    return (row_w * per_row).sum()


def _maybe(flag: bool, module: nn.Module):
    """``batch_stats_frozen(module)`` when ``flag``, else a no-op context."""
    return batch_stats_frozen(module) if flag else nullcontext()


def itl_loss(
    model: MultiSiteExpert,
    x_new: Tensor,
    y_new: Tensor,
    x_mem: Tensor | None,
    y_mem: Tensor | None,
    site_mem: Tensor | None,
    opts: ITLOptions,
    rng: np.random.Generator,
    teacher: nn.Module | None = None,
    n_sites: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """ITL objective ``L_target + alpha * L_source + beta * L_site`` for one step.

    Args:
        x_new: (B, C, H, W), y_new: (B, H, W) current-site batch.
        x_mem: (M, C, H, W), y_mem: (M, H, W), site_mem: (M,) exemplar batch (or None in phase 0).
        opts: ``ITLOptions``.
        rng: per-step generator (mixing weights and pairing).
        teacher: the frozen previous model F_{k-1} (used when ``opts.teacher == "model"``).
        n_sites: number of past sites (default: from ``site_mem``, one host sync).
    Returns:
        total loss and a dict of its terms (detached tensors; nothing is copied to the host).
    """
    size = tuple(x_new.shape[-2:])
    if x_mem is None or x_mem.shape[0] == 0:
        loss = dice_ce(model(x_new).float(), y_new)
        return loss, {"l_target": loss.detach()}
    b = x_new.shape[0]
    x_all = torch.cat([x_new, x_mem])
    feats = model.encode(x_all)
    f_new = [f[:b] for f in feats]
    f_mem = [f[b:] for f in feats]
    y_all = torch.cat([y_new, y_mem])
    logits_all = model.decode(feats, size).float()
    l_target = dice_ce(logits_all, y_all)
    logs: dict[str, Tensor] = {}
    if opts.feature_mix:
        m = x_mem.shape[0]
        pair = torch.as_tensor(rng.integers(0, b, size=m), device=x_new.device)
        lam = torch.as_tensor(rng.beta(opts.mix_beta, opts.mix_beta, size=m), dtype=torch.float32)
        lam = lam.to(x_new.device)
        mixed = mix_features(f_mem, [f[pair] for f in f_new], lam.to(f_mem[0].dtype))
        k = model.target_decoder.head.out_channels
        lam4 = lam.view(-1, 1, 1, 1)
        soft = lam4 * one_hot(y_mem, k) + (1 - lam4) * one_hot(y_new[pair], k)
        with _maybe(not opts.mix_bn_stats, model.target_decoder):
            l_mix = dice_ce(model.decode(mixed, size).float(), soft)
        l_target = l_target + opts.mix_weight * l_mix
        logs["l_mix"] = l_mix.detach()
    total = l_target
    logs["l_target"] = l_target.detach()
    if opts.source_mode != "none":
        # frozen networks normalise as the student does: with this batch's statistics in training
        batch_bn = opts.teacher_bn == "batch" and model.training
        frozen_batch = opts.source_mode == "teacher" and batch_bn
        with _maybe(frozen_batch, model.source_decoder):
            # batch statistics of the whole step batch, as the target decoder sees them
            src = model.decode(feats if frozen_batch else f_mem, size, head="source").float()
        src = src[b:] if frozen_batch else src
        l_source = dice_ce(src, y_mem)
        if opts.teacher == "model":
            if teacher is None:
                raise ValueError("itl.teacher=model needs the frozen previous model (teacher=...)")
            with torch.no_grad():
                if batch_bn:
                    with batch_stats_frozen(teacher):
                        target = teacher(x_all)[b:].float()
                else:
                    target = teacher(x_mem).float()
        else:
            target = src.detach()
        if n_sites is None:
            n_sites = int(site_mem.max()) + 1
        l_site = site_level_kl(logits_all[b:], target, site_mem, n_sites, opts.site_weights, opts.temperature)
        total = total + opts.alpha * l_source + opts.beta * l_site
        logs.update(l_source=l_source.detach(), l_site=l_site.detach())
    return total, logs


class EWCState:
    """Accumulated (online) diagonal Fisher and the anchor weights of the last phase."""

    def __init__(self) -> None:
        self.fisher: dict[str, Tensor] = {}
        self.anchors: dict[str, Tensor] = {}

    def update(self, model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> None:
        """Add the empirical Fisher of the Dice+CE loss over ``batches`` and re-anchor to the current weights."""
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = {n: torch.zeros_like(p) for n, p in named.items()}
        was = model.training
        model.eval()
        total = 0
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            dice_ce(model(x), y).backward()
            for n, p in named.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2 * x.shape[0]
            total += x.shape[0]
        model.zero_grad(set_to_none=True)
        model.train(was)
        for n, f in fisher.items():
            f /= max(total, 1)
            self.fisher[n] = self.fisher[n] + f if n in self.fisher else f
        self.anchors = {n: p.detach().clone() for n, p in named.items()}

    def penalty(self, model: nn.Module) -> Tensor:
        if not self.fisher:
            return next(model.parameters()).new_zeros(())
        return ewc_penalty(dict(model.named_parameters()), self.anchors, self.fisher)

    def state_dict(self) -> dict:
        return {"fisher": self.fisher, "anchors": self.anchors}

    def load_state_dict(self, state: dict) -> None:
        self.fisher, self.anchors = dict(state["fisher"]), dict(state["anchors"])


class Strategy:
    """Sequential fine-tuning: the segmentation loss on the new-site batch only (lower bound).

    Subclasses set the class attributes below and override :meth:`loss` when they add terms.

    Attributes:
        uses_memory: the loop keeps exemplars of finished sites and passes an exemplar batch.
        uses_teacher: the loop passes a frozen copy of the previous phase's model.
        uses_ewc: the loop updates the EWC Fisher state at the end of each phase.
        uses_source_decoder: the loop syncs the source decoder from the target decoder per phase.
        cumulative: phase k trains on sites 0..k instead of site k.
        fresh_model: the model is reset to its initial weights before each phase.
        seg_loss, distill_loss: names in :data:`medlearn.itl.losses.LOSSES`.
    """

    uses_memory = False
    uses_teacher = False
    uses_ewc = False
    uses_source_decoder = False
    cumulative = False
    fresh_model = False
    seg_loss = "dice_ce"
    distill_loss = "kl_distill"

    def segmentation(
        self, model: nn.Module, x: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(logits (B, K, H, W), loss, ``{"l_seg": loss}``) of ``model`` on x (B, C, H, W), y (B, H, W)."""
        logits = model(x).float()  # losses in fp32 also under autocast
        loss = LOSSES.get(self.seg_loss)(logits, y)
        return logits, loss, {"l_seg": loss.detach()}

    def needs_teacher(self, cfg: ITLConfig) -> bool:
        """Whether the loop keeps a frozen copy of the previous phase's model for this config."""
        return self.uses_teacher

    def loss(
        self,
        model: MultiSiteExpert,
        batch_new: tuple[Tensor, Tensor],
        batch_mem: tuple[Tensor, Tensor, Tensor] | None,
        teacher: nn.Module | None,
        ewc: EWCState | None,
        cfg: ITLConfig,
        rng: np.random.Generator,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss of one optimisation step and a dict of its terms (see :func:`step_loss`)."""
        _, loss, logs = self.segmentation(model, *batch_new)
        return loss, logs


STRATEGIES: Registry[Strategy] = Registry("ITL strategy")
STRATEGIES.add("sequential", Strategy)


@STRATEGIES.register("individual")
class Individual(Strategy):
    """One model per site: the same loss, from the initial weights in every phase."""

    fresh_model = True


@STRATEGIES.register("joint")
class Joint(Strategy):
    """Joint training on all sites seen so far (upper bound)."""

    cumulative = True


@STRATEGIES.register("replay")
class Replay(Strategy):
    """Exemplars of earlier sites appended to the new-site batch."""

    uses_memory = True

    def loss(
        self,
        model: MultiSiteExpert,
        batch_new: tuple[Tensor, Tensor],
        batch_mem: tuple[Tensor, Tensor, Tensor] | None,
        teacher: nn.Module | None,
        ewc: EWCState | None,
        cfg: ITLConfig,
        rng: np.random.Generator,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch_new
        if batch_mem is not None:
            x, y = torch.cat([x, batch_mem[0]]), torch.cat([y, batch_mem[1]])
        _, loss, logs = self.segmentation(model, x, y)
        return loss, logs


@STRATEGIES.register("lwf")
class LwF(Strategy):
    """Learning without forgetting: ``+ train.lwf_weight * KL`` to the previous model's outputs."""

    uses_teacher = True

    def loss(
        self,
        model: MultiSiteExpert,
        batch_new: tuple[Tensor, Tensor],
        batch_mem: tuple[Tensor, Tensor, Tensor] | None,
        teacher: nn.Module | None,
        ewc: EWCState | None,
        cfg: ITLConfig,
        rng: np.random.Generator,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch_new
        logits, loss, logs = self.segmentation(model, x, y)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x).float()
            l_kd = LOSSES.get(self.distill_loss)(logits, t_logits, cfg.train.lwf_temperature)
            loss = loss + cfg.train.lwf_weight * l_kd
            logs["l_kd"] = l_kd.detach()
        return loss, logs


@STRATEGIES.register("ewc")
class EWC(Strategy):
    """Elastic weight consolidation: ``+ 0.5 * train.ewc_lambda * sum F (theta - theta*)^2``."""

    uses_ewc = True

    def loss(
        self,
        model: MultiSiteExpert,
        batch_new: tuple[Tensor, Tensor],
        batch_mem: tuple[Tensor, Tensor, Tensor] | None,
        teacher: nn.Module | None,
        ewc: EWCState | None,
        cfg: ITLConfig,
        rng: np.random.Generator,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        _, loss, logs = self.segmentation(model, *batch_new)
        if ewc is not None and ewc.fisher:
            pen = ewc.penalty(model)
            loss = loss + 0.5 * cfg.train.ewc_lambda * pen
            logs["l_ewc"] = pen.detach()
        return loss, logs


@STRATEGIES.register("itl")
class ITL(Strategy):
    """Incremental transfer learning: :func:`itl_loss` with the ``itl.*`` switches."""

    uses_memory = True
    uses_source_decoder = True

    def loss(
        self,
        model: MultiSiteExpert,
        batch_new: tuple[Tensor, Tensor],
        batch_mem: tuple[Tensor, Tensor, Tensor] | None,
        teacher: nn.Module | None,
        ewc: EWCState | None,
        cfg: ITLConfig,
        rng: np.random.Generator,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        xm, ym, sm = batch_mem[:3] if batch_mem is not None else (None, None, None)
        n_sites = batch_mem[3] if batch_mem is not None and len(batch_mem) > 3 else None
        return itl_loss(model, *batch_new, xm, ym, sm, cfg.itl, rng, teacher, n_sites)

    def needs_teacher(self, cfg: ITLConfig) -> bool:
        return cfg.itl.source_mode != "none" and cfg.itl.teacher == "model"


USES_MEMORY = {name for name in STRATEGIES if STRATEGIES.build(name).uses_memory}


def step_loss(
    strategy: str,
    model: MultiSiteExpert,
    batch_new: tuple[Tensor, Tensor],
    batch_mem: tuple[Tensor, Tensor, Tensor] | None,
    teacher: nn.Module | None,
    ewc: EWCState | None,
    cfg: ITLConfig,
    rng: np.random.Generator,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of one optimisation step of the strategy registered as ``strategy``.

    Args:
        batch_new: (x (B, C, H, W), y (B, H, W)).
        batch_mem: (x (M, C, H, W), y (M, H, W), site index (M,)[, number of past sites]) or None.
        teacher: frozen previous model (LwF; ITL with ``itl.teacher=model``) or None.
        ewc: EWC state (EWC) or None.
        cfg: the whole ``ITLConfig`` (train and itl options).
    Returns:
        total loss and a dict of its terms.
    Raises:
        ConfigError: for a name not in :data:`STRATEGIES`.
    """
    return STRATEGIES.build(strategy).loss(model, batch_new, batch_mem, teacher, ewc, cfg, rng)


def strategy_step(
    model: MultiSiteExpert,
    x: Tensor,
    strategy: Strategy,
    y: Tensor,
    batch_mem: tuple[Tensor, ...] | None,
    teacher: nn.Module | None,
    ewc: EWCState | None,
    cfg: ITLConfig,
    rng: np.random.Generator,
) -> tuple[Tensor, dict[str, Tensor]]:
    """:meth:`Strategy.loss` in the argument order of ``MultiSiteExpert.forward(x, step=...)``.

    The training loop calls ``prepared_model(x, step=strategy_step, strategy=..., ...)`` so that
    the whole step runs inside one forward of the (possibly DDP-wrapped) model.
    """
    return strategy.loss(model, (x, y), batch_mem, teacher, ewc, cfg, rng)
