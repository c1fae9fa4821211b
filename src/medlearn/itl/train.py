"""The phase loop: sites arrive one after another; one model; a checkpoint after every phase.

:func:`train` trains ``cfg.train.strategy`` over ``cfg.data.sites`` (phase k = site k) and,
after every phase, evaluates Dice on the test cases of every site (trained, future and held-out),
filling the accuracy matrix R.  A randomly initialised model is evaluated first (the FWT
baseline).  Each phase is one call of the shared loop (:func:`medlearn.engine.loop.fit`) with
:class:`PhaseHooks`; this module holds only the sequence logic.  The run folder holds::

    config.yaml env.json metrics.jsonl   provenance and training curves
    checkpoints/phase_00 ... final       model + memory + EWC state + R so far (safetensors + state.pt)
    phases/phase_KK/                     the running phase's resumable checkpoints (removed when it ends)
    results.json                         R, baseline, held-out curves, ACC/BWT/forgetting/FWT
    summary.json                         per-case Dice/HD95/ASD of the final model (nnU-Net style)

Resume: a second call with the same ``train.out`` continues after the last complete phase, and
mid-phase from the running phase's newest checkpoint (written on SIGTERM / every
``engine.ckpt_every`` steps).  Batch indices, augmentation and mixing weights are drawn from
``default_rng([seed, phase, step, ...])`` (:class:`PhaseBatches`), so a resumed run reproduces an
uninterrupted one.

Data parallelism: launched with ``torchrun``/``accelerate launch``, every phase's model and
optimizer go through ``accelerator.prepare`` (DDP) and each process trains on its share of every
step's global batch (:class:`PhaseBatches`); evaluation and exemplar selection run on the main
process and are broadcast, and BatchNorm statistics are taken from the main process at the end of
each phase, so all processes hold the same model, memory and R.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medlearn.config import to_dict
from medlearn.engine import backward_and_step, build_scheduler, seed_everything
from medlearn.engine.compile import compile_modules
from medlearn.engine.conv_kernels import apply_cpu_conv
from medlearn.engine.loop import LoopSpec, Run, TrainHooks, fit, prepare_run
from medlearn.engine.parameters import count_parameters
from medlearn.errors import ConfigError
from medlearn.itl.config import ITLConfig
from medlearn.itl.data import MultiSiteData, SliceSet, prepare_dataset
from medlearn.itl.evaluate import evaluate_cases, json_safe, mean_metric, surface_summary, write_summary
from medlearn.itl.memory import ExemplarMemory
from medlearn.itl.metrics import continual_summary
from medlearn.itl.model import build_model
from medlearn.itl.strategies import STRATEGIES, EWCState, Strategy, strategy_step

log = logging.getLogger(__name__)


def _eval_sites(model, data: MultiSiteData, sites: list[str], cfg: ITLConfig, device, surfaces: bool) -> dict:
    t = cfg.train
    return {
        s: evaluate_cases(
            model, data.split(s, "test"), cfg.data.context, device, t.largest_cc, surfaces, t.eval_batch
        )
        for s in sites
    }


def _phase_data(cfg: ITLConfig, strategy: Strategy, data: MultiSiteData, k: int) -> SliceSet:
    sites = cfg.data.sites[: k + 1] if strategy.cumulative else [cfg.data.sites[k]]
    cases = [c for s in sites for c in data.split(s, "train")]
    return SliceSet(cases, cfg.data.context, cfg.data.margin)


def memory_format(cfg: ITLConfig, device: torch.device) -> torch.memory_format:
    """``train.memory_format`` resolved for ``device`` (``auto``: channels_last, on CPUs and GPUs)."""
    mf = cfg.train.memory_format
    if mf == "auto":
        mf = "channels_last"
    return torch.channels_last if mf == "channels_last" else torch.contiguous_format


def share_size(total: int, shares: int, key: str) -> int:
    """``total / shares``; a ConfigError naming ``key`` when the global batch does not split evenly."""
    if total % shares:
        raise ConfigError(
            f"{key}={total} does not split into {shares} equal shares (processes x engine.grad_accum_steps): "
            f"use a multiple of {shares}"
        )
    return total // shares


class PhaseBatches:
    """One phase's micro-batches on this process: its share of every step's global batch.

    The global batch of optimizer step s (``train.batch_size`` new-site slices and
    ``train.memory_batch`` exemplars) is drawn from ``default_rng([seed, phase, s])``; slice j's
    augmentation from ``default_rng([seed, phase, s, j])`` (new) or ``[seed, phase, s, 1, j]``
    (exemplars).  It is cut into ``world x engine.grad_accum_steps`` equal shares; process r,
    micro-batch a takes share ``r * grad_accum_steps + a``, whose loss draws (feature-mix pairs
    and weights) come from ``default_rng([seed, phase, s, 2, share])``.  So what is trained is a
    function of the global step only: 2 processes x half a batch see what 1 process with 2
    accumulated halves sees, and a resumed run sees what an uninterrupted one saw.
    """

    def __init__(
        self,
        cfg: ITLConfig,
        phase: int,
        train_set: SliceSet,
        mem: tuple[SliceSet, np.ndarray] | None,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.cfg, self.phase, self.train_set, self.mem, self.device = cfg, phase, train_set, mem, device
        self.accum = cfg.engine.grad_accum_steps
        self.shares = world * self.accum
        self.rank = rank
        self.n = cfg.train.steps_per_phase * self.accum
        self.b = share_size(cfg.train.batch_size, self.shares, "train.batch_size")
        self.m = share_size(cfg.train.memory_batch, self.shares, "train.memory_batch") if mem else 0
        self.n_sites = int(mem[1].max()) + 1 if mem is not None and len(mem[1]) else 0
        self.format = memory_format(cfg, device)
        self.pin = device.type == "cuda"

    def __len__(self) -> int:
        return self.n

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        if self.pin:
            t = t.pin_memory()
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=self.format) if t.dim() == 4 else t

    def epoch(self, epoch: int, start: int) -> Iterator[tuple[Any, ...]]:
        t, seed, k = self.cfg.train, self.cfg.engine.seed, self.phase
        aug = self.cfg.data.augment
        for i in range(start, self.n):
            s, a = divmod(i, self.accum)
            q = self.rank * self.accum + a
            rng = np.random.default_rng([seed, k, s])
            idx = rng.integers(0, len(self.train_set), t.batch_size)
            mem_idx = rng.integers(0, len(self.mem[0]), t.memory_batch) if self.m else None
            sel = range(q * self.b, (q + 1) * self.b)
            xb, yb = self.train_set.batch(
                idx[q * self.b : (q + 1) * self.b], [np.random.default_rng([seed, k, s, j]) for j in sel], aug
            )
            mem_batch = None
            if self.m:
                mem_set, mem_sites = self.mem
                mi = mem_idx[q * self.m : (q + 1) * self.m]
                rngs = [
                    np.random.default_rng([seed, k, s, 1, j]) for j in range(q * self.m, (q + 1) * self.m)
                ]
                xm, ym = mem_set.batch(mi, rngs, aug)
                sites = torch.as_tensor(mem_sites[mi])
                mem_batch = (self._to(xm), self._to(ym), self._to(sites), self.n_sites)
            yield self._to(xb), self._to(yb), mem_batch, np.random.default_rng([seed, k, s, 2, q])


class PhaseHooks(TrainHooks):
    """One phase of one strategy in the shared loop: a fresh AdamW + schedule, the strategy's loss.

    The model goes through ``accelerator.prepare`` (DDP with several processes) in every phase,
    because the set of trained parameters can change between phases (a trainable source
    decoder).  The whole step (every head and pass the strategy uses) runs inside one call of the
    prepared model (:meth:`MultiSiteExpert.forward` with ``step=``), so DDP sees one forward.
    """

    def __init__(
        self,
        cfg: ITLConfig,
        run: Run,
        model: nn.Module,
        teacher: nn.Module | None,
        ewc: EWCState,
        data: PhaseBatches,
    ) -> None:
        acc, o = run.accelerator, cfg.optim
        self.cfg, self.accelerator, self.model, self.teacher, self.ewc = cfg, acc, model, teacher, ewc
        self.strategy = STRATEGIES.build(cfg.train.strategy)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.net = acc.prepare_model(model)  # DDP-wrapped with several processes, else ``model``
        # prepared so that it skips the step on non-boundary micro-batches (engine.grad_accum_steps)
        self.opt = acc.prepare_optimizer(
            torch.optim.AdamW(self.params, lr=o.lr, weight_decay=o.weight_decay, fused=o.fused or None)
        )
        self.sched = build_scheduler(
            self.opt, o.schedule, total_steps=cfg.train.steps_per_phase, warmup_steps=o.warmup_steps
        )
        self.models = {"model": model} | ({"teacher": teacher} if teacher is not None else {})
        self.optimizers, self.schedulers = {"opt": self.opt}, {"sched": self.sched}
        self.accumulate = [self.net]
        self.data = data
        self.samples_per_step = cfg.train.batch_size + (cfg.train.memory_batch if data.m else 0)
        model.train()
        if cfg.itl.source_mode == "teacher" and self.strategy.uses_source_decoder:
            model.source_decoder.eval()  # frozen teacher: BatchNorm statistics stay fixed
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def train_step(self, batch: tuple[Any, ...], step: int) -> dict[str, Tensor]:
        xb, yb, mem_batch, rng = batch
        with self.accelerator.autocast():
            loss, logs = self.net(
                xb, step=strategy_step, strategy=self.strategy, y=yb, batch_mem=mem_batch,
                teacher=self.teacher, ewc=self.ewc, cfg=self.cfg, rng=rng,
            )  # fmt: skip
        backward_and_step(
            self.accelerator, loss, self.opt, self.sched, self.params, self.cfg.engine.grad_clip
        )
        return {"loss": loss.detach(), **logs}


def _on_main(acc, fn):
    """``fn()`` on the main process, its (picklable) result sent to every process."""
    if acc.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    box = [fn() if acc.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _broadcast_tensors(acc, tensors) -> None:
    """Make every process hold the main process's values of ``tensors`` (in place)."""
    if acc.num_processes == 1:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.broadcast(t.data, src=0)


