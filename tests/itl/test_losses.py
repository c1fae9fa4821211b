import math

import pytest
import torch

from medlearn.itl.losses import dice_ce, ewc_penalty, kl_distill, one_hot


def _formula_dice_ce(logits, target, smooth=1e-5):
    """The hand-written Dice + CE that MONAI replaced: per (sample, class) soft Dice, pixel-mean CE."""
    prob = logits.softmax(1)
    inter = (prob * target).sum((2, 3))
    denom = prob.sum((2, 3)) + target.sum((2, 3))
    dice = 1.0 - (2 * inter + smooth) / (denom + smooth)
    return dice.mean() - (target * logits.log_softmax(1)).sum(1).mean()


def test_dice_ce_hand_case():
    # logits 0: p = 1/2 everywhere; labels [0, 1]: per class sum(p*t) = 1/2, sum p = 1, sum t = 1
    s = 1e-5
    expect = 1 - (2 * 0.5 + s) / (1 + 1 + s) + math.log(2)
    got = dice_ce(torch.zeros(1, 2, 1, 2), torch.tensor([[[0, 1]]]))
    assert float(got) == pytest.approx(expect, abs=1e-7)


@pytest.mark.parametrize("k", [2, 3])
def test_dice_ce_equals_former_formula_for_labels_and_probabilities(k):
    torch.manual_seed(k)
    logits = torch.randn(3, k, 9, 7, requires_grad=True)
    y = torch.randint(0, k, (3, 9, 7))
    y[0] = 0  # a sample without foreground
    soft = torch.rand(3, k, 9, 7).softmax(1)  # mixed targets, as ITL's feature mixing makes
    for target, as_probs in ((y, one_hot(y, k)), (soft, soft)):
        got, ref = dice_ce(logits, target), _formula_dice_ce(logits, as_probs)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
        g_got, g_ref = (torch.autograd.grad(v, logits)[0] for v in (got, ref))
        torch.testing.assert_close(g_got, g_ref, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(dice_ce(logits, y, smooth=1.0), _formula_dice_ce(logits, one_hot(y, k), 1.0))


def test_dice_ce_bad_shapes():
    with pytest.raises(ValueError, match="differ"):
        dice_ce(torch.zeros(2, 2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="differ"):
        dice_ce(torch.zeros(2, 2, 4, 4), torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dice_ce(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))


def test_kl_distill_against_torch_kl_div():
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    T = 2.0
    ref = torch.nn.functional.kl_div(
        (s / T).log_softmax(1), (t / T).log_softmax(1), log_target=True, reduction="none"
    )
    ref = ref.sum(1).mean() * T * T
    torch.testing.assert_close(kl_distill(s, t, T), ref)
    assert float(kl_distill(s, s, T)) == 0.0


def test_ewc_penalty_hand_case():
    p = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    a = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([0.0])}
    f = {"w": torch.tensor([2.0, 0.5])}
    assert float(ewc_penalty(p, a, f)) == 2.0 * 1 + 0.5 * 4
