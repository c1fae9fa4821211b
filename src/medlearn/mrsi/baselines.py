"""Baselines and ablations of the paper, as switch settings of :class:`~medlearn.mrsi.networks.MCUNet`.

Each entry is the set of constructor switches that turns the one network class into that method
(no copied model files).  "Separate networks" (one single-scale net per n) and the fixed-lambda
conditional GAN are training set-ups of these architectures: see ``configs/mrsi`` and
``benchmarks/mrsi_quality.py``.

| name | kernel conditioning | norm conditioning | reference params (64x64 maps) |
| --- | --- | --- | --- |
| ``mcm`` (full method) | Filter Scaling on (n, metabolite) | conditional IN on lambda | 7.45M |
| ``fs_nm`` | Filter Scaling on (n, metabolite) | instance norm | 6.94M |
| ``fs_n`` | Filter Scaling on n | instance norm | 3.94M |
| ``single_scale`` | none | instance norm | 0.97M |
| ``hypernetwork`` | MLP(n) -> whole kernel | instance norm | 26.4M |
| ``adaptive_modulation`` | none | gamma/beta from MLP(n) + channel mean/std | (not reported) |
"""

from __future__ import annotations

from typing import Any

ARCH_SWITCHES: dict[str, dict[str, Any]] = {
    "mcm": {"kernel_cond": "fs_nm", "norm_cond": "lambda"},
    "fs_nm": {"kernel_cond": "fs_nm", "norm_cond": "none"},
    "fs_n": {"kernel_cond": "fs_n", "norm_cond": "none"},
    "single_scale": {"kernel_cond": "none", "norm_cond": "none"},
    "hypernetwork": {"kernel_cond": "hyper_n", "norm_cond": "none"},
    "adaptive_modulation": {"kernel_cond": "none", "norm_cond": "am_n"},
}
"""Architecture name -> MCUNet switches."""

REFERENCE_PARAMS: dict[str, float] = {
    "mcm": 7.45e6,
    "fs_nm": 6.94e6,
    "fs_n": 3.94e6,
    "single_scale": 0.97e6,
    "hypernetwork": 26.4e6,
    "critic": 1.28e6,
}
"""Parameter counts of the reference implementation at the paper configuration."""
