"""Peak localisation flags on constructed score maps, and score cells placed like the training labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmd_ray.config import SamplingConfig, TrackerConfig
from cmd_ray.data.processing import gaussian_label
from cmd_ray.tracking.localization import cell_to_crop, localize_target, subcell_peak

PARAMS = TrackerConfig()
L = 19  # DiMP-50: 18 feature cells + 1 for the even filter


def _blob(row: float, col: float, height: float, sigma: float = 1.0) -> torch.Tensor:
    rows = torch.arange(L, dtype=torch.float32).reshape(-1, 1)
    cols = torch.arange(L, dtype=torch.float32).reshape(1, -1)
    return height * torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2))


def test_single_clear_peak_is_normal() -> None:
    loc = localize_target(_blob(9, 11, 0.9), (3.6, 3.6), PARAMS)
    assert loc.flag == "normal" and loc.peak == (9, 11) and loc.max_score == pytest.approx(0.9)


def test_low_peak_is_not_found() -> None:
    loc = localize_target(_blob(9, 9, 0.2), (3.6, 3.6), PARAMS)
    assert loc.flag == "not_found" and loc.peak == (9, 9)


def test_weaker_second_peak_is_hard_negative() -> None:
    scores = _blob(9, 9, 1.0) + _blob(3, 15, 0.6)  # 0.6 > 0.5 x 1.0, < 0.8 x 1.0
    loc = localize_target(scores, (3.6, 3.6), PARAMS)
    assert loc.flag == "hard_negative" and loc.peak == (9, 9)


def test_two_strong_peaks_near_the_centre_are_uncertain() -> None:
    scores = _blob(9, 5, 1.0) + _blob(9, 13, 0.95)  # both within 0.8 x 19/2 cells of the centre
    loc = localize_target(scores, (3.0, 3.0), PARAMS)
    assert loc.flag == "uncertain" and loc.peak == (9, 5)


def test_strong_far_distractor_keeps_the_near_peak() -> None:
    # the stronger peak is far from the centre, the second near it: the near one is the target
    scores = _blob(1, 1, 1.0, 0.7) + _blob(9, 10, 0.9, 0.7)
    loc = localize_target(scores, (3.0, 3.0), PARAMS)
    assert loc.flag == "hard_negative" and loc.peak == (9, 10)
    far = localize_target(_blob(9, 9, 1.0, 0.7) + _blob(1, 17, 0.9, 0.7), (3.0, 3.0), PARAMS)
    assert far.flag == "hard_negative" and far.peak == (9, 9)


def test_second_peak_inside_the_target_neighbourhood_is_ignored() -> None:
    scores = _blob(9, 9, 1.0) + _blob(9, 11, 0.9)  # 2 cells apart, target 3.6 cells wide: masked
    assert localize_target(scores, (3.6, 3.6), PARAMS).flag == "normal"
    # the same pair with a tiny target is a distractor
    assert localize_target(scores, (0.3, 0.3), PARAMS).flag == "uncertain"


def test_plain_localisation_only_takes_the_maximum() -> None:
    params = TrackerConfig(advanced_localization=False)
    loc = localize_target(_blob(4, 6, 0.1), (3.0, 3.0), params)
    assert loc.flag == "normal" and loc.peak == (4, 6)


@pytest.mark.parametrize("filter_size", [4, 3])
def test_cells_sit_where_the_training_labels_put_them(filter_size: int) -> None:
    """The argmax of a training label, mapped back to crop pixels, is the box centre (up to the grid)."""
    cfg = SamplingConfig(output_sz=128, feature_stride=16, filter_size=filter_size)
    for cx, cy in [(64.0, 64.0), (32.0, 80.0), (96.0, 16.0)]:
        label = gaussian_label(np.array([cx - 10, cy - 12, 20, 24]), cfg)
        row, col = np.unravel_index(np.argmax(label), label.shape)
        assert cell_to_crop((row, col), 16.0, filter_size) == pytest.approx((cx, cy), abs=8.0)
    offset = 0.5 * (filter_size % 2)
    assert cell_to_crop((2, 5), 16.0, filter_size) == ((5 + offset) * 16, (2 + offset) * 16)


@pytest.mark.parametrize("row, col", [(9.0, 11.0), (9.3, 10.6), (4.45, 12.2), (13.8, 6.5)])
def test_subcell_peak_finds_a_peak_between_cells(row: float, col: float) -> None:
    """A parabola through three samples of a Gaussian lands within a tenth of a cell of its true centre."""
    scores = _blob(row, col, 0.9, sigma=1.2)
    cell = localize_target(scores, (3.6, 3.6), PARAMS)
    assert cell.peak == (round(row), round(col))  # cells only, as DiMP-50 localises
    loc = localize_target(scores, (3.6, 3.6), TrackerConfig(subcell_peak=True))
    assert loc.flag == cell.flag == "normal" and loc.max_score == cell.max_score
    assert loc.peak == pytest.approx((row, col), abs=0.1)
    assert abs(loc.peak[0] - round(row)) <= 0.5 and abs(loc.peak[1] - round(col)) <= 0.5


def test_subcell_peak_keeps_the_cell_at_edges_and_plateaus() -> None:
    edge = _blob(0, 18, 1.0)
    assert subcell_peak(edge, (0, 18)) == (0.0, 18.0)
    flat = torch.zeros(L, L)
    flat[5, 6] = flat[5, 7] = flat[4, 6] = 1.0  # a tie with one neighbour: the peak lies halfway between them
    assert subcell_peak(flat, (5, 6)) == pytest.approx((4.5, 6.5))
    flat[5, 5] = flat[6, 6] = 1.0  # a plateau of three in both axes: zero curvature, the cell stays
    assert subcell_peak(flat, (5, 6)) == (5.0, 6.0)


def test_tiny_preset_refines_the_peak() -> None:
    assert TrackerConfig(preset="tiny").subcell_peak and not TrackerConfig().subcell_peak
    assert not TrackerConfig(preset="tiny", subcell_peak=False).subcell_peak
