"""One-pass evaluation (OPE) metrics exactly as ``docs/evaluation.md`` defines them.

Two protocols:

``lsotb`` (default, paper-comparable)
    Success = mean of the success curve (IoU **>** t, t = 0, 0.05, …, 1); Precision = precision curve at 20 px
    (centre error ≤ t, t = 0…50 px); Norm. Precision = mean of the normalised-precision curve (t = 0, 0.01, …, 0.5).
    Invalid ground-truth frames fail every overlap threshold and succeed at every precision threshold (pixel and
    normalised).
``pytracking``
    The same curves, but Norm. Precision = the normalised curve's value at 0.20, and invalid ground-truth frames count
    as failures for *pixel* precision (the normalised curve treats them as ``lsotb`` does: only the pixel precision
    differs; docs/evaluation.md).

Both protocols: boxes are ``x, y, w, h`` pixels; IoU of inclusive-pixel boxes (= continuous boxes with ``x2 = x + w``);
centre ``(x + (w−1)/2, y + (h−1)/2)``; frame 1's prediction is replaced by the ground truth; a prediction that is NaN or
has ``w ≤ 0`` or ``h ≤ 0`` is replaced by the previous frame's (already repaired) prediction; every denominator is the
full sequence length. Over a dataset, per-sequence curves are averaged with equal weight per sequence. Which sequences
enter the average is where the protocols differ:

- ``lsotb``: per tracker, a sequence whose success curve is all zero is dropped (the LSOTB/OTB toolkit's rule);
  every tracker must have a result for every sequence.
- ``pytracking``: every sequence is kept, all-zero ones included; a sequence that some tracker of the comparison has no
  result for is excluded for *all* of its trackers (:func:`aggregate_trackers`, which logs a warning naming them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Protocol = Literal["lsotb", "pytracking"]
PROTOCOLS: tuple[str, ...] = ("lsotb", "pytracking")

SUCCESS_THRESHOLDS = np.arange(21) / 20.0
"""IoU thresholds 0, 0.05, …, 1 (21 values); a frame succeeds at ``t`` when IoU > t."""
PRECISION_THRESHOLDS = np.arange(51, dtype=np.float64)
"""Centre-error thresholds 0, 1, …, 50 px; a frame succeeds at ``t`` when error ≤ t."""
NORM_PRECISION_THRESHOLDS = np.arange(51) / 100.0
"""Normalised centre-error thresholds 0, 0.01, …, 0.5 (51 values)."""
PRECISION_AT_PX = 20
NORM_PRECISION_AT = 0.20
_PRECISION_INDEX = PRECISION_AT_PX  # PRECISION_THRESHOLDS[20] == 20
_NORM_PRECISION_INDEX = 20  # NORM_PRECISION_THRESHOLDS[20] == 0.20
_OP50_INDEX = 10  # SUCCESS_THRESHOLDS[10] == 0.50
_OP75_INDEX = 15  # SUCCESS_THRESHOLDS[15] == 0.75


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


@dataclass(frozen=True, eq=False)
class SequenceCurves:
    """Per-sequence OPE curves of one tracker on one sequence.

    Attributes:
        protocol: ``"lsotb"`` or ``"pytracking"``.
        success: ``[21]`` fraction of frames with IoU > t for :data:`SUCCESS_THRESHOLDS`.
        precision: ``[51]`` fraction of frames with centre error ≤ t px for :data:`PRECISION_THRESHOLDS`.
        norm_precision: ``[51]`` fraction with normalised centre error ≤ t for :data:`NORM_PRECISION_THRESHOLDS`.
        num_frames: the sequence length (every denominator).
        num_invalid_gt: frames whose ground truth is invalid (any of x, y, w, h ≤ 0 or NaN).
        num_replaced_predictions: frames (after frame 1) whose prediction was replaced by the previous one.
    """

    protocol: str
    success: np.ndarray
    precision: np.ndarray
    norm_precision: np.ndarray
    num_frames: int
    num_invalid_gt: int = 0
    num_replaced_predictions: int = 0

    @property
    def success_score(self) -> float:
        """Success = mean of the success curve."""
        return float(np.mean(self.success))

    @property
    def precision_score(self) -> float:
        """Precision = the precision curve at 20 px."""
        return float(self.precision[_PRECISION_INDEX])

    @property
    def norm_precision_score(self) -> float:
        """Norm. Precision: mean of the curve (``lsotb``) or its value at 0.20 (``pytracking``)."""
        return _norm_precision_score(self.norm_precision, self.protocol)

    @property
    def op50(self) -> float:
        """Overlap precision at 0.5: the fraction of frames with IoU > 0.5 (the success curve at t = 0.5)."""
        return float(self.success[_OP50_INDEX])

    @property
    def op75(self) -> float:
        """Overlap precision at 0.75: the fraction of frames with IoU > 0.75 (the success curve at t = 0.75)."""
        return float(self.success[_OP75_INDEX])

    @property
    def all_zero(self) -> bool:
        """Whether the success curve is zero at every threshold (no frame with IoU > 0)."""
        return not np.any(self.success > 0)


def _norm_precision_score(curve: np.ndarray, protocol: str) -> float:
    if protocol == "pytracking":
        return float(curve[_NORM_PRECISION_INDEX])
    return float(np.mean(curve))


def _as_boxes(a: np.ndarray | list, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what} must have shape [T, 4] (x, y, w, h), got {arr.shape}")
    return arr


def valid_ground_truth(gt: np.ndarray) -> np.ndarray:
    """``[T]`` bool: True where none of x, y, w, h is ≤ 0 or NaN."""
    gt = _as_boxes(gt, "gt")
    return np.all(gt > 0, axis=1)  # NaN > 0 is False


def repair_predictions(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int]:
    """Frame 1 := ground truth; a NaN or w ≤ 0 / h ≤ 0 prediction := the previous frame's (repaired) prediction.

    Returns the repaired ``[T, 4]`` copy and how many frames after the first were replaced.
    """
    pred = _as_boxes(pred, "pred").copy()
    gt = _as_boxes(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred has {pred.shape[0]} frames but gt has {gt.shape[0]}")
    if pred.shape[0] == 0:
        raise ValueError("empty sequence: pred and gt have 0 frames")
    pred[0] = gt[0]
    bad = np.isnan(pred).any(axis=1) | ~(pred[:, 2] > 0) | ~(pred[:, 3] > 0)
    bad[0] = False
    for i in np.flatnonzero(bad):
        pred[i] = pred[i - 1]
    return pred, int(bad.sum())


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[T, 4]`` ``x, y, w, h`` boxes, inclusive-pixel convention (= continuous boxes with x2 = x + w)."""
    a = _as_boxes(a, "a")
    b = _as_boxes(b, "b")
    with np.errstate(invalid="ignore", divide="ignore"):
        iw = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
        ih = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
        out = np.where(union > 0, inter / union, 0.0)
    # x + w − x need not round back to w: keep identical boxes from scoring IoU > 1 by rounding.
    out = np.minimum(out, 1.0)
    return out


