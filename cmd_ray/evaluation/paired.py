"""Paired comparison of one tracker against a reference over sequences × seeds: is a Table 1 gain above noise?

A Table 1 row is trained with several seeds ``k`` and every seed is tracked on the same sequences ``s``; the
reference row (A1, the teacher) is deterministic and tracked once. The comparison works on the per-sequence
differences

    d[k, s] = score(row, seed k, sequence s) − score(reference, sequence s)

(scores are fractions in [0, 1]: a sequence's Success AUC, Precision at 20 px or Norm. Precision,
:class:`~cmd_ray.evaluation.metrics.SequenceCurves`). Pairing by sequence cancels what a sequence does to every
tracker alike (an easy or a hard sequence), which dominates the spread of the scores themselves.

- **Mean difference**: the mean of ``d`` over all ``K × S`` pairs.
- **95% interval**: a percentile bootstrap that resamples *sequences and seeds*, each with replacement and
  independently (the "pigeonhole" bootstrap of a crossed design): a replicate draws ``S`` sequences and ``K`` seeds
  and takes the mean of ``d`` over their cross product. Sequences are resampled because the benchmark is one sample
  of the sequences a tracker meets, seeds because a row's training is one sample of the trainings it could have had;
  resampling the ``K × S`` pairs one by one would treat the ``K`` results of one sequence as independent, which they
  are not (they share the sequence), and give intervals that are too narrow. The two-way scheme errs the other way
  (slightly wide), the safe side for telling a gain from noise. With one seed it is the ordinary bootstrap over
  sequences. The generator is seeded, so the same scores give the same interval.
- **p-value**: the two-sided Wilcoxon signed-rank test of the per-sequence differences averaged over the seeds
  (one value per sequence: sequences are the independent units); sequences with no difference are left out
  (``zero_method="wilcox"``); NaN when every sequence has none.

An interval that excludes 0 is what the Table 1 marks (:attr:`PairedDifference.excludes_zero`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from cmd_ray.evaluation.metrics import DatasetScores

DEFAULT_RESAMPLES = 10_000
DEFAULT_CONFIDENCE = 0.95
DEFAULT_SEED = 0
METRIC_SCORES = {
    "success": "success_score",
    "precision": "precision_score",
    "norm_precision": "norm_precision_score",
}
"""A table metric → the :class:`~cmd_ray.evaluation.metrics.SequenceCurves` property that scores one sequence."""


@dataclass(frozen=True)
class PairedDifference:
    """A row against the reference on one metric, over ``num_seeds × num_sequences`` paired differences.

    Attributes:
        mean: mean of ``row − reference`` over the pairs (score units: a fraction in [-1, 1]).
        low / high: the bootstrap percentile interval of that mean, at ``confidence`` (e.g. 0.95).
        std_error: the standard deviation of the bootstrap means (score units).
        p_value: two-sided Wilcoxon signed-rank p-value of the per-sequence differences (mean over seeds); NaN
            when no sequence differs.
        num_sequences / num_seeds: the paired sequences and the row's seeds.
        resamples / seed: the bootstrap's replicates and its generator's seed.
    """

    mean: float
    low: float
    high: float
    std_error: float
    p_value: float
    num_sequences: int
    num_seeds: int
    confidence: float = DEFAULT_CONFIDENCE
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or entirely below 0 (the gain or loss is above the noise)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        """The fields and ``excludes_zero``, NaN written as None (for JSON)."""
        tree = asdict(self)
        tree["excludes_zero"] = self.excludes_zero
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in tree.items()}


def difference_matrix(row: Sequence[Mapping[str, float]], reference: Mapping[str, float]) -> np.ndarray:
    """``[K, S]`` differences ``row[k][s] − reference[s]``, sequences in ``reference``'s order.

    Args:
        row: one mapping per seed, sequence name → score.
        reference: sequence name → score.

    Raises:
        ValueError: no seed, no sequence, a non-finite score, or a seed whose sequences are not the reference's
            (the message names the sequences missing on either side).
    """
    if not row:
        raise ValueError("a paired comparison needs at least one seed of the row")
    if not reference:
        raise ValueError("a paired comparison needs at least one sequence")
    names = list(reference)
    for k, seed_scores in enumerate(row):
        missing = [n for n in names if n not in seed_scores]
        extra = [n for n in seed_scores if n not in reference]
        if missing or extra:
            raise ValueError(
                f"seed {k} of the row and the reference score different sequences: "
                f"missing in the row: {missing[:10]}{' …' if len(missing) > 10 else ''}; "
                f"missing in the reference: {extra[:10]}{' …' if len(extra) > 10 else ''}"
            )
    d = np.array([[seed_scores[n] - reference[n] for n in names] for seed_scores in row], dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("a paired comparison needs finite scores")
    return d


def bootstrap_means(d: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples]`` means of ``d`` (``[K, S]``) over the cross product of ``K`` seeds and ``S`` sequences, each
    drawn with replacement (module docstring).

    A draw is kept as counts (how often each seed and each sequence was drawn: multinomial, the same distribution
    as ``K`` or ``S`` uniform draws), so a replicate's mean is ``seed_counts · d · sequence_counts / (K·S)``.
    """
    k, s = d.shape
    seed_counts = rng.multinomial(k, np.full(k, 1.0 / k), size=resamples)
    sequence_counts = rng.multinomial(s, np.full(s, 1.0 / s), size=resamples)
    return np.einsum("bk,ks,bs->b", seed_counts, d, sequence_counts) / (k * s)


