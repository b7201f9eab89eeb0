"""The OPE table renderer (:mod:`cmd_ray.evaluation.tables`): protocol in the title, columns, dropped/excluded."""

from __future__ import annotations

import numpy as np

from cmd_ray.evaluation.metrics import aggregate, aggregate_trackers, sequence_curves
from cmd_ray.evaluation.tables import format_attribute_table, format_comparison

GT_BOX = [10.0, 10.0, 20.0, 20.0]


def _const(box: list[float], n: int) -> np.ndarray:
    return np.tile(np.asarray(box, dtype=np.float64), (n, 1))


def _three_sequences(protocol: str = "lsotb") -> dict:
    """A: perfect (Success 20/21); B: 5 px off in x (Success 14/21); C: frame 1 invalid, lost after (all zero)."""
    n = 4
    gt = _const(GT_BOX, n)
    lost_gt = gt.copy()
    lost_gt[0] = 0.0
    return {
        "A": sequence_curves(gt.copy(), gt, protocol),
        "B": sequence_curves(_const([15.0, 10.0, 20.0, 20.0], n), gt, protocol),
        "C": sequence_curves(_const([200.0, 200.0, 20.0, 20.0], n), lost_gt, protocol),
    }


def format_table(results, **kwargs) -> str:
    return format_comparison(results, deltas=False, **kwargs)


def test_format_table_names_protocol() -> None:
    curves = _three_sequences()
    attrs = {k: {"occlusion": True} for k in curves}
    table = format_table({"DiMP": aggregate(curves, attrs)}, dataset="LSOTB-TIR", per_attribute=True)
    assert "protocol: lsotb" in table and "LSOTB-TIR" in table
    assert "NormPrec(AUC)" in table and "DiMP" in table and "occlusion" in table
    assert f"{(20 / 21 + 14 / 21) / 2:.3f}" in table and "(1 dropped)" in table
    pyt = format_table({"DiMP": aggregate(_three_sequences("pytracking"))})
    assert "protocol: pytracking" in pyt and "NormPrec@0.20" in pyt
    no_np = format_table({"DiMP": aggregate(curves)}, show_norm_precision=False)
    assert "NormPrec" not in no_np and "protocol: lsotb" in no_np


def test_deltas_fps_and_attribute_rows() -> None:
    curves = _three_sequences()
    attrs = {"A": {"occlusion": True}, "B": {"occlusion": False}, "C": {"occlusion": True}}
    results = {"ref": aggregate(curves, attrs), "one": aggregate({"A": curves["A"], "B": curves["A"]}, None)}
    table = format_comparison(results, dataset="synthetic", fps={"ref": 12.34, "one": float("nan")}, per_attribute=True)
    lines = table.splitlines()
    assert lines[0] == "OPE — protocol: lsotb — dataset: synthetic — deltas to ref"
    assert lines[1].split() == ["Tracker", "Success", "Prec@20px", "NormPrec(AUC)", "FPS", "Seqs"]
    ref_row, attr_row, one_row = lines[3], lines[4], lines[5]
    assert ref_row.startswith("ref ") and "12.3" in ref_row and "(" not in ref_row.replace("(1 dropped)", "")
    assert attr_row.startswith("  ref / occlusion") and attr_row.split()[-1] == "1"  # C is dropped: A alone
    delta = f"{20 / 21 - (20 / 21 + 14 / 21) / 2:+.3f}"
    assert f"{20 / 21:.3f} ({delta})" in one_row and one_row.split()[-2] == "–" and one_row.split()[-1] == "2"
    occlusion = format_attribute_table(results, "success").splitlines()
    assert occlusion[0] == "Per attribute — Success — protocol: lsotb — deltas to ref"
    assert occlusion[3].split()[:3] == ["occlusion", "1", f"{20 / 21:.3f}"] and occlusion[3].split()[-1] == "-"


def test_excluded_sequences_are_counted_and_named() -> None:
    curves = {"X": _three_sequences("pytracking"), "Y": _three_sequences("pytracking")}
    curves["Y"].pop("B")
    table = format_comparison(aggregate_trackers(curves, ["A", "B", "C"]))
    rows = table.splitlines()
    assert rows[0].startswith("OPE — protocol: pytracking") and "NormPrec@0.20" in rows[1]
    assert rows[3].endswith("2 (1 excluded)") and rows[4].endswith("2 (1 excluded)")
    assert rows[-1] == "1 sequence(s) excluded for every tracker (some tracker has no result): B"
    complete = format_comparison(aggregate_trackers(curves, ["A", "C"]))
    assert "excluded" not in complete and complete.splitlines()[-1].endswith("  2")
