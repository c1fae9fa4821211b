"""ITL training speed through the real path: ``medlearn.itl.train.train`` on synthetic NIfTI files.

``bench()`` writes a two-site synthetic benchmark (RUNMC, BMC; the real on-disk layout) to a
temporary folder, trains the chosen preset for two phases through the same ``train()`` the CLI
runs (phase 0 warms up; phase 1 is the ITL step with exemplars, the source decoder and the
teacher) and times phase 1's optimizer steps after ``warmup`` of them.  The clock is read after
each ``backward_and_step`` of the training module (the optimizer step), so a step's time includes
its batch drawing, forward, backward, optimizer and the loop's bookkeeping; evaluation and
checkpoints between phases are outside the window.  On CUDA the device is synchronised at the two
ends of the window only.

    python benchmarks/itl_speed.py                              # tiny preset on this machine
    python benchmarks/itl_speed.py --config paper --device cuda --precision bf16 --json itl_speed.json
    python benchmarks/itl_speed.py --compare 69442bc --repeats 3   # side by side with an old revision

``--compare BASE`` checks out BASE and HEAD (or ``--head``) in two ``git worktree``s under /tmp
and runs this script's timing in subprocesses with ``PYTHONPATH=<worktree>/src``, alternating
base, head, base, head ... (the order flips every repeat) so that a change of the machine's load
hits both; it prints the median ms/step of each and the ratio base/head (the speed-up of head).
``--head-override key=value`` (repeatable) adds a third contestant, head with those settings (for
example the switches that reproduce the base's maths).
The timing hook (``medlearn.itl.train.backward_and_step``) exists in both layouts of the ITL loop.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _preset(name: str) -> Path:
    """The preset ``name`` of the medlearn on the path (package configs, or an old checkout's configs/)."""
    import medlearn

    pkg = Path(medlearn.__file__).resolve().parent
    for folder in (pkg / "configs" / "itl", pkg.parents[1] / "configs" / "itl"):
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    raise FileNotFoundError(f"no ITL preset '{name}'")


def _load(preset: Path, overrides: list[str]):
    from medlearn.config import load_config
    from medlearn.itl.config import ITLConfig

    return load_config(ITLConfig, preset, overrides)


def bench(
    config: str = "tiny",
    steps: int = 30,
    device: str = "auto",
    precision: str | None = None,
    overrides: Sequence[str] = (),
    warmup: int = 5,
    strategy: str = "itl",
    keep: str | None = None,
) -> dict:
    """Train ``config`` for two phases through ``train()`` and time phase 1's steps after ``warmup``.

    Args:
        config: ITL preset name (tiny, demo, small, paper).
        steps: timed optimizer steps (phase 1 runs ``warmup + steps``).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``/``bf16``/``fp16`` or None (the preset's).
        overrides: extra ``key=value`` config overrides.
        strategy: ``train.strategy``.
        keep: a folder to keep the run and data in (default: a temporary folder, removed).
    Returns:
        ``task, config, device, precision, batch, steps, it_per_s, samples_per_s`` (slices/s: new
        + exemplar slices), ``peak_mem_gib`` (CUDA max allocated in the window, or the process's
        peak RSS on CPU), ``ms_per_step``, ``strategy``, ``image_size``.
    """
    import medlearn.itl.train as itl_train
    from medlearn.itl.synth import make_benchmark

    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="itl-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "data"
    if not (root / "BMC").is_dir():
        make_benchmark(root, seed=0, scale="tiny", sites=["RUNMC", "BMC"])
    preset = _preset(config)
    new_keys = "out:" not in preset.read_text().split("data:")[0]  # old layout: top-level ``out``
    n = warmup + steps
    ov = [
        f"data.root={root}",
        f"data.cache_dir={work / 'cache'}",
        "data.sites=[RUNMC,BMC]",
        "data.heldout=[]",
        f"train.strategy={strategy}",
        f"train.steps_per_phase={n}",
        f"{'train.out' if new_keys else 'out'}={work / 'run'}",
        f"engine.device={device}",
        f"engine.log_every={n}",
        "engine.ckpt_every=0",
        "engine.progress=false",
        "engine.tensorboard=false",
    ]
    if precision:
        ov.append(f"engine.precision={precision}")
    cfg = _load(preset, ov + list(overrides))
    shutil.rmtree(work / "run", ignore_errors=True)
    accum = cfg.engine.grad_accum_steps
    first = (n + warmup) * accum  # call index (1-based) ending the warm-up of phase 1
    last = 2 * n * accum
    clock: dict[str, float] = {}
    calls = [0]
    cuda = torch.cuda.is_available() and device != "cpu"
    original = itl_train.backward_and_step

    def timed(*args, **kwargs):
        out = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] in (first, last):
            if cuda:
                torch.cuda.synchronize()
            clock["start" if calls[0] == first else "end"] = time.perf_counter()
            if cuda and calls[0] == first:
                torch.cuda.reset_peak_memory_stats()
        return out

    itl_train.backward_and_step = timed
    try:
        train = getattr(itl_train, "train", None) or itl_train.run_sequence
        train(cfg)
    finally:
        itl_train.backward_and_step = original
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    if calls[0] != last:
        raise RuntimeError(f"expected {last} optimizer calls in two phases, saw {calls[0]}")
    dt = (clock["end"] - clock["start"]) / steps
    slices = cfg.train.batch_size + cfg.train.memory_batch
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "task": "itl",
        "config": config,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "precision": cfg.engine.precision,
        "batch": slices,
        "steps": steps,
        "it_per_s": 1.0 / dt,
        "samples_per_s": slices / dt,
        "peak_mem_gib": peak,
        "ms_per_step": dt * 1000,
        "strategy": strategy,
        "image_size": cfg.data.size,
        "threads": torch.get_num_threads(),
    }


