"""Schedule multipliers at the edges: first warm-up step, past the last step, step boundaries."""

from __future__ import annotations

import math

import pytest

from medlearn.engine.schedules import cosine_with_warmup_factor, step_decay_factor


def test_cosine_edges_against_closed_form():
    # warm-up starts at 1/warmup (not 0) and reaches 1 on its last step
    assert cosine_with_warmup_factor(0, 4, 20, 0.1) == pytest.approx(0.25)
    assert cosine_with_warmup_factor(3, 4, 20, 0.1) == pytest.approx(1.0)
    assert cosine_with_warmup_factor(4, 4, 20, 0.1) == pytest.approx(1.0)
    mid = 4 + 8  # half of the 16 cosine steps: 0.1 + 0.9 * 0.5 * (1 + cos(pi / 2))
    assert cosine_with_warmup_factor(mid, 4, 20, 0.1) == pytest.approx(0.1 + 0.45)
    # from total_steps on the multiplier stays at the floor instead of rising again
    for s in (20, 21, 35):
        assert cosine_with_warmup_factor(s, 4, 20, 0.1) == pytest.approx(0.1)
    # no warm-up: plain cosine from 1
    assert cosine_with_warmup_factor(0, 0, 10) == 1.0
    assert cosine_with_warmup_factor(5, 0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_step_decay_is_gamma_to_the_number_of_boundaries():
    assert [step_decay_factor(s, 3, 0.1) for s in (0, 2, 3, 5, 6, 9)] == [
        1.0, 1.0, 0.1, 0.1, 0.1**2, 0.1**3,
    ]  # fmt: skip
    assert step_decay_factor(7, 0, 0.5) == 0.5**7  # step_size 0 is read as 1
