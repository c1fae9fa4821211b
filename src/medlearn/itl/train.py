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
``default_rng([seed, phase, step])``, so a resumed run reproduces an uninterrupted one.

Data parallelism is not used here: the model runs on ``accelerator.device`` in one process
(the 2D models are small; scale by running strategies/sequences in parallel).
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
from medlearn.engine.loop import LoopSpec, Run, TrainHooks, fit, prepare_run
from medlearn.engine.parameters import count_parameters
from medlearn.itl.config import ITLConfig
from medlearn.itl.data import MultiSiteData, SliceSet, prepare_dataset
from medlearn.itl.evaluate import evaluate_cases, json_safe, mean_metric, write_summary
from medlearn.itl.memory import ExemplarMemory
from medlearn.itl.metrics import continual_summary
from medlearn.itl.model import build_model
from medlearn.itl.strategies import STRATEGIES, EWCState, Strategy, step_loss

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


class PhaseBatches:
    """One phase's micro-batches: new-site slices (+ exemplars), drawn from ``default_rng([seed, phase, i])``."""

    def __init__(
        self,
        cfg: ITLConfig,
        phase: int,
        train_set: SliceSet,
        mem: tuple[SliceSet, np.ndarray] | None,
        device: torch.device,
    ) -> None:
        self.cfg, self.phase, self.train_set, self.mem, self.device = cfg, phase, train_set, mem, device
        self.n = cfg.train.steps_per_phase * cfg.engine.grad_accum_steps

    def __len__(self) -> int:
        return self.n

    def epoch(self, epoch: int, start: int) -> Iterator[tuple[Any, ...]]:
        t, dev = self.cfg.train, self.device
        for i in range(start, self.n):
            rng = np.random.default_rng([self.cfg.engine.seed, self.phase, i])
            xb, yb = self.train_set.batch(
                rng.integers(0, len(self.train_set), t.batch_size), rng, self.cfg.data.augment
            )
            mem_batch = None
            if self.mem is not None and t.memory_batch > 0:
                mem_set, mem_sites = self.mem
                mi = rng.integers(0, len(mem_set), t.memory_batch)
                xm, ym = mem_set.batch(mi, rng, self.cfg.data.augment)
                mem_batch = (xm.to(dev), ym.to(dev), torch.as_tensor(mem_sites[mi], device=dev))
            yield xb.to(dev), yb.to(dev), mem_batch, rng


