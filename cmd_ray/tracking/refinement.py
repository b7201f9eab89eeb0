"""IoU-Net box refinement: gradient ascent on the predicted IoU, started from jittered boxes.

The classifier gives the target position; the IoU-Net, conditioned on the first frame's target (its modulation
vectors), scores boxes in the search crop. Starting from the current box and ``num_init_random_boxes`` jittered
copies, each box climbs the predicted IoU for ``box_refinement_iter`` steps; boxes with an aspect ratio beyond
``maximal_aspect_ratio`` are dropped and the new box is the mean of the ``iounet_k`` best (DiMP/ATOM).

Parametrisations (``box_refinement_space``): ``"default"`` steps ``x, y, w, h`` by ``step * grad * (w, h, w, h)``
(ATOM, DiMP); ``"relative"`` steps ``(cx / w0, cy / h0, log w, log h)`` by ``step * grad`` with ``(w0, h0)`` the
first box's size (PrDiMP / SuperDiMP). The gradients with respect to the box come from the IoU-Net's precise RoI
pooling (:mod:`cmd_ray.models.prroi`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

PredictIoU = Callable[[torch.Tensor], torch.Tensor]
"""Boxes ``[P, 4]`` (``x, y, w, h`` crop px) -> predicted IoU ``[P]``, differentiable in the boxes."""


def jittered_boxes(
    box: torch.Tensor, num: int, jitter_pos: float, jitter_sz: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``box`` ``[4]`` followed by ``num`` jittered copies: ``[1 + num, 4]`` on the box's device.

    Centre and size move by ``U(-0.5, 0.5) * sqrt(w * h) * (jitter_pos, jitter_pos, jitter_sz, jitter_sz)``;
    sides stay at least a third of the box's smaller side.
    """
    box = box.reshape(4)
    if num <= 0:
        return box.reshape(1, 4).clone()
    side = torch.sqrt(box[2] * box[3]).cpu()
    factor = side * torch.tensor([jitter_pos, jitter_pos, jitter_sz, jitter_sz], dtype=box.dtype)
    rand = ((torch.rand(num, 4, generator=generator, dtype=box.dtype) - 0.5) * factor).to(box.device)
    size = (box[2:] + rand[:, 2:]).clamp(min=float(box[2:].min()) / 3)
    center = box[:2] + box[2:] / 2 + rand[:, :2]
    return torch.cat([box.reshape(1, 4), torch.cat([center - size / 2, size], dim=1)])


def _step_vector(step_length: float | tuple[float, float], like: torch.Tensor) -> torch.Tensor:
    if isinstance(step_length, tuple | list):
        return like.new_tensor([step_length[0], step_length[0], step_length[1], step_length[1]])
    return like.new_tensor([step_length] * 4)


def _to_relative(boxes: torch.Tensor, size_norm: torch.Tensor) -> torch.Tensor:
    center = boxes[:, :2] + boxes[:, 2:] / 2
    return torch.cat([center / size_norm, torch.log(boxes[:, 2:])], dim=1)


def _from_relative(rel: torch.Tensor, size_norm: torch.Tensor) -> torch.Tensor:
    size = torch.exp(rel[:, 2:])
    return torch.cat([rel[:, :2] * size_norm - size / 2, size], dim=1)


def optimize_boxes(
    predict_iou: PredictIoU,
    boxes: torch.Tensor,
    iterations: int,
    step_length: float | tuple[float, float],
    step_decay: float = 1.0,
    space: str = "default",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient ascent of ``predict_iou`` over ``boxes`` ``[P, 4]``.

    Returns ``(boxes [P, 4], predicted IoU of the returned boxes [P])``, detached.
    """
    if space not in ("default", "relative"):
        raise ValueError(f"unknown box_refinement_space {space!r}; allowed: default, relative")
    boxes = boxes.detach().clone()
    step = _step_vector(step_length, boxes)
    size_norm = boxes[:1, 2:].clone()
    with torch.enable_grad():
        for _ in range(iterations):
            if space == "default":
                params = boxes.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(predict_iou(params).sum(), params)
                boxes = (params + step * grad * params[:, 2:].repeat(1, 2)).detach()
                boxes[:, 2:] = boxes[:, 2:].clamp(min=1.0)  # a box that flips inside out has no IoU gradient
            else:
                params = _to_relative(boxes, size_norm).requires_grad_(True)
                (grad,) = torch.autograd.grad(predict_iou(_from_relative(params, size_norm)).sum(), params)
                boxes = _from_relative((params + step * grad).detach(), size_norm)
            step = step * step_decay
    with torch.no_grad():
        ious = predict_iou(boxes).reshape(-1)
    return boxes, ious.detach()


def select_box(
    boxes: torch.Tensor, ious: torch.Tensor, k: int, maximal_aspect_ratio: float
) -> tuple[torch.Tensor, float] | None:
    """The mean of the ``k`` best boxes among those with aspect ratio within ``maximal_aspect_ratio``.

    Sides are clamped to at least 1 px first. Returns ``(box [4], mean predicted IoU)`` or None when every box is
    dropped.
    """
    boxes = torch.cat([boxes[:, :2], boxes[:, 2:].clamp(min=1.0)], dim=1)
    aspect = boxes[:, 2] / boxes[:, 3]
    keep = (aspect < maximal_aspect_ratio) & (aspect > 1.0 / maximal_aspect_ratio) & torch.isfinite(ious)
    if not bool(keep.any()):
        return None
    boxes, ious = boxes[keep], ious[keep]
    top = torch.topk(ious, min(k, ious.numel())).indices
    return boxes[top].mean(dim=0), float(ious[top].mean())
