"""The benchmark drivers: the GPU suite's CPU fallback, and the side-by-side step timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from compare_revisions import seconds_per_step, task_overrides  # noqa: E402
from gpu_suite import checkpointing_choice, verdicts  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback line is printed only without a GPU")
def test_gpu_suite_says_skipped_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "no GPU: skipped" in proc.stdout
    assert not any(tmp_path.iterdir())  # nothing pretends to be a measurement


def test_verdicts_compare_with_the_targets():
    assert verdicts({"it_per_s": 12.0, "maps_per_s": 4000.0}, {"it_per_s": 11.3, "maps_per_s": 4300.0}) == (
        "it_per_s met (>= 11.3); maps_per_s NOT met (>= 4300)"
    )
    assert verdicts({"samples_per_s": 50.0}, {"samples_per_s": 96.0, "mfu": 0.4}).endswith("mfu n/a (>= 0.4)")


def test_checkpointing_choice_follows_the_memory_of_the_card():
    on = {"task": "mama", "variant": "default", "samples_per_s": 50.0, "peak_mem_gib": 20.0}
    off = {"task": "mama", "variant": "no activation checkpointing", "samples_per_s": 70.0, "peak_mem_gib": 100.0}
    assert "fits" in checkpointing_choice([on, off], total_gib=139.0)  # 100 <= 0.8 x 139 = 111.2
    assert "does not fit" in checkpointing_choice([on, off], total_gib=80.0)  # 100 > 64
    assert checkpointing_choice([on], total_gib=80.0) == ""  # one row: nothing to choose from
    assert "no choice made" in checkpointing_choice([on, off], total_gib=None)


def test_seconds_per_step_is_the_median_gap_after_warmup(tmp_path):
    times = {1: 0.0, 2: 10.0, 3: 11.0, 4: 12.5, 5: 13.5, 6: 14.5, 7: 99.0}  # step 2 is a warm-up outlier
    recs = [{"step": s, "time": t, "loss": 1.0} for s, t in times.items()]
    recs.insert(3, {"step": 3, "time": 50.0, "val_loss": 2.0})  # validation records are ignored
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    # gaps after warm-up 2: 1.5, 1.0, 1.0, 84.5 -> median 1.25
    assert seconds_per_step(path, warmup=2) == pytest.approx(1.25)
    with pytest.raises(RuntimeError, match="too few"):
        seconds_per_step(path, warmup=7)


def test_head_overrides_apply_to_their_task():
    given = ["engine.compile=true", "mrsi:adversarial.route=all", "itl:itl.teacher=decoder"]
    assert task_overrides(given, "mrsi") == ["engine.compile=true", "adversarial.route=all"]
    assert task_overrides(given, "mama") == ["engine.compile=true"]
    assert task_overrides(["data.root=a:b"], "itl") == ["data.root=a:b"]  # a colon inside a value