def centers(boxes: np.ndarray) -> np.ndarray:
    """``[T, 2]`` centres ``(x + (w−1)/2, y + (h−1)/2)``."""
    boxes = _as_boxes(boxes, "boxes")
    return boxes[:, :2] + (boxes[:, 2:] - 1.0) / 2.0


def sequence_curves(pred: np.ndarray, gt: np.ndarray, protocol: Protocol = "lsotb") -> SequenceCurves:
    """OPE curves of one sequence: predictions ``[T, 4]`` against ground truth ``[T, 4]``, both ``x, y, w, h``."""
    _check_protocol(protocol)
    gt = _as_boxes(gt, "gt")
    pred, replaced = repair_predictions(pred, gt)
    n = gt.shape[0]
    valid = valid_ground_truth(gt)

    overlaps = iou(pred, gt)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = centers(pred) - centers(gt)
        err = np.hypot(d[:, 0], d[:, 1])
        safe_wh = np.where(valid[:, None], gt[:, 2:], 1.0)
        nd = d / safe_wh
        nerr = np.hypot(nd[:, 0], nd[:, 1])
        succ_hits = (overlaps[:, None] > SUCCESS_THRESHOLDS[None, :]) & valid[:, None]
        prec_hits = err[:, None] <= PRECISION_THRESHOLDS[None, :]
        nprec_hits = nerr[:, None] <= NORM_PRECISION_THRESHOLDS[None, :]

    # Invalid ground truth: normalised precision always counts a success; pixel precision a success under lsotb,
    # a failure under pytracking.
    nprec_hits[~valid] = True
    prec_hits[~valid] = protocol == "lsotb"

    return SequenceCurves(
        protocol=protocol,
        success=succ_hits.sum(axis=0) / n,
        precision=prec_hits.sum(axis=0) / n,
        norm_precision=nprec_hits.sum(axis=0) / n,
        num_frames=n,
        num_invalid_gt=int((~valid).sum()),
        num_replaced_predictions=replaced,
    )


