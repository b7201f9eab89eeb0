"""The distillation losses: ``L = L_TCL + λ·L_BBE`` (Eq. 1).

``L_TCL`` (Eq. 2) compares the classifier's test-frame score maps with the Gaussian pseudo label; the
data term is summed over the filter iterates with weights for the initial, intermediate and final
iterate (DiMP-50 / SuperDiMP: 100, 400, 100; the intermediate weight is shared equally by the
intermediate iterates). Two forms of the data term:

- ``"lbhinge"`` (:func:`tcl_loss`, as DiMP trains it): squared error with a hinge on the background
  (:func:`lb_hinge`, threshold 0.05) — negative scores where the label is background cost nothing;
- ``"squared"`` (:func:`squared_tcl_loss`, Eq. 2 as written): plain squared error against the label.

Either form adds Eq. 2's ``μ‖φ‖²`` on the final filter ``φ`` when ``μ > 0`` (:func:`filter_l2`).

``L_BBE`` (Eq. 3) is one of

- ``"mse"`` (:func:`bbe_loss`, as ATOM/DiMP train it): mean squared error between the IoU-Net's
  prediction and ``2·IoU − 1`` of each proposal with the pseudo box;
- ``"kl"`` (:func:`kl_regression_loss`, SuperDiMP / PrDiMP): the KL divergence between the
  ground-truth box density and the IoU-Net's scores read as an unnormalised log density, estimated by
  Monte Carlo over proposals drawn from a known proposal density;

plus ``ν‖θ‖²`` over the trained BBE parameters ``θ`` when ``ν > 0`` (:func:`parameters_l2`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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


def weight_iterates(
    losses: Sequence[torch.Tensor], weight_init: float, weight_iter: float, weight_final: float
) -> torch.Tensor:
    """``weight_init * l[0] + weight_iter / (n - 2) * sum(l[1:-1]) + weight_final * l[-1]`` over ``n`` losses.

    With one loss, both the initial and the final weight apply to it; with two, there is no
    intermediate term.
    """
    if not losses:
        raise ValueError("need at least one score map")
    total = weight_init * losses[0] + weight_final * losses[-1]
    if len(losses) > 2:
        total = total + weight_iter / (len(losses) - 2) * sum(losses[1:-1])
    return total


def tcl_loss(
    scores: Sequence[torch.Tensor],
    label: torch.Tensor,
    threshold: float = HINGE_THRESHOLD,
    weight_init: float = 100.0,
    weight_iter: float = 400.0,
    weight_final: float = 100.0,
) -> torch.Tensor:
    """Weighted :func:`lb_hinge` over the filter iterates' score maps (see :func:`weight_iterates`).

    Args:
        scores: ``n`` score maps ``[Nte, B, L, L]``, initial filter first.
        label: Gaussian pseudo label ``[Nte, B, L, L]``.

    Returns:
        scalar loss.
    """
    if not scores:
        raise ValueError("tcl_loss needs at least one score map")
    losses = [lb_hinge(s.float(), label.float(), threshold) for s in scores]
    return weight_iterates(losses, weight_init, weight_iter, weight_final)


def filter_l2(filt: torch.Tensor) -> torch.Tensor:
    """``‖φ‖²`` of a batch of filters ``[B, C, f, f]``: squared norm of each sequence's filter, mean over ``B``."""
    return (filt.float() ** 2).sum() / filt.shape[0]


def squared_tcl_loss(
    scores: Sequence[torch.Tensor],
    label: torch.Tensor,
    final_filter: torch.Tensor | None = None,
    mu: float = 0.0,
    weight_init: float = 100.0,
    weight_iter: float = 400.0,
    weight_final: float = 100.0,
) -> torch.Tensor:
    """Eq. 2 as written: squared error of the score maps against the label, plus ``μ‖φ‖²``.

    ``weight_iterates([mse(s, label) for s in scores]) + mu * filter_l2(final_filter)``: the data
    term is the mean squared error over all cells (no hinge), weighted over the iterates as
    :func:`tcl_loss`; the regulariser is not weighted by the iterate weights.

    Args:
        scores: ``n`` score maps ``[Nte, B, L, L]``, initial filter first.
        label: Gaussian pseudo label ``[Nte, B, L, L]``.
        final_filter: the final filter ``φ`` ``[B, C, f, f]`` (needed when ``mu > 0``).
        mu: ``μ`` of Eq. 2.

    Returns:
        scalar loss.
    """
    if not scores:
        raise ValueError("squared_tcl_loss needs at least one score map")
    losses = [F.mse_loss(s.float(), label.float()) for s in scores]
    total = weight_iterates(losses, weight_init, weight_iter, weight_final)
    if mu > 0:
        if final_filter is None:
            raise ValueError("mu > 0 needs the final filter")
        total = total + mu * filter_l2(final_filter)
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


def parameters_l2(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """``‖θ‖²``: the sum of squares of all entries of ``params`` (0 for none)."""
    total: torch.Tensor | None = None
    for p in params:
        term = (p.float() ** 2).sum()
        total = term if total is None else total + term
    return torch.zeros(()) if total is None else total


def kl_regression_loss(
    scores: torch.Tensor,
    sample_density: torch.Tensor,
    gt_density: torch.Tensor,
    eps: float = 0.0,
    mc_dim: int = -1,
) -> torch.Tensor:
    """KL divergence for probabilistic box regression by Monte Carlo (pytracking's ``KLRegression``).

    The network's scores ``s(y)`` define ``p(y) = exp(s(y)) / Z``; with ``N`` samples ``y_k`` drawn from
    the proposal density ``q`` and ``p_gt`` the ground-truth density, up to a constant
    ``KL(p_gt ‖ p) ≈ log(1/N Σ_k exp(s_k) / q_k) − 1/N Σ_k s_k p_gt,k / q_k``, i.e.

    ``logsumexp(s − log(q + eps)) − log N − mean(s · p_gt / (q + eps))`` over ``mc_dim``,
    averaged over the remaining dimensions.

    Args:
        scores: IoU-Net outputs ``[..., N]`` for the sampled proposals.
        sample_density: ``q`` of each proposal, same shape, > 0.
        gt_density: ``p_gt`` of each proposal, same shape.
        eps: added to ``q`` (pytracking's default 0).
        mc_dim: the sample dimension.

    Returns:
        scalar loss.
    """
    scores = scores.float()
    sample_density = sample_density.float() + eps
    gt_density = gt_density.float()
    log_partition = torch.logsumexp(scores - torch.log(sample_density), dim=mc_dim) - math.log(scores.shape[mc_dim])
    cross = torch.mean(scores * (gt_density / sample_density), dim=mc_dim)
    return (log_partition - cross).mean()


def total_loss(l_tcl: torch.Tensor, l_bbe: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 1: ``l_tcl + lam * l_bbe``."""
    return l_tcl + lam * l_bbe
