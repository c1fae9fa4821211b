"""count_parameters against hand-counted modules (weights + biases; buffers excluded)."""

from __future__ import annotations

from torch import nn

from medlearn.engine import count_parameters


def _toy() -> nn.Sequential:
    # Linear(3, 4): 3*4 + 4 = 16; BatchNorm1d(4): 4 + 4 (running stats are buffers); Linear(4, 2): 10
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_counts_all_parameters_by_default_and_skips_buffers():
    m = _toy()
    assert count_parameters(m) == 16 + 8 + 10
    conv = nn.Conv2d(2, 5, kernel_size=3, bias=False)
    assert count_parameters(conv) == 5 * 2 * 3 * 3


def test_trainable_only_leaves_out_frozen_parameters():
    m = _toy()
    m[0].weight.requires_grad_(False)
    assert count_parameters(m) == 34
    assert count_parameters(m, trainable_only=True) == 34 - 12
    assert count_parameters(m, trainable_only=True, where=lambda n: n.startswith("2.")) == 10


def test_shared_parameter_counted_once():
    lin = nn.Linear(4, 4)
    tied = nn.Sequential(lin, nn.ReLU(), lin)
    assert count_parameters(tied) == 20
