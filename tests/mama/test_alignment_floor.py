"""The contrastive-loss floor against hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from medlearn.errors import DataError
from medlearn.mama.eval.alignment_floor import contrastive_floor


def _table(density, side=None):
    t = pd.DataFrame({"tissueden": density})
    t["laterality"] = side if side is not None else "L"
    return t


def test_a_model_that_reads_nothing_is_at_chance():
    t = _table([2] * 40)
    assert contrastive_floor(t, fields=["tissueden"], masked_fields=[], n_batches=20) == pytest.approx(
        2 * math.log(16)
    )


def test_unique_pairs_have_a_zero_floor():
    t = _table(list(range(40)))
    assert contrastive_floor(t, fields=["tissueden"], masked_fields=[], n_batches=20) == pytest.approx(0.0)


def test_two_classes_of_eight_in_one_batch():
    # the batch is the whole table: every image agrees with the 8 reports of its class, both ways
    t = _table([1] * 8 + [2] * 8)
    assert contrastive_floor(t, fields=["tissueden"], masked_fields=[], n_batches=5) == pytest.approx(
        2 * math.log(8)
    )


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_masked_side_counts_as_agreeing(p):
    # 8 left and 8 right images, same density.  Image -> reports: its own 8 side-mates always
    # agree, each of the 8 others when its report masks the side (X ~ Binomial(8, p)).
    # Report -> images: 8 images when the report shows its side, all 16 when it masks it.
    t = _table([2] * 16, ["L"] * 8 + ["R"] * 8)
    x = np.arange(9)
    i2t = float((binom.pmf(x, 8, p) * np.log(8 + x)).sum())
    t2i = (1 - p) * math.log(8) + p * math.log(16)
    got = contrastive_floor(
        t, fields=["tissueden"], masked_fields=["laterality"], mask_prob=p, n_batches=4000
    )
    assert got == pytest.approx(i2t + t2i, abs=0.01)


def test_missing_fields_and_small_tables_are_named():
    with pytest.raises(DataError, match="view"):
        contrastive_floor(_table([1] * 20), fields=["tissueden"], masked_fields=["view"])
    with pytest.raises(DataError, match="fewer than one batch of 16"):
        contrastive_floor(_table([1] * 10))
