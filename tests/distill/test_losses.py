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


# Four constant score maps against a 2x2 label with one target cell (1.0) and three background cells (0.0):
# lb_hinge = ((v - 1)^2 + 3 * relu(v)^2) / 4 and the plain squared error ((v - 1)^2 + 3 * v^2) / 4.
ASYMMETRIC_VALUES = (-1.0, 0.0, 1.0, 2.0)
HINGE_PER_MAP = (4 / 4, 1 / 4, 3 / 4, (1 + 12) / 4)  # 1.0, 0.25, 0.75, 3.25
SQUARED_PER_MAP = ((4 + 3) / 4, 1 / 4, 3 / 4, (1 + 12) / 4)  # 1.75, 0.25, 0.75, 3.25


def _asymmetric_case():
    label = torch.zeros(1, 1, 2, 2)
    label[0, 0, 0, 0] = 1.0
    return [torch.full((1, 1, 2, 2), v) for v in ASYMMETRIC_VALUES], label


def test_tcl_loss_gives_the_initial_and_final_weights_to_their_own_iterates():
    """Distinct weights and distinct per-map losses: a swap of the first and last weight changes the sum."""
    scores, label = _asymmetric_case()
    assert [lb_hinge(s, label).item() for s in scores] == pytest.approx(HINGE_PER_MAP)
    # 1 * 1.0 + 10 / 2 * (0.25 + 0.75) + 100 * 3.25
    loss = tcl_loss(scores, label, weight_init=1, weight_iter=10, weight_final=100)
    assert loss.item() == pytest.approx(331.0)
    # the same maps in reverse order: 1 * 3.25 + 5 * 1.0 + 100 * 1.0
    assert tcl_loss(scores[::-1], label, weight_init=1, weight_iter=10, weight_final=100).item() == pytest.approx(
        108.25
    )
    # two maps: no intermediate term, 1 * 1.0 + 100 * 3.25
    two = tcl_loss([scores[0], scores[3]], label, weight_init=1, weight_iter=10, weight_final=100)
    assert two.item() == pytest.approx(326.0)
    # three maps: the single intermediate map takes the whole intermediate weight, 2 * 1.0 + 7 * 0.25 + 3 * 0.75
    three = tcl_loss(scores[:3], label, weight_init=2, weight_iter=7, weight_final=3)
    assert three.item() == pytest.approx(2.0 + 1.75 + 2.25)


def test_tcl_loss_defaults_are_dimps_100_400_100():
    scores, label = _asymmetric_case()
    assert tcl_loss(scores, label).item() == pytest.approx(100 * 1.0 + 400 / 2 * (0.25 + 0.75) + 100 * 3.25)
    # default weights on an asymmetric pair: initial 100 x 1.0, final 100 x 0.25
    assert tcl_loss(scores[:2], label).item() == pytest.approx(125.0)


def test_squared_tcl_loss_gives_the_initial_and_final_weights_to_their_own_iterates():
    from cmd_ray.distill.losses import squared_tcl_loss

    scores, label = _asymmetric_case()
    # 1 * 1.75 + 10 / 2 * (0.25 + 0.75) + 100 * 3.25
    loss = squared_tcl_loss(scores, label, weight_init=1, weight_iter=10, weight_final=100)
    assert loss.item() == pytest.approx(331.75)
    reverse = squared_tcl_loss(scores[::-1], label, weight_init=1, weight_iter=10, weight_final=100)
    assert reverse.item() == pytest.approx(3.25 + 5.0 + 175.0)
    assert squared_tcl_loss(scores, label).item() == pytest.approx(175.0 + 200.0 + 325.0)


def test_lb_hinge_threshold_is_strict_and_positive_labels_keep_negative_scores():
    # a label exactly at the threshold is not background; a negative score on a target cell costs its square
    label = torch.tensor([0.05, 0.049, 0.5])
    pred = torch.tensor([-0.2, -0.2, -0.5])
    expected = ((-0.2 - 0.05) ** 2 + 0.0 + (-0.5 - 0.5) ** 2) / 3
    assert lb_hinge(pred, label).item() == pytest.approx(expected)
    assert lb_hinge(pred, label, threshold=0.6).item() == pytest.approx(0.0)


def test_the_hinge_threshold_reaches_every_form():
    """A threshold above 0.5 makes the 0.5 label background: its score 0.7 is then hinged to a target of 0."""
    label = torch.tensor([[1.0, 0.0], [0.5, 0.01]])
    pred = torch.tensor([[0.5, -0.3], [0.7, 0.2]])
    high = (0.25 + 0.0 + 0.49 + 0.04) / 4
    assert LBHinge(threshold=0.6)(pred, label).item() == pytest.approx(high)
    assert LBHinge()(pred, label).item() == pytest.approx((0.25 + 0.0 + 0.04 + 0.04) / 4)
    scores = [pred[None, None], pred[None, None]]
    assert tcl_loss(scores, label[None, None], threshold=0.6, weight_init=1, weight_final=2).item() == pytest.approx(
        3 * high
    )


def test_empty_score_lists_are_refused_with_their_own_message():
    from cmd_ray.distill.losses import squared_tcl_loss, weight_iterates

    with pytest.raises(ValueError, match=r"^need at least one score map$"):
        weight_iterates([], 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^tcl_loss needs at least one score map$"):
        tcl_loss([], torch.zeros(1))
    with pytest.raises(ValueError, match=r"^squared_tcl_loss needs at least one score map$"):
        squared_tcl_loss([], torch.zeros(1))
    with pytest.raises(ValueError, match=r"^mu > 0 needs the final filter$"):
        squared_tcl_loss([torch.zeros(1)], torch.zeros(1), None, mu=0.1)