@dataclass(frozen=True, eq=False)
class Scores:
    """Averaged curves and the three scores over a set of sequences."""

    success: float
    precision: float
    norm_precision: float
    success_curve: np.ndarray
    precision_curve: np.ndarray
    norm_precision_curve: np.ndarray
    num_sequences_averaged: int
    sequences: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class DatasetScores(Scores):
    """Dataset-level OPE scores of one tracker.

    ``success`` / ``precision`` / ``norm_precision`` and the ``*_curve`` arrays average the per-sequence curves of the
    ``num_sequences_averaged`` sequences in ``sequences``. Two kinds of sequences are left out of that average:

    - ``dropped`` (``lsotb`` only): this tracker's sequences whose success curve is all zero;
    - ``excluded`` (``pytracking`` only): sequences that some tracker of the comparison has no result for, left out
      for every tracker of it alike (:func:`aggregate_trackers`).

    ``per_sequence`` holds every curve this tracker has, averaged or not (sequence name → :class:`SequenceCurves`).
    ``per_attribute`` maps each attribute to the same averages over the averaged sequences carrying it. All scores are
    NaN when no sequence is averaged.
    """

    protocol: str = "lsotb"
    dropped: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    per_attribute: dict[str, Scores] = field(default_factory=dict)
    per_sequence: dict[str, SequenceCurves] = field(default_factory=dict)

    @property
    def curves(self) -> dict[str, np.ndarray]:
        return {
            "success": self.success_curve,
            "precision": self.precision_curve,
            "norm_precision": self.norm_precision_curve,
        }


def _average(curves: Mapping[str, SequenceCurves], names: list[str], protocol: str) -> Scores:
    if not names:
        nan = float("nan")
        return Scores(
            success=nan,
            precision=nan,
            norm_precision=nan,
            success_curve=np.full(SUCCESS_THRESHOLDS.shape, np.nan),
            precision_curve=np.full(PRECISION_THRESHOLDS.shape, np.nan),
            norm_precision_curve=np.full(NORM_PRECISION_THRESHOLDS.shape, np.nan),
            num_sequences_averaged=0,
            sequences=(),
        )
    s = np.mean([curves[n].success for n in names], axis=0)
    p = np.mean([curves[n].precision for n in names], axis=0)
    q = np.mean([curves[n].norm_precision for n in names], axis=0)
    return Scores(
        success=float(np.mean(s)),
        precision=float(p[_PRECISION_INDEX]),
        norm_precision=_norm_precision_score(q, protocol),
        success_curve=s,
        precision_curve=p,
        norm_precision_curve=q,
        num_sequences_averaged=len(names),
        sequences=tuple(names),
    )


def _one_protocol(curves: Iterable[SequenceCurves]) -> str:
    protocols = {c.protocol for c in curves}
    if len(protocols) != 1:
        raise ValueError(f"sequences were scored under different protocols: {sorted(protocols)}")
    return protocols.pop()


