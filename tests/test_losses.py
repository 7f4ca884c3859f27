"""Losses against hand-computed values on 2 x 3 examples."""
from __future__ import annotations

import pytest
import torch

from pretrain.losses import make_loss, sigmoid_bce_loss, single_label_loss, softmax_khot_loss

LOGITS = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]
# log(e^1 + e^2 + e^3) = 3.40760596444438; log(3) = 1.0986122886681098
ROW0_KHOT = 1.4076059644443801     # -(log p0 + log p2) / 2 for tags {0, 2}
ROW1_ONE = 1.0986122886681098      # -log(1/3) for tag {1}


def test_softmax_khot_matches_hand_computation():
    logits = torch.tensor(LOGITS)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    loss = softmax_khot_loss(logits, targets)
    assert loss.item() == pytest.approx((ROW0_KHOT + ROW1_ONE) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(1.2531091265562448, rel=1e-6)


def test_softmax_normalises_rows_of_any_scale():
    logits = torch.tensor(LOGITS)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert softmax_khot_loss(logits, 5 * targets).item() == pytest.approx(
        softmax_khot_loss(logits, targets).item(), rel=1e-6)


def test_softmax_skips_rows_without_tags():
    logits = torch.tensor(LOGITS, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    loss = softmax_khot_loss(logits, targets)
    loss.backward()
    assert loss.item() == pytest.approx(ROW0_KHOT, rel=1e-6)      # mean over the tagged row only
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[1], torch.zeros(3))
    assert logits.grad[0].abs().sum() > 0


def test_softmax_all_empty_batch_is_zero_and_differentiable():
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = softmax_khot_loss(logits, torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(2, 3))


def test_softmax_with_one_hot_targets_is_cross_entropy():
    logits = torch.randn(4, 6)
    labels = torch.tensor([5, 0, 2, 2])
    one_hot = torch.nn.functional.one_hot(labels, 6).float()
    assert softmax_khot_loss(logits, one_hot).item() == pytest.approx(
        single_label_loss(logits, labels).item(), rel=1e-6)


def test_softmax_computes_in_float32_under_bf16():
    logits = torch.tensor(LOGITS, dtype=torch.bfloat16)
    loss = softmax_khot_loss(logits, torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bfloat16))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1.2531091265562448, rel=1e-6)   # these logits are exact in bf16


def test_sigmoid_bce_matches_hand_computation():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    # softplus(x) - t * x per entry
    terms = [0.6931471805599453, 2.1269280110429727, 1.3132616875182228,
             1.3132616875182228, 0.6931471805599453, 0.6931471805599453]
    expected = sum(terms) / 2  # summed over the 3 tags, averaged over the 2 images
    assert expected == pytest.approx(3 * 1.1388154879598757)
    assert sigmoid_bce_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_single_label_matches_hand_computation():
    logits = torch.tensor(LOGITS)
    labels = torch.tensor([2, 0])
    # row 0: -log p2 = 0.40760596444438013; row 1: log 3
    assert single_label_loss(logits, labels).item() == pytest.approx(0.753109126556245, rel=1e-6)
    # smoothing 0.1: 0.9 * nll + 0.1 * mean_c(-log p_c); row 0: 0.9 * 0.40760596 + 0.1 * 1.40760596
    # = 0.50760596, row 1 stays log 3
    assert single_label_loss(logits, labels, label_smoothing=0.1).item() == pytest.approx(
        0.8031091265562449, rel=1e-6)


def test_make_loss_picks_each_kind():
    logits = torch.tensor(LOGITS)
    khot = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert make_loss("softmax")(logits, khot).item() == pytest.approx(1.2531091265562448, rel=1e-6)
    assert make_loss("sigmoid")(logits, khot).item() == pytest.approx(sigmoid_bce_loss(logits, khot).item())
    labels = torch.tensor([2, 0])
    assert make_loss("ce")(logits, labels).item() == pytest.approx(0.753109126556245, rel=1e-6)
    assert make_loss("ce", label_smoothing=0.1)(logits, labels).item() == pytest.approx(
        0.8031091265562449, rel=1e-6)


def test_make_loss_rejects_unknown_kind_and_misplaced_smoothing():
    with pytest.raises(ValueError, match="softmax"):
        make_loss("focal")
    with pytest.raises(ValueError, match="label_smoothing"):
        make_loss("sigmoid", label_smoothing=0.1)


def test_sigmoid_loss_gives_each_logit_the_usual_gradient():
    logits = torch.zeros(4, 17000, requires_grad=True)
    targets = torch.zeros(4, 17000)
    targets[:, 3] = 1
    sigmoid_bce_loss(logits, targets).backward()
    # d/dz of BCE is sigmoid(z) - y, divided by the images only (not by the 17k tags)
    assert logits.grad[0, 3].item() == pytest.approx((0.5 - 1) / 4)
    assert logits.grad[0, 0].item() == pytest.approx(0.5 / 4)