def wilcoxon_p(per_sequence: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``[S]`` differences; zeros are left out; NaN when all are zero."""
    nonzero = per_sequence[per_sequence != 0]
    if nonzero.size == 0:
        return float("nan")
    return float(stats.wilcoxon(nonzero, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_difference(
    row: Sequence[Mapping[str, float]],
    reference: Mapping[str, float],
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> PairedDifference:
    """The paired comparison of ``row`` (one sequence → score mapping per seed) against ``reference`` (sequence →
    score): mean difference, bootstrap interval and Wilcoxon p-value (module docstring).

    Raises:
        ValueError: as :func:`difference_matrix`, or ``confidence`` outside (0, 1), or ``resamples`` < 1.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    d = difference_matrix(row, reference)
    means = bootstrap_means(d, resamples, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return PairedDifference(
        mean=float(d.mean()),
        low=float(low),
        high=float(high),
        std_error=float(means.std()),
        p_value=wilcoxon_p(d.mean(axis=0)),
        num_sequences=d.shape[1],
        num_seeds=d.shape[0],
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )


def sequence_scores(scores: DatasetScores, metric: str) -> dict[str, float]:
    """Sequence → its score on ``metric`` (:data:`METRIC_SCORES`), for every sequence of the comparison.

    Every sequence the tracker has curves for counts, except those excluded for every tracker (``pytracking``);
    a sequence the ``lsotb`` average dropped (all-zero success) counts with its score (Success 0): dropping it for
    one tracker only would break the pairing.
    """
    if metric not in METRIC_SCORES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {tuple(METRIC_SCORES)}")
    if not scores.per_sequence:
        raise ValueError("these scores hold no per-sequence curves")
    prop = METRIC_SCORES[metric]
    return {n: float(getattr(c, prop)) for n, c in scores.per_sequence.items() if n not in scores.excluded}


def compare_to_reference(
    row: Sequence[DatasetScores],
    reference: Sequence[DatasetScores],
    metrics: Sequence[str] = tuple(METRIC_SCORES),
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> dict[str, PairedDifference]:
    """Metric → :func:`paired_difference` of a row's seeds against the reference, from their per-sequence curves.

    The reference is one run (A1 is deterministic); given several, its per-sequence scores are averaged over them.
    """
    if not reference:
        raise ValueError("the reference has no scores")
    out = {}
    for metric in metrics:
        runs = [sequence_scores(r, metric) for r in reference]
        for i, run in enumerate(runs[1:], start=1):
            if set(run) != set(runs[0]):
                raise ValueError(
                    f"the reference's runs 0 and {i} score different sequences: "
                    f"only in run 0: {sorted(set(runs[0]) - set(run))[:10]}, "
                    f"only in run {i}: {sorted(set(run) - set(runs[0]))[:10]}"
                )
        ref = {n: float(np.mean([run[n] for run in runs])) for n in runs[0]}
        out[metric] = paired_difference(
            [sequence_scores(s, metric) for s in row], ref, confidence=confidence, resamples=resamples, seed=seed
        )
    return out
