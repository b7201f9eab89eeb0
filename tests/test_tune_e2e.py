"""End to end: a tiny Ray Tune sweep ranked by tracking; every trial is a Ray Train run and an MLflow run nested under
the sweep; a rerun restores the sweep."""

import pytest

from cmd_ray.config import load_config
from cmd_ray.mlflow_runs import store_client
from cmd_ray.tune import run_sweep

pytestmark = pytest.mark.e2e


def test_a_sweep_on_val_success_tracks_every_trial_registers_the_highest_and_restores(
    ray_session, local_pairs, tmp_path, tiny_overrides
):
    import json

    from cmd_ray.config import SynthConfig
    from cmd_ray.data.synthetic import write_synthetic_dataset
    from cmd_ray.tune import format_trial_table

    synth = SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=2, sequence_length=6)
    tir = write_synthetic_dataset(str(tmp_path / "val"), synth, progress=False).tir_sequences_uri
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "tracker.preset=tiny",
            f"data.uri={local_pairs}",
            f"storage.storage_path={tmp_path}/ray_results",
            "storage.run_name=sweep-track",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.registered_model_name=sweep-track-tracker",
            "distill.epochs=3",
            "tune.num_samples=3",
            "tune.max_concurrent_trials=2",
            "tune.lr_tcl=[1e-5, 1e-3]",
            "tune.lr_bbe=[1e-4, 1e-2]",
            "tune.reduction_factor=3",  # ASHA compares at iterations 1 and 3: epochs 0 and 2 are tracked, 1 is not
            "tune.metric=val_success",
            f"tune.eval_root={tir}",
        ],
    )

    result = run_sweep(cfg)

    # one MLflow run per trial, nested under the sweep's run, each ending with the status Tune gave it (KILLED:
    # stopped by ASHA), the registered best included
    client = store_client(tracking_uri)
    experiment_id = client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    children = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.sweep_run_id}'")
    assert len(children) == 3
    statuses = {run.info.run_id: run.info.status for run in children}
    assert statuses == {result.trial_run_ids[trial]: status for trial, status in result.trial_statuses.items()}
    assert set(statuses.values()) <= {"FINISHED", "KILLED"}
    for run in children:
        for name in ("lr_tcl", "lr_bbe"):
            low, high = getattr(cfg.tune, name)
            assert low <= float(run.data.params[f"distill.{name}"]) <= high

    assert (result.metric, result.mode) == ("val_success", "max")
    assert set(result.trial_metrics) == set(result.trial_run_ids) == set(result.trial_table)
    assert result.best_metric == max(result.trial_metrics.values())
    for trial_id, row in result.trial_table.items():
        assert 0.0 <= row["val_success"] <= 1.0 and 0.0 <= row["val_precision"] <= 1.0
        assert row["val_success"] == result.trial_metrics[trial_id] and "val_loss" in row
    assert (
        client.get_model_version_by_alias("sweep-track-tracker", "candidate").run_id
        == (result.trial_run_ids[result.best_trial_id])
    )

    # Tune saw val_success in every report, carried forward on epoch 1 (val_tracked_epoch 0); MLflow has it only at
    # the tracked epochs 0 and 2
    sweep_folder = tmp_path / "ray_results" / "sweep-track-sweep"
    reports = [json.loads(line) for f in sweep_folder.glob("*/result.json") for line in f.read_text().splitlines()]
    assert len({r["trial_id"] for r in reports}) == 3
    for report in reports:
        assert "val_success" in report and "val_loss" in report
        assert report["val_tracked_epoch"] == (0 if report["epoch"] < 2 else 2)
    for trial_id, run_id in result.trial_run_ids.items():
        history = {m.step: m.value for m in client.get_metric_history(run_id, "val_success")}
        assert 0 in history and set(history) <= {0, 2}
        assert result.trial_metrics[trial_id] in history.values()

    rho, _ = result.loss_success_correlation()  # NaN (not logged) when every trial tracked alike
    logged = client.get_run(result.sweep_run_id).data.metrics
    assert logged["best_val_success"] == result.best_metric
    assert logged.get("val_loss_success_spearman", float("nan")) == pytest.approx(rho, nan_ok=True)

    table = format_trial_table(result)
    assert [line.split()[0] for line in table.splitlines()[2:5]] == result.ranked_trials()
    assert result.ranked_trials()[0] == result.best_trial_id
    assert "Spearman rank correlation of -val_loss with val_success over 3 trials" in table

    # Rerun: the sweep folder exists, so the sweep is restored (Tuner.restore), not redone: the same sweep run and
    # trial runs, no new trial, each trial's status as before, and no new model version.
    again = run_sweep(cfg)
    assert again.sweep_run_id == result.sweep_run_id and again.trial_run_ids == result.trial_run_ids
    assert again.best_trial_id == result.best_trial_id and again.registered.version == result.registered.version
    rerun = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.sweep_run_id}'")
    assert {run.info.run_id: run.info.status for run in rerun} == statuses
    versions = client.search_model_versions("name = 'sweep-track-tracker'")
    assert [str(v.version) for v in versions] == [result.registered.version]
