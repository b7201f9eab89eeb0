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

Each form is an entry of :data:`TCL_LOSS_FORMS` or :data:`BBE_LOSS_FORMS` (a function and its options
model); :func:`cmd_ray.distill.step.distill_step` dispatches through them. Their names are
:data:`cmd_ray.vocabulary.TCL_LOSS_FORMS` and :data:`cmd_ray.vocabulary.BBE_LOSS_FORMS` (a unit test checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
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


# --------------------------------------------------------------------------- the loss-form registries


class TclLossOptions(BaseModel):
    """Options of a TCL loss form: the weights of the initial, intermediate and final filter iterates."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    clf_loss_weights: tuple[float, float, float] = (100.0, 400.0, 100.0)


class LBHingeOptions(TclLossOptions):
    hinge_threshold: float = Field(HINGE_THRESHOLD, description="label value below which a cell is background")


class BbeLossOptions(BaseModel):
    """Options of a BBE loss form (the built-in forms have none)."""

    model_config = ConfigDict(frozen=True, extra="ignore")


TclLossFn = Callable[[Sequence[torch.Tensor], torch.Tensor, Any], torch.Tensor]
"""``fn(scores, label, options) -> scalar``: score maps ``[Nte, B, L, L]`` of the filter iterates vs. the label."""

BbeLossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor], Any], torch.Tensor]
"""``fn(iou_pred, batch, options) -> scalar``: IoU-Net outputs ``[1, B, P]`` vs. the batch's proposal targets."""


@dataclass(frozen=True)
class TclLossForm:
    """One entry of :data:`TCL_LOSS_FORMS`: the data term of L_TCL and its options model."""

    loss: TclLossFn
    options: type[TclLossOptions] = TclLossOptions


@dataclass(frozen=True)
class BbeLossForm:
    """One entry of :data:`BBE_LOSS_FORMS`: the data term of L_BBE and its options model.

    Attributes:
        batch_keys: what the batch must hold besides the usual keys (checked before the forward pass).
        batch_hint: how to get them (ends the error message when they are missing).
    """

    loss: BbeLossFn
    options: type[BbeLossOptions] = BbeLossOptions
    batch_keys: tuple[str, ...] = ()
    batch_hint: str = ""


def _lbhinge_form(scores: Sequence[torch.Tensor], label: torch.Tensor, options: LBHingeOptions) -> torch.Tensor:
    return tcl_loss(scores, label, options.hinge_threshold, *options.clf_loss_weights)


def _squared_form(scores: Sequence[torch.Tensor], label: torch.Tensor, options: TclLossOptions) -> torch.Tensor:
    weight_init, weight_iter, weight_final = options.clf_loss_weights
    return squared_tcl_loss(scores, label, weight_init=weight_init, weight_iter=weight_iter, weight_final=weight_final)


def _mse_form(iou_pred: torch.Tensor, batch: Mapping[str, torch.Tensor], options: BbeLossOptions) -> torch.Tensor:
    return bbe_loss(iou_pred, batch["proposal_iou"].unsqueeze(0))


def _kl_form(iou_pred: torch.Tensor, batch: Mapping[str, torch.Tensor], options: BbeLossOptions) -> torch.Tensor:
    density, gt_density = batch["proposal_density"].unsqueeze(0), batch["gt_density"].unsqueeze(0)
    return kl_regression_loss(iou_pred, density, gt_density, mc_dim=-1)


TCL_LOSS_FORMS: dict[str, TclLossForm] = {
    "lbhinge": TclLossForm(_lbhinge_form, LBHingeOptions),
    "squared": TclLossForm(_squared_form),
}
"""``distill.tcl_loss`` name -> form."""

BBE_LOSS_FORMS: dict[str, BbeLossForm] = {
    "mse": BbeLossForm(_mse_form),
    "kl": BbeLossForm(
        _kl_form,
        batch_keys=("proposal_density", "gt_density"),
        batch_hint="sample with data.sampling.proposal_method=gmm",
    ),
}
"""``distill.bbe_loss`` name -> form."""


def tcl_loss_form(name: str) -> TclLossForm:
    """The registered TCL form ``name``; ``ValueError`` names the allowed ones."""
    if name not in TCL_LOSS_FORMS:
        raise ValueError(f"unknown tcl_loss {name!r}; allowed: {', '.join(TCL_LOSS_FORMS)}")
    return TCL_LOSS_FORMS[name]


def bbe_loss_form(name: str) -> BbeLossForm:
    """The registered BBE form ``name``; ``ValueError`` names the allowed ones."""
    if name not in BBE_LOSS_FORMS:
        raise ValueError(f"unknown bbe_loss {name!r}; allowed: {', '.join(BBE_LOSS_FORMS)}")
    return BBE_LOSS_FORMS[name]