def _new_state() -> dict[str, Any]:
    return {"rows": [], "heldout": [], "baseline": None, "params": [], "wall": [], "phase": -1}


def train(
    cfg: ITLConfig, data: MultiSiteData | None = None, stop_after_phase: int | None = None
) -> dict[str, Any]:
    """Train and evaluate one strategy over the site sequence (``medlearn itl train``); resumes.

    Args:
        cfg: the task configuration.
        data: prepared data (default: ``prepare_dataset(cfg.data)``).
        stop_after_phase: return after this phase's checkpoint (tests, staged runs).
    Returns:
        results dict (also written to ``<out>/results.json`` when the sequence is complete), or
        ``{"stopped": True, "phase": k, "step": s, "signal": n}`` when interrupted.
    """
    with prepare_run(cfg, cfg.train.out, cfg.engine) as run:  # a failure before training removes the folder
        return _train_sequence(run, cfg, data, stop_after_phase)


def _train_sequence(
    run: Run, cfg: ITLConfig, data: MultiSiteData | None, stop_after_phase: int | None
) -> dict[str, Any]:
    """The phases of :func:`train` inside its run (``run`` is closed by the caller)."""
    acc, device, out, seed = run.accelerator, run.device, run.out, cfg.engine.seed
    name = cfg.train.strategy
    strategy = STRATEGIES.build(name)
    shares = acc.num_processes * cfg.engine.grad_accum_steps
    share_size(cfg.train.batch_size, shares, "train.batch_size")
    if strategy.uses_memory:
        share_size(cfg.train.memory_batch, shares, "train.memory_batch")
    if data is None:
        with acc.main_process_first():  # the main process fills the cache; the others read it
            data = prepare_dataset(cfg.data)
    sites, heldout = list(cfg.data.sites), list(cfg.data.heldout)
    all_sites = sites + heldout
    seed_everything(seed)
    model = build_model(cfg.model, cfg.data.context).to(device, memory_format=memory_format(cfg, device))
    apply_cpu_conv(cfg.engine, model)  # engine.cpu_conv=auto: each convolution picks its CPU kernel
    compile_modules(cfg.engine, model.encoder, model.target_decoder, model.source_decoder)
    init_state = copy.deepcopy(model.state_dict())
    n_params = count_parameters(model)
    memory = ExemplarMemory(cfg.train.memory_per_site, cfg.train.selection)
    ewc = EWCState()
    st = _new_state()
    extra = run.load_snapshot({"model": model}) if cfg.train.resume else None
    if extra is not None:
        st.update(extra["state"])
        memory.load_state_dict(extra["memory"])
        if extra.get("ewc"):
            ewc.load_state_dict(extra["ewc"])
    if st["baseline"] is None:

        def baseline() -> dict[str, float]:
            base = _eval_sites(model, data, all_sites, cfg, device, surfaces=False)
            return {s: mean_metric(v, "dice") for s, v in base.items()}

        st["baseline"] = _on_main(acc, baseline)

    def save(step: int, tag: str) -> None:
        extra = {"state": copy.deepcopy(st), "memory": memory.state_dict(),
                 "ewc": ewc.state_dict() if ewc.fisher else None, "config": to_dict(cfg)}  # fmt: skip
        run.save_snapshot(tag, step, {"model": model}, extra)

    steps = cfg.train.steps_per_phase
    for k in range(st["phase"] + 1, len(sites)):
        t0 = time.time()
        if strategy.fresh_model:
            model.load_state_dict(init_state)
        if strategy.uses_source_decoder and k > 0:
            model.sync_source_from_target(trainable=cfg.itl.source_mode == "trainable")
        teacher = copy.deepcopy(model) if strategy.needs_teacher(cfg) and k > 0 else None
        mem = None
        if strategy.uses_memory and len(memory) > 0:
            mem = memory.as_slice_set({s: data.split(s, "train") for s in memory.sites}, cfg.data.context)
        set_k = _phase_data(cfg, strategy, data, k)
        batches = PhaseBatches(cfg, k, set_k, mem, device, acc.process_index, acc.num_processes)
        hooks = PhaseHooks(cfg, run, model, teacher, ewc, batches)
        phase_dir = out / "phases" / f"phase_{k:02d}"
        spec = LoopSpec(
            checkpoint_dir=phase_dir, max_steps=steps, resume=cfg.train.resume, log_offset=k * steps,
            extra_log={"phase": k, "site": sites[k]}, desc=f"{name} phase {k} ({sites[k]})",
        )  # fmt: skip
        result = fit(run, hooks, spec)
        acc.free_memory()  # drop accelerate's references to this phase's DDP wrapper and optimizer
        if not result.finished:
            return {"stopped": True, "phase": k, "step": result.step, "signal": result.signal}
        # end of phase: every process holds the main process's BatchNorm statistics, then memory,
        # EWC and evaluation are computed once (main) and shared, so all processes stay identical
        _broadcast_tensors(acc, list(model.buffers()))
        site_set = SliceSet(data.split(sites[k], "train"), cfg.data.context, cfg.data.margin)
        if strategy.uses_memory:

            def select(k: int = k, site_set: SliceSet = site_set) -> dict:
                memory.add_site(sites[k], site_set, np.random.default_rng([seed, k, 10**6]), model, device)
                return memory.state_dict()

            memory.load_state_dict(_on_main(acc, select))
        if strategy.uses_ewc:
            rng = np.random.default_rng([seed, k, 10**6 + 1])
            idx = rng.permutation(len(site_set))[: cfg.train.ewc_samples]
            ewc_batches = [site_set.batch(idx[i : i + 8]) for i in range(0, len(idx), 8)]
            ewc.update(model, [(x.to(device), y.to(device)) for x, y in ewc_batches])
            _broadcast_tensors(acc, [*ewc.fisher.values(), *ewc.anchors.values()])

        def evaluate() -> tuple[dict, dict]:
            per_site = _eval_sites(model, data, all_sites, cfg, device, surfaces=False)
            ho = _eval_sites(model, data, heldout, cfg, device, surfaces=True) if heldout else {}
            return {s: mean_metric(per_site[s], "dice") for s in all_sites}, {
                s: surface_summary(v) for s, v in ho.items()
            }

        row, ho = _on_main(acc, evaluate)
        st["rows"].append(row)
        st["heldout"].append(ho)
        st["params"].append(count_parameters(model))
        st["wall"].append(time.time() - t0)
        st["phase"] = k
        run.logger.log((k + 1) * steps, phase=k, **{f"dice/{s}": v for s, v in row.items()})
        log.info("phase %d (%s) done: %s", k, sites[k], {s: round(v, 3) for s, v in row.items()})
        save((k + 1) * steps, f"phase_{k:02d}")
        if run.is_main:
            shutil.rmtree(phase_dir, ignore_errors=True)  # its state is in checkpoints/phase_KK now
        acc.wait_for_everyone()
        if stop_after_phase is not None and k >= stop_after_phase and k < len(sites) - 1:
            return {"stopped": True, "phase": k, "step": 0}

    results = assemble_results(st, sites, heldout, n_params, name, strategy.fresh_model)
    if run.is_main:
        final = _eval_sites(model, data, all_sites, cfg, device, surfaces=True)
        write_summary(out / "summary.json", final, {"strategy": name, "sites": sites, "heldout": heldout})
        (out / "results.json").write_text(json.dumps(json_safe(results), indent=2))
    acc.wait_for_everyone()
    save(len(sites) * steps, "final")
    return results


