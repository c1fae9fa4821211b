"""The phase loop: sites arrive one after another; one model; a checkpoint after every phase.

``run_sequence(cfg)`` trains ``cfg.train.strategy`` over ``cfg.data.sites`` (phase k = site k) and,
after every phase, evaluates Dice on the test cases of every site (trained, future and held-out),
filling the accuracy matrix R.  A randomly initialised model is evaluated first (the FWT
baseline).  The run folder holds::

    config.yaml env.json metrics.jsonl   provenance and training curves
    checkpoints/phase_00 ... final       model + memory + EWC state + R so far (safetensors + state.pt)
    results.json                         R, baseline, held-out curves, ACC/BWT/forgetting/FWT
    summary.json                         per-case Dice/HD95/ASD of the final model (nnU-Net style)

Resume: a second call with the same ``cfg.out`` continues after the last complete phase (or
mid-phase from a checkpoint written on SIGTERM / every ``engine.ckpt_every`` steps).  Batch
indices, augmentation and mixing weights are drawn from ``default_rng([seed, phase, step])``, so
a resumed run reproduces an uninterrupted one.

Data parallelism is not used here: the model runs on ``accelerator.device`` in one process
(the 2D models are small; scale by running strategies/sequences in parallel).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from typing import Any

import numpy as np
import torch

from medlearn.config import to_dict
from medlearn.engine import (
    Checkpointer,
    GracefulStop,
    MetricLogger,
    Progress,
    backward_and_step,
    build_accelerator,
    build_scheduler,
    count_parameters,
    prepare_run_dir,
    seed_everything,
)
from medlearn.itl.config import ITLConfig
from medlearn.itl.data import MultiSiteData, SliceSet, prepare_dataset
from medlearn.itl.evaluate import evaluate_cases, json_safe, mean_metric, write_summary
from medlearn.itl.memory import ExemplarMemory
from medlearn.itl.metrics import continual_summary
from medlearn.itl.model import build_model
from medlearn.itl.strategies import USES_MEMORY, EWCState, step_loss

log = logging.getLogger(__name__)


def _eval_sites(model, data: MultiSiteData, sites: list[str], cfg: ITLConfig, device, surfaces: bool) -> dict:
    return {
        s: evaluate_cases(
            model,
            data.split(s, "test"),
            cfg.data.context,
            device,
            cfg.train.largest_cc,
            surfaces,
            cfg.train.eval_batch,
        )
        for s in sites
    }


def _phase_data(cfg: ITLConfig, data: MultiSiteData, k: int) -> SliceSet:
    sites = cfg.data.sites[: k + 1] if cfg.train.strategy == "joint" else [cfg.data.sites[k]]
    cases = [c for s in sites for c in data.split(s, "train")]
    return SliceSet(cases, cfg.data.context, cfg.data.margin)


def run_sequence(
    cfg: ITLConfig, data: MultiSiteData | None = None, stop_after_phase: int | None = None
) -> dict[str, Any]:
    """Train and evaluate one strategy over the site sequence; resumes from ``cfg.out`` when possible.

    Args:
        cfg: the task configuration.
        data: prepared data (default: ``prepare_dataset(cfg.data)``).
        stop_after_phase: return after this phase's checkpoint (tests, staged runs).
    Returns:
        results dict (also written to ``<out>/results.json`` when the sequence is complete).
    """
    acc = build_accelerator(cfg.engine)
    device = acc.device
    seed = cfg.engine.seed
    out = prepare_run_dir(cfg.out, cfg, seed, str(device), acc.is_main_process)
    if data is None:
        data = prepare_dataset(cfg.data)
    assert data is not None
    sites, heldout = list(cfg.data.sites), list(cfg.data.heldout)
    all_sites = sites + heldout
    strategy = cfg.train.strategy
    seed_everything(seed)
    model = build_model(cfg.model, cfg.data.context).to(device)
    init_state = copy.deepcopy(model.state_dict())
    n_params = count_parameters(model)
    ckpt = Checkpointer(out / "checkpoints", acc, keep_last=cfg.engine.keep_last)
    logger = MetricLogger(out, enabled=acc.is_main_process, tensorboard=cfg.engine.tensorboard)
    memory = ExemplarMemory(cfg.train.memory_per_site, cfg.train.selection)
    ewc = EWCState()
    st: dict[str, Any] = {
        "rows": [],
        "heldout": [],
        "baseline": None,
        "params": [],
        "wall": [],
        "phase": -1,
        "step": 0,
    }
    teacher = None

    latest = ckpt.latest()
    mid_phase_opt = None
    if latest is not None:
        holder: dict[str, torch.nn.Module] = {"model": model}
        if (latest / "model_teacher.safetensors").is_file():
            teacher = copy.deepcopy(model)
            holder["teacher"] = teacher
        info = ckpt.load(latest, holder, restore_rng=False)
        st.update(info["extra"]["state"])
        memory.load_state_dict(info["extra"]["memory"])
        if info["extra"].get("ewc"):
            ewc.load_state_dict(info["extra"]["ewc"])
        mid_phase_opt = latest if not info["extra"]["done"] else None
        if (
            strategy == "itl"
            and cfg.itl.source_mode == "trainable"
            and st["phase"] >= (0 if mid_phase_opt else -1)
        ):
            for p in model.source_decoder.parameters():
                p.requires_grad_(bool(mid_phase_opt) and st["phase"] > 0)
        log.info("resuming from %s (phase %d, step %d)", latest, st["phase"], st["step"])
    start_phase = st["phase"] + (0 if mid_phase_opt else 1)

    if st["baseline"] is None:
        base = _eval_sites(model, data, all_sites, cfg, device, surfaces=False)
        st["baseline"] = {s: mean_metric(v, "dice") for s, v in base.items()}

    stopper = GracefulStop()
    with stopper:
        for k in range(start_phase, len(sites)):
            t0 = time.time()
            resume_step = st["step"] if mid_phase_opt else 0
            if resume_step == 0:
                if strategy == "individual":
                    model.load_state_dict(init_state)
                if strategy == "itl" and k > 0:
                    model.sync_source_from_target(trainable=cfg.itl.source_mode == "trainable")
                teacher = None
                if strategy == "lwf" and k > 0:
                    teacher = copy.deepcopy(model)
            if teacher is not None:
                teacher.eval()
                for p in teacher.parameters():
                    p.requires_grad_(False)
            train_set = _phase_data(cfg, data, k)
            mem_set, mem_sites = None, None
            if strategy in USES_MEMORY and len(memory) > 0:
                mem_set, mem_sites = memory.as_slice_set(
                    {s: data.split(s, "train") for s in memory.sites}, cfg.data.context
                )
            params = [p for p in model.parameters() if p.requires_grad]
            # prepared so that it skips the step on non-boundary micro-batches (engine.grad_accum_steps)
            opt = acc.prepare_optimizer(
                torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
            )
            sched = build_scheduler(
                opt,
                cfg.train.schedule,
                total_steps=cfg.train.steps_per_phase,
                warmup_steps=cfg.train.warmup_steps,
            )
            if mid_phase_opt is not None:
                ckpt.load(mid_phase_opt, {}, {"opt": opt}, {"sched": sched}, restore_rng=False)
                mid_phase_opt = None
            model.train()
            if strategy == "itl" and cfg.itl.source_mode == "teacher":
                model.source_decoder.eval()  # frozen teacher: BatchNorm statistics stay fixed
            stopped = False
            with Progress(
                cfg.train.steps_per_phase, f"{strategy} phase {k} ({sites[k]})", cfg.engine.progress
            ) as bar:
                bar.n = resume_step
                for s in range(resume_step, cfg.train.steps_per_phase):
                    rng = np.random.default_rng([seed, k, s])
                    xb, yb = train_set.batch(
                        rng.integers(0, len(train_set), cfg.train.batch_size), rng, cfg.data.augment
                    )
                    mem_batch = None
                    if mem_set is not None and cfg.train.memory_batch > 0:
                        mi = rng.integers(0, len(mem_set), cfg.train.memory_batch)
                        xm, ym = mem_set.batch(mi, rng, cfg.data.augment)
                        mem_batch = (
                            xm.to(device),
                            ym.to(device),
                            torch.as_tensor(mem_sites[mi], device=device),
                        )
                    with acc.accumulate(model):
                        with acc.autocast():
                            loss, logs = step_loss(
                                strategy,
                                model,
                                (xb.to(device), yb.to(device)),
                                mem_batch,
                                teacher,
                                ewc,
                                cfg,
                                rng,
                            )
                        backward_and_step(acc, loss, opt, sched, params, cfg.engine.grad_clip)
                    bar.update(1, loss=float(loss.detach()))
                    gstep = k * cfg.train.steps_per_phase + s + 1
                    if (s + 1) % cfg.engine.log_every == 0:
                        logger.log(
                            gstep,
                            phase=k,
                            site=sites[k],
                            loss=float(loss.detach()),
                            lr=sched.get_last_lr()[0],
                            **logs,
                        )
                    save_now = cfg.engine.ckpt_every > 0 and (s + 1) % cfg.engine.ckpt_every == 0
                    if stopper.requested or (save_now and s + 1 < cfg.train.steps_per_phase):
                        st.update(phase=k, step=s + 1)
                        _save(
                            ckpt,
                            gstep,
                            model,
                            teacher,
                            memory,
                            ewc,
                            st,
                            cfg,
                            done=False,
                            opt=opt,
                            sched=sched,
                        )
                        if stopper.requested:
                            stopped = True
                            break
            if stopped:
                log.warning("stopped in phase %d at step %d; rerun the same command to resume", k, st["step"])
                return {"stopped": True, "phase": k, "step": st["step"]}
            # end of phase: memory, EWC, evaluation, checkpoint
            site_set = SliceSet(data.split(sites[k], "train"), cfg.data.context, cfg.data.margin)
            if strategy in USES_MEMORY:
                memory.add_site(sites[k], site_set, np.random.default_rng([seed, k, 10**6]), model, device)
            if strategy == "ewc":
                rng = np.random.default_rng([seed, k, 10**6 + 1])
                idx = rng.permutation(len(site_set))[: cfg.train.ewc_samples]
                batches = [site_set.batch(idx[i : i + 8]) for i in range(0, len(idx), 8)]
                ewc.update(model, [(x.to(device), y.to(device)) for x, y in batches])
            per_site = _eval_sites(model, data, all_sites, cfg, device, surfaces=False)
            row = {s: mean_metric(per_site[s], "dice") for s in all_sites}
            ho = _eval_sites(model, data, heldout, cfg, device, surfaces=True) if heldout else {}
            st["rows"].append(row)
            st["heldout"].append(
                {s: {"dice": mean_metric(v, "dice"), "hd95": mean_metric(v, "hd95")} for s, v in ho.items()}
            )
            st["params"].append(count_parameters(model))
            st["wall"].append(time.time() - t0)
            st.update(phase=k, step=0)
            logger.log(
                (k + 1) * cfg.train.steps_per_phase, phase=k, **{f"dice/{s}": v for s, v in row.items()}
            )
            log.info("phase %d (%s) done: %s", k, sites[k], {s: round(v, 3) for s, v in row.items()})
            _save(
                ckpt,
                (k + 1) * cfg.train.steps_per_phase,
                model,
                None,
                memory,
                ewc,
                st,
                cfg,
                done=True,
                tag=f"phase_{k:02d}",
            )
            if stop_after_phase is not None and k >= stop_after_phase and k < len(sites) - 1:
                return {"stopped": True, "phase": k, "step": 0}

    final = _eval_sites(model, data, all_sites, cfg, device, surfaces=True)
    results = assemble_results(st, sites, heldout, n_params, strategy)
    if acc.is_main_process:
        write_summary(out / "summary.json", final, {"strategy": strategy, "sites": sites, "heldout": heldout})
        (out / "results.json").write_text(json.dumps(json_safe(results), indent=2))
        _save(
            ckpt,
            len(sites) * cfg.train.steps_per_phase,
            model,
            None,
            memory,
            ewc,
            st,
            cfg,
            done=True,
            tag="final",
        )
    logger.close()
    return results


def _save(
    ckpt, step, model, teacher, memory, ewc, st, cfg, done: bool, opt=None, sched=None, tag=None
) -> None:
    models = {"model": model}
    if teacher is not None:
        models["teacher"] = teacher
    extra = {
        "state": copy.deepcopy(st),
        "memory": memory.state_dict(),
        "ewc": ewc.state_dict() if ewc.fisher else None,
        "done": done,
        "config": to_dict(cfg),
    }
    ckpt.save(
        step,
        models,
        optimizers={"opt": opt} if opt is not None else None,
        schedulers={"sched": sched} if sched is not None else None,
        extra=extra,
        tag=tag,
    )


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
