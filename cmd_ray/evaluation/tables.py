"""Plain-text OPE tables: the one renderer of every table the evaluate job and ``cmd-ray compare`` print.

- :func:`format_comparison`: one row per tracker (Success, Precision at 20 px, Norm. Precision, optional FPS and the
  number of sequences averaged), titled with the protocol and the data set; optionally the deltas of every row to
  the first tracker, and optionally one indented row per (tracker, attribute).
- :func:`format_attribute_table`: one row per attribute, one column per tracker, for one metric.
- :func:`format_gap_table`: the modality gap, one row per tracker: TIR and RGB-twin scores, share of the gap closed.
- :func:`format_table1`: the paper's Table 1, one line per row, ``mean ± std`` over seeds (:func:`summarise_rows`),
  each row's paired difference to the reference row with its bootstrap interval (:mod:`cmd_ray.evaluation.paired`).

Every table names the protocol its scores were computed under (docs/evaluation.md). The ``Seqs`` column says how many
sequences were averaged and how many were dropped (``lsotb``: all-zero success) or excluded (``pytracking``: some
tracker has no result); a table with excluded sequences ends with a line naming them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cmd_ray.evaluation.gap import GAP_METRICS, ModalityGap
from cmd_ray.evaluation.metrics import DatasetScores, Scores
from cmd_ray.evaluation.paired import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PairedDifference,
    compare_to_reference,
)


def norm_precision_label(protocol: str) -> str:
    """The Norm. Precision column's heading: an AUC under ``lsotb``, the value at 0.20 under ``pytracking``."""
    return "NormPrec(AUC)" if protocol == "lsotb" else "NormPrec@0.20"


def sequences_cell(r: DatasetScores | Scores) -> str:
    """The ``Seqs`` cell of a row: sequences averaged, and how many were dropped or excluded."""
    notes = []
    if isinstance(r, DatasetScores):
        notes += [f"{len(r.dropped)} dropped"] if r.dropped else []
        notes += [f"{len(r.excluded)} excluded"] if r.excluded else []
    return f"{r.num_sequences_averaged}" + (f" ({', '.join(notes)})" if notes else "")


def exclusion_note(results: Mapping[str, DatasetScores]) -> str | None:
    """The line a table ends with when sequences were excluded for every tracker (``pytracking``), else None."""
    excluded = next((r.excluded for r in results.values() if r.excluded), ())
    if not excluded:
        return None
    names = ", ".join(excluded[:20]) + (" …" if len(excluded) > 20 else "")
    return f"{len(excluded)} sequence(s) excluded for every tracker (some tracker has no result): {names}"


def _one_protocol(results: Mapping[str, DatasetScores]) -> str:
    if not results:
        raise ValueError("a table needs at least one tracker")
    protocols = {r.protocol for r in results.values()}
    if len(protocols) != 1:
        raise ValueError(f"results under different protocols cannot share one table: {sorted(protocols)}")
    return protocols.pop()


def _cell(value: float, reference: float | None) -> str:
    if reference is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({value - reference:+.3f})"


