"""The one script to run when a GPU is available: the paper configuration of every task, timed
through each task's real training path, in at most about 8 minutes, written as one markdown table.

Usage (on the GPU machine, from the repository root)::

    python benchmarks/gpu_suite.py                      # writes $OUT/gpu_suite.md (or benchmarks/results/)
    python benchmarks/gpu_suite.py --cpu-smoke          # the same code path on the CPU at tiny sizes

Each task's ``benchmarks/<task>_speed.py`` provides ``bench(config, steps, device, precision,
overrides) -> dict`` (samples/s, it/s, peak memory, task extras); this script only chooses the
configurations, runs them one after another, compares with the project's targets and writes
the table.  Towers that the paper loads from a hub are built with random weights of the same
shape (``name: random`` + the published architecture), because the GPU machine has no network:
speed does not depend on the weights.  Without a GPU (and without ``--cpu-smoke``) it prints
``no GPU: skipped`` and exits 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parent

# The published architectures, built with random weights (no hub on the GPU machine).
MAMA_PAPER_TOWERS = [
    "model.image.name=random",
    "model.image.arch={hidden_size: 768, num_hidden_layers: 12, num_attention_heads: 12, "
    "intermediate_size: 3072, patch_size: 14, num_register_tokens: 4}",
    "model.text.name=random",
    # BioMedLM's shape; the vocabulary follows the tokenizer (no LM head, so its size costs nothing)
    "model.text.arch={model_type: gpt2, n_embd: 2560, n_layer: 32, n_head: 20, n_positions: 1024}",
]

NO_ACTIVATION_CHECKPOINTING = [
    "model.image.gradient_checkpointing=false",
    "model.text.gradient_checkpointing=false",
]

# (task, bench keyword arguments on a GPU, the same on the CPU smoke run, targets[, variant])
PLAN = [
    ("mama", {"config": "paper", "steps": 20, "precision": "bf16", "overrides": MAMA_PAPER_TOWERS},
     {"config": "tiny", "steps": 4, "precision": "fp32"},
     {"samples_per_s": 96.0, "mfu": 0.40}),
    # the activation-checkpointing default is chosen by memory: the same run without it
    ("mama", {"config": "paper", "steps": 20, "precision": "bf16",
              "overrides": [*MAMA_PAPER_TOWERS, *NO_ACTIVATION_CHECKPOINTING]},
     {"config": "tiny", "steps": 4, "precision": "fp32", "overrides": NO_ACTIVATION_CHECKPOINTING},
     {"samples_per_s": 96.0, "mfu": 0.40}, "no activation checkpointing"),
    ("mrsi", {"config": "paper", "steps": 40, "precision": "fp32"},
     {"config": "tiny", "steps": 4, "precision": "fp32"},
     {"it_per_s": 11.3, "maps_per_s": 4300.0}),
    # thin-slab layers as 2D operations is the default because it is faster on a CPU: the same run
    # with 3D operations everywhere shows whether it also is on this GPU
    ("mrsi", {"config": "paper", "steps": 40, "precision": "fp32", "overrides": ["model.planar_ops=false"]},
     {"config": "tiny", "steps": 4, "precision": "fp32", "overrides": ["model.planar_ops=false"]},
     {"it_per_s": 11.3, "maps_per_s": 4300.0}, "3D operations (model.planar_ops=false)"),
    ("itl", {"config": "paper", "steps": 40, "precision": "bf16"},
     {"config": "tiny", "steps": 4, "precision": "fp32"},
     {}),
]  # fmt: skip


def load_bench(task: str) -> ModuleType:
    """``benchmarks/<task>_speed.py`` as a module."""
    path = HERE / f"{task}_speed.py"
    spec = importlib.util.spec_from_file_location(f"{task}_speed", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "bench"):
        raise AttributeError(f"{path} has no bench() function")
    return module


def verdicts(row: dict, targets: dict[str, float]) -> str:
    """``metric >= target`` for each target: ``met`` / ``NOT met`` (``-`` without targets)."""
    if not targets:
        return "recorded"
    out = []
    for key, goal in targets.items():
        value = row.get(key)
        out.append(
            f"{key} {'n/a' if value is None else ('met' if value >= goal else 'NOT met')} (>= {goal:g})"
        )
    return "; ".join(out)


def checkpointing_choice(rows: list[dict], total_gib: float | None, headroom: float = 0.8) -> str:
    """The MaMA activation-checkpointing default this card supports: off when the run without it
    fits in ``headroom`` of the card's memory (it is faster), else on.  Empty without both rows."""
    mama = {r.get("variant"): r for r in rows if r.get("task") == "mama" and "peak_mem_gib" in r}
    on, off = mama.get("default"), mama.get("no activation checkpointing")
    if on is None or off is None:
        return ""
    speed = f"{on.get('samples_per_s', 0):.3g} -> {off.get('samples_per_s', 0):.3g} samples/s"
    mem = f"peak {on['peak_mem_gib']:.3g} -> {off['peak_mem_gib']:.3g} GiB"
    if total_gib is None:
        return f"activation checkpointing off: {speed}, {mem} (CPU smoke: no choice made)"
    fits = off["peak_mem_gib"] <= headroom * total_gib
    return (
        f"activation checkpointing off: {speed}, {mem} of {total_gib:.0f} GiB: "
        + (
            "fits, so model.*.gradient_checkpointing=false is the faster choice on this card"
            if fits
            else "does not fit, keep gradient_checkpointing=true"
        )  # fmt: skip
    )