def aggregate(
    curves: Mapping[str, SequenceCurves],
    attributes: Mapping[str, Mapping[str, bool]] | None = None,
    excluded: Iterable[str] = (),
) -> DatasetScores:
    """Average one tracker's per-sequence curves with equal weight per sequence, under the curves' protocol.

    ``lsotb`` drops the sequences whose success curve is all zero; ``pytracking`` keeps them.

    Args:
        curves: sequence name → :class:`SequenceCurves` (all under the same protocol).
        attributes: optional sequence name → {attribute: flag}; each attribute's scores average the averaged
            sequences whose flag is true. Every attribute named by any sequence is reported (NaN scores when none is
            averaged).
        excluded: sequences to leave out of every average (those some other tracker has no result for, under
            ``pytracking``; see :func:`aggregate_trackers`); they may or may not be in ``curves``.
    """
    if not curves:
        raise ValueError("aggregate() needs at least one sequence")
    protocol = _one_protocol(curves.values())
    excluded = tuple(excluded)
    names = list(curves)
    candidates = [n for n in names if n not in excluded]
    dropped = [n for n in candidates if protocol == "lsotb" and curves[n].all_zero]
    kept = [n for n in candidates if n not in dropped]
    total = _average(curves, kept, protocol)

    per_attribute: dict[str, Scores] = {}
    if attributes is not None:
        missing = [n for n in names if n not in attributes]
        if missing:
            raise ValueError(f"no attributes given for sequences {missing}")
        attr_names: list[str] = []
        for n in names:
            for a in attributes[n]:
                if a not in attr_names:
                    attr_names.append(a)
        for a in attr_names:
            carrying = [n for n in kept if attributes[n].get(a, False)]
            per_attribute[a] = _average(curves, carrying, protocol)

    return DatasetScores(
        **{f.name: getattr(total, f.name) for f in fields(Scores)},
        protocol=protocol,
        dropped=tuple(dropped),
        excluded=excluded,
        per_attribute=per_attribute,
        per_sequence=dict(curves),
    )


def missing_results(
    curves: Mapping[str, Mapping[str, SequenceCurves]], sequences: SequenceOf[str]
) -> dict[str, list[str]]:
    """Sequence name → the trackers of ``curves`` (tracker → sequence → curves) that have no curves for it, for every
    sequence of ``sequences`` that some tracker lacks (in ``sequences``' order)."""
    out: dict[str, list[str]] = {}
    for name in sequences:
        lacking = [t for t, per in curves.items() if name not in per]
        if lacking:
            out[name] = lacking
    return out


def aggregate_trackers(
    curves: Mapping[str, Mapping[str, SequenceCurves]],
    sequences: SequenceOf[str],
    attributes: Mapping[str, Mapping[str, bool]] | None = None,
) -> dict[str, DatasetScores]:
    """Scores of several trackers over the same ``sequences`` (one comparison table), under the curves' protocol.

    ``lsotb``: every tracker must have curves for every sequence (a gap raises ``ValueError`` naming them); each
    tracker then drops its own all-zero sequences (:func:`aggregate`).

    ``pytracking``: a sequence that some tracker has no curves for is excluded for *all* trackers (recorded in each
    result's ``excluded``, and logged as a warning naming the sequences and who lacks them); all-zero sequences stay.

    Args:
        curves: tracker → (sequence name → :class:`SequenceCurves`); a missing sequence is a missing result. Curves of
            sequences not in ``sequences`` are ignored.
        sequences: the sequences of the comparison, in order.
        attributes: optional sequence name → {attribute: flag}, as for :func:`aggregate`.

    Returns:
        tracker → :class:`DatasetScores`, in ``curves``' order.
    """
    if not curves:
        raise ValueError("aggregate_trackers() needs at least one tracker")
    if not sequences:
        raise ValueError("aggregate_trackers() needs at least one sequence")
    protocol = _one_protocol(c for per in curves.values() for c in per.values())
    missing = missing_results(curves, sequences)
    if missing and protocol != "pytracking":
        detail = "; ".join(f"{n}: {', '.join(t)}" for n, t in list(missing.items())[:10])
        raise ValueError(
            f"protocol {protocol} needs every tracker's result for every sequence; missing for "
            f"{len(missing)} sequence(s) ({detail}{' …' if len(missing) > 10 else ''})"
        )
    excluded = tuple(missing)
    if excluded:
        logger.warning(
            "protocol pytracking: %d sequence(s) excluded for every tracker because some tracker has no result: %s",
            len(excluded),
            "; ".join(f"{n} (no result from {', '.join(t)})" for n, t in missing.items()),
        )
    out: dict[str, DatasetScores] = {}
    for tracker, per in curves.items():
        mine = {n: per[n] for n in sequences if n in per}
        if not mine:
            raise ValueError(f"tracker {tracker!r} has no result for any of the {len(sequences)} sequence(s)")
        mine_attrs = None if attributes is None else {n: attributes[n] for n in mine}
        out[tracker] = aggregate(mine, mine_attrs, excluded)
    return out
