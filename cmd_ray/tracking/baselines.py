"""Baseline trackers that need no network (reference rows of an evaluation)."""

from __future__ import annotations

import numpy as np


class StaticBoxTracker:
    """Repeats the initial box in every frame: the score a tracker must beat to be tracking anything at all.

    Follows the tracker protocol of :mod:`cmd_ray.tracking`: ``initialize(image, box)`` then ``track(image)``
    per frame, boxes ``x, y, w, h`` in pixels (float64 ``[4]``). Images (``uint8 [H, W, 3]`` RGB or ``[H, W]`` TIR)
    are accepted and ignored.
    """

    def __init__(self) -> None:
        self._box: np.ndarray | None = None

    def initialize(self, image: np.ndarray, box: np.ndarray | list[float] | tuple[float, ...]) -> None:
        """Remember ``box`` (``x, y, w, h`` pixels); it must be 4 finite numbers with ``w, h > 0``."""
        arr = np.asarray(box, dtype=np.float64).reshape(-1)
        if arr.shape != (4,) or not np.all(np.isfinite(arr)) or arr[2] <= 0 or arr[3] <= 0:
            raise ValueError(f"initial box must be 4 finite numbers x, y, w, h with w, h > 0, got {box!r}")
        self._box = arr.copy()

    def track(self, image: np.ndarray) -> np.ndarray:
        """The initial box again (a fresh float64 ``[4]`` copy)."""
        if self._box is None:
            raise RuntimeError("StaticBoxTracker.track() called before initialize()")
        return self._box.copy()
