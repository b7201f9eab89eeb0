"""What every online tracker offers: initialise on the first frame, then one box per frame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Tracker(Protocol):
    """An online single-object tracker.

    Frames are decoded images: RGB ``uint8 [H, W, 3]`` or TIR ``[H, W]`` (uint8 or uint16). Boxes are
    ``x, y, w, h`` in image pixels.
    """

    def initialize(self, image: np.ndarray, box: Sequence[float]) -> None:
        """Start tracking the target in ``box`` on the first frame ``image``."""
        ...

    def track(self, image: np.ndarray) -> np.ndarray:
        """The target's box on the next frame: ``float64 [4]`` ``x, y, w, h`` in image pixels."""
        ...
