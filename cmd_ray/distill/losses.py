"""The distillation losses: ``L = L_TCL + λ·L_BBE`` (Eq. 1).

- ``L_TCL`` (Eq. 2, as DiMP trains it): the classifier's test-frame score maps against the Gaussian
  pseudo label, with a hinge on the background (:func:`lb_hinge`), summed over the filter iterates
  with weights for the initial, intermediate and final iterate (DiMP-50 / SuperDiMP: 100, 400, 100;
  the intermediate weight is shared equally by the intermediate iterates).
- ``L_BBE`` (Eq. 3, as ATOM/DiMP trains it): mean squared error between the IoU-Net's prediction and
  ``2·IoU − 1`` of each proposal with the pseudo box.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

HINGE_THRESHOLD = 0.05


def lb_hinge(prediction: torch.Tensor, label: torch.Tensor, threshold: float = HINGE_THRESHOLD) -> torch.Tensor:
    """Lower-bound hinge squared error (mean over all elements).

    Where ``label < threshold`` (background) the target is 0 and the prediction is clamped with
    ReLU, so negative scores cost nothing; elsewhere it is plain squared error against the label.

    Args:
        prediction: scores, e.g. ``[Nte, B, L, L]``.
        label: same shape.

    Returns:
        scalar loss.
    """
    negative = label < threshold
    prediction = torch.where(negative, F.relu(prediction), prediction)
    target = torch.where(negative, torch.zeros_like(label), label)
    return F.mse_loss(prediction, target)


class LBHinge(nn.Module):
    """Module form of :func:`lb_hinge`."""

    def __init__(self, threshold: float = HINGE_THRESHOLD) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return lb_hinge(prediction, label, self.threshold)


def tcl_loss(
    scores: Sequence[torch.Tensor],
    label: torch.Tensor,
    threshold: float = HINGE_THRESHOLD,
    weight_init: float = 100.0,
    weight_iter: float = 400.0,
    weight_final: float = 100.0,
) -> torch.Tensor:
    """Weighted :func:`lb_hinge` over the filter iterates' score maps.

    ``weight_init * l[0] + weight_iter / (n - 2) * sum(l[1:-1]) + weight_final * l[-1]`` for
    ``n`` score maps (with one map, both the initial and the final weight apply to it).

    Args:
        scores: ``n`` score maps ``[Nte, B, L, L]``, initial filter first.
        label: Gaussian pseudo label ``[Nte, B, L, L]``.

    Returns:
        scalar loss.
    """
    if not scores:
        raise ValueError("tcl_loss needs at least one score map")
    losses = [lb_hinge(s.float(), label.float(), threshold) for s in scores]
    total = weight_init * losses[0] + weight_final * losses[-1]
    if len(losses) > 2:
        total = total + weight_iter / (len(losses) - 2) * sum(losses[1:-1])
    return total


def bbe_loss(iou_pred: torch.Tensor, iou_target: torch.Tensor) -> torch.Tensor:
    """MSE between predicted IoUs and ``2·iou_target − 1``.

    Args:
        iou_pred: IoU-Net outputs, e.g. ``[Nte, B, P]``.
        iou_target: IoU of each proposal with the pseudo box, in ``[0, 1]``, same shape.

    Returns:
        scalar loss.
    """
    return F.mse_loss(iou_pred.float(), 2.0 * iou_target.float() - 1.0)


def total_loss(l_tcl: torch.Tensor, l_bbe: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 1: ``l_tcl + lam * l_bbe``."""
    return l_tcl + lam * l_bbe
