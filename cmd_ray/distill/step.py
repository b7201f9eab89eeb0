"""One distillation forward pass and loss on a mini-batch (the "actor" of pytracking).

Used by training, validation and tests. A batch is a dict of tensors with the batch dim first:

=================  ==================  ==========================================================
key                dtype / shape       meaning
=================  ==================  ==========================================================
``rgb_ref``        uint8 [B, S, S, 3]  RGB reference crop
``tir_ref``        uint8 [B, S, S]     TIR reference crop (pixel-aligned with ``rgb_ref``)
``rgb_test``       uint8 [B, S, S, 3]  RGB test crop
``tir_test``       uint8 [B, S, S]     TIR test crop (the TIR keys may be absent when no branch sees TIR)
``ref_box``        float32 [B, 4]      pseudo box in the reference crop, x, y, w, h px
``test_box``       float32 [B, 4]      pseudo box in the test crop (not used by the loss)
``test_label``     float32 [B, L, L]   Gaussian label at the pseudo centre of the test crop
``test_proposals`` float32 [B, P, 4]   jittered boxes in the test crop, x, y, w, h px
``proposal_iou``   float32 [B, P]      IoU of each proposal with ``test_box``, in [0, 1]
=================  ==================  ==========================================================

With ``data.sampling.proposal_method=gmm`` the batch also holds ``proposal_density`` and
``gt_density`` (float32 [B, P]), which the KL box loss (``bbe_loss="kl"``) needs.

With ``distill.mixing=side_by_side`` (mix rows only) the four crops are replaced by two:

=================  ==================  ==========================================================
``rgb_tir_ref``    uint8 [B, S, S, 3]  reference crop of the ``[RGB | TIR]`` image (TIR half grey in 3 channels)
``tir_rgb_test``   uint8 [B, S, S, 3]  test crop of the ``[TIR | RGB]`` image
=================  ==================  ==========================================================

The model is a DiMPNet (score maps + IoUs) or an ATOMNet (IoUs only: ``loss_tcl`` is 0).

The variant decides, per sample, which crop feeds each branch (see
:meth:`cmd_ray.vocabulary.Variant.sample_modalities`): modality ``m`` on the reference branch is the batch key
``{m}_ref``, on the test branch ``{m}_test``. One reference and one test crop per sample: ``Ntr = Nte = 1``.

Shared module. ``classifier.feature_extractor`` runs on both frames; the step passes the row's
``trained_modules["classifier.feature_extractor"]`` to the DiMPNet (``clf_feature_grad``), so a row that trains
TCL on one branch (C1, D2: reference; D1: test) gives it no gradient through the other frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cmd_ray.distill import losses
from cmd_ray.distill.losses import HINGE_THRESHOLD
from cmd_ray.models.dimpnet import ATOMNet, parameter_groups
from cmd_ray.models.network_input import IMAGENET_MEAN as IMAGENET_MEAN
from cmd_ray.models.network_input import IMAGENET_STD as IMAGENET_STD
from cmd_ray.models.network_input import to_network_input
from cmd_ray.vocabulary import SHARED_MODULES, Variant, get_variant

if TYPE_CHECKING:
    from cmd_ray.config import DistillConfig

(SHARED_CLASSIFIER_FEATURES,) = SHARED_MODULES  # "classifier.feature_extractor": DiMPNet's clf_feature_grad

TCL_LOSSES = tuple(losses.TCL_LOSS_FORMS)
BBE_LOSSES = tuple(losses.BBE_LOSS_FORMS)


def branch_input(batch: dict[str, torch.Tensor], frame: str, modalities: Sequence[str]) -> torch.Tensor:
    """Each sample's crop of ``frame`` (``"ref"`` or ``"test"``) in its modality -> network input ``[B, 3, S, S]``.

    The crop of modality ``m`` is ``batch[f"{m}_{frame}"]`` (``rgb_ref``, ``tir_test``, ``rgb_tir_ref``, …); a key
    no sample uses may be absent (e.g. the TIR crops when no branch sees TIR).
    """
    names = list(dict.fromkeys(modalities))
    missing = [m for m in names if f"{m}_{frame}" not in batch]
    if missing:
        keys = " or ".join(repr(f"{m}_{frame}") for m in missing)
        raise ValueError(
            f"the batch has no {keys} crops, but the variant feeds {' and '.join(missing)} to the {frame} branch "
            "(batch_split and single-modality rows read rgb_/tir_ crops, distill.mixing=side_by_side reads "
            "rgb_tir_ref and tir_rgb_test: the samples must be made with the same distill.mixing)"
        )
    out = to_network_input(batch[f"{names[0]}_{frame}"])
    for name in names[1:]:
        use = torch.tensor([m == name for m in modalities], device=out.device).reshape(-1, 1, 1, 1)
        out = torch.where(use, to_network_input(batch[f"{name}_{frame}"]), out)
    return out


def loss_options(distill: DistillConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`distill_step` that ``cfg.distill`` sets (everything but λ)."""
    weights = distill.tcl_weights
    return {
        "hinge_threshold": distill.hinge_threshold,
        "clf_loss_weights": (weights.init, weights.iter, weights.final),
        "tcl_loss": distill.tcl_loss,
        "filter_reg_mu": distill.filter_reg_mu,
        "bbe_loss": distill.bbe_loss,
        "bbe_reg_nu": distill.bbe_reg_nu,
        "mixing": distill.mixing,
    }


