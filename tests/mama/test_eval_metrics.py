"""MaMA evaluation metrics against scikit-learn and hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from medlearn.mama.eval import metrics as M


def test_balanced_accuracy_confusion_per_class_hand_case():
    y = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    # recalls: class0 2/3, class1 1/2, class2 1/1
    assert M.balanced_accuracy(y, pred) == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert M.per_class_accuracy(y, pred, 4)[:3] == pytest.approx([2 / 3, 0.5, 1.0])
    assert math.isnan(M.per_class_accuracy(y, pred, 4)[3])
    cm = M.confusion(y, pred, 3)
    np.testing.assert_array_equal(cm, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])


def test_auc_matches_sklearn_binary_and_ovr_macro():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert M.auc(y, p) == pytest.approx(ref)
    yb = (y > 1).astype(int)
    s = p[:, 2] + p[:, 3]
    assert M.auc(yb, s) == pytest.approx(roc_auc_score(yb, s))
    assert M.auc(yb, np.stack([1 - s, s], 1)) == pytest.approx(roc_auc_score(yb, s))
    assert math.isnan(M.auc(np.zeros(5, int), np.linspace(0, 1, 5)))


def test_auc_skips_absent_class():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1], [0.1, 0.7, 0.2]])
    # class 2 absent -> mean of class 0 and class 1 one-vs-rest AUCs
    ref = (roc_auc_score(y == 0, p[:, 0]) + roc_auc_score(y == 1, p[:, 1])) / 2
    assert M.auc(y, p) == pytest.approx(ref)


def test_sensitivity_specificity_hand_case():
    y = [1, 1, 1, 0, 0]
    s = [0.9, 0.4, 0.6, 0.7, 0.1]
    sens, spec = M.sensitivity_specificity(y, s)
    assert sens == pytest.approx(2 / 3) and spec == pytest.approx(0.5)


def test_specificity_at_sensitivity_hand_case():
    pos = [0.9, 0.8, 0.7, 0.6, 0.3]
    neg = [0.75, 0.5, 0.4, 0.2, 0.1]
    y = [1] * 5 + [0] * 5
    s = pos + neg
    # sens 0.8 reached at threshold 0.6 where only 0.75 of the negatives is above -> spec 0.8
    assert M.specificity_at_sensitivity(y, s, 0.8) == pytest.approx(0.8)
    # sens 0.9 needs all positives (threshold 0.3): negatives 0.75, 0.5, 0.4 above -> spec 0.4
    assert M.specificity_at_sensitivity(y, s, 0.9) == pytest.approx(0.4)
    # no tied scores: the ROC steps vertically at fpr 0.6 from sens 0.8 to 1.0 -> both readings 0.4
    assert M.specificity_at_sensitivity(y, s, 0.9, interpolation="linear") == pytest.approx(0.4)
    assert M.specificity_at_sensitivity(y, s, 0.8, interpolation="linear") == pytest.approx(0.8)
    # a tie (0.5 is both a positive and a negative score) makes a diagonal ROC segment
    # (fpr 0, sens 0.5) -> (fpr 0.5, sens 1): sens 0.75 is read at fpr 0.25 (linear), step needs sens 1
    yt, st = [1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]
    assert M.specificity_at_sensitivity(yt, st, 0.75, interpolation="linear") == pytest.approx(0.75)
    assert M.specificity_at_sensitivity(yt, st, 0.75) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="interpolation"):
        M.specificity_at_sensitivity(y, s, 0.9, interpolation="cubic")


def test_probabilistic_f1_by_hand():
    y = [1, 0, 1, 0]
    s = [0.8, 0.4, 0.6, 0.2]
    # soft TP 1.4, soft FP 0.6 -> precision 0.7, recall 1.4/2 = 0.7 -> pF1 0.7
    assert M.probabilistic_f1(y, s) == pytest.approx(0.7)
    y2 = [1, 1, 0]
    s2 = [1.0, 0.0, 0.5]
    # TP 1, FP 0.5 -> P 2/3, R 1/2 -> 2PR/(P+R) = 4/7
    assert M.probabilistic_f1(y2, s2) == pytest.approx(4 / 7)
    assert M.probabilistic_f1([0, 0], [0.3, 0.2]) == 0.0
    # hard 0/1 predictions reduce to the ordinary F1
    assert M.probabilistic_f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)


def test_bootstrap_ci_width_and_seed():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    correct = (rng.random(400) < 0.7).astype(int)
    pred = np.where(correct == 1, y, 1 - y)

    def acc(a, b):
        return float((a == b).mean())

    lo, hi = M.bootstrap_ci(acc, y, pred, n_boot=500, seed=3)
    p = acc(y, pred)
    assert lo < p < hi
    normal_width = 2 * 1.96 * math.sqrt(p * (1 - p) / 400)
    assert (hi - lo) == pytest.approx(normal_width, rel=0.2)
    assert M.bootstrap_ci(acc, y, pred, n_boot=500, seed=3) == (lo, hi)


def test_aggregate_by_breast_max_over_views():
    f = pd.DataFrame(
        {
            "patient_id": ["a", "a", "a", "b"],
            "laterality": ["L", "L", "R", "L"],
            "p1": [0.2, 0.9, 0.1, 0.4],
            "label": [1, 1, 0, 0],
        }
    )
    out = M.aggregate_by_breast(f, ["p1"])
    assert list(out["p1"]) == [0.9, 0.1, 0.4]
    assert list(out["label"]) == [1, 0, 0]
    assert list(out["n_views"]) == [2, 1, 1]
    with pytest.raises(ValueError, match="missing column"):
        M.aggregate_by_breast(f.drop(columns="laterality"), ["p1"])
    # (negative, positive) pairs: positive = max over views, negative = its complement
    f["p0"] = 1 - f["p1"]
    two = M.aggregate_by_breast(f, ["p0", "p1"])
    np.testing.assert_allclose(two["p1"], [0.9, 0.1, 0.4])
    np.testing.assert_allclose(two["p0"], [0.1, 0.9, 0.6])
    # multi-class: per-class max, renormalised
    f3 = pd.DataFrame({"patient_id": ["a", "a"], "laterality": ["L", "L"], "label": [0, 2],
                       "q0": [0.6, 0.2], "q1": [0.3, 0.2], "q2": [0.1, 0.6]})  # fmt: skip
    three = M.aggregate_by_breast(f3, ["q0", "q1", "q2"])
    np.testing.assert_allclose(three[["q0", "q1", "q2"]].to_numpy()[0], np.array([0.6, 0.3, 0.6]) / 1.5)
    assert three["label"].iloc[0] == 2


def test_classification_report_binary_extras_against_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 100)
    s = np.clip(0.3 * y + rng.random(100) * 0.7, 0, 1)
    p = np.stack([1 - s, s], 1)
    r = M.classification_report(y, p, 2, binary_extras=True, n_boot=50)
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, (s > 0.5).astype(int)))
    assert r["auc"] == pytest.approx(roc_auc_score(y, s))
    assert set(r) >= {"sensitivity", "specificity", "specificity_at_80_sensitivity", "pf1", "auc_ci95"}
    assert r["auc_ci95"][0] < r["auc"] < r["auc_ci95"][1]
    with pytest.raises(ValueError, match="probs must be"):
        M.classification_report(y, p, 3)
