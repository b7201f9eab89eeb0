"""Box pooling: the one place where the models cut a box out of a feature map.

Both the target classifier (filter initialisation) and the IoU-Net (modulation vectors and
proposal features) pool through :func:`pool_boxes`. It is precise RoI pooling (``prroi.py``, the
PrRoIPool of ATOM/DiMP): per output bin, the exact integral of the bilinear interpolant of the map
(zero outside it, feature cell ``k`` at image coordinate ``k / spatial_scale``) divided by the bin
area. It is differentiable with respect to the features and the boxes (the IoU-Net's box
refinement ascends the predicted IoU along the box gradient).
"""

from __future__ import annotations

import torch

from cmd_ray.models.prroi import prroi_pool2d_per_map


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` boxes ``x, y, w, h`` -> ``[..., 4]`` boxes ``x0, y0, x1, y1`` (same units)."""
    return torch.cat((boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]), dim=-1)


def pool_boxes(
    feat: torch.Tensor,
    boxes_xywh: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
) -> torch.Tensor:
    """Average-pool the feature map under each box into a fixed grid.

    Args:
        feat: feature maps ``[N, C, H, W]``.
        boxes_xywh: ``[N, 4]`` (one box per feature map) or ``[N, K, 4]`` (``K`` boxes per map),
            ``x, y, w, h`` in image pixels.
        output_size: side (or ``(height, width)``) of the pooled grid.
        spatial_scale: feature cells per image pixel, e.g. ``1/16``.

    Returns:
        ``[N*K, C, out_h, out_w]`` pooled features, map-major (all boxes of map 0 first);
        ``K = 1`` for ``[N, 4]`` boxes.
    """
    if feat.dim() != 4:
        raise ValueError(f"feat must be [N, C, H, W], got shape {tuple(feat.shape)}")
    if boxes_xywh.dim() == 2:
        boxes_xywh = boxes_xywh.unsqueeze(1)
    if boxes_xywh.dim() != 3 or boxes_xywh.shape[0] != feat.shape[0] or boxes_xywh.shape[-1] != 4:
        raise ValueError(
            f"boxes must be [N, 4] or [N, K, 4] with N = {feat.shape[0]}, got shape {tuple(boxes_xywh.shape)}"
        )
    num_maps, num_boxes = boxes_xywh.shape[:2]
    pooled = prroi_pool2d_per_map(feat, xywh_to_xyxy(boxes_xywh.to(feat.dtype)), output_size, spatial_scale)
    return pooled.reshape(num_maps * num_boxes, *pooled.shape[2:])