def compare(
    base: str,
    head: str,
    repeats: int,
    config: str,
    steps: int,
    overrides: list[str],
    head_overrides: list[str] = (),
) -> list[dict]:
    """Median ms/step of ``base`` and ``head`` (git revisions), alternated, in two worktrees under /tmp.

    With ``head_overrides`` a third contestant ``head*`` runs ``head`` with them (e.g. the switches
    that reproduce the base's maths), in the same alternation.
    """
    work = Path(tempfile.mkdtemp(prefix="itl-compare-"))
    trees: dict[str, Path] = {}
    runs = {"base": (base, list(overrides)), "head": (head, list(overrides))}
    if head_overrides:
        runs["head*"] = (head, list(overrides) + list(head_overrides))
    try:
        for rev in dict.fromkeys(r for r, _ in runs.values()):
            trees[rev] = work / f"tree-{len(trees)}"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(trees[rev]), rev],
                           check=True, capture_output=True)  # fmt: skip
        times: dict[str, list[float]] = {label: [] for label in runs}
        for r in range(repeats + 1):  # repeat 0 writes each tree's data and is not counted
            for label in list(runs) if r % 2 == 0 else list(reversed(runs)):
                rev, ov = runs[label]
                env = dict(os.environ, PYTHONPATH=str(trees[rev] / "src"), OMP_NUM_THREADS="1")
                out = work / f"{label}-{r}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--config", config, "--steps", str(steps),
                       "--device", "cpu", "--keep", str(work / f"data-{rev}"), "--json", str(out),
                       *[f"--override={o}" for o in ov]]  # fmt: skip
                proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"{label} failed:\n{proc.stderr[-3000:]}")
                ms = json.loads(out.read_text())["ms_per_step"]
                if r > 0:
                    times[label].append(ms)
                print(f"repeat {r} {label}: {ms:7.1f} ms/step{' (warm-up, not counted)' if r == 0 else ''}",
                      flush=True)  # fmt: skip
        b = statistics.median(times["base"])
        return [
            {"label": label, "revision": runs[label][0], "overrides": runs[label][1], "config": config,
             "steps": steps, "repeats": repeats, "ms": times[label], "ms_median": statistics.median(times[label]),
             "speedup_vs_base": b / statistics.median(times[label])}
            for label in runs
        ]  # fmt: skip
    finally:
        for tree in trees.values():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True
            )
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default=None)
    p.add_argument("--strategy", default="itl")
    p.add_argument("--override", action="append", default=[], help="key=value (repeatable)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    p.add_argument("--keep", default=None, help="keep data and run here")
    p.add_argument("--compare", default=None, metavar="BASE", help="side by side with git revision BASE")
    p.add_argument("--head", default="HEAD")
    p.add_argument(
        "--head-override", action="append", default=[], help="with --compare: also time head with these"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.compare:
        rows = compare(a.compare, a.head, a.repeats, a.config, a.steps, a.override, a.head_override)
        for r in rows:
            print(f"{r['label']:6s} {r['revision']:10s} median {r['ms_median']:7.1f} ms/step  "
                  f"speed-up vs base {r['speedup_vs_base']:.2f}x  {' '.join(r['overrides'])}")  # fmt: skip
        print(f"summary: ITL {a.config} train step vs base {a.compare}: "
              + ", ".join(f"{r['label']} {r['speedup_vs_base']:.2f}x" for r in rows[1:])
              + f" ({a.repeats} alternated repeats, {os.cpu_count()} CPU cores, 1 thread)")  # fmt: skip
    else:
        rows = [bench(a.config, a.steps, a.device, a.precision, a.override, a.warmup, a.strategy, a.keep)]
        r = rows[0]
        print("| task | config | device | precision | slices/step | it/s | slices/s | ms/step | peak GiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| itl | {r['config']} | {r['device']} | {r['precision']} | {r['batch']} | {r['it_per_s']:.2f} | "
              f"{r['samples_per_s']:.1f} | {r['ms_per_step']:.1f} | {r['peak_mem_gib']:.2f} |")  # fmt: skip
        print(
            f"summary: ITL {r['config']} {r['samples_per_s']:.1f} slices/s on {r['device']} ({r['precision']})"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows if a.compare else rows[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