def _render(title: str, header: list[str], rows: list[list[str]], note: str | None = None) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    lines = [title, fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
    return "\n".join(lines + ([note] if note else []))


def format_comparison(
    results: Mapping[str, DatasetScores],
    *,
    dataset: str | None = None,
    show_norm_precision: bool = True,
    fps: Mapping[str, float] | None = None,
    deltas: bool = True,
    per_attribute: bool = False,
) -> str:
    """The OPE table: one row per tracker, Success / Precision / Norm. Precision, headed by the protocol.

    Args:
        results: tracker → scores, ordered: with ``deltas`` the first tracker is the reference of the others'
            deltas (``0.640 (+0.020)``).
        dataset: named in the title.
        show_norm_precision: False leaves out Norm. Precision (PTB-TIR's toolkit does not report it).
        fps: tracker → frames per second: adds an FPS column (``–`` where it is NaN).
        deltas: show each row's differences to the first tracker's scores.
        per_attribute: append one indented row per (tracker, attribute) after the tracker's row (no deltas, no FPS).
    """
    protocol = _one_protocol(results)
    header = ["Tracker", "Success", "Prec@20px"]
    if show_norm_precision:
        header.append(norm_precision_label(protocol))
    if fps is not None:
        header.append("FPS")
    header.append("Seqs")
    reference = next(iter(results.values()))

    def row(label: str, s: DatasetScores | Scores, ref: DatasetScores | None, rate: float | None) -> list[str]:
        cells = [
            label,
            _cell(s.success, None if ref is None else ref.success),
            _cell(s.precision, None if ref is None else ref.precision),
        ]
        if show_norm_precision:
            cells.append(_cell(s.norm_precision, None if ref is None else ref.norm_precision))
        if fps is not None:
            cells.append(f"{rate:.1f}" if rate is not None and math.isfinite(rate) else "–")
        cells.append(sequences_cell(s))
        return cells

    rows = []
    for i, (name, r) in enumerate(results.items()):
        ref = reference if deltas and i > 0 else None
        rows.append(row(name, r, ref, None if fps is None else fps.get(name, float("nan"))))
        if per_attribute:
            rows += [row(f"  {name} / {attr}", s, None, None) for attr, s in r.per_attribute.items()]
    title = f"OPE — protocol: {protocol}" + (f" — dataset: {dataset}" if dataset else "")
    if deltas and len(results) > 1:
        title += f" — deltas to {next(iter(results))}"
    return _render(title, header, rows, exclusion_note(results))


_GAP_LABELS = {"success": "Success", "precision": "Prec@20px", "norm_precision": "NormPrec"}


def _percent(value: float) -> str:
    return f"{100 * value:+.0f}%" if math.isfinite(value) else "–"


def format_gap_table(gap: ModalityGap, metrics: tuple[str, ...] = GAP_METRICS) -> str:
    """The modality-gap table (:mod:`cmd_ray.evaluation.gap`): per tracker and metric its TIR score, its RGB-twin
    score and the share of the reference's gap it closed; the title states the reference's gap per metric."""
    header = ["Tracker"]
    for m in metrics:
        header += [f"{_GAP_LABELS[m]} TIR", "RGB", "closed"]
    rows = []
    for r in gap.rows:
        cells = [r.tracker + (" (reference)" if r.tracker == gap.reference else "")]
        for m in metrics:
            cells += [f"{r.tir[m]:.3f}", f"{r.rgb[m]:.3f}" if m in r.rgb else "–", _percent(r.closed[m])]
        rows.append(cells)
    gaps = ", ".join(f"{_GAP_LABELS[m]} {gap.gap[m]:+.3f}" for m in metrics)
    title = f"Modality gap of {gap.reference} (RGB twins − TIR): {gaps}; closed: share of that gap closed on TIR"
    notes = [f"no {_GAP_LABELS[m]} gap to close (RGB twins not better)" for m in metrics if not gap.gap[m] > 0]
    return _render(title, header, rows, "\n".join(notes) or None)


def format_closed_over_seeds(gap: ModalityGap, groups: Mapping[str, Sequence[str]], metric: str = "success") -> str:
    """One line per group of seeds: the mean ± std over its seeds of the share of the reference's ``metric`` gap
    closed on TIR, and each seed's share (``groups``: a row's name → the trackers that are its seeds)."""
    lines = [f"Share of {gap.reference}'s {_GAP_LABELS[metric]} gap closed on TIR, over seeds (mean ± std):"]
    for name, members in groups.items():
        shares = [gap.row(m).closed[metric] for m in members]
        if not all(math.isfinite(v) for v in shares):
            lines.append(f"  {name}: – (no gap to close)")
            continue
        spread = f" ± {100 * float(np.std(shares, ddof=1)):.0f}%" if len(shares) > 1 else ""
        seeds = ", ".join(f"{m} {_percent(v)}" for m, v in zip(members, shares, strict=True))
        lines.append(f"  {name}: {_percent(float(np.mean(shares)))}{spread} ({len(shares)} seeds: {seeds})")
    return "\n".join(lines)


def format_attribute_table(
    results: Mapping[str, DatasetScores],
    metric: Literal["success", "precision", "norm_precision"] = "success",
) -> str:
    """Per-attribute scores: one row per attribute, one column per tracker, deltas to the first tracker.

    Attributes no averaged sequence carries are left out. ``Seqs`` counts the sequences averaged for the first
    tracker.
    """
    protocol = _one_protocol(results)
    names = list(results)
    attrs: list[str] = []
    for r in results.values():
        attrs += [a for a in r.per_attribute if a not in attrs]
    label = {"success": "Success", "precision": "Prec@20px", "norm_precision": norm_precision_label(protocol)}[metric]
    title = f"Per attribute — {label} — protocol: {protocol}" + (f" — deltas to {names[0]}" if len(names) > 1 else "")
    rows = []
    for a in attrs:
        per: list[Scores | None] = [r.per_attribute.get(a) for r in results.values()]
        if all(s is None or s.num_sequences_averaged == 0 for s in per):
            continue
        ref = per[0]
        cells = [a, str(ref.num_sequences_averaged if ref else 0)]
        for i, s in enumerate(per):
            if s is None or s.num_sequences_averaged == 0:
                cells.append("-")
                continue
            base = None if i == 0 or ref is None or ref.num_sequences_averaged == 0 else getattr(ref, metric)
            cells.append(_cell(getattr(s, metric), base))
        rows.append(cells)
    if not rows:
        return f"{title}\n(no attributes: the sequences carry none)"
    return _render(title, ["Attribute", "Seqs", *names], rows)


TABLE1_METRICS = ("success", "precision", "norm_precision")


@dataclass(frozen=True)
class RowSummary:
    """One row of Table 1 over its seeds: mean and spread of each metric, and the mean's delta to the reference row.

    ``mean`` / ``std`` / ``delta`` map :data:`TABLE1_METRICS` to fractions in [0, 1]; ``std`` is the sample standard
    deviation over the seeds (``ddof=1``; NaN for a single seed); ``delta`` is ``mean`` minus the reference row's.
    ``paired`` maps each metric to the row's paired comparison with the reference over seeds × sequences
    (:func:`cmd_ray.evaluation.paired.paired_difference`); empty for the reference row itself and when the scores
    carry no per-sequence curves.
    """

    row: str
    seeds: int
    mean: dict[str, float]
    std: dict[str, float]
    delta: dict[str, float]
    per_seed: dict[str, tuple[float, ...]]
    paired: dict[str, PairedDifference] = field(default_factory=dict)


def _has_curves(runs: Sequence[Scores]) -> bool:
    return all(isinstance(s, DatasetScores) and s.per_sequence for s in runs)


def summarise_rows(
    scores: Mapping[str, Sequence[Scores]],
    reference: str,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[RowSummary]:
    """Table 1 rows from each row's scores over its seeds (``{row: [scores of seed 0, seed 1, …]}``), in the order
    given; deltas are to ``reference``'s mean.

    When every row's scores are :class:`~cmd_ray.evaluation.metrics.DatasetScores` with per-sequence curves, each
    row other than ``reference`` also gets its paired comparison with it on every metric (``confidence``,
    ``resamples`` and the generator's ``seed`` as :func:`cmd_ray.evaluation.paired.paired_difference`).
    """
    if reference not in scores:
        raise ValueError(f"the reference row {reference!r} has no scores")
    summaries = []
    for row, runs in scores.items():
        if not runs:
            raise ValueError(f"row {row!r} has no scores")
        per_seed = {m: tuple(float(getattr(s, m)) for s in runs) for m in TABLE1_METRICS}
        mean = {m: float(np.mean(v)) for m, v in per_seed.items()}
        std = {m: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan") for m, v in per_seed.items()}
        summaries.append(RowSummary(row, len(runs), mean, std, {}, per_seed))
    ref = next(s for s in summaries if s.row == reference).mean
    paired_ok = all(_has_curves(runs) for runs in scores.values())
    out = []
    for s in summaries:
        paired: dict[str, PairedDifference] = {}
        if paired_ok and s.row != reference:
            ref_runs = [r for r in scores[reference] if isinstance(r, DatasetScores)]
            row_runs = [r for r in scores[s.row] if isinstance(r, DatasetScores)]
            try:
                paired = compare_to_reference(
                    row_runs, ref_runs, TABLE1_METRICS, confidence=confidence, resamples=resamples, seed=seed
                )
            except ValueError as exc:
                raise ValueError(f"row {s.row!r} against {reference!r}: {exc}") from None
        delta = {m: s.mean[m] - ref[m] for m in TABLE1_METRICS}
        out.append(RowSummary(s.row, s.seeds, s.mean, s.std, delta, s.per_seed, paired))
    return out


def _mean_std(summary: RowSummary, metric: str) -> str:
    mean, std = summary.mean[metric], summary.std[metric]
    return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


INTERVAL_MARK = "*"
"""Marks an interval that excludes 0 in the Table 1 text."""


def _interval_cell(p: PairedDifference | None) -> str:
    if p is None:
        return "–"
    return f"[{p.low:+.3f}, {p.high:+.3f}]" + (f" {INTERVAL_MARK}" if p.excludes_zero else "  ")


def _p_cell(p: PairedDifference | None) -> str:
    if p is None or math.isnan(p.p_value):
        return "–"
    return f"{p.p_value:.3f}" if p.p_value >= 0.001 else "<0.001"


def table1_note(summaries: Sequence[RowSummary], protocol: str) -> str | None:
    """The lines under Table 1 saying what Δ, the interval, its mark and p are; None without paired comparisons."""
    example = next((p for s in summaries for p in s.paired.values()), None)
    if example is None:
        return None
    reference = summaries[0].row
    lines = [
        f"Δ: mean over seeds × sequences of the per-sequence score difference to {reference}.",
        f"{example.confidence:.0%} CI: percentile bootstrap of that mean, drawing sequences and seeds with replacement "
        f"({example.resamples} resamples, generator seed {example.seed}).",
        f"{INTERVAL_MARK}: the interval excludes 0 (a difference above the noise of sequences and seeds).",
        "p(Success): two-sided Wilcoxon signed-rank test of the per-sequence Success differences (mean over seeds).",
    ]
    if protocol == "lsotb":
        lines.append("A sequence dropped from a row's mean (all-zero success) still counts in Δ, with its score.")
    return "\n".join(lines)


def format_table1(
    summaries: Sequence[RowSummary],
    *,
    protocol: str,
    dataset: str | None = None,
    show_norm_precision: bool = True,
    title: str = "Table 1",
) -> str:
    """Table 1 (or another ``title``'s rows over seeds): one line per row, each metric as ``mean ± std`` over the
    seeds with its delta to the reference row (the first summary), then the number of seeds.

    With paired comparisons (:attr:`RowSummary.paired`), each metric's Δ is the paired mean difference, followed by
    its bootstrap interval (marked ``*`` when it excludes 0), a Wilcoxon p-value column for Success, and a note under
    the table saying what they are; without them, Δ is the difference of the means.
    """
    metrics = [m for m in TABLE1_METRICS if show_norm_precision or m != "norm_precision"]
    labels = {"success": "Success", "precision": "Prec@20px", "norm_precision": norm_precision_label(protocol)}
    with_ci = any(s.paired for s in summaries)
    confidence = next((p.confidence for s in summaries for p in s.paired.values()), DEFAULT_CONFIDENCE)
    header = ["Row"]
    for m in metrics:
        header += [labels[m], "Δ"] + ([f"{confidence:.0%} CI"] if with_ci else [])
    header += ["p(Success)"] if with_ci else []
    header.append("Seeds")
    rows = []
    for s in summaries:
        cells = [s.row]
        for m in metrics:
            p = s.paired.get(m)
            cells += [_mean_std(s, m), f"{p.mean if p else s.delta[m]:+.3f}"]
            cells += [_interval_cell(p)] if with_ci else []
        cells += [_p_cell(s.paired.get("success"))] if with_ci else []
        cells.append(str(s.seeds))
        rows.append(cells)
    title = f"{title} — protocol: {protocol}" + (f" — dataset: {dataset}" if dataset else "")
    title += f" — mean ± std over seeds, Δ to {summaries[0].row}"
    title += " paired over seeds × sequences" if with_ci else ""
    return _render(title, header, rows, table1_note(summaries, protocol) if with_ci else None)
