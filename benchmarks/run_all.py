"""``make bench``: every task's speed benchmark at its tiny preset on this machine (a few minutes on
2 CPU cores), through each task's real training path, and the GPU suite when a GPU is visible.

Usage::

    python benchmarks/run_all.py [--json benchmarks/results/bench_cpu.json] [--steps 8]

Prints one table (task, config, device, it/s, samples/s, peak memory) and a one-line summary.
Quality benchmarks (``*_quality.py``, ``itl_benchmark.py``) take much longer and are run by hand;
their commands are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_suite import load_bench  # noqa: E402
from gpu_suite import main as gpu_suite  # noqa: E402

TASKS = ("mrsi", "itl", "mama")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed optimizer steps per task")
    ap.add_argument("--json", default="", help="also write the rows here")
    a = ap.parse_args(argv)
    rows, failed = [], []
    for task in TASKS:
        t0 = time.time()
        try:
            row = load_bench(task).bench(config="tiny", steps=a.steps, device="cpu", precision="fp32")
        except Exception as exc:  # report and continue with the other tasks
            failed.append(task)
            row = {"task": task, "error": f"{type(exc).__name__}: {exc}"[:200]}
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
    print(
        f"{'task':6s} {'config':7s} {'device':7s} {'it/s':>9s} {'samples/s':>10s} {'peak GiB':>9s} {'s':>6s}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['task']:6s} ERROR {r['error']}")
            continue
        print(f"{r['task']:6s} {r.get('config', ''):7s} {str(r.get('device', '')):7s} {r.get('it_per_s', 0):9.3g} "
              f"{r.get('samples_per_s', 0):10.3g} {r.get('peak_mem_gib', 0):9.3g} {r['seconds']:6.1f}")  # fmt: skip
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=2, default=str))
    print(f"summary: {len(rows) - len(failed)}/{len(rows)} tasks benchmarked on {os.cpu_count()} CPU cores"
          + (f"; failed: {', '.join(failed)}" if failed else ""))  # fmt: skip
    code = 1 if failed else 0
    if torch.cuda.is_available():
        code = max(code, gpu_suite([]))
    return code


if __name__ == "__main__":
    sys.exit(main())
