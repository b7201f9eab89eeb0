"""Running a tracker over a sequence, and a quick measured comparison against the static box.

:func:`track_sequence` is what the evaluation runner calls per sequence. :func:`compare_with_static_box` scores a
tracker and the "static box" (the first box repeated on every frame: what a tracker that never moves gets) with
the OPE Success AUC of :mod:`cmd_ray.evaluation.metrics` on in-memory sequences, e.g. the synthetic TIR
sequences of :func:`synthetic_tir_sequences` (the ones ``cmd-ray synth`` writes, before JPEG encoding).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cmd_ray.evaluation.metrics import Protocol, sequence_curves
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


@dataclass(frozen=True)
class SequenceComparison:
    """Success AUC of a tracker and of the static box on one sequence."""

    name: str
    tracker_auc: float
    static_auc: float
    fps: float
    flags: dict[str, int]


def static_box_auc(ground_truth: np.ndarray, protocol: Protocol = "lsotb") -> float:
    """Success AUC of the first ground-truth box repeated on every frame."""
    gt = np.asarray(ground_truth, dtype=np.float64)
    return sequence_curves(np.repeat(gt[:1], len(gt), axis=0), gt, protocol).success_score


def compare_with_static_box(
    tracker: Tracker,
    sequences: Iterable[tuple[str, Sequence[np.ndarray], np.ndarray]],
    protocol: Protocol = "lsotb",
) -> list[SequenceComparison]:
    """Track every ``(name, frames, ground_truth [T, 4])`` from its first box; Success AUC of tracker and static box."""
    out = []
    for name, frames, gt in sequences:
        gt = np.asarray(gt, dtype=np.float64)
        result = track_sequence(tracker, frames, gt[0])
        counts: dict[str, int] = {}
        for flag in result.flags[1:]:
            counts[str(flag)] = counts.get(str(flag), 0) + 1
        out.append(
            SequenceComparison(
                name=name,
                tracker_auc=sequence_curves(result.boxes, gt, protocol).success_score,
                static_auc=static_box_auc(gt, protocol),
                fps=result.fps,
                flags=counts,
            )
        )
    return out


def synthetic_tir_sequences(
    count: int, width: int = 160, height: int = 128, length: int = 30, seed: int = 0
) -> list[tuple[str, list[np.ndarray], np.ndarray]]:
    """``count`` labeled synthetic TIR sequences ``(name, frames uint8 [H, W], boxes float32 [T, 4])`` in memory.

    The same scenes as ``cmd-ray synth`` with ``synth.seed=seed`` writes (same names), without the JPEG round trip.
    """
    from cmd_ray.data.synthetic import generate_sequence, item_rng, sequence_name

    out = []
    for index in range(count):
        frames, boxes, _ = generate_sequence(item_rng(seed, "tir_sequence", index), width, height, length, "tir")
        out.append((sequence_name("tir", index), frames, boxes))
    return out
