"""Shared fixtures of the itl tests: tiny synthetic data on disk and one finished tiny run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medlearn.config import load_config
from medlearn.itl.config import ITLConfig
from medlearn.itl.synth import make_benchmark

TINY = Path(__file__).resolve().parents[2] / "configs" / "itl" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine two threads are much slower (spin waits)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def site_root(tmp_path_factory) -> Path:
    """Tiny synthetic benchmark (RUNMC, BMC, I2CVB, HK; 3 cases each) in the real site layout."""
    root = tmp_path_factory.mktemp("itl_sites")
    return make_benchmark(root, seed=0, scale="tiny", sites=["RUNMC", "BMC", "I2CVB", "HK"])


def tiny_cfg(root: Path, out: Path, *overrides: str) -> ITLConfig:
    """The tiny preset on ``root`` writing to ``out`` (2 training sites, HK held out, 3 steps/phase)."""
    base = [f"data.root={root}", f"train.out={out}", "data.sites=[RUNMC,BMC]", "train.steps_per_phase=3"]
    return load_config(ITLConfig, TINY, base + list(overrides))


@pytest.fixture(scope="session")
def finished_run(site_root, tmp_path_factory) -> tuple[Path, dict]:
    """A complete tiny ITL run (its folder and results)."""
    from medlearn.itl.train import train as train_itl

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("itl_run")
    cfg = tiny_cfg(site_root, out, f"data.cache_dir={out / 'cache'}")
    return out, train_itl(cfg)
