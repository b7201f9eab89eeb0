"""OPE metrics against hand-computed values (EVALUATION.md, protocols ``lsotb`` and ``pytracking``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmd_ray.evaluation.metrics import (
    NORM_PRECISION_THRESHOLDS,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    aggregate,
    centers,
    format_table,
    iou,
    repair_predictions,
    sequence_curves,
)

GT_BOX = [10.0, 10.0, 20.0, 20.0]


def _const(box: list[float], n: int) -> np.ndarray:
    return np.tile(np.asarray(box, dtype=np.float64), (n, 1))


def test_thresholds() -> None:
    assert SUCCESS_THRESHOLDS.shape == (21,) and SUCCESS_THRESHOLDS[0] == 0 and SUCCESS_THRESHOLDS[-1] == 1
    assert PRECISION_THRESHOLDS.shape == (51,) and PRECISION_THRESHOLDS[20] == 20
    assert NORM_PRECISION_THRESHOLDS.shape == (51,) and NORM_PRECISION_THRESHOLDS[20] == 0.2
    assert NORM_PRECISION_THRESHOLDS[-1] == 0.5


def test_iou_inclusive_pixels_and_centres() -> None:
    # Inclusive pixels 1..2 and 2..3 in both axes: 1 shared pixel of 4 + 4 - 1 = 7.
    assert iou(np.array([[1, 1, 2, 2]]), np.array([[2, 2, 2, 2]]))[0] == pytest.approx(1 / 7)
    assert iou(np.array([[0, 0, 5, 5]]), np.array([[5, 0, 5, 5]]))[0] == 0.0  # touching, no shared pixel
    np.testing.assert_allclose(centers(np.array([[0, 0, 1, 1], [10, 20, 5, 7]])), [[0, 0], [12, 23]])


@pytest.mark.parametrize("protocol", ["lsotb", "pytracking"])
def test_perfect_tracker(protocol: str) -> None:
    rng = np.random.default_rng(0)
    gt = np.concatenate([rng.uniform(1, 100, (30, 2)), rng.uniform(5, 50, (30, 2))], axis=1)
    c = sequence_curves(gt.copy(), gt, protocol)
    np.testing.assert_array_equal(c.success[:-1], 1.0)
    assert c.success[-1] == 0.0  # IoU > 1 never holds
    assert c.success_score == pytest.approx(20 / 21)
    assert c.precision_score == 1.0
    assert c.norm_precision_score == 1.0


def test_constant_offset_hand_computed() -> None:
    # Shift by 5 px in x on 20x20 boxes: IoU = 15*20 / (400 + 400 - 300) = 0.6, centre error 5 px, normalised 0.25.
    n = 4
    gt = _const(GT_BOX, n)
    pred = _const([15.0, 10.0, 20.0, 20.0], n)
    c = sequence_curves(pred, gt)  # frame 1 becomes the ground truth (IoU 1, error 0)
    # IoU > t: t = 0..0.55 (12 thresholds) all 4 frames; t = 0.6..0.95 (8) only frame 1 (0.6 > 0.6 is false); t = 1 none
    expected_success = np.array([1.0] * 12 + [0.25] * 8 + [0.0])
    np.testing.assert_allclose(c.success, expected_success)
    assert c.success_score == pytest.approx(14 / 21)
    np.testing.assert_allclose(c.precision, [0.25] * 5 + [1.0] * 46)  # error 5 <= t from t = 5
    assert c.precision_score == 1.0
    np.testing.assert_allclose(c.norm_precision, [0.25] * 25 + [1.0] * 26)  # 0.25 <= t from t = 0.25
    assert c.norm_precision_score == pytest.approx((25 * 0.25 + 26) / 51)
    cp = sequence_curves(pred, gt, "pytracking")
    assert cp.success_score == pytest.approx(14 / 21)
    assert cp.norm_precision_score == pytest.approx(0.25)  # value at 0.20, not the AUC


def test_size_error_uses_inclusive_centres() -> None:
    # Width 40 vs 20 at the same corner: IoU = 400/800; centre x: 10 + 39/2 vs 10 + 19/2 -> 10 px; normalised 0.5.
    gt = _const(GT_BOX, 2)
    pred = _const([10.0, 10.0, 40.0, 20.0], 2)
    c = sequence_curves(pred, gt)
    assert c.success[10] == 0.5  # t = 0.5: IoU 0.5 is not > 0.5
    assert c.success[9] == 1.0
    assert c.precision[9] == 0.5 and c.precision[10] == 1.0
    assert c.norm_precision[49] == 0.5 and c.norm_precision[50] == 1.0


def test_far_tracker_fails_precision_at_20px() -> None:
    gt = _const(GT_BOX, 5)
    pred = _const([40.0, 10.0, 20.0, 20.0], 5)  # 30 px away, no overlap
    c = sequence_curves(pred, gt)
    assert c.precision_score == pytest.approx(0.2)  # only frame 1
    assert c.success_score == pytest.approx(0.2 * 20 / 21)


def test_nan_and_zero_size_predictions_take_previous() -> None:
    n = 5
    gt = _const(GT_BOX, n)
    pred = np.array(
        [
            [np.nan, np.nan, np.nan, np.nan],  # frame 1: replaced by the ground truth anyway
            [15.0, 10.0, 20.0, 20.0],
            [np.nan, 3.0, 4.0, 5.0],  # NaN -> frame 2's
            [0.0, 0.0, 0.0, 5.0],  # w = 0 -> frame 3's (= frame 2's)
            [10.0, 10.0, 20.0, -1.0],  # h < 0 -> frame 4's
        ]
    )
    fixed, replaced = repair_predictions(pred, gt)
    np.testing.assert_array_equal(fixed, [GT_BOX] + [[15.0, 10.0, 20.0, 20.0]] * 4)
    assert replaced == 3
    c = sequence_curves(pred, gt)
    assert c.num_replaced_predictions == 3
    # Frames 2-5 all at IoU 0.6: t = 0.6..0.95 only frame 1 succeeds.
    assert c.success_score == pytest.approx((12 * 1.0 + 8 * 0.2) / 21)
    explicit = sequence_curves(fixed, gt)
    np.testing.assert_array_equal(c.success, explicit.success)
    np.testing.assert_array_equal(c.precision, explicit.precision)


def test_invalid_ground_truth_lsotb_vs_pytracking() -> None:
    gt = np.array([GT_BOX, GT_BOX, [0.0, 10.0, 20.0, 20.0], [np.nan, 10.0, 20.0, 20.0]])  # x = 0 and NaN: invalid
    pred = np.array([GT_BOX, GT_BOX, GT_BOX, [300.0, 300.0, 20.0, 20.0]])
    lsotb = sequence_curves(pred, gt, "lsotb")
    assert lsotb.num_invalid_gt == 2
    # IoU: failure on invalid frames even where the prediction would overlap; denominators stay 4.
    np.testing.assert_allclose(lsotb.success, [0.5] * 20 + [0.0])
    assert lsotb.success_score == pytest.approx(10 / 21)
    # Centre error: success at every threshold on invalid frames (pixel and normalised), even 300 px away.
    np.testing.assert_array_equal(lsotb.precision, 1.0)
    np.testing.assert_array_equal(lsotb.norm_precision, 1.0)
    pyt = sequence_curves(pred, gt, "pytracking")
    np.testing.assert_allclose(pyt.success, lsotb.success)
    np.testing.assert_array_equal(pyt.precision, 0.5)  # invalid frames fail pixel precision
    assert pyt.precision_score == 0.5
    np.testing.assert_array_equal(pyt.norm_precision, 1.0)  # EVALUATION.md changes only the pixel precision
    assert pyt.norm_precision_score == 1.0


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="frames"):
        sequence_curves(np.zeros((3, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match=r"\[T, 4\]"):
        sequence_curves(np.zeros((3, 5)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="protocol"):
        sequence_curves(np.ones((3, 4)), np.ones((3, 4)), "otb")  # type: ignore[arg-type]


def _three_sequences(protocol: str = "lsotb") -> dict:
    n = 4
    gt = _const(GT_BOX, n)
    perfect = sequence_curves(gt.copy(), gt, protocol)
    offset = sequence_curves(_const([15.0, 10.0, 20.0, 20.0], n), gt, protocol)  # success 14/21
    lost_gt = gt.copy()
    lost_gt[0] = 0.0  # frame 1 invalid: its IoU fails, and the tracker never overlaps afterwards
    lost = sequence_curves(_const([200.0, 200.0, 20.0, 20.0], n), lost_gt, protocol)
    assert not np.any(lost.success)
    return {"A": perfect, "B": offset, "C": lost}


def test_aggregate_drops_all_zero_sequence() -> None:
    curves = _three_sequences()
    scores = aggregate(curves)
    assert scores.num_sequences_averaged == 2
    assert scores.dropped == ("C",)
    assert scores.sequences == ("A", "B")
    assert scores.success == pytest.approx((20 / 21 + 14 / 21) / 2)
    assert scores.precision == 1.0
    assert scores.norm_precision == pytest.approx((1.0 + (25 * 0.25 + 26) / 51) / 2)
    np.testing.assert_allclose(scores.curves["success"], (curves["A"].success + curves["B"].success) / 2)
    assert scores.protocol == "lsotb"


def test_aggregate_per_attribute() -> None:
    curves = _three_sequences()
    attributes = {
        "A": {"occlusion": True, "fast_motion": False, "low_resolution": False},
        "B": {"occlusion": True, "fast_motion": True, "low_resolution": False},
        "C": {"occlusion": True, "fast_motion": True, "low_resolution": True},
    }
    scores = aggregate(curves, attributes)
    occ = scores.per_attribute["occlusion"]
    assert occ.num_sequences_averaged == 2 and occ.success == pytest.approx(17 / 21)
    fm = scores.per_attribute["fast_motion"]
    assert fm.sequences == ("B",) and fm.success == pytest.approx(14 / 21)
    assert fm.norm_precision == pytest.approx((25 * 0.25 + 26) / 51)
    lr = scores.per_attribute["low_resolution"]  # only the dropped sequence carries it
    assert lr.num_sequences_averaged == 0 and math.isnan(lr.success)
    with pytest.raises(ValueError, match="attributes"):
        aggregate(curves, {"A": {}})


def test_aggregate_pytracking_norm_precision_and_mixed_protocols() -> None:
    scores = aggregate(_three_sequences("pytracking"))
    assert scores.norm_precision == pytest.approx((1.0 + 0.25) / 2)
    mixed = {"A": _three_sequences("lsotb")["A"], "B": _three_sequences("pytracking")["B"]}
    with pytest.raises(ValueError, match="protocols"):
        aggregate(mixed)
    with pytest.raises(ValueError):
        aggregate({})


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
