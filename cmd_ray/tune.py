"""Ray Tune sweep over lr_bbe, lr_tcl and λ: one trial = one Ray Train distillation run.

Each trial is a Tune function trainable that fits its own ``TorchTrainer``;
``TuneReportCallback`` forwards every epoch's report so ASHA can stop bad trials
early. The sweep is one MLflow run; every trial is a run nested under it. At the
end the best trial's final model is registered with the configured alias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import Config
from cmd_ray.data.distill_stream import list_pairs
from cmd_ray.storage import ray_storage
from cmd_ray.train.trainer import check_trainable, fit

SEARCHED = ("lr_tcl", "lr_bbe", "loss_weight_bbe")
TRIAL_TAG = "cmd_ray.tune_trial_id"


@dataclass(frozen=True)
class SweepResult:
    sweep_run_id: str
    trial_run_ids: dict[str, str]
    trial_metrics: dict[str, float]
    """Each trial's last reported sweep metric as Tune saw it, by trial id: what ASHA and the best pick compared.

    A trial that ASHA stops may log one more epoch to MLflow before it ends; Tune never saw that epoch.
    """
    best_trial_id: str
    best_params: dict[str, float]
    trial_statuses: dict[str, str]
    """The MLflow status each trial run ended with, by trial id (:func:`trial_status`: KILLED when ASHA stopped it)."""
    registered: registry.RegisteredModel
    run_location: str

    @property
    def best_metric(self) -> float:
        """The best trial's sweep metric (the lowest of :attr:`trial_metrics`)."""
        return self.trial_metrics[self.best_trial_id]


def search_space(cfg: Config) -> dict[str, Any]:
    """Log-uniform ranges of ``cfg.tune`` for each searched knob."""
    return {name: tune.loguniform(*getattr(cfg.tune, name)) for name in SEARCHED}


def trial_config(base: Config, params: dict[str, float], trial_name: str) -> Config:
    """The base config with a trial's sampled values and its own run name."""
    tree = base.model_dump(mode="json")
    tree["distill"].update({name: float(params[name]) for name in SEARCHED})
    tree["storage"]["run_name"] = f"{base.storage.run_name}-{trial_name}"
    return Config.model_validate(tree)


def trial_status(trial: ray.tune.Result, epochs: int) -> str:
    """MLflow status of a finished trial: FAILED on error, KILLED when ASHA stopped it early, else FINISHED."""
    if trial.error is not None:
        return "FAILED"
    if int((trial.metrics or {}).get("training_iteration", 0)) < epochs:
        return "KILLED"
    return "FINISHED"


def _child_runs(cfg: Config, parent: str) -> dict[str, str]:
    """``{trial id: MLflow run id}`` of the trial runs nested under sweep run ``parent``."""
    runs = mlflow_runs.find_runs(cfg, f"tags.mlflow.parentRunId = '{parent}'")
    return {run.data.tags[TRIAL_TAG]: run.info.run_id for run in runs if TRIAL_TAG in run.data.tags}


def _run_trial(params: dict[str, float], base: dict[str, Any], pairs: list[tuple[str, str]], parent: str) -> None:
    context = tune.get_context()
    cfg = trial_config(Config.model_validate(base), params, context.get_trial_name())
    # a trial resumed with its sweep (Tuner.restore) continues its own MLflow run and its own checkpoints
    run_id = _child_runs(cfg, parent).get(context.get_trial_id())
    if run_id is None:
        run_id = mlflow_runs.start_run(
            cfg,
            context.get_trial_name(),
            tags={TRIAL_TAG: context.get_trial_id(), "cmd_ray.job": "tune-trial"},
            parent_run_id=parent,
        )
    else:
        mlflow_runs.reopen_run(cfg, run_id)
    with mlflow_runs.terminated(cfg, run_id):
        fit(cfg, pairs, run_id, callbacks=[TuneReportCallback()])


SWEEP_TAG = "cmd_ray.sweep"


def _sweep_run(cfg: Config, name: str, restoring: bool) -> str:
    """The sweep's MLflow run: the one it had when the sweep is restored, else a new one."""
    if restoring:
        runs = mlflow_runs.find_runs(cfg, f"tags.`{SWEEP_TAG}` = '{name}'", max_results=1)
        if runs:
            return mlflow_runs.reopen_run(cfg, runs[0].info.run_id)
    return mlflow_runs.start_run(cfg, name, tags={"cmd_ray.job": "tune", SWEEP_TAG: name})


def _checkpoint(cfg: Config, path: str) -> ray.train.Checkpoint:
    filesystem, _ = ray_storage(cfg.storage.storage_path, cfg.storage.s3_endpoint_url)
    return ray.train.Checkpoint(path, filesystem=filesystem)


