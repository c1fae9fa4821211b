import torch
from monai.losses import DiceCELoss

from medlearn.itl.losses import dice_ce, ewc_penalty, kl_distill, one_hot


def test_dice_ce_equals_monai_on_hard_labels():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 9, 7)
    y = torch.randint(0, 2, (3, 9, 7))
    ref = DiceCELoss(to_onehot_y=True, softmax=True)(logits, y[:, None])
    torch.testing.assert_close(dice_ce(logits, y), ref, atol=1e-5, rtol=1e-5)
    # soft targets equal to the one-hot labels give the same value
    torch.testing.assert_close(dice_ce(logits, one_hot(y, 2)), ref, atol=1e-5, rtol=1e-5)


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
