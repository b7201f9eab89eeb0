"""The paired comparison of a row against the reference over seeds × sequences: mean difference, bootstrap interval,
Wilcoxon p-value (cmd_ray/evaluation/paired.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmd_ray.evaluation.metrics import aggregate, sequence_curves
from cmd_ray.evaluation.paired import (
    compare_to_reference,
    difference_matrix,
    paired_difference,
    sequence_scores,
    wilcoxon_p,
)

NAMES = [f"seq{i:03d}" for i in range(40)]


def _row(matrix: np.ndarray, names: list[str] = NAMES) -> list[dict[str, float]]:
    return [dict(zip(names, seed_row.tolist(), strict=True)) for seed_row in matrix]


def _reference(values: np.ndarray, names: list[str] = NAMES) -> dict[str, float]:
    return dict(zip(names, values.tolist(), strict=True))


def test_mean_difference_by_hand():
    # 2 seeds x 3 sequences: d = [[0.1, 0.0, 0.2], [0.3, -0.1, 0.1]], mean 0.6 / 6 = 0.1
    ref = {"a": 0.5, "b": 0.4, "c": 0.2}
    row = [{"a": 0.6, "b": 0.4, "c": 0.4}, {"a": 0.8, "b": 0.3, "c": 0.3}]
    np.testing.assert_allclose(difference_matrix(row, ref), [[0.1, 0.0, 0.2], [0.3, -0.1, 0.1]], atol=1e-12)
    result = paired_difference(row, ref, resamples=2000)
    assert result.mean == pytest.approx(0.1)
    assert (result.num_seeds, result.num_sequences) == (2, 3)
    assert result.low <= result.mean <= result.high


def test_a_known_shift_is_inside_the_interval_and_zero_is_outside():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0.2, 0.8, len(NAMES))
    shift = 0.05
    row = ref[None, :] + shift + rng.normal(0.0, 0.02, (5, len(NAMES)))
    result = paired_difference(_row(row), _reference(ref))
    assert result.low < shift < result.high
    assert result.low > 0 and result.excludes_zero
    assert result.p_value < 0.001


def test_pure_noise_gives_an_interval_around_zero():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0.2, 0.8, len(NAMES))
    noise = rng.normal(0.0, 0.03, (5, len(NAMES)))
    noise -= noise.mean()  # a sample mean of exactly 0: the bootstrap's percentile interval must straddle it
    result = paired_difference(_row(ref[None, :] + noise), _reference(ref))
    assert result.mean == pytest.approx(0.0, abs=1e-12)
    assert result.low < 0 < result.high and not result.excludes_zero
    assert result.p_value > 0.05


def test_a_common_per_sequence_offset_cancels_in_the_pairing():
    """Sequence difficulty moves row and reference alike: the paired result does not see it, an unpaired one does."""
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.3, 0.7, len(NAMES))
    row = ref[None, :] + 0.01 + rng.normal(0.0, 0.003, (5, len(NAMES)))
    offset = rng.uniform(-0.25, 0.25, len(NAMES))  # e.g. a benchmark with harder and easier sequences
    plain = paired_difference(_row(row), _reference(ref))
    shifted = paired_difference(_row(row + offset[None, :]), _reference(ref + offset))
    assert shifted.mean == pytest.approx(plain.mean, abs=1e-12)
    assert (shifted.low, shifted.high) == pytest.approx((plain.low, plain.high), abs=1e-12)
    assert shifted.excludes_zero

    # Unpaired: the two means resampled independently over sequences; the spread of the sequences swamps +0.01.
    boot = np.random.default_rng(0)
    row_means = (row + offset).mean(axis=0)
    ref_scores = ref + offset
    idx_a = boot.integers(0, len(NAMES), (5000, len(NAMES)))
    idx_b = boot.integers(0, len(NAMES), (5000, len(NAMES)))
    unpaired = row_means[idx_a].mean(axis=1) - ref_scores[idx_b].mean(axis=1)
    low, high = np.quantile(unpaired, [0.025, 0.975])
    assert low < 0 < high
    assert high - low > 5 * (shifted.high - shifted.low)


def test_one_seed_reduces_to_the_bootstrap_over_sequences():
    """With K = 1 the bootstrap means have the standard error of a mean of S draws: σ / √S (σ with ddof=0)."""
    rng = np.random.default_rng(4)
    d = rng.normal(0.02, 0.05, len(NAMES))
    ref = np.full(len(NAMES), 0.5)
    result = paired_difference(_row((ref + d)[None, :]), _reference(ref), resamples=20_000)
    expected_se = d.std() / math.sqrt(len(NAMES))
    assert result.std_error == pytest.approx(expected_se, rel=0.05)
    assert result.high - result.low == pytest.approx(2 * 1.96 * expected_se, rel=0.1)


def test_seeds_that_disagree_widen_the_interval():
    """Every sequence agrees within a seed, but the seeds do not: seed noise must show in the interval."""
    seed_effects = np.array([-0.03, -0.01, 0.0, 0.02, 0.03])
    ref = np.full(len(NAMES), 0.5)
    row = ref[None, :] + seed_effects[:, None]
    result = paired_difference(_row(row), _reference(ref))
    assert result.mean == pytest.approx(seed_effects.mean())
    assert result.low < 0 < result.high
    # resampling sequences alone would see no spread at all here
    assert result.high - result.low > 0.02


def test_the_generator_seed_makes_the_interval_reproducible():
    rng = np.random.default_rng(5)
    ref = rng.uniform(0.2, 0.8, len(NAMES))
    row = _row(ref[None, :] + rng.normal(0.01, 0.05, (3, len(NAMES))))
    a = paired_difference(row, _reference(ref), seed=7)
    b = paired_difference(row, _reference(ref), seed=7)
    c = paired_difference(row, _reference(ref), seed=8)
    assert (a.low, a.high, a.std_error) == (b.low, b.high, b.std_error)
    assert (a.low, a.high) != (c.low, c.high)
    assert a.mean == c.mean and a.p_value == c.p_value  # neither depends on the draws


def test_wilcoxon_by_hand():
    # n = 5, all positive: W- = 0, P(W- <= 0) = 1/32 under H0, two-sided 2/32
    assert wilcoxon_p(np.array([0.1, 0.2, 0.3, 0.4, 0.5])) == pytest.approx(2 / 32)
    # one negative with the smallest rank: W- = 1, P(W- <= 1) = 2/32, two-sided 4/32
    assert wilcoxon_p(np.array([-0.1, 0.2, 0.3, 0.4, 0.5])) == pytest.approx(4 / 32)
    # sequences without a difference are left out (here: the same as the first case)
    assert wilcoxon_p(np.array([0.0, 0.1, 0.2, 0.0, 0.3, 0.4, 0.5])) == pytest.approx(2 / 32)
    assert math.isnan(wilcoxon_p(np.zeros(4)))


def test_identical_scores_give_a_zero_interval_and_no_mark():
    ref = _reference(np.linspace(0.1, 0.9, len(NAMES)))
    result = paired_difference([ref, ref], ref)
    assert (result.mean, result.low, result.high) == (0.0, 0.0, 0.0)
    assert not result.excludes_zero and math.isnan(result.p_value)
    assert result.to_dict()["p_value"] is None and result.to_dict()["excludes_zero"] is False


def test_mismatched_sequences_are_named():
    ref = {"a": 0.5, "b": 0.4, "c": 0.3}
    with pytest.raises(ValueError, match=r"seed 1 .*missing in the row: \['c'\].*missing in the reference: \['z'\]"):
        paired_difference([{"a": 0.5, "b": 0.4, "c": 0.3}, {"a": 0.5, "b": 0.4, "z": 0.1}], ref)
    with pytest.raises(ValueError, match="at least one seed"):
        paired_difference([], ref)
    with pytest.raises(ValueError, match="finite"):
        paired_difference([{"a": float("nan"), "b": 0.4, "c": 0.3}], ref)
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([ref], ref, confidence=1.0)


def _dataset(boxes_per_sequence: dict[str, np.ndarray], gt: np.ndarray):
    return aggregate({n: sequence_curves(b, gt) for n, b in boxes_per_sequence.items()})


def test_scores_are_read_per_sequence_from_the_curves():
    gt = np.array([[10.0, 10.0, 20.0, 20.0]] * 4)
    near = gt + np.array([2.0, 0.0, 0.0, 0.0])
    lost = np.array([[10.0, 10.0, 20.0, 20.0]] + [[200.0, 200.0, 5.0, 5.0]] * 3)  # lost after frame 1
    reference = _dataset({"a": near, "b": near}, gt)
    row = _dataset({"a": gt, "b": lost}, gt)
    ref_success = sequence_scores(reference, "success")
    assert ref_success == {n: c.success_score for n, c in reference.per_sequence.items()}
    result = compare_to_reference([row], [reference], ["success", "precision"], resamples=500)
    expected = np.mean(
        [row.per_sequence[n].success_score - reference.per_sequence[n].success_score for n in ("a", "b")]
    )
    assert result["success"].mean == pytest.approx(expected)
    assert set(result) == {"success", "precision"}
    other = _dataset({"a": gt, "c": gt}, gt)
    with pytest.raises(ValueError, match=r"missing in the row: \['b'\]"):
        compare_to_reference([other], [reference], ["success"])
    with pytest.raises(ValueError, match="unknown metric"):
        sequence_scores(reference, "fps")
