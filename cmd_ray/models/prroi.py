"""Precise RoI pooling (PrRoIPool, Jiang et al. 2018, "Acquisition of Localization Confidence") in plain PyTorch.

The feature map is the bilinear interpolant of its cells, with zeros outside the map: cell ``(h, w)`` sits at
coordinate ``(h, w)`` in feature units (box coordinates × ``spatial_scale``; no half-pixel offset) and carries
the separable hat weight ``tri(y - h) · tri(x - w)``, ``tri(t) = max(0, 1 - |t|)``. Each box is split into
``ph × pw`` equal bins and each output is the *exact* integral of the interpolant over its bin divided by the
bin area (``0`` for a bin of zero area). This is the convention of the CUDA op used by ATOM/DiMP (pytracking's
``ltr/external/PreciseRoIPooling``).

Because the interpolant is separable, so is the integral::

    out[k, c, i, j] = Σ_h Σ_w F[b_k, c, h, w] · Wy[k, i, h] · Wx[k, j, w],

where ``Wy[k, i, h]`` is the mean of ``tri(y - h)`` over the ``i``-th row bin of box ``k`` (a piecewise
quadratic of the bin edges, in closed form) and likewise ``Wx``. The weight matrices cost ``K·(ph·H + pw·W)``
numbers and the pooling is two matrix contractions, so the op is differentiable through autograd with
respect to the features *and* the box coordinates (the IoU-Net's box refinement needs the latter; the
reference op provides both, torchvision's ``roi_align`` only the former).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PrRoIPool2D", "prroi_pool2d", "prroi_pool2d_per_map"]


def _pair(output_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    height, width = output_size
    return int(height), int(width)


def _tri_integral(lo: torch.Tensor, hi: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """``∫_lo^hi (1 - |t|) dt`` for ``-1 <= lo <= hi <= 1``, given ``length = hi - lo``.

    Written per sign case as a product with the interval length, which avoids the cancellation of a
    difference of antiderivatives for short intervals (the caller passes the exact bin length where it
    can). The case split also gives autograd the right derivatives at ``t = 0`` (``∂/∂hi = tri(hi)``,
    ``∂/∂lo = -tri(lo)``, both ``1`` in magnitude there): ``hi <= 0`` takes the left branch, ``lo >= 0``
    the right one, so no edge is counted on both sides of the peak.
    """
    left = length * (1.0 + 0.5 * (lo + hi))  # both ends in [-1, 0]
    right = length * (1.0 - 0.5 * (lo + hi))  # both ends in [0, 1]
    straddle = length - 0.5 * (lo * lo + hi * hi)  # lo < 0 < hi
    return torch.where(hi <= 0, left, torch.where(lo >= 0, right, straddle))


def _bin_weights(start: torch.Tensor, end: torch.Tensor, bins: int, size: int) -> torch.Tensor:
    """Mean hat weight of each cell over each bin along one axis.

    Args:
        start, end: ``[...]`` box edges in feature units (``end < start`` counts as an empty box).
        bins: number of equal bins the box is split into.
        size: number of cells along the axis (cell ``p`` sits at coordinate ``p``).

    Returns:
        ``[..., bins, size]``: ``(1 / bin_len) ∫_bin tri(t - p) dt``; zero where the bin length is zero.
    """
    step = (end - start).clamp(min=0.0) / bins  # bin length, as the reference op: max(end - start, 0) / bins
    step = step.unsqueeze(-1).unsqueeze(-1)  # [..., 1, 1]
    cells = torch.arange(size, dtype=start.dtype, device=start.device)
    offset = start.unsqueeze(-1) - cells  # [..., size]: box start relative to each cell
    ticks = torch.arange(bins + 1, dtype=start.dtype, device=start.device).unsqueeze(-1)
    edges = offset.unsqueeze(-2) + ticks * step  # [..., bins + 1, size]
    lo_raw, hi_raw = edges[..., :-1, :], edges[..., 1:, :]
    # tri is zero outside [-1, 1]: clip each bin to the cell's support (no gradient is lost: tri(±1) = 0).
    lo, hi = lo_raw.clamp(-1.0, 1.0), hi_raw.clamp(-1.0, 1.0)
    # An unclipped bin has length ``step`` exactly; ``hi - lo`` would carry the round-off of the edges.
    inside = (lo_raw > -1.0) & (hi_raw < 1.0)
    integral = _tri_integral(lo, hi, torch.where(inside, step, hi - lo))
    nonempty = step > 0
    safe_step = torch.where(nonempty, step, torch.ones_like(step))
    # Empty bins: 0 and no gradient, like the reference op (the clamp of the length already stops it).
    return torch.where(nonempty, integral / safe_step, torch.zeros_like(integral))


def _check_features(features: torch.Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"features must be [N, C, H, W], got shape {tuple(features.shape)}")


def prroi_pool2d_per_map(
    features: torch.Tensor,
    boxes: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
) -> torch.Tensor:
    """Precise RoI pooling of ``K`` boxes per feature map, without batch indices (no host sync).

    Args:
        features: ``[N, C, H, W]``.
        boxes: ``[N, K, 4]`` boxes ``x1, y1, x2, y2`` in image pixels; box ``(n, k)`` pools map ``n``.
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature cells per image pixel (e.g. ``1/16``).

    Returns:
        ``[N, K, C, ph, pw]``.
    """
    _check_features(features)
    if boxes.dim() != 3 or boxes.shape[0] != features.shape[0] or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, K, 4] with N = {features.shape[0]}, got shape {tuple(boxes.shape)}")
    pooled_h, pooled_w = _pair(output_size)
    height, width = features.shape[-2:]
    scaled = boxes.to(features.dtype) * spatial_scale
    weight_y = _bin_weights(scaled[..., 1], scaled[..., 3], pooled_h, height)  # [N, K, ph, H]
    weight_x = _bin_weights(scaled[..., 0], scaled[..., 2], pooled_w, width)  # [N, K, pw, W]
    return _contract(features, weight_y, weight_x)


def _contract(features: torch.Tensor, weight_y: torch.Tensor, weight_x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]``, ``[N, K, ph, H]``, ``[N, K, pw, W]`` -> ``[N, K, C, ph, pw]`` (two batched matmuls)."""
    rows = torch.einsum("nchw,nkjw->nkchj", features, weight_x)  # [N, K, C, H, pw]
    return torch.einsum("nkih,nkchj->nkcij", weight_y, rows)


