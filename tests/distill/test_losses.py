"""TCL hinge loss, BBE IoU loss and Eq. 1 on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from cmd_ray.distill.losses import LBHinge, bbe_loss, lb_hinge, tcl_loss, total_loss


def test_lb_hinge_hand_case():
    label = torch.tensor([[1.0, 0.0], [0.5, 0.01]])
    pred = torch.tensor([[0.5, -0.3], [0.7, 0.2]])
    # positives: (0.5-1)^2 = 0.25, (0.7-0.5)^2 = 0.04; negatives: relu(-0.3)=0 -> 0, relu(0.2)=0.2 -> 0.04
    expected = (0.25 + 0.0 + 0.04 + 0.04) / 4
    assert lb_hinge(pred, label).item() == pytest.approx(expected)
    assert LBHinge(threshold=0.05)(pred, label).item() == pytest.approx(expected)
    # threshold below every label: plain MSE, the negative prediction now costs (-0.3)^2 and 0.01 counts
    plain = (0.25 + 0.09 + 0.04 + (0.2 - 0.01) ** 2) / 4
    assert lb_hinge(pred, label, threshold=-1.0).item() == pytest.approx(plain)


def test_tcl_loss_weights_iterates():
    label = torch.zeros(1, 1, 2, 2)
    label[0, 0, 0, 0] = 1.0
    scores = [torch.full((1, 1, 2, 2), v) for v in (0.0, 0.5, 1.0, 2.0)]
    per_map = [lb_hinge(s, label).item() for s in scores]
    # 0.0: (1-0)^2/4 = 0.25; 0.5: (0.25 + 3*0.25)/4 = 0.25; 1.0: 3/4; 2.0: (1 + 3*4)/4
    assert per_map == pytest.approx([0.25, 0.25, 0.75, 3.25])
    loss = tcl_loss(scores, label, weight_init=100, weight_iter=400, weight_final=100)
    assert loss.item() == pytest.approx(100 * 0.25 + 400 / 2 * (0.25 + 0.75) + 100 * 3.25)
    assert tcl_loss(scores[:1], label, weight_init=2, weight_iter=5, weight_final=3).item() == pytest.approx(5 * 0.25)
    assert tcl_loss(scores[:2], label, weight_init=2, weight_iter=5, weight_final=3).item() == pytest.approx(
        2 * 0.25 + 3 * 0.25
    )
    with pytest.raises(ValueError):
        tcl_loss([], label)


def test_bbe_loss_against_two_iou_minus_one():
    pred = torch.tensor([[0.5, -1.0]])
    iou = torch.tensor([[0.5, 0.25]])  # targets 0.0 and -0.5
    assert bbe_loss(pred, iou).item() == pytest.approx((0.5**2 + 0.5**2) / 2)
    assert bbe_loss(torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0])).item() == 0.0


def test_total_loss_is_eq_1():
    l_tcl = torch.tensor(3.0, requires_grad=True)
    l_bbe = torch.tensor(2.0, requires_grad=True)
    total = total_loss(l_tcl, l_bbe, lam=0.25)
    assert total.item() == pytest.approx(3.5)
    total.backward()
    assert l_tcl.grad.item() == 1.0
    assert l_bbe.grad.item() == 0.25
