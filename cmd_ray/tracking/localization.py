"""Target localisation on a classifier score map: the peak, and what kind of frame this is.

DiMP's (ATOM's "advanced") localisation reads a score map ``[L, L]`` (row = y, column = x) as follows:

- peak below ``target_not_found_threshold`` -> ``not_found`` (no update of position, scale or classifier);
- mask ``target_neighborhood_scale`` target sizes around the peak and find the second peak; if it is above
  ``distractor_threshold`` x the first there is a distractor: when exactly one of the two peaks lies farther
  than ``displacement_scale`` x half the map side from the map centre, the near one is the target and the frame
  is a ``hard_negative``; otherwise the frame is ``uncertain`` (the first peak is kept, the classifier is not
  updated);
- a second peak above ``hard_negative_threshold`` x the first (and above the not-found threshold) -> a
  ``hard_negative`` (update with the higher hard-negative learning rate and a filter step at once);
- otherwise ``normal``.

Without advanced localisation the highest cell is taken and the frame is ``normal``.

With ``subcell_peak`` the chosen peak is refined between cells by a parabola through it and its two
neighbours, in x and in y (:func:`subcell_peak`). A coarse map (the tiny networks' stride-16 cells are as wide
as a third of the target) otherwise cannot follow motion slower than half a cell per frame: the peak stays on
the centre cell, the memory learns the background there, and the tracker drifts off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cmd_ray.config import TrackerConfig

FLAGS = ("normal", "not_found", "uncertain", "hard_negative")


@dataclass(frozen=True)
class Localization:
    """The chosen peak ``(row, col)`` of the score map (cells; fractional with ``subcell_peak``), the frame's
    ``flag`` and the map's maximum."""

    peak: tuple[float, float]
    flag: str
    max_score: float


def _argmax2d(scores: torch.Tensor) -> tuple[float, tuple[int, int]]:
    value, index = torch.max(scores.reshape(-1), dim=0)
    row, col = divmod(int(index), scores.shape[-1])
    return float(value), (row, col)


def subcell_peak(scores: torch.Tensor, peak: tuple[int, int]) -> tuple[float, float]:
    """``peak`` ``(row, col)`` of ``scores`` ``[L, L']`` moved by the vertex of a parabola through it and its
    neighbours, per axis, within half a cell; an axis at the map's edge or without curvature keeps its cell."""
    refined = []
    for axis, index in enumerate(peak):
        line = scores[:, peak[1]] if axis == 0 else scores[peak[0], :]
        offset = 0.0
        if 0 < index < len(line) - 1:
            before, centre, after = (float(v) for v in line[index - 1 : index + 2])
            curvature = before - 2.0 * centre + after
            if curvature < 0:
                offset = min(max(0.5 * (before - after) / curvature, -0.5), 0.5)
        refined.append(index + offset)
    return refined[0], refined[1]


def localize_target(scores: torch.Tensor, target_size_cells: Sequence[float], params: TrackerConfig) -> Localization:
    """Find the target on ``scores`` ``[L, L']`` (see the module docstring); with ``params.subcell_peak`` the
    returned peak is refined between cells."""
    if scores.dim() != 2:
        raise ValueError(f"expected one score map [L, L], got shape {tuple(scores.shape)}")
    scores = scores.detach().float().cpu()
    found = _localize_cell(scores, target_size_cells, params)
    if not params.subcell_peak:
        return found
    peak = (int(found.peak[0]), int(found.peak[1]))
    return Localization(subcell_peak(scores, peak), found.flag, found.max_score)


def _localize_cell(scores: torch.Tensor, target_size_cells: Sequence[float], params: TrackerConfig) -> Localization:
    """Find the target on ``scores`` ``[L, L']``.

    Args:
        scores: one score map (row = y, column = x).
        target_size_cells: target ``(width, height)`` in score-map cells (for the neighbourhood mask).
        params: thresholds (``advanced_localization``, ``target_not_found_threshold``, ``distractor_threshold``,
            ``hard_negative_threshold``, ``target_neighborhood_scale``, ``displacement_scale``).

    Returns:
        the peak cell, the flag (one of :data:`FLAGS`) and the map's maximum.
    """
    max1, peak1 = _argmax2d(scores)
    if not params.advanced_localization:
        return Localization(peak1, "normal", max1)
    if max1 < params.target_not_found_threshold:
        return Localization(peak1, "not_found", max1)

    rows, cols = scores.shape
    neigh_w = params.target_neighborhood_scale * float(target_size_cells[0])
    neigh_h = params.target_neighborhood_scale * float(target_size_cells[1])
    top = max(round(peak1[0] - neigh_h / 2), 0)
    bottom = min(round(peak1[0] + neigh_h / 2 + 1), rows)
    left = max(round(peak1[1] - neigh_w / 2), 0)
    right = min(round(peak1[1] + neigh_w / 2 + 1), cols)
    masked = scores.clone()
    masked[top:bottom, left:right] = 0.0
    max2, peak2 = _argmax2d(masked)

    if max2 > params.distractor_threshold * max1:
        center = ((rows - 1) / 2, (cols - 1) / 2)
        dist1 = math.hypot(peak1[0] - center[0], peak1[1] - center[1])
        dist2 = math.hypot(peak2[0] - center[0], peak2[1] - center[1])
        threshold = params.displacement_scale * math.sqrt(rows * cols) / 2
        if dist1 < threshold < dist2:
            return Localization(peak1, "hard_negative", max1)
        if dist2 < threshold < dist1:
            return Localization(peak2, "hard_negative", max1)
        return Localization(peak1, "uncertain", max1)

    if max2 > params.hard_negative_threshold * max1 and max2 > params.target_not_found_threshold:
        return Localization(peak1, "hard_negative", max1)
    return Localization(peak1, "normal", max1)


def cell_to_crop(cell: Sequence[float], stride: float, filter_size: int) -> tuple[float, float]:
    """Score-map cell ``(row, col)`` -> crop point ``(x, y)`` in pixels.

    Cell ``i`` sits at ``(i + 0.5 * (filter_size % 2)) * stride``: an odd filter keeps the feature grid (cell
    centres), an even one puts its ``feature_sz + 1`` scores between feature cells (as the training labels of
    :func:`cmd_ray.data.processing.gaussian_label` and the filter optimizer's label centre).
    """
    offset = 0.5 * (filter_size % 2)
    return ((cell[1] + offset) * stride, (cell[0] + offset) * stride)
