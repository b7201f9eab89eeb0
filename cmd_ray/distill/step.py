"""One distillation forward pass and loss on a mini-batch (the "actor" of pytracking).

Used by training, validation and tests. A batch is a dict of tensors with the batch dim first:

=================  ==================  ==========================================================
key                dtype / shape       meaning
=================  ==================  ==========================================================
``rgb_ref``        uint8 [B, S, S, 3]  RGB reference crop
``tir_ref``        uint8 [B, S, S]     TIR reference crop (pixel-aligned with ``rgb_ref``)
``rgb_test``       uint8 [B, S, S, 3]  RGB test crop
``tir_test``       uint8 [B, S, S]     TIR test crop
``ref_box``        float32 [B, 4]      pseudo box in the reference crop, x, y, w, h px
``test_box``       float32 [B, 4]      pseudo box in the test crop (not used by the loss)
``test_label``     float32 [B, L, L]   Gaussian label at the pseudo centre of the test crop
``test_proposals`` float32 [B, P, 4]   jittered boxes in the test crop, x, y, w, h px
``proposal_iou``   float32 [B, P]      IoU of each proposal with ``test_box``, in [0, 1]
=================  ==================  ==========================================================

The variant decides, per sample, whether RGB or TIR feeds each branch (see
:meth:`cmd_ray.distill.variants.Variant.sample_modalities`). One reference and one test crop per
sample: ``Ntr = Nte = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cmd_ray.distill.losses import HINGE_THRESHOLD, bbe_loss, tcl_loss, total_loss
from cmd_ray.distill.variants import Variant, get_variant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_network_input(images: torch.Tensor) -> torch.Tensor:
    """Decoded images -> ImageNet-normalised float network input ``[B, 3, H, W]``.

    Args:
        images: RGB ``[B, H, W, 3]`` or TIR ``[B, H, W]``, uint8 (0–255) or uint16 (0–65535, scaled
            linearly). TIR is replicated to three channels here, and only here.

    Returns:
        float32 ``[B, 3, H, W]`` on the input's device.
    """
    if images.dtype == torch.uint8:
        scale = 255.0
    elif images.dtype == torch.uint16:
        scale = 65535.0
    else:
        raise TypeError(f"expected uint8 or uint16 images, got {images.dtype}")
    if images.dim() == 3:
        x = images.float().unsqueeze(1).expand(-1, 3, -1, -1)
    elif images.dim() == 4 and images.shape[-1] == 3:
        x = images.float().permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected [B, H, W, 3] RGB or [B, H, W] TIR images, got shape {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).reshape(1, 3, 1, 1)
    return ((x / scale - mean) / std).contiguous()


def _branch_input(rgb: torch.Tensor, tir: torch.Tensor, modalities: Sequence[str]) -> torch.Tensor:
    """Per-sample choice between the RGB and the TIR crop -> ``[B, 3, S, S]``."""
    if all(m == "rgb" for m in modalities):
        return to_network_input(rgb)
    if all(m == "tir" for m in modalities):
        return to_network_input(tir)
    use_tir = torch.tensor([m == "tir" for m in modalities], device=rgb.device).reshape(-1, 1, 1, 1)
    return torch.where(use_tir, to_network_input(tir), to_network_input(rgb))


def distill_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    variant: Variant | str,
    loss_weight_bbe: float,
    *,
    hinge_threshold: float = HINGE_THRESHOLD,
    clf_loss_weights: tuple[float, float, float] = (100.0, 400.0, 100.0),
) -> dict[str, torch.Tensor]:
    """Forward one mini-batch through ``model`` (a DiMPNet, possibly DDP-wrapped) and compute Eq. 1.

    Args:
        model: the network; its ``requires_grad`` flags decide what receives gradients.
        batch: see the module docstring.
        variant: a :class:`Variant` or its name; picks the modality of each branch per sample.
        loss_weight_bbe: λ of Eq. 1.
        hinge_threshold: label value below which a cell is background in the TCL hinge.
        clf_loss_weights: weights of the initial, intermediate and final filter iterates.

    Returns:
        ``{"loss", "loss_tcl", "loss_bbe"}`` scalars; ``loss`` carries the graph whenever some
        parameter requires grad.
    """
    variant = get_variant(variant)
    batch_size = batch["rgb_ref"].shape[0]
    ref_modalities, test_modalities = variant.sample_modalities(batch_size)
    train_imgs = _branch_input(batch["rgb_ref"], batch["tir_ref"], ref_modalities).unsqueeze(0)
    test_imgs = _branch_input(batch["rgb_test"], batch["tir_test"], test_modalities).unsqueeze(0)
    train_bb = batch["ref_box"].float().unsqueeze(0)
    proposals = batch["test_proposals"].float().unsqueeze(0)

    scores, iou_pred = model(train_imgs, test_imgs, train_bb, proposals)

    weight_init, weight_iter, weight_final = clf_loss_weights
    l_tcl = tcl_loss(scores, batch["test_label"].unsqueeze(0), hinge_threshold, weight_init, weight_iter, weight_final)
    l_bbe = bbe_loss(iou_pred, batch["proposal_iou"].unsqueeze(0))
    return {"loss": total_loss(l_tcl, l_bbe, loss_weight_bbe), "loss_tcl": l_tcl, "loss_bbe": l_bbe}
