"""Shared fixtures of the MRSI tests: a tiny dataset written to disk in the reference npy layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medlearn.config import load_config
from medlearn.mrsi.config import MRSIConfig
from medlearn.mrsi.constants import METABOLITES

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "mrsi"


def write_npy_patients(
    root: Path, n_patients: int = 4, grid: int = 16, slices: int = 2, seed: int = 0
) -> Path:
    """Smooth positive maps with a zeroed rim + matching T1/FLAIR stacks, ``Patient<k>/...`` folders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:grid, 0:grid] / grid
    brain = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.4**2
    for p in range(1, n_patients + 1):
        pdir = root / f"Patient{p}"
        (pdir / "Met_filtered").mkdir(parents=True)
        (pdir / "MRI_sliced").mkdir(parents=True)
        tissue = np.zeros((slices, grid, grid), np.float32)
        for s in range(slices):
            cy, cx, w = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.05, 0.2)]
            tissue[s] = 1.0 + np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / w**2)
        for m, met in enumerate(METABOLITES):
            maps = tissue * (1.0 + 0.3 * m) + rng.normal(0, 0.02, tissue.shape)
            np.save(pdir / "Met_filtered" / f"{met}.npy", (maps * brain).astype(np.float32))
        mri = np.repeat(np.repeat(np.repeat(tissue, 3, 0), 3, 1), 3, 2)
        np.save(pdir / "MRI_sliced" / "T1_sliced.npy", mri.astype(np.float32))
        np.save(pdir / "MRI_sliced" / "flair_sliced.npy", (2.5 - mri).astype(np.float32))
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_npy_patients(tmp_path_factory.mktemp("mrsi_tiny") / "npy")


@pytest.fixture()
def tiny_cfg(tiny_root: Path, tmp_path: Path):
    def make(*overrides: str) -> MRSIConfig:
        base = [f"data.root={tiny_root}", f"train.out={tmp_path / 'run'}"]
        return load_config(MRSIConfig, CONFIGS / "tiny.yaml", [*base, *overrides])

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run faster on one thread (and far faster on a shared, busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