def assemble_results(
    st: dict, sites: list[str], heldout: list[str], n_params: int, strategy: str, fresh_model: bool = False
) -> dict[str, Any]:
    """R (T, T) over the training sites, baseline, continual metrics and held-out curves.

    For a strategy that starts every phase from fresh weights (``individual``) each row of R is
    another model, so BWT, forgetting and FWT (and ACC, the last row) say nothing about one model
    learning a sequence: only ``mean_diag`` (each site's own model on that site) is reported.
    Held-out HD95/ASD are means over the cases with a non-empty prediction; ``heldout_empty_final``
    counts the cases whose prediction is empty (no surface distance exists for them).
    """
    r = np.array([[row[s] for s in sites] for row in st["rows"]])
    b = np.array([st["baseline"][s] for s in sites])
    res: dict[str, Any] = {
        "strategy": strategy,
        "sites": sites,
        "heldout_sites": heldout,
        "R": r.tolist(),
        "R_all_sites": st["rows"],
        "baseline": st["baseline"],
        "heldout": st["heldout"],
        "params_per_phase": st["params"],
        "params": n_params,
        "wall_s_per_phase": st["wall"],
    }
    if r.shape[0] == len(sites):
        if not fresh_model:
            res.update(continual_summary(r, b))
        res["mean_diag"] = float(np.mean(np.diag(r)))
        if heldout:
            last = st["heldout"][-1]
            for key in ("dice", "hd95", "asd"):
                vals = [last[s][key] for s in heldout if not np.isnan(last[s].get(key, np.nan))]
                res[f"heldout_{key}_final"] = float(np.mean(vals)) if vals else float("nan")
            res["heldout_empty_final"] = int(sum(last[s]["n_empty"] for s in heldout))
            res["heldout_cases"] = int(sum(last[s]["n_cases"] for s in heldout))
    return res
