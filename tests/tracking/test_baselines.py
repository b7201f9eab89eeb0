"""The static-box baseline: the first box on every frame, whatever the images."""

from __future__ import annotations

import numpy as np
import pytest

from cmd_ray.tracking.baselines import StaticBoxTracker


def test_repeats_the_initial_box_on_every_frame():
    tracker = StaticBoxTracker()
    rng = np.random.default_rng(0)
    tracker.initialize(rng.integers(0, 255, (32, 40), dtype=np.uint8), [3, 4.5, 10, 12])
    boxes = [tracker.track(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)) for _ in range(3)]
    for box in boxes:
        assert box.dtype == np.float64 and box.shape == (4,)
        np.testing.assert_array_equal(box, [3, 4.5, 10, 12])
    boxes[0][0] = 99.0  # callers get copies: changing one output leaves the next unchanged
    np.testing.assert_array_equal(tracker.track(np.zeros((32, 40), np.uint8)), [3, 4.5, 10, 12])


def test_reinitialize_replaces_the_box():
    tracker = StaticBoxTracker()
    tracker.initialize(np.zeros((8, 8), np.uint8), np.array([1, 1, 2, 2]))
    tracker.initialize(np.zeros((8, 8), np.uint8), (0, 0, 5, 6))
    np.testing.assert_array_equal(tracker.track(np.zeros((8, 8), np.uint8)), [0, 0, 5, 6])


@pytest.mark.parametrize("box", [[1, 2, 0, 4], [1, 2, 3, -1], [1, 2, 3], [np.nan, 0, 2, 2]])
def test_rejects_a_bad_initial_box(box):
    with pytest.raises(ValueError, match="initial box"):
        StaticBoxTracker().initialize(np.zeros((8, 8), np.uint8), box)


def test_track_before_initialize_fails():
    with pytest.raises(RuntimeError, match="before initialize"):
        StaticBoxTracker().track(np.zeros((8, 8), np.uint8))