def run_sweep(cfg: Config, pairs: list[tuple[str, str]] | None = None) -> SweepResult:
    """Run the sweep of ``cfg.tune``; returns the best trial and its registered model."""
    check_trainable(cfg)
    if pairs is None:
        pairs = list_pairs(cfg)
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    if not ray.is_initialized():
        ray.init()
    name = f"{cfg.storage.run_name}-sweep"
    filesystem, storage_path = ray_storage(cfg.storage.storage_path, cfg.storage.s3_endpoint_url)
    sweep_folder = f"{storage_path.rstrip('/')}/{name}"
    # A sweep folder that exists is a sweep started before (interrupted, or finished): it is resumed, not redone.
    restoring = tune.Tuner.can_restore(sweep_folder, storage_filesystem=filesystem)
    sweep_run = _sweep_run(cfg, name, restoring)
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, base=cfg.model_dump(mode="json"), pairs=pairs, parent=sweep_run),
        {"cpu": cfg.tune.trial_cpus},
    )
    metric = cfg.tune.metric
    if restoring:
        tuner = tune.Tuner.restore(
            sweep_folder, trainable, resume_errored=True, param_space=search_space(cfg), storage_filesystem=filesystem
        )
    else:
        tuner = _new_tuner(cfg, trainable, name, storage_path, filesystem)
    with mlflow_runs.terminated(cfg, sweep_run):
        grid = tuner.fit()
        best = grid.get_best_result(metric=metric, mode="min")
        if best.metrics is None or "checkpoint_path" not in best.metrics:
            raise RuntimeError(f"no trial of sweep {cfg.storage.run_name} reported a checkpoint")
        trial_runs = _child_runs(cfg, sweep_run)
        best_trial = str(best.metrics["trial_id"])
        best_cfg = trial_config(cfg, best.config, best_trial)
        with _checkpoint(cfg, best.metrics["checkpoint_path"]).as_directory() as directory:
            model, _ = registry.load_model(directory, best_cfg)
        # registered before the trial runs get their final status: logging the model reopens the best trial's run
        registered = _registered_before(best_cfg, trial_runs[best_trial]) if restoring else None
        if registered is None:
            registered = registry.log_and_register(best_cfg, trial_runs[best_trial], model)
        trial_metrics: dict[str, float] = {}
        trial_statuses: dict[str, str] = {}
        for trial in grid:  # the trial itself cannot tell an ASHA stop from a failure; Tune can
            trial_id = str((trial.metrics or {}).get("trial_id", ""))
            if trial_id in trial_runs:
                trial_statuses[trial_id] = trial_status(trial, cfg.distill.epochs)
                mlflow_runs.end_run(cfg, trial_runs[trial_id], trial_statuses[trial_id])
            if trial.metrics and metric in trial.metrics:
                trial_metrics[trial_id] = float(trial.metrics[metric])
        best_params = {name: float(best.config[name]) for name in SEARCHED}
        mlflow_runs.set_tags(
            cfg, sweep_run, {"cmd_ray.best_trial": best_trial, "cmd_ray.best_run": trial_runs[best_trial]}
        )
        mlflow_runs.log_metrics(cfg, sweep_run, {f"best_{metric}": trial_metrics[best_trial]}, step=0)
    return SweepResult(
        sweep_run_id=sweep_run,
        trial_run_ids=trial_runs,
        trial_metrics=trial_metrics,
        best_trial_id=best_trial,
        best_params=best_params,
        trial_statuses=trial_statuses,
        registered=registered,
        run_location=mlflow_runs.run_url(cfg, sweep_run),
    )


def _registered_before(cfg: Config, run_id: str) -> registry.RegisteredModel | None:
    """The version a restored sweep registered from run ``run_id`` before (a finished sweep rerun registers
    nothing new), or ``None``."""
    name = cfg.mlflow.registered_model_name
    versions = mlflow_runs.client(cfg).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        return None
    latest = max(versions, key=lambda v: int(v.version))
    return registry.RegisteredModel(name, str(latest.version), cfg.mlflow.alias, run_id)


def _new_tuner(cfg: Config, trainable: Any, name: str, storage_path: str, filesystem: Any) -> tune.Tuner:
    metric = cfg.tune.metric
    return tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="min",
            num_samples=cfg.tune.num_samples,
            max_concurrent_trials=cfg.tune.max_concurrent_trials,
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=cfg.distill.epochs,
                grace_period=cfg.tune.grace_period,
                reduction_factor=cfg.tune.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem),
    )