def markdown(rows: list[dict], device: str) -> str:
    cols = ["task", "variant", "config", "precision", "batch", "it_per_s", "samples_per_s", "peak_mem_gib", "mfu",
            "maps_per_s", "seconds", "verdict"]  # fmt: skip
    lines = [
        f"# medlearn GPU suite ({device}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')})",
        "",
        "| " + " | ".join(cols) + " |",
        "| " + " | ".join("---" for _ in cols) + " |",
    ]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", default=os.environ.get("OUT") or str(HERE / "results"), help="folder for the table"
    )
    ap.add_argument("--tasks", default="mama,mrsi,itl")
    ap.add_argument("--cpu-smoke", action="store_true", help="run the same path on the CPU at tiny sizes")
    a = ap.parse_args(argv)
    gpu = torch.cuda.is_available()
    if not gpu and not a.cpu_smoke:
        print("no GPU: skipped (run on a machine with CUDA, or pass --cpu-smoke to exercise the path)")
        return 0
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    wanted = set(a.tasks.split(","))
    rows = []
    for task, gpu_kw, cpu_kw, targets, *variant in PLAN:
        if task not in wanted:
            continue
        kw = dict(gpu_kw if gpu else cpu_kw)
        kw["device"] = "cuda" if gpu else "cpu"
        t0 = time.time()
        try:
            row = load_bench(task).bench(**kw)
            row["verdict"] = verdicts(row, targets) if gpu else "cpu smoke (no targets)"
        except Exception as exc:  # one task failing must not lose the others' numbers
            traceback.print_exc()
            row = {
                "task": task,
                "config": kw["config"],
                "verdict": f"FAILED: {type(exc).__name__}: {exc}"[:200],
            }
        row["seconds"] = round(time.time() - t0, 1)
        row["variant"] = variant[0] if variant else "default"
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        if gpu:
            torch.cuda.empty_cache()
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else None
    choice = checkpointing_choice(rows, total_gib)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_suite" if gpu else "gpu_suite_cpu_smoke"
    (out / f"{name}.md").write_text(markdown(rows, device) + ("\n" + choice + "\n" if choice else ""))
    (out / f"{name}.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2, default=str))
    print(markdown(rows, device))
    if choice:
        print(choice)
    print(f"summary: {len(rows)} task(s) on {device}; table in {out / (name + '.md')}")
    return 0 if all(not str(r.get("verdict", "")).startswith("FAILED") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
