"""OPE metrics against hand-computed values (docs/evaluation.md, protocols ``lsotb`` and ``pytracking``)."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest

from cmd_ray.evaluation.metrics import (
    NORM_PRECISION_THRESHOLDS,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    aggregate,
    aggregate_trackers,
    centers,
    iou,
    repair_predictions,
    sequence_curves,
    valid_ground_truth,
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
    np.testing.assert_array_equal(pyt.norm_precision, 1.0)  # only the pixel precision differs between the protocols
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


def test_aggregate_pytracking_keeps_all_zero_sequences() -> None:
    curves = _three_sequences("pytracking")
    scores = aggregate(curves)
    assert scores.dropped == () and scores.sequences == ("A", "B", "C")
    # C: success all zero; pixel precision 0 (frame 1's invalid ground truth fails it under pytracking, the rest are
    # 269 px off); normalised precision 1/4 (the invalid frame counts a success).
    assert scores.success == pytest.approx((20 / 21 + 14 / 21 + 0) / 3)
    assert scores.precision == pytest.approx((1 + 1 + 0) / 3)
    assert scores.norm_precision == pytest.approx((1 + 0.25 + 0.25) / 3)


def test_aggregate_pytracking_norm_precision_and_mixed_protocols() -> None:
    curves = _three_sequences("pytracking")
    scores = aggregate({"A": curves["A"], "B": curves["B"]})
    assert scores.norm_precision == pytest.approx((1.0 + 0.25) / 2)
    mixed = {"A": _three_sequences("lsotb")["A"], "B": _three_sequences("pytracking")["B"]}
    with pytest.raises(ValueError, match="protocols"):
        aggregate(mixed)
    with pytest.raises(ValueError):
        aggregate({})


def _two_trackers(protocol: str) -> dict[str, dict]:
    """X scores zero on C and has every result; Y has no result for B.

    4 frames, ground truth 20x20 at (10, 10); C's frame 1 ground truth is invalid (x = 0).
      A: X 5 px off in x (success 14/21, precision 1, norm. curve 0.25 up to t < 0.25 then 1); Y perfect (20/21, 1, 1).
      B: X perfect; Y: no result.
      C: X 190 px off after frame 1 (success 0, pixel precision 0 under pytracking, 1/4 under lsotb, norm. 1/4);
         Y exact after frame 1 (success 15/21; pixel precision 3/4 under pytracking, 1 under lsotb; norm. 1).
    """
    n = 4
    gt = _const(GT_BOX, n)
    gt_c = gt.copy()
    gt_c[0, 0] = 0.0
    x = {
        "A": sequence_curves(_const([15.0, 10.0, 20.0, 20.0], n), gt, protocol),
        "B": sequence_curves(gt.copy(), gt, protocol),
        "C": sequence_curves(_const([200.0, 200.0, 20.0, 20.0], n), gt_c, protocol),
    }
    y = {"A": sequence_curves(gt.copy(), gt, protocol), "C": sequence_curves(gt.copy(), gt_c, protocol)}
    assert x["C"].all_zero and not y["C"].all_zero
    return {"X": x, "Y": y}


def test_pytracking_excludes_a_sequence_missing_for_one_tracker_for_all(caplog) -> None:
    curves = _two_trackers("pytracking")
    with caplog.at_level(logging.WARNING, logger="cmd_ray.evaluation.metrics"):
        scores = aggregate_trackers(curves, ["A", "B", "C"])
    assert "1 sequence(s) excluded for every tracker" in caplog.text and "B (no result from Y)" in caplog.text
    x, y = scores["X"], scores["Y"]
    for s in (x, y):
        assert s.excluded == ("B",) and s.dropped == () and s.sequences == ("A", "C") and s.num_sequences_averaged == 2
    # X: the all-zero C is kept: success (14/21 + 0)/2, precision (1 + 0)/2, norm. precision at 0.20 (0.25 + 0.25)/2.
    assert x.success == pytest.approx(1 / 3)
    assert x.precision == pytest.approx(0.5)
    assert x.norm_precision == pytest.approx(0.25)
    # Y: success (20/21 + 15/21)/2, precision (1 + 3/4)/2, norm. precision (1 + 1)/2.
    assert y.success == pytest.approx(5 / 6)
    assert y.precision == pytest.approx(0.875)
    assert y.norm_precision == pytest.approx(1.0)
    assert set(x.per_sequence) == {"A", "B", "C"}  # X's own curve of B is kept for the per-sequence report


def test_pytracking_with_every_result_excludes_nothing(caplog) -> None:
    curves = _two_trackers("pytracking")
    curves["X"].pop("B")
    with caplog.at_level(logging.WARNING, logger="cmd_ray.evaluation.metrics"):
        scores = aggregate_trackers(curves, ["A", "C"])
    assert "excluded" not in caplog.text
    assert scores["X"].excluded == () and scores["X"].success == pytest.approx(1 / 3)


def test_lsotb_drops_all_zero_per_tracker_and_needs_every_result() -> None:
    curves = _two_trackers("lsotb")
    with pytest.raises(ValueError, match=r"missing for 1 sequence\(s\) \(B: Y\)"):
        aggregate_trackers(curves, ["A", "B", "C"])
    curves["X"].pop("B")
    scores = aggregate_trackers(curves, ["A", "C"])
    x, y = scores["X"], scores["Y"]
    assert x.dropped == ("C",) and x.sequences == ("A",) and x.excluded == ()
    assert x.success == pytest.approx(14 / 21) and x.precision == 1.0
    assert x.norm_precision == pytest.approx((25 * 0.25 + 26) / 51)
    assert y.dropped == () and y.sequences == ("A", "C")
    # Y under lsotb: C's invalid frame 1 succeeds at every pixel threshold, so its precision is 1.
    assert y.success == pytest.approx(5 / 6) and y.precision == 1.0


# ------------------------------------------------------------------------------- diagonal and non-square cases
# Ground truth 40x20 at (10, 20) on 4 frames; frame 1 always scores as the ground truth.
WIDE_GT = [10.0, 20.0, 40.0, 20.0]


def test_diagonal_offset_on_a_wide_box() -> None:
    # Shift (3, 4): centre error 5 px (|dx| + |dy| would be 7, max(|dx|, |dy|) 4).
    # Normalised: (3/40, 4/20) -> sqrt(0.075^2 + 0.2^2) = 0.21360 (dividing by the wrong sides, (3/20, 4/40),
    # would give 0.18028; |.| + |.| would give 0.275).
    # IoU: x overlap 50 - 13 = 37, y overlap 40 - 24 = 16, 592 / (800 + 800 - 592) = 0.58730.
    n = 4
    gt = _const(WIDE_GT, n)
    pred = _const([13.0, 24.0, 40.0, 20.0], n)
    assert iou(pred[:1], gt[:1])[0] == pytest.approx(592 / 1008)
    c = sequence_curves(pred, gt)
    np.testing.assert_allclose(c.precision, [0.25] * 5 + [1.0] * 46)  # error 5 <= t from t = 5 on
    np.testing.assert_allclose(c.norm_precision, [0.25] * 22 + [1.0] * 29)  # 0.2136 <= t from t = 0.22 on
    np.testing.assert_allclose(c.success, [1.0] * 12 + [0.25] * 8 + [0.0])  # 0.587 > t up to t = 0.55
    assert c.success_score == pytest.approx((12 + 8 * 0.25) / 21)
    assert c.precision_score == 1.0
    assert c.norm_precision_score == pytest.approx((22 * 0.25 + 29) / 51)
    assert sequence_curves(pred, gt, "pytracking").norm_precision_score == 0.25  # 0.2136 > 0.20
    assert (c.op50, c.op75) == (1.0, 0.25)


def test_smaller_box_inside_a_wide_box() -> None:
    # Prediction 30x10 at the same corner: centres (24.5, 24.5) vs (29.5, 29.5): error 5*sqrt(2) = 7.071 px.
    # Normalised by the ground truth's size: (5/40, 5/20) -> 0.27951 (by the prediction's: (5/30, 5/10) -> 0.527).
    # IoU: the prediction lies inside: 300 / 800 = 0.375.
    n = 4
    gt = _const(WIDE_GT, n)
    pred = _const([10.0, 20.0, 30.0, 10.0], n)
    np.testing.assert_allclose(centers(pred[:1]), [[24.5, 24.5]])
    assert iou(pred[:1], gt[:1])[0] == pytest.approx(0.375)
    assert iou(gt[:1], pred[:1])[0] == pytest.approx(0.375)  # symmetric
    c = sequence_curves(pred, gt)
    np.testing.assert_allclose(c.precision, [0.25] * 8 + [1.0] * 43)  # 7.07 <= t from t = 8 on
    np.testing.assert_allclose(c.norm_precision, [0.25] * 28 + [1.0] * 23)  # 0.2795 <= t from t = 0.28 on
    np.testing.assert_allclose(c.success, [1.0] * 8 + [0.25] * 12 + [0.0])  # 0.375 > t up to t = 0.35
    assert (c.op50, c.op75) == (0.25, 0.25)


def test_tall_box_partial_overlap_in_both_axes() -> None:
    # Ground truth 10x30 at (5, 5), prediction 20x10 at (10, 30): x overlap min(15, 30) - 10 = 5,
    # y overlap min(35, 40) - 30 = 5: 25 / (300 + 200 - 25) = 25/475. Centres (9.5, 19.5) vs (19.5, 34.5):
    # error sqrt(10^2 + 15^2) = 18.03 px; normalised (10/10, 15/30) -> sqrt(1.25) = 1.118 (beyond 0.5).
    gt = _const([5.0, 5.0, 10.0, 30.0], 2)
    pred = _const([10.0, 30.0, 20.0, 10.0], 2)
    assert iou(pred[:1], gt[:1])[0] == pytest.approx(25 / 475)
    c = sequence_curves(pred, gt)
    np.testing.assert_allclose(c.success, [1.0] * 2 + [0.5] * 18 + [0.0])  # 0.0526 > 0 and > 0.05 only
    np.testing.assert_allclose(c.precision, [0.5] * 19 + [1.0] * 32)  # 18.03 <= t from t = 19 on
    np.testing.assert_array_equal(c.norm_precision, 0.5)


def test_iou_disjoint_touching_and_identical_boxes() -> None:
    a = np.array([[0.0, 0.0, 10.0, 10.0]] * 4)
    b = np.array([[20.0, 20.0, 5.0, 5.0], [10.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.1, 0.2, 10.0, 10.0]])
    np.testing.assert_allclose(iou(a, b), [0.0, 0.0, 1.0, 9.9 * 9.8 / (200 - 9.9 * 9.8)])
    # Far apart in one axis but overlapping in the other: no overlap (no negative extent times negative extent).
    assert iou(np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([[20.0, 20.0, 10.0, 10.0]]))[0] == 0.0
    # A prediction with a negative extent never produces a negative or NaN IoU.
    assert iou(np.array([[0.0, 0.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 0.0, 0.0]]))[0] == 0.0
    # Rounding: 0.1 + 0.2 style sums keep identical boxes at IoU exactly 1, never above.
    same = np.array([[0.1, 0.2, 0.7, 0.3]])
    assert iou(same, same)[0] == 1.0


def test_equal_weight_per_sequence_not_per_frame() -> None:
    # A perfect 2-frame sequence and a 6-frame sequence lost after frame 1: the dataset score is the mean of the
    # two sequences' scores (not the frame-weighted 3/8 of frames within 20 px).
    short = _const(GT_BOX, 2)
    long_gt = _const(GT_BOX, 6)
    lost = _const([100.0, 10.0, 20.0, 20.0], 6)
    scores = aggregate({"short": sequence_curves(short, short), "long": sequence_curves(lost, long_gt)})
    assert scores.precision == pytest.approx((1.0 + 1 / 6) / 2)
    assert scores.success == pytest.approx((20 / 21 + 20 / 21 / 6) / 2)
    np.testing.assert_allclose(scores.precision_curve[:20], (1.0 + 1 / 6) / 2)
    assert scores.num_sequences_averaged == 2 and scores.sequences == ("short", "long")


def test_only_size_and_nan_make_a_prediction_unusable() -> None:
    # Negative or zero x, y are positions (a box half outside the image), not failures: kept as predicted.
    gt = _const(GT_BOX, 4)
    pred = np.array([GT_BOX, [-5.0, 0.0, 20.0, 20.0], [0.0, -3.0, 20.0, 20.0], [1.0, 2.0, 0.5, 0.5]])
    fixed, replaced = repair_predictions(pred, gt)
    np.testing.assert_array_equal(fixed, pred)
    assert replaced == 0
    bad = pred.copy()
    bad[1, 3] = np.nan  # NaN height
    bad[2, 2] = 0.0  # zero width
    fixed, replaced = repair_predictions(bad, gt)
    np.testing.assert_array_equal(fixed[1:3], [GT_BOX, GT_BOX])  # both take frame 1's box
    assert replaced == 2 and sequence_curves(bad, gt).num_replaced_predictions == 2


@pytest.mark.parametrize("bad", [[10.0, 0.0, 20.0, 20.0], [10.0, 10.0, 0.0, 20.0], [10.0, 10.0, 20.0, -1.0]])
def test_ground_truth_invalid_in_any_coordinate(bad: list[float]) -> None:
    gt = np.array([GT_BOX, bad])
    assert valid_ground_truth(gt).tolist() == [True, False]
    c = sequence_curves(gt.copy(), gt, "pytracking")
    assert c.num_invalid_gt == 1 and c.success[0] == 0.5 and c.precision[50] == 0.5 and c.norm_precision[0] == 1.0


def test_empty_and_one_frame_sequences() -> None:
    with pytest.raises(ValueError, match="0 frames"):
        repair_predictions(np.zeros((0, 4)), np.zeros((0, 4)))
    one = sequence_curves(np.array([[0.0, 0.0, 1.0, 1.0]]), np.array([GT_BOX]))
    assert one.num_frames == 1 and one.success_score == pytest.approx(20 / 21) and one.precision_score == 1.0


# ----------------------------------------------------------------- cases found by mutation testing (mutmut)


def test_overlap_in_one_axis_only_is_no_overlap() -> None:
    # Side by side (x disjoint by 10 px, same rows) and stacked (y disjoint): a negative extent in one axis must not
    # multiply into a negative intersection.
    a = np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b = np.array([[20.0, 0.0, 10.0, 10.0], [0.0, 20.0, 10.0, 10.0]])
    np.testing.assert_array_equal(iou(a, b), [0.0, 0.0])


def test_degenerate_boxes_give_zero_iou_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0/0 for two empty boxes must stay silent
        assert iou(np.zeros((1, 4)), np.zeros((1, 4)))[0] == 0.0


def test_ground_truth_at_one_pixel_is_valid() -> None:
    # 1-based toolkits put boxes at x = 1 or y = 1, and sub-pixel boxes exist: only values <= 0 are invalid.
    gt = np.array([[1.0, 1.0, 20.0, 20.0], [0.5, 0.25, 0.75, 1.0], [0.0, 1.0, 20.0, 20.0]])
    assert valid_ground_truth(gt).tolist() == [True, True, False]


def test_zero_height_prediction_is_replaced() -> None:
    gt = _const(GT_BOX, 3)
    pred = np.array([GT_BOX, [15.0, 10.0, 20.0, 20.0], [1.0, 1.0, 20.0, 0.0]])
    fixed, replaced = repair_predictions(pred, gt)
    np.testing.assert_array_equal(fixed[2], [15.0, 10.0, 20.0, 20.0])
    assert replaced == 1


def test_repair_keeps_float_ground_truth_for_integer_predictions() -> None:
    gt = np.array([[10.5, 10.25, 20.5, 20.75], [10.5, 10.25, 20.5, 20.75]])
    fixed, _ = repair_predictions([[0, 0, 1, 1], [3, 4, 5, 6]], gt)  # a list of ints, as a parser might give
    assert fixed.dtype == np.float64
    np.testing.assert_array_equal(fixed[0], gt[0])
    assert iou(np.array([[0, 0, 3, 3]]), np.array([[1, 1, 3, 3]])).dtype == np.float64


def test_invalid_ground_truth_count_and_messages() -> None:
    gt = np.array([GT_BOX, GT_BOX, [10.0, 10.0, 20.0, np.nan]])
    c = sequence_curves(gt.copy(), gt)
    assert c.num_invalid_gt == 1 and c.num_frames == 3
    with pytest.raises(ValueError, match=r"^pred has 2 frames but gt has 3$"):
        sequence_curves(np.ones((2, 4)), gt)
    with pytest.raises(ValueError, match=r"^empty sequence: pred and gt have 0 frames$"):
        repair_predictions(np.zeros((0, 4)), np.zeros((0, 4)))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        pytest.param(lambda bad: sequence_curves(np.ones((2, 4)), bad), "gt", id="sequence_curves-gt"),
        pytest.param(lambda bad: sequence_curves(bad, np.ones((2, 4))), "pred", id="sequence_curves-pred"),
        pytest.param(lambda bad: repair_predictions(np.ones((2, 4)), bad), "gt", id="repair_predictions-gt"),
        pytest.param(lambda bad: valid_ground_truth(bad), "gt", id="valid_ground_truth"),
        pytest.param(lambda bad: iou(bad, np.ones((2, 4))), "a", id="iou-a"),
        pytest.param(lambda bad: iou(np.ones((2, 4)), bad), "b", id="iou-b"),
        pytest.param(lambda bad: centers(bad), "boxes", id="centers"),
    ],
)
def test_shape_errors_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must have shape \[T, 4\] \(x, y, w, h\), got \(2, 3\)$"):
        call(np.ones((2, 3)))


def test_empty_average_is_nan_everywhere() -> None:
    curves = _three_sequences()
    empty = aggregate(curves, {"A": {"x": False}, "B": {}, "C": {"x": True}}).per_attribute["x"]  # only C: dropped
    assert empty.num_sequences_averaged == 0 and empty.sequences == ()
    for value in (empty.success, empty.precision, empty.norm_precision):
        assert isinstance(value, float) and math.isnan(value)
    for curve, shape in ((empty.success_curve, 21), (empty.precision_curve, 51), (empty.norm_precision_curve, 51)):
        assert curve.shape == (shape,) and curve.dtype == np.float64 and np.isnan(curve).all()


def test_dataset_curves_are_the_mean_of_the_sequence_curves() -> None:
    curves = _three_sequences("pytracking")
    scores = aggregate(curves)
    for key in ("success", "precision", "norm_precision"):
        expected = np.mean([getattr(c, key) for c in curves.values()], axis=0)
        np.testing.assert_allclose(scores.curves[key], expected)
    np.testing.assert_allclose(scores.norm_precision_curve, scores.curves["norm_precision"])


def test_attribute_missing_from_a_sequence_means_not_carried() -> None:
    curves = _three_sequences()
    scores = aggregate(curves, {"A": {"occlusion": True}, "B": {}, "C": {}})  # B names no flag at all
    assert scores.per_attribute["occlusion"].sequences == ("A",)


def test_per_attribute_norm_precision_follows_the_protocol() -> None:
    curves = _three_sequences("pytracking")
    attrs = {"A": {"occ": False}, "B": {"occ": True}, "C": {"occ": False}}
    occ = aggregate(curves, attrs).per_attribute["occ"]
    assert occ.norm_precision == pytest.approx(0.25)  # B's value at 0.20, not its AUC (25*0.25 + 26)/51


def test_aggregate_trackers_keeps_attributes_and_checks_its_input() -> None:
    curves = _two_trackers("pytracking")
    attrs = {"A": {"occ": True}, "B": {"occ": True}, "C": {"occ": False}}
    scores = aggregate_trackers(curves, ["A", "B", "C"], attrs)
    assert scores["X"].per_attribute["occ"].sequences == ("A",)  # B is excluded for all
    assert scores["Y"].per_attribute["occ"].success == pytest.approx(20 / 21)
    with pytest.raises(ValueError, match=r"^aggregate_trackers\(\) needs at least one tracker$"):
        aggregate_trackers({}, ["A"])
    with pytest.raises(ValueError, match=r"^aggregate_trackers\(\) needs at least one sequence$"):
        aggregate_trackers(curves, [])
    with pytest.raises(ValueError, match=r"^tracker 'Y' has no result for any of the 1 sequence\(s\)$"):
        aggregate_trackers(curves, ["B"])
    with pytest.raises(ValueError, match=r"^aggregate\(\) needs at least one sequence$"):
        aggregate({})


def test_missing_results_message_lists_ten_at_most() -> None:
    one = sequence_curves(_const(GT_BOX, 2), _const(GT_BOX, 2))
    names = [f"s{i:02d}" for i in range(11)]
    full = {n: one for n in ["keep", *names]}
    # Ten missing: all named, no ellipsis.
    with pytest.raises(ValueError) as ten:
        aggregate_trackers({"X": full, "Y": {"keep": one}}, ["keep", *names[:10]])
    listed = "; ".join(f"{n}: Y" for n in names[:10])
    assert str(ten.value).endswith(f"missing for 10 sequence(s) ({listed})")
    # Eleven missing: the first ten named, then an ellipsis.
    with pytest.raises(ValueError) as eleven:
        aggregate_trackers({"X": full, "Y": {"keep": one}}, ["keep", *names])
    assert str(eleven.value).endswith(f"missing for 11 sequence(s) ({listed} …)")
    # Several trackers lacking one sequence are listed together.
    with pytest.raises(ValueError, match=r"\(s00: Y, Z\)$"):
        aggregate_trackers({"X": full, "Y": {"keep": one}, "Z": {"keep": one}}, ["keep", "s00"])


def test_exclusion_warning_names_every_sequence_and_tracker(caplog) -> None:
    one = sequence_curves(_const(GT_BOX, 2), _const(GT_BOX, 2), "pytracking")
    curves = {"X": {"a": one, "b": one}, "Y": {"a": one}, "Z": {"a": one, "c": one}}
    with caplog.at_level(logging.WARNING, logger="cmd_ray.evaluation.metrics"):
        scores = aggregate_trackers(curves, ["a", "b", "c"])
    assert scores["X"].excluded == ("b", "c")
    (record,) = caplog.records
    assert record.getMessage() == (
        "protocol pytracking: 2 sequence(s) excluded for every tracker because some tracker has no result: "
        "b (no result from Y, Z); c (no result from X, Y)"
    )
