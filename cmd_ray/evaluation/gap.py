"""The RGB→TIR modality gap: how much worse a tracker does on TIR than on the pixel-aligned RGB twins of the same
sequences, and how much of the teacher's gap another tracker closed (docs/evaluation.md, "Modality gap").

For a reference tracker ``R`` (the RGB teacher) and a metric ``m`` (Success, Precision at 20 px, Norm. Precision):

- the gap is ``gap_m = m(R, RGB twins) − m(R, TIR)``: what the teacher loses when it sees TIR instead of RGB;
- tracker ``X`` closed the fraction ``(m(X, TIR) − m(R, TIR)) / gap_m`` of it: 0 for the teacher itself, 1 for a
  tracker that does as well on TIR as the teacher on RGB, negative for one worse than the teacher on TIR, above 1
  for one better on TIR than the teacher on RGB. Undefined (NaN) when the gap is not positive: then there is
  nothing to close, and the table says so instead of printing a fraction.

Pure arithmetic on :class:`~cmd_ray.evaluation.metrics.Scores`; the evaluate job feeds it both passes' scores and
:func:`cmd_ray.evaluation.tables.format_gap_table` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from cmd_ray.evaluation.metrics import Scores

GAP_METRICS = ("success", "precision", "norm_precision")
"""The metrics whose gap is measured, as :class:`Scores` attribute names."""


def closed_fraction(tir: float, reference_tir: float, reference_rgb: float) -> float:
    """The share of the reference's RGB−TIR gap that a tracker scoring ``tir`` on TIR closed.

    Args:
        tir: the tracker's score on the TIR sequences.
        reference_tir / reference_rgb: the reference tracker's scores on the TIR sequences and on their RGB twins.

    Returns:
        ``(tir − reference_tir) / (reference_rgb − reference_tir)``; NaN when the gap is not positive.
    """
    gap = reference_rgb - reference_tir
    if not gap > 0:
        return math.nan
    return (tir - reference_tir) / gap


@dataclass(frozen=True)
class GapRow:
    """One tracker's scores on both modalities and the share of the reference's gap it closed.

    Attributes:
        tracker: its name in the evaluation.
        tir / rgb: metric → score on the TIR sequences / on their RGB twins (``rgb`` empty when not tracked there).
        closed: metric → :func:`closed_fraction` of the reference's gap (NaN where the gap is not positive).
    """

    tracker: str
    tir: dict[str, float]
    rgb: dict[str, float]
    closed: dict[str, float]


@dataclass(frozen=True)
class ModalityGap:
    """The reference's gap per metric and every tracker's row (in the evaluation's order)."""

    reference: str
    gap: dict[str, float]
    rows: list[GapRow]

    def row(self, tracker: str) -> GapRow:
        return next(r for r in self.rows if r.tracker == tracker)


def _values(s: Scores) -> dict[str, float]:
    return {m: float(getattr(s, m)) for m in GAP_METRICS}


def modality_gap(tir: Mapping[str, Scores], rgb: Mapping[str, Scores], reference: str) -> ModalityGap:
    """Every tracker's TIR and RGB-twin scores and the share of ``reference``'s gap it closed.

    Args:
        tir: tracker → scores on the TIR sequences (every tracker of the evaluation, in its order).
        rgb: tracker → scores on the RGB twins of the same sequences (at least ``reference``).
        reference: the tracker whose gap is measured (the RGB teacher).

    Raises:
        ValueError: ``reference`` lacks scores on either modality, or ``rgb`` names a tracker ``tir`` lacks.
    """
    missing = [what for what, scores in (("TIR", tir), ("RGB-twin", rgb)) if reference not in scores]
    if missing:
        raise ValueError(f"the gap's reference tracker {reference!r} has no {' or '.join(missing)} scores")
    extra = sorted(set(rgb) - set(tir))
    if extra:
        raise ValueError(f"trackers with RGB-twin scores but no TIR scores: {extra}")
    ref_tir, ref_rgb = _values(tir[reference]), _values(rgb[reference])
    gap = {m: ref_rgb[m] - ref_tir[m] for m in GAP_METRICS}
    rows = []
    for name, scores in tir.items():
        values = _values(scores)
        closed = {m: closed_fraction(values[m], ref_tir[m], ref_rgb[m]) for m in GAP_METRICS}
        rows.append(GapRow(name, values, _values(rgb[name]) if name in rgb else {}, closed))
    return ModalityGap(reference, gap, rows)
