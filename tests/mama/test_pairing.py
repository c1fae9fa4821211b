"""Multi-view pairing never leaves the exam (or breast) and follows the 0.5 sampling rule."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medlearn.errors import DataError
from medlearn.mama.data.pairing import PairingIndex


def _table(seed=0, n_patients=30):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for e in range(int(rng.integers(1, 4))):
            views = [(lat, v) for lat in "LR" for v in ("CC", "MLO")]
            keep = rng.random(4) < 0.85
            for (lat, v), k in zip(views, keep):
                if k:
                    # exam ids repeat across patients on purpose: pairing must use (patient, exam)
                    rows.append({"patient_id": f"p{p}", "exam_id": f"e{e}", "laterality": lat, "view": v})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize("same_breast", [False, True])
def test_partners_stay_in_exam(same_breast):
    t = _table()
    idx = PairingIndex(t, same_breast_only=same_breast)
    for i in range(len(t)):
        others = idx.partners(i)
        expected = t.index[(t["patient_id"] == t.at[i, "patient_id"]) & (t["exam_id"] == t.at[i, "exam_id"])]
        if same_breast:
            expected = expected[t.loc[expected, "laterality"] == t.at[i, "laterality"]]
        assert sorted(others.tolist()) == sorted(j for j in expected if j != i)


def test_sampling_rule_probability():
    t = _table(1)
    idx = PairingIndex(t)
    rng = np.random.default_rng(0)
    with_partner = [i for i in range(len(t)) if idx.partners(i).size]
    n = 4000
    draws = [idx.sample(with_partner[k % len(with_partner)], rng, 0.5) for k in range(n)]
    frac = np.mean([d is not None for d in draws])
    assert abs(frac - 0.5) < 4 * np.sqrt(0.25 / n)
    for k, d in enumerate(draws):
        i = with_partner[k % len(with_partner)]
        if d is not None:
            assert (
                d != i
                and t.at[d, "exam_id"] == t.at[i, "exam_id"]
                and t.at[d, "patient_id"] == t.at[i, "patient_id"]
            )


def test_single_image_exam_never_pairs_and_bad_table():
    t = pd.DataFrame({"patient_id": ["a", "b"], "exam_id": ["1", "1"], "laterality": ["L", "L"]})
    idx = PairingIndex(t)
    rng = np.random.default_rng(0)
    assert all(idx.sample(0, rng, 1.0) is None for _ in range(20))
    with pytest.raises(DataError, match="exam_id"):
        PairingIndex(t.drop(columns=["exam_id"]))
