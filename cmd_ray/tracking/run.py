"""Running a tracker over a sequence: :func:`track_sequence` is what the evaluation runner calls per sequence."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cmd_ray.tracking.base import Tracker
from cmd_ray.tracking.geometry import check_box


@dataclass
class TrackResult:
    """One tracker run over one sequence.

    Attributes:
        boxes: ``float64 [N, 4]`` ``x, y, w, h`` px; ``boxes[0]`` is the initial box.
        times: ``float64 [N]`` seconds per frame (``times[0]``: initialisation).
        flags: per frame, the tracker's ``last_flag`` after it (``"init"`` for frame 0; None if it has none).
    """

    boxes: np.ndarray
    times: np.ndarray
    flags: list[str | None] = field(default_factory=list)

    @property
    def fps(self) -> float:
        """Frames per second over the tracked frames (initialisation excluded); NaN for a one-frame run."""
        tracked = self.times[1:]
        return float(len(tracked) / tracked.sum()) if len(tracked) and tracked.sum() > 0 else float("nan")


def track_sequence(tracker: Tracker, frames: Iterable[np.ndarray], init_box: Sequence[float]) -> TrackResult:
    """Initialise ``tracker`` on the first frame with ``init_box`` and track the rest.

    Args:
        tracker: any :class:`~cmd_ray.tracking.base.Tracker`.
        frames: decoded frames in order (a list or a lazy iterator): RGB ``uint8 [H, W, 3]`` or TIR ``[H, W]``.
        init_box: ``x, y, w, h`` of the target in the first frame, pixels.

    Returns:
        the boxes (``boxes[0] = init_box``) and the seconds each frame took.
    """
    box0 = check_box(init_box)
    boxes: list[np.ndarray] = []
    times: list[float] = []
    flags: list[str | None] = []
    for index, frame in enumerate(frames):
        start = time.perf_counter()
        if index == 0:
            tracker.initialize(frame, box0)
            box = box0.copy()
            flag: str | None = "init"
        else:
            box = np.asarray(tracker.track(frame), dtype=np.float64).reshape(4)
            flag = getattr(tracker, "last_flag", None)
        times.append(time.perf_counter() - start)
        boxes.append(box)
        flags.append(flag)
    if not boxes:
        raise ValueError("track_sequence got no frames")
    return TrackResult(np.stack(boxes), np.asarray(times, dtype=np.float64), flags)
