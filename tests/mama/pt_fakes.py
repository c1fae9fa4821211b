"""Shared helpers of the MaMA pre-training tests (no tests here): tiny config and a small paired set.

The paired set follows the data package's item format (``image``, ``extra_image``, ``report``,
``labels``, ids).  Images carry their report's class visually (a bright square whose position and
intensity depend on the class), so a few training steps can learn the pairing.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from medlearn.config import load_config
from medlearn.mama.config import MamaConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "mama" / "tiny.yaml"

REPORTS = [
    "Procedure reported: screening mammogram. Breast composition: almost entirely fat. Findings: negative; "
    "BI-RADS category 1.",
    "Procedure reported: diagnostic mammogram. Breast composition: extremely dense. Findings: suspicious mass; "
    "BI-RADS category 4.",
    "Procedure reported: screening mammogram. Breast composition: scattered densities. Findings: benign "
    "calcifications; BI-RADS category 2.",
    "Procedure reported: diagnostic mammogram. Breast composition: heterogeneously dense. Findings: probably "
    "benign; BI-RADS category 3.",
]


def tiny_config(tmp_path: Path, *overrides: str) -> MamaConfig:
    """The tiny preset writing into ``tmp_path``."""
    return load_config(MamaConfig, TINY, [f"train.out={tmp_path / 'run'}", *overrides])


class FakePairs(Dataset):
    """``n`` items of class ``i % 4``; the image shows a square at a class-dependent position."""

    def __init__(self, n: int, size: int = 32, seed: int = 0, noise: float = 0.3) -> None:
        self.n, self.size, self.seed, self.noise = n, size, seed, noise

    def __len__(self) -> int:
        return self.n

    def _image(self, cls: int, g: torch.Generator) -> torch.Tensor:
        s = self.size
        img = torch.randn(1, s, s, generator=g) * self.noise
        q = s // 2
        r, c = divmod(cls, 2)
        img[:, r * q : (r + 1) * q, c * q : (c + 1) * q] += 1.0 + 0.25 * cls
        return img.expand(3, s, s).clone()

    def __getitem__(self, i: int) -> dict:
        cls = i % len(REPORTS)
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        return {
            "image": self._image(cls, g),
            "extra_image": self._image(cls, g),
            "report": REPORTS[cls],
            "labels": {
                "birads": torch.tensor(cls),
                "density": torch.tensor(cls),
                "cancer": torch.tensor(int(cls == 1)),
            },
            "image_id": f"img{i}",
            "exam_id": f"exam{i // 2}",
            "patient_id": f"pat{i // 4}",
        }


def fake_collate(batch: list[dict]) -> dict:
    """Stack tensors, keep strings as lists (same layout as the data package's ``collate_mammo``)."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "extra_image": torch.stack([b["extra_image"] for b in batch]),
        "report": [b["report"] for b in batch],
        "labels": {k: torch.stack([b["labels"][k] for b in batch]) for k in batch[0]["labels"]},
        "image_id": [b["image_id"] for b in batch],
        "exam_id": [b["exam_id"] for b in batch],
        "patient_id": [b["patient_id"] for b in batch],
    }


def write_prepared(root: Path, patients: int = 16) -> Path:
    """Synthetic EMBED-format DICOMs + tables on disk, prepared by the real ``prepare`` (small images)."""
    from medlearn.mama.data.prepare import PrepareConfig, prepare_dataset
    from medlearn.mama.data.synth import SynthConfig, generate

    generate(root / "synth", SynthConfig(n_patients=patients, n_rsna_patients=1, long_side=128, seed=3))
    prepare_dataset(root / "prepared", embed_dir=root / "synth" / "embed", cfg=PrepareConfig(long_side=64))
    return root / "prepared"


def deterministic_datasets(prepared: Path, image_size: int) -> tuple[Dataset, Dataset]:
    """Train and val datasets read through the real loader with evaluation transforms (no randomness)."""
    from medlearn.mama.data.dataset import MammoDataset, load_prepared

    table, root = load_prepared(prepared)
    table = table[table["source"] == "embed"]
    out = []
    for name in ("train", "val"):
        sub = table[table["split"] == name].reset_index(drop=True)
        sub.attrs = table.attrs
        out.append(MammoDataset(sub, root, train=False, image_size=image_size))
    return out[0], out[1]