def distill_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    variant: Variant | str,
    loss_weight_bbe: float,
    *,
    hinge_threshold: float = HINGE_THRESHOLD,
    clf_loss_weights: tuple[float, float, float] = (100.0, 400.0, 100.0),
    tcl_loss: str = "lbhinge",
    filter_reg_mu: float = 0.0,
    bbe_loss: str = "mse",
    bbe_reg_nu: float = 0.0,
    mixing: str = "batch_split",
    **form_options: Any,
) -> dict[str, torch.Tensor]:
    """Forward one mini-batch through ``model`` (a DiMPNet or ATOMNet, possibly DDP-wrapped) and compute Eq. 1.

    Args:
        model: the network; its ``requires_grad`` flags decide what receives gradients.
        batch: see the module docstring.
        variant: a :class:`Variant` or its name; picks the modality of each branch per sample.
        loss_weight_bbe: λ of Eq. 1.
        hinge_threshold: label value below which a cell is background in the TCL hinge.
        clf_loss_weights: weights of the initial, intermediate and final filter iterates.
        tcl_loss: a name of :data:`~cmd_ray.distill.losses.TCL_LOSS_FORMS`: ``"lbhinge"`` (DiMP's hinge) or
            ``"squared"`` (plain squared error, Eq. 2).
        filter_reg_mu: μ of Eq. 2, times ``‖φ‖²`` of the final filter (0: no term, no filter requested).
        bbe_loss: a name of :data:`~cmd_ray.distill.losses.BBE_LOSS_FORMS`: ``"mse"`` (against ``2·IoU − 1``)
            or ``"kl"`` (KL regression; needs the batch's ``proposal_density`` and ``gt_density``).
        bbe_reg_nu: ν of Eq. 3, times ``‖θ‖²`` of the variant's BBE parameters (its ``bbe`` group).
        mixing: ``distill.mixing`` of a mix row: ``"batch_split"`` (half of the batch each way) or
            ``"side_by_side"`` (the batch's ``rgb_tir_ref`` / ``tir_rgb_test`` crops); other rows ignore it.
        form_options: options of a registered loss form beyond the ones above (each form's options model
            takes the fields it names; see :data:`cmd_ray.distill.losses.TCL_LOSS_FORMS`).

    Returns:
        ``{"loss", "loss_tcl", "loss_bbe"}`` scalars (the regularisers are inside ``loss_tcl`` and
        ``loss_bbe``); ``loss`` carries the graph whenever some parameter requires grad.
    """
    tcl_form = losses.tcl_loss_form(tcl_loss)
    bbe_form = losses.bbe_loss_form(bbe_loss)
    missing = [key for key in bbe_form.batch_keys if key not in batch]
    if missing:
        raise ValueError(
            f"bbe_loss={bbe_loss!r} needs {' and '.join(repr(k) for k in bbe_form.batch_keys)} in the batch: "
            f"{bbe_form.batch_hint}"
        )
    form_options = {**form_options, "hinge_threshold": hinge_threshold, "clf_loss_weights": clf_loss_weights}
    variant = get_variant(variant)
    batch_size = batch["ref_box"].shape[0]
    ref_modalities, test_modalities = variant.sample_modalities(batch_size, mixing)
    train_imgs = branch_input(batch, "ref", ref_modalities).unsqueeze(0)
    test_imgs = branch_input(batch, "test", test_modalities).unsqueeze(0)
    train_bb = batch["ref_box"].float().unsqueeze(0)
    proposals = batch["test_proposals"].float().unsqueeze(0)

    has_classifier = not isinstance(getattr(model, "module", model), ATOMNet)
    final_filter = None
    if not has_classifier:
        iou_pred = model(train_imgs, test_imgs, train_bb, proposals)
        l_tcl = iou_pred.new_zeros((), dtype=torch.float32)
    else:
        # the shared classifier features learn only through the branch(es) the row trains TCL on
        feature_grad = variant.trained_modules.get(SHARED_CLASSIFIER_FEATURES, "both")
        if filter_reg_mu > 0:
            scores, iou_pred, final_filter = model(
                train_imgs, test_imgs, train_bb, proposals, return_filter=True, clf_feature_grad=feature_grad
            )
        else:
            scores, iou_pred = model(train_imgs, test_imgs, train_bb, proposals, clf_feature_grad=feature_grad)
        label = batch["test_label"].unsqueeze(0)
        l_tcl = tcl_form.loss(scores, label, tcl_form.options.model_validate(form_options))
        if final_filter is not None:
            l_tcl = l_tcl + filter_reg_mu * losses.filter_l2(final_filter)

    l_bbe = bbe_form.loss(iou_pred, batch, bbe_form.options.model_validate(form_options))
    if bbe_reg_nu > 0:
        params = parameter_groups(model, variant)["bbe"]
        if params:
            l_bbe = l_bbe + bbe_reg_nu * losses.parameters_l2(params)
    return {"loss": losses.total_loss(l_tcl, l_bbe, loss_weight_bbe), "loss_tcl": l_tcl, "loss_bbe": l_bbe}
