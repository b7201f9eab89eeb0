"""The sweep's pieces without a cluster: the tracking objective's config, ASHA's rung epochs, the rank correlation and
the closing table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cmd_ray.config import ConfigError, load_config, metric_mode
from cmd_ray.registry import RegisteredModel
from cmd_ray.tune import (
    SweepResult,
    format_trial_table,
    pick_best,
    rank_correlation,
    search_algorithm,
    search_space,
    tracking_epochs,
)

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


# ------------------------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("metric", ["val_success", "val_precision"])
def test_the_demo_config_takes_a_tracking_metric(metric):
    cfg = load_config(DEMO, [f"tune.metric={metric}"])
    # the demo's validation split, apart from the test split it reports (evaluation.root)
    assert cfg.tune.metric == metric and cfg.tune.eval_root == "data/demo/tir_val_sequences"
    assert cfg.tune.eval_root != cfg.evaluation.root
    assert metric_mode(metric) == "max"


@pytest.mark.parametrize("metric", ["val_loss", "loss", "loss_tcl", "loss_bbe"])
def test_losses_are_minimised(metric):
    assert metric_mode(metric) == "min"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tune.metric=val_success"], "set tune.eval_root"),
        (["tune.metric=val_precision", "tune.eval_root=' '"], "set tune.eval_root"),
        (["tune.metric=val_success", "tune.eval_root=gs://bucket/tir"], "tune.eval_root must be a local folder"),
        (["tune.metric=val_success", "tune.eval_root=s3://"], "names no bucket"),
        (["tune.eval_root=/tir", "tune.eval_sequences=[]"], "at least one sequence"),
        (["tune.eval_root=/tir", "tune.eval_sequences=[a, a]"], "repeated"),
        (["tune.eval_tasks=0"], "tune.eval_tasks"),
        (["tune.eval_benchmark=otb"], "tune.eval_benchmark"),
        (["tune.metric=success"], "tune.metric"),
    ],
)
def test_a_tracking_objective_without_usable_sequences_is_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def _drawn_trials(seed: str, storage: Path) -> list[dict[str, float]]:
    from ray.tune.experiment import Experiment

    cfg = load_config(None, ["tune.num_samples=4", "tune.max_concurrent_trials=4", f"tune.seed={seed}"])
    searcher = search_algorithm(cfg)
    searcher.add_configurations(
        [
            Experiment(
                "draws",
                run=lambda config: None,
                config=search_space(cfg),
                num_samples=cfg.tune.num_samples,
                storage_path=str(storage),
            )
        ]
    )
    trials = []
    while (trial := searcher.next_trial()) is not None:
        trials.append(dict(trial.config))
    return trials


def test_a_seeded_sweep_draws_the_same_trials_and_another_seed_others(tmp_path):
    first = _drawn_trials("0", tmp_path)
    assert len(first) == 4 and first == _drawn_trials("0", tmp_path)
    assert first != _drawn_trials("1", tmp_path)
    cfg = load_config(None, [])
    for trial in first:
        for name, value in trial.items():
            low, high = getattr(cfg.tune, name)
            assert low <= value <= high


def test_an_unseeded_sweep_draws_fresh_trials(tmp_path):
    assert _drawn_trials("null", tmp_path) != _drawn_trials("null", tmp_path)


def test_val_loss_needs_no_eval_root():
    cfg = load_config(None, [])
    assert cfg.tune.metric == "val_loss" and cfg.tune.eval_root is None
    assert load_config(None, ["tune.metric=val_success", "tune.eval_root=s3://b/tir"]).tune.eval_root == "s3://b/tir"


# ------------------------------------------------------------------------------------------------------ rung epochs


@pytest.mark.parametrize(
    ("epochs", "grace", "factor", "expected"),
    [
        (4, 1, 2, [0, 1, 3]),  # iterations 1, 2, 4
        (6, 1, 2, [0, 1, 3, 5]),  # 1, 2, 4 and the last epoch
        (9, 1, 3, [0, 2, 8]),  # 1, 3, 9
        (8, 2, 2, [1, 3, 7]),  # 2, 4, 8 (epoch 0 is tracked too: the loop's first epoch)
        (3, 5, 2, [2]),  # grace beyond max_t: no rung, the last epoch only
        (1, 1, 2, [0]),
    ],
)
def test_tracking_epochs_are_ashas_rungs_and_the_last_epoch(epochs, grace, factor, expected):
    assert tracking_epochs(epochs, grace, factor) == expected


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 5, 8, 9, 16, 27, 50])
@pytest.mark.parametrize(("grace", "factor"), [(1, 2), (1, 3), (2, 2), (3, 3), (1, 4)])
def test_tracking_epochs_hold_every_milestone_of_rays_asha(epochs, grace, factor):
    from ray.tune.schedulers.async_hyperband import _Bracket

    if grace > epochs:
        pytest.skip("ASHA refuses grace_period > max_t")
    milestones = {int(m) for m, _ in _Bracket(grace, epochs, factor, 0)._rungs}
    assert {m - 1 for m in milestones if m <= epochs} | {epochs - 1} == set(tracking_epochs(epochs, grace, factor))


# --------------------------------------------------------------------------------------------------- rank correlation


def test_rank_correlation_of_orders():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)  # 1 - 6·2 / (3·8)
    # monotone transforms do not change it
    assert rank_correlation([0.1, 5, 2, 9], [1, 100, 7, 1e6]) == pytest.approx(1.0)


def test_rank_correlation_with_ties_is_pearson_of_mean_ranks():
    x, y = [1.0, 2.0, 2.0, 3.0, 5.0], [2.0, 1.0, 4.0, 4.0, 6.0]
    rx, ry = [1, 2.5, 2.5, 4, 5], [2, 1, 3.5, 3.5, 5]
    assert rank_correlation(x, y) == pytest.approx(float(np.corrcoef(rx, ry)[0, 1]))


def test_rank_correlation_is_nan_without_two_distinct_values_and_needs_pairs():
    assert math.isnan(rank_correlation([], []))
    assert math.isnan(rank_correlation([1.0], [2.0]))
    assert math.isnan(rank_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="pairs"):
        rank_correlation([1.0, 2.0], [1.0])


# ------------------------------------------------------------------------------------------------------ closing table


def _sweep(metric: str, mode: str, figures: dict[str, dict[str, float]]) -> SweepResult:
    trials = sorted(figures)
    values = {t: figures[t][metric] for t in trials if metric in figures[t]}
    best = (max if mode == "max" else min)(values, key=values.__getitem__)
    return SweepResult(
        sweep_run_id="sweep",
        trial_run_ids={t: f"run-{t}" for t in trials},
        trial_metrics=values,
        best_trial_id=best,
        best_params={"lr_tcl": 1e-5, "lr_bbe": 1e-4, "loss_weight_bbe": 1.0},
        trial_statuses={t: "FINISHED" for t in trials},
        registered=RegisteredModel("m", "1", "candidate", f"run-{best}"),
        run_location="",
        metric=metric,
        mode=mode,
        trial_table=figures,
        trial_params={
            t: {"lr_tcl": 1e-5 * (i + 1), "lr_bbe": 2e-4, "loss_weight_bbe": 0.5} for i, t in enumerate(trials)
        },
    )


FIGURES = {
    "t1": {"val_loss": 3.0, "val_success": 0.40, "val_precision": 0.50, "epochs": 4},
    "t2": {"val_loss": 2.0, "val_success": 0.30, "val_precision": 0.45, "epochs": 2},
    "t3": {"val_loss": 1.0, "val_success": 0.50, "val_precision": 0.60, "epochs": 4},
    "t4": {"val_loss": 4.0, "epochs": 1},  # stopped before any tracking figure reached Tune
}


def test_trials_are_listed_best_first_by_the_sweep_metric_and_its_mode():
    assert _sweep("val_success", "max", FIGURES).ranked_trials() == ["t3", "t1", "t2", "t4"]
    assert _sweep("val_loss", "min", FIGURES).ranked_trials() == ["t3", "t2", "t1", "t4"]
    assert _sweep("val_success", "max", FIGURES).best_metric == 0.50


@pytest.mark.parametrize("mode, expected", [("max", "a_00001"), ("min", "a_00000")])
def test_the_best_pick_breaks_a_tie_by_trial_id_whatever_order_tune_lists_the_trials_in(mode, expected):
    # two trials tie at the best value; a restored sweep may list them in another order
    figures = {"a_00002": 0.5, "a_00001": 0.75, "a_00003": 0.75, "a_00000": 0.25, "a_00004": 0.25}
    for order in (list(figures), list(reversed(figures))):
        assert pick_best({trial: figures[trial] for trial in order}, mode) == expected


def test_the_best_pick_agrees_with_the_ranking_and_needs_a_trial():
    for metric, mode in (("val_success", "max"), ("val_loss", "min")):
        sweep = _sweep(metric, mode, FIGURES)
        assert pick_best(sweep.trial_metrics, mode) == sweep.ranked_trials()[0]
    with pytest.raises(ValueError, match="sweep metric"):
        pick_best({}, "min")


def test_the_correlation_of_loss_and_success_uses_the_trials_with_both():
    rho, count = _sweep("val_success", "max", FIGURES).loss_success_correlation()
    # -val_loss ranks t3 > t2 > t1; val_success t3 > t1 > t2
    assert count == 3 and rho == pytest.approx(rank_correlation([-3, -2, -1], [0.4, 0.3, 0.5]))
    assert rho == pytest.approx(0.5)


def test_the_closing_table_lists_every_trial_with_its_figures():
    text = format_trial_table(_sweep("val_success", "max", FIGURES))
    lines = text.splitlines()
    assert lines[0].split() == [
        "trial",
        "status",
        "epochs",
        "lr_tcl",
        "lr_bbe",
        "loss_weight_bbe",
        "val_loss",
        "val_success",
        "val_precision",
    ]
    rows = [line.split() for line in lines[2:6]]
    assert [row[0] for row in rows] == ["t3", "t1", "t2", "t4"]
    assert rows[0] == ["t3", "FINISHED", "4", "3e-05", "0.0002", "0.5", "1.0000", "0.5000", "0.6000"]
    assert rows[3][-3:] == ["4.0000", "-", "-"]
    assert lines[6].startswith("Spearman rank correlation of -val_loss with val_success over 3 trials: +0.50")


def test_a_loss_sweep_table_has_no_correlation_line():
    figures = {t: {k: v for k, v in row.items() if k != "val_success"} for t, row in FIGURES.items()}
    text = format_trial_table(_sweep("val_loss", "min", figures))
    assert "Spearman" not in text and len(text.splitlines()) == 6
