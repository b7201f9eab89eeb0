"""The modality gap: its arithmetic, the closed fraction, and the table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmd_ray.evaluation.gap import GAP_METRICS, closed_fraction, modality_gap
from cmd_ray.evaluation.metrics import Scores
from cmd_ray.evaluation.tables import format_closed_over_seeds, format_gap_table


def _scores(success: float, precision: float, norm_precision: float) -> Scores:
    empty = np.zeros(3)
    return Scores(success, precision, norm_precision, empty, empty, empty, 4, ("a", "b", "c", "d"))


def test_closed_fraction_is_the_share_of_the_reference_gap() -> None:
    # teacher 0.30 on TIR, 0.50 on RGB: a gap of 0.20; a tracker at 0.35 on TIR closed a quarter of it
    assert closed_fraction(0.35, 0.30, 0.50) == pytest.approx(0.25)
    assert closed_fraction(0.30, 0.30, 0.50) == 0.0  # the teacher itself
    assert closed_fraction(0.50, 0.30, 0.50) == pytest.approx(1.0)  # as good on TIR as the teacher on RGB
    assert closed_fraction(0.26, 0.30, 0.50) == pytest.approx(-0.2)  # worse than the teacher on TIR
    assert closed_fraction(0.60, 0.30, 0.50) == pytest.approx(1.5)


@pytest.mark.parametrize("rgb", [0.30, 0.25])
def test_no_positive_gap_means_no_fraction(rgb: float) -> None:
    assert math.isnan(closed_fraction(0.40, 0.30, rgb))


def test_modality_gap_rows_and_table() -> None:
    tir = {"static": _scores(0.10, 0.05, 0.08), "teacher": _scores(0.30, 0.40, 0.35), "cmd": _scores(0.36, 0.52, 0.35)}
    rgb = {"static": _scores(0.10, 0.05, 0.08), "teacher": _scores(0.50, 0.70, 0.30), "cmd": _scores(0.48, 0.66, 0.3)}
    gap = modality_gap(tir, rgb, "teacher")
    assert gap.gap["success"] == pytest.approx(0.20) and gap.gap["precision"] == pytest.approx(0.30)
    assert gap.gap["norm_precision"] == pytest.approx(-0.05)
    assert [r.tracker for r in gap.rows] == ["static", "teacher", "cmd"]
    cmd = gap.row("cmd")
    assert cmd.closed["success"] == pytest.approx(0.30) and cmd.closed["precision"] == pytest.approx(0.40)
    assert math.isnan(cmd.closed["norm_precision"])  # the RGB twins were not better there
    assert gap.row("static").closed["success"] == pytest.approx(-1.0)
    assert [gap.row("teacher").closed[m] for m in GAP_METRICS[:2]] == [0.0, 0.0]

    table = format_gap_table(gap)
    lines = table.splitlines()
    assert "Success +0.200" in lines[0] and "Prec@20px +0.300" in lines[0]
    cmd_line = next(line for line in lines if line.startswith("cmd "))
    assert cmd_line.split()[1:4] == ["0.360", "0.480", "+30%"]
    assert "teacher (reference)" in table
    assert lines[-1] == "no NormPrec gap to close (RGB twins not better)"


def test_gap_needs_the_reference_on_both_modalities() -> None:
    tir = {"teacher": _scores(0.3, 0.4, 0.3)}
    with pytest.raises(ValueError, match="'teacher' has no RGB-twin scores"):
        modality_gap(tir, {}, "teacher")
    with pytest.raises(ValueError, match="no TIR scores: \\['other'\\]"):
        modality_gap(tir, {"teacher": tir["teacher"], "other": tir["teacher"]}, "teacher")
    with pytest.raises(ValueError, match="'nobody' has no TIR or RGB-twin scores"):
        modality_gap(tir, tir, "nobody")


def test_closed_share_over_seeds_is_the_mean_and_spread_of_each_seed() -> None:
    tir = {"teacher": _scores(0.30, 0.4, 0.3), "s0": _scores(0.36, 0.5, 0.3), "s1": _scores(0.34, 0.5, 0.3)}
    tir["s2"] = _scores(0.32, 0.5, 0.3)
    rgb = {"teacher": _scores(0.50, 0.7, 0.4)}
    gap = modality_gap(tir, rgb, "teacher")  # Success gap 0.20: the seeds closed 30%, 20% and 10%
    text = format_closed_over_seeds(gap, {"d3": ["s0", "s1", "s2"]})
    line = text.splitlines()[1]
    assert line.startswith("  d3: +20% ± 10% (3 seeds: s0 +30%, s1 +20%, s2 +10%)")
    none_to_close = modality_gap(tir, {"teacher": _scores(0.30, 0.7, 0.4)}, "teacher")
    assert "d3: – (no gap to close)" in format_closed_over_seeds(none_to_close, {"d3": ["s0", "s1"]})
