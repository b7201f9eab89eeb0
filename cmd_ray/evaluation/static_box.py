"""A quick measured comparison of a tracker against the static box, on in-memory sequences.

:func:`compare_with_static_box` scores a tracker and the "static box" (the first box repeated on every frame:
what a tracker that never moves gets) with the OPE Success AUC of :mod:`cmd_ray.evaluation.metrics`, e.g. on the
synthetic TIR sequences in memory (the tracker tests' own).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from cmd_ray.evaluation.metrics import Protocol, sequence_curves
from cmd_ray.tracking.base import Tracker
from cmd_ray.tracking.run import track_sequence


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