def prroi_pool2d(
    features: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
) -> torch.Tensor:
    """Precise RoI pooling (pytracking's ``prroi_pool2d`` / ``PrRoIPool2D`` semantics).

    Args:
        features: ``[N, C, H, W]``.
        rois: ``[K, 5]`` rows ``batch_index, x1, y1, x2, y2`` (image pixels).
        output_size: ``ph`` or ``(ph, pw)``.
        spatial_scale: feature cells per image pixel (e.g. ``1/8``, ``1/16``).

    Returns:
        ``[K, C, ph, pw]``: per bin, the integral of the bilinear interpolant (zero outside the map) over the bin,
        divided by the bin area; ``0`` for a box of zero width or height. Differentiable with respect to
        ``features`` and the box coordinates of ``rois`` (the batch index gets no gradient).
    """
    _check_features(features)
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] (batch_index, x1, y1, x2, y2), got shape {tuple(rois.shape)}")
    pooled_h, pooled_w = _pair(output_size)
    num_maps, channels, height, width = features.shape
    num_rois = rois.shape[0]
    if num_rois == 0:
        return features.new_zeros(0, channels, pooled_h, pooled_w)
    scaled = rois[:, 1:].to(features.dtype) * spatial_scale
    weight_y = _bin_weights(scaled[:, 1], scaled[:, 3], pooled_h, height)  # [K, ph, H]
    weight_x = _bin_weights(scaled[:, 0], scaled[:, 2], pooled_w, width)  # [K, pw, W]
    batch_index = rois[:, 0].detach().long()
    first, last = int(batch_index.min()), int(batch_index.max())
    if first < 0 or last >= num_maps:
        raise ValueError(f"rois batch indices must lie in [0, {num_maps - 1}], got {first}..{last}")
    counts = torch.bincount(batch_index, minlength=num_maps)
    per_map = int(counts.max())
    if num_maps * per_map <= 2 * num_rois:
        # Balanced enough (the usual case: the same number of boxes per map): pad every map to ``per_map``
        # boxes with empty weights and pool all maps in one batched contraction.
        order = torch.argsort(batch_index, stable=True)
        first_slot = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(batch_index)
        slot[order] = torch.arange(num_rois, device=rois.device) - first_slot[batch_index[order]]
        padded_y = weight_y.new_zeros(num_maps, per_map, pooled_h, height).index_put((batch_index, slot), weight_y)
        padded_x = weight_x.new_zeros(num_maps, per_map, pooled_w, width).index_put((batch_index, slot), weight_x)
        return _contract(features, padded_y, padded_x)[batch_index, slot]
    # Very unequal numbers of boxes per map: one contraction per map that has boxes.
    per_map_features = features.unbind(0)  # one backward stack, not a full-size zero gradient per map
    selections, pieces = [], []
    for n in torch.nonzero(counts).squeeze(1).tolist():
        sel = torch.nonzero(batch_index == n).squeeze(1)
        selections.append(sel)
        pieces.append(_contract(per_map_features[n][None], weight_y[sel][None], weight_x[sel][None])[0])
    out = features.new_zeros(num_rois, channels, pooled_h, pooled_w)
    return out.index_copy(0, torch.cat(selections), torch.cat(pieces))


class PrRoIPool2D(nn.Module):
    """Module form of :func:`prroi_pool2d`; pytracking's constructor signature, no parameters or buffers."""

    def __init__(self, pooled_height: int, pooled_width: int, spatial_scale: float) -> None:
        super().__init__()
        self.pooled_height = int(pooled_height)
        self.pooled_width = int(pooled_width)
        self.spatial_scale = float(spatial_scale)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return prroi_pool2d(features, rois, (self.pooled_height, self.pooled_width), self.spatial_scale)

    def extra_repr(self) -> str:
        return (
            f"pooled_height={self.pooled_height}, pooled_width={self.pooled_width}, spatial_scale={self.spatial_scale}"
        )
