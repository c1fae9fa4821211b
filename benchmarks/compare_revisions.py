"""Side by side: the training speed of two git revisions on this machine, in one run.

Each revision is checked out in its own ``git worktree`` and runs the real CLI
(``python -m medlearn.cli <task> train --config <its demo preset> ...``) in a subprocess with
``PYTHONPATH=<worktree>/src``, so both use the same interpreter and libraries.  Runs alternate
(base, head, base, head, ...) so that a change in the machine's load hits both.  The time per
optimizer step is read from each run's ``metrics.jsonl`` (the records' wall-clock ``time``),
after ``--warmup`` steps, so start-up, data preparation and checkpoints are left out.

Usage::

    python benchmarks/compare_revisions.py --base 69442bc --head HEAD --tasks mrsi,itl,mama --repeats 3
    python benchmarks/compare_revisions.py --preset tiny --tasks mrsi \
        --head-override mrsi:adversarial.route=all --head-override mrsi:model.lambda_offset=false

Prints a table (median seconds per step per revision, ratio base/head = the speed-up of head) and
writes ``--json``.  Synthetic data is written once per revision by that revision's own ``synth``
(and ``prepare`` for MaMA) into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], src: Path, cwd: Path, threads: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), MPLBACKEND="Agg")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def _preset(tree: Path, task: str, name: str = "demo") -> Path:
    for folder in (tree / "src" / "medlearn" / "configs", tree / "configs"):
        p = folder / task / f"{name}.yaml"
        if p.is_file():
            return p
    raise FileNotFoundError(f"no {name} preset of {task} in {tree}")


def _new_keys(tree: Path) -> bool:
    """Revisions after the config-key renames spell the run folder ``train.out`` in every task."""
    return "RENAMED" in (tree / "src" / "medlearn" / "config.py").read_text()


def _prepare_data(task: str, tree: Path, data: Path, threads: int) -> dict[str, str]:
    """Write the task's synthetic data with this revision's own tools; the data overrides."""
    py = [sys.executable, "-m", "medlearn.cli", task]
    src = tree / "src"
    if task == "mrsi":
        _run(
            [*py, "synth", "--out", str(data), "--patients", "6", "--hr-size", "32", "--layouts", "npy"],
            src,
            data.parent,
            threads,
        )
        return {"data.root": str(data / "npy")}
    if task == "itl":
        _run(
            [*py, "synth", "--out", str(data), "--scale", "tiny", "--sites", "RUNMC,BMC,HK"],
            src,
            data.parent,
            threads,
        )
        return {"data.root": str(data), "data.sites": "[RUNMC,BMC]", "data.heldout": "[HK]",
                "data.cache_dir": str(data / "cache")}  # fmt: skip
    if task == "mama":
        _run(
            [*py, "synth", "--out", str(data / "synth"), "--patients", "24", "--long-side", "256"],
            src,
            data.parent,
            threads,
        )
        _run([*py, "prepare", "--out", str(data / "prep"), "--embed", str(data / "synth" / "embed"),
              "--long-side", "128"], src, data.parent, threads)  # fmt: skip
        return {"data.prepared_dir": str(data / "prep")}
    raise ValueError(task)


def _train_overrides(task: str, tree: Path, out: Path, steps: int) -> dict[str, str]:
    new = _new_keys(tree)
    ov = {"engine.num_threads": "1", "engine.log_every": "1", "engine.progress": "false",
          "engine.tensorboard": "false", "engine.ckpt_every": "0"}  # fmt: skip
    if task == "mrsi":
        # no validation inside the timed steps (val_every counts epochs in base, steps in head)
        ov.update({"train.out": str(out), "train.max_steps": str(steps), "train.epochs": "1000",
                   "train.val_every": "100000"})  # fmt: skip
    elif task == "itl":
        ov.update({("train.out" if new else "out"): str(out), "train.steps_per_phase": str(steps)})
    elif task == "mama":
        key = (lambda k: f"train.{k}") if new else (lambda k: k)
        ov.update({key("out"): str(out), key("max_steps"): str(steps), key("val_every"): "100000",
                   "loss.late_loss": "0"})  # fmt: skip
    return ov


def task_overrides(overrides: list[str], task: str) -> list[str]:
    """The overrides for ``task``: ``task:key=value`` applies to that task only, ``key=value`` to all."""
    out = []
    for o in overrides:
        prefix, sep, rest = o.partition(":")
        if not sep or "=" in prefix:
            out.append(o)
        elif prefix == task:
            out.append(rest)
    return out


def seconds_per_step(metrics: Path, warmup: int) -> float:
    """Median seconds between consecutive logged training steps after ``warmup`` steps."""
    recs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    recs = sorted(
        (r for r in recs if "loss" in r and r["step"] > warmup), key=lambda r: (r["step"], r["time"])
    )
    by_step: dict[int, float] = {}
    for r in recs:  # ITL logs per phase with global steps; keep the first record of each step
        by_step.setdefault(int(r["step"]), float(r["time"]))
    steps = sorted(by_step)
    gaps = [(by_step[b] - by_step[a]) / (b - a) for a, b in zip(steps, steps[1:]) if b - a <= 2]
    if not gaps:
        raise RuntimeError(f"{metrics}: too few logged steps after warm-up {warmup}")
    return statistics.median(gaps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="69442bc", help="the older revision")
    ap.add_argument("--head", default="HEAD", help="the newer revision (default HEAD)")
    ap.add_argument("--tasks", default="mrsi,itl,mama")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per run (per phase for ITL)")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--preset", default="demo", help="the preset both revisions train (demo, tiny)")
    ap.add_argument("--head-override", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override for the head's runs only (repeatable; TASK:KEY=VALUE for one task), "
                    "e.g. engine.compile=true or the switches that reproduce the base's maths")  # fmt: skip
    ap.add_argument("--json", default="", help="write the rows here")
    ap.add_argument("--keep", action="store_true", help="keep the worktrees and runs")
    a = ap.parse_args(argv)
    tasks = [t for t in a.tasks.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="medlearn-compare-"))
    trees: dict[str, Path] = {}
    try:
        for label, rev in (("base", a.base), ("head", a.head)):
            tree = work / label
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                           check=True, capture_output=True)  # fmt: skip
            trees[label] = tree
        data = {
            (label, task): _prepare_data(task, tree, work / f"data-{label}-{task}", a.threads)
            for label, tree in trees.items()
            for task in tasks
        }
        times: dict[tuple[str, str], list[float]] = {(lb, t): [] for lb in trees for t in tasks}
        for r in range(a.repeats):
            for task in tasks:
                for label in ("base", "head") if r % 2 == 0 else ("head", "base"):
                    tree = trees[label]
                    out = work / f"run-{label}-{task}-{r}"
                    ov = {**data[(label, task)], **_train_overrides(task, tree, out, a.steps)}
                    extra = task_overrides(a.head_override, task) if label == "head" else []
                    cmd = [sys.executable, "-m", "medlearn.cli", task, "train", "--config",
                           str(_preset(tree, task, a.preset)), *[f"{k}={v}" for k, v in ov.items()], *extra]  # fmt: skip
                    t0 = time.time()
                    _run(cmd, tree / "src", work, a.threads)
                    s = seconds_per_step(out / "metrics.jsonl", a.warmup)
                    times[(label, task)].append(s)
                    print(f"repeat {r} {task:5s} {label}: {s * 1000:8.1f} ms/step ({time.time() - t0:.0f} s run)",
                          flush=True)  # fmt: skip
        rows = []
        for task in tasks:
            base, head = statistics.median(times[("base", task)]), statistics.median(times[("head", task)])
            rows.append({"task": task, "base": a.base, "head": a.head, "preset": a.preset,
                         "head_overrides": task_overrides(a.head_override, task),
                         "base_ms_per_step": round(base * 1000, 2),
                         "head_ms_per_step": round(head * 1000, 2), "speedup": round(base / head, 3),
                         "repeats": a.repeats, "steps": a.steps, "threads": a.threads})  # fmt: skip
        print(f"\n{'task':6s} {'base ms/step':>13s} {'head ms/step':>13s} {'speed-up':>9s}")
        for row in rows:
            print(
                f"{row['task']:6s} {row['base_ms_per_step']:13.1f} {row['head_ms_per_step']:13.1f} {row['speedup']:8.2f}x"
            )
        print(f"summary: head {a.head} vs base {a.base}, {a.repeats} alternated repeats, {os.cpu_count()} CPU cores: "
              + ", ".join(f"{r['task']} {r['speedup']:.2f}x" for r in rows))  # fmt: skip
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(rows, indent=2))
    finally:
        if not a.keep:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True
                )
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