class PhaseHooks(TrainHooks):
    """One phase of one strategy in the shared loop: a fresh AdamW + schedule, the strategy's loss."""

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
        self.strategy = cfg.train.strategy
        self.params = [p for p in model.parameters() if p.requires_grad]
        # prepared so that it skips the step on non-boundary micro-batches (engine.grad_accum_steps)
        self.opt = acc.prepare_optimizer(torch.optim.AdamW(self.params, lr=o.lr, weight_decay=o.weight_decay))
        self.sched = build_scheduler(
            self.opt, o.schedule, total_steps=cfg.train.steps_per_phase, warmup_steps=o.warmup_steps
        )
        self.models = {"model": model} | ({"teacher": teacher} if teacher is not None else {})
        self.optimizers, self.schedulers = {"opt": self.opt}, {"sched": self.sched}
        self.accumulate = [model]
        self.data = data
        model.train()
        if cfg.itl.source_mode == "teacher" and STRATEGIES.build(self.strategy).uses_source_decoder:
            model.source_decoder.eval()  # frozen teacher: BatchNorm statistics stay fixed
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def train_step(self, batch: tuple[Any, ...], step: int) -> dict[str, Tensor]:
        xb, yb, mem_batch, rng = batch
        with self.accelerator.autocast():
            loss, logs = step_loss(
                self.strategy, self.model, (xb, yb), mem_batch, self.teacher, self.ewc, self.cfg, rng
            )
        backward_and_step(
            self.accelerator, loss, self.opt, self.sched, self.params, self.cfg.engine.grad_clip
        )
        return {"loss": loss.detach(), **{k: torch.as_tensor(v) for k, v in logs.items()}}


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
    run = prepare_run(cfg, cfg.train.out, cfg.engine)
    acc, device, out, seed = run.accelerator, run.device, run.out, cfg.engine.seed
    if data is None:
        data = prepare_dataset(cfg.data)
    sites, heldout = list(cfg.data.sites), list(cfg.data.heldout)
    all_sites = sites + heldout
    name = cfg.train.strategy
    strategy = STRATEGIES.build(name)
    seed_everything(seed)
    model = build_model(cfg.model, cfg.data.context).to(device)
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
        base = _eval_sites(model, data, all_sites, cfg, device, surfaces=False)
        st["baseline"] = {s: mean_metric(v, "dice") for s, v in base.items()}

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
        teacher = copy.deepcopy(model) if strategy.uses_teacher and k > 0 else None
        mem = None
        if strategy.uses_memory and len(memory) > 0:
            mem = memory.as_slice_set({s: data.split(s, "train") for s in memory.sites}, cfg.data.context)
        batches = PhaseBatches(cfg, k, _phase_data(cfg, strategy, data, k), mem, device)
        hooks = PhaseHooks(cfg, run, model, teacher, ewc, batches)
        phase_dir = out / "phases" / f"phase_{k:02d}"
        spec = LoopSpec(
            checkpoint_dir=phase_dir, max_steps=steps, resume=cfg.train.resume, log_offset=k * steps,
            extra_log={"phase": k, "site": sites[k]}, desc=f"{name} phase {k} ({sites[k]})",
        )  # fmt: skip
        result = fit(run, hooks, spec)
        if not result.finished:
            run.close()
            return {"stopped": True, "phase": k, "step": result.step, "signal": result.signal}
        # end of phase: memory, EWC, evaluation, checkpoint
        site_set = SliceSet(data.split(sites[k], "train"), cfg.data.context, cfg.data.margin)
        if strategy.uses_memory:
            memory.add_site(sites[k], site_set, np.random.default_rng([seed, k, 10**6]), model, device)
        if strategy.uses_ewc:
            rng = np.random.default_rng([seed, k, 10**6 + 1])
            idx = rng.permutation(len(site_set))[: cfg.train.ewc_samples]
            ewc_batches = [site_set.batch(idx[i : i + 8]) for i in range(0, len(idx), 8)]
            ewc.update(model, [(x.to(device), y.to(device)) for x, y in ewc_batches])
        per_site = _eval_sites(model, data, all_sites, cfg, device, surfaces=False)
        row = {s: mean_metric(per_site[s], "dice") for s in all_sites}
        ho = _eval_sites(model, data, heldout, cfg, device, surfaces=True) if heldout else {}
        st["rows"].append(row)
        st["heldout"].append(
            {s: {"dice": mean_metric(v, "dice"), "hd95": mean_metric(v, "hd95")} for s, v in ho.items()}
        )
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
            run.close()
            return {"stopped": True, "phase": k, "step": 0}

    final = _eval_sites(model, data, all_sites, cfg, device, surfaces=True)
    results = assemble_results(st, sites, heldout, n_params, name)
    if run.is_main:
        write_summary(out / "summary.json", final, {"strategy": name, "sites": sites, "heldout": heldout})
        (out / "results.json").write_text(json.dumps(json_safe(results), indent=2))
    save(len(sites) * steps, "final")
    run.close()
    return results


def assemble_results(
    st: dict, sites: list[str], heldout: list[str], n_params: int, strategy: str
) -> dict[str, Any]:
    """R (T, T) over the training sites, baseline, continual metrics and held-out curves."""
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
        res.update(continual_summary(r, b))
        res["mean_diag"] = float(np.mean(np.diag(r)))
        if heldout:
            for key in ("dice", "hd95"):
                vals = [st["heldout"][-1][s][key] for s in heldout]
                vals = [v for v in vals if not np.isnan(v)]
                res[f"heldout_{key}_final"] = float(np.mean(vals)) if vals else float("nan")
    return res
