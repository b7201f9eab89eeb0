"""Ray Tune sweep over lr_bbe, lr_tcl and λ: one trial = one Ray Train distillation run.

Each trial is a Tune function trainable that fits its own ``TorchTrainer``;
``TuneReportCallback`` forwards every epoch's report so ASHA can stop bad trials
early. The sweep is one MLflow run; every trial is a run nested under it. At the
end the best trial's final model is registered with the configured alias.

Every trial starts from the same weights, read (for a D row with ``distill.start``: merged from B3 and C1) once on
the driver before any cluster work (:func:`cmd_ray.train.teacher.resolve_start`); each trial run carries the start's
tags (``cmd_ray.start``, ``cmd_ray.variant``). A trial trains at its sampled ``lr_tcl`` / ``lr_bbe``, explicit rates
that ``distill.lr_scale`` does not scale.

The sweep metric (``tune.metric``) is a loss (``val_loss`` by default; the lowest wins) or a tracking objective,
``val_success`` / ``val_precision`` (the highest wins): each trial then tracks the labeled TIR sequences of
``tune.eval_root`` with the online tracker (:mod:`cmd_ray.evaluation.validation`: read once here, one Ray task per
sequence run by the trial's rank-0 worker) at the epochs ASHA compares (:func:`tracking_epochs`) and carries the
last figures into every other epoch's report. :func:`format_trial_table` lists every trial's losses and tracking
figures, best first, with the rank correlation of ``-val_loss`` and ``val_success`` over the trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import TRACKING_METRICS, Config, metric_mode
from cmd_ray.data.distill_stream import list_pairs
from cmd_ray.data.skip_limit import SkippedDataError
from cmd_ray.evaluation.validation import TrackingValidator, tracking_validator
from cmd_ray.storage import ray_storage
from cmd_ray.train.teacher import Teacher, log_start, resolve_start, start_tags
from cmd_ray.train.trainer import SKIPPED_TAG, check_trainable, fit

SEARCHED = ("lr_tcl", "lr_bbe", "loss_weight_bbe")
TRIAL_TAG = "cmd_ray.tune_trial_id"


TABLE_METRICS = ("val_loss", "loss", "val_success", "val_precision")
"""Each trial's last reported values that :attr:`SweepResult.trial_table` keeps (those a trial reported)."""


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
    metric: str = "val_loss"
    """The sweep metric (``tune.metric``)."""
    mode: str = "min"
    """``min`` for a loss, ``max`` for ``val_success`` / ``val_precision`` (:func:`cmd_ray.config.metric_mode`)."""
    trial_table: dict[str, dict[str, float]] = field(default_factory=dict)
    """By trial id: its last reported :data:`TABLE_METRICS` (those it reported), ``epochs`` (the epochs Tune saw) and,
    with a tracking objective, ``val_tracked_epoch`` (the 0-based epoch its tracking figures come from)."""
    trial_params: dict[str, dict[str, float]] = field(default_factory=dict)
    """By trial id: its sampled :data:`SEARCHED` values."""

    @property
    def best_metric(self) -> float:
        """The best trial's sweep metric: the lowest of :attr:`trial_metrics` for a loss, the highest for
        ``val_success`` / ``val_precision``."""
        return self.trial_metrics[self.best_trial_id]

    def ranked_trials(self) -> list[str]:
        """Every trial id of :attr:`trial_table`, best first by the sweep metric (trials without it last)."""
        return sorted(self.trial_table, key=lambda trial: _rank_key(trial, self.trial_metrics.get(trial), self.mode))

    def loss_success_correlation(self) -> tuple[float, int]:
        """:func:`loss_success_correlation` of :attr:`trial_table`."""
        return loss_success_correlation(self.trial_table)


def _rank_key(trial: str, value: float | None, mode: str) -> tuple[int, float, str]:
    """Sort key of a trial, best first: by the sweep metric (``mode`` min or max), trials without it last, ties
    broken by trial id so that a sweep and its restore pick the same trial."""
    sign = -1.0 if mode == "max" else 1.0
    return (1, 0.0, trial) if value is None else (0, sign * value, trial)


def pick_best(trial_metrics: dict[str, float], mode: str) -> str:
    """The best trial id of ``trial_metrics`` (the lowest value for ``mode="min"``, the highest for ``"max"``); among
    equal values the smallest trial id, so the pick never depends on the order Tune lists its trials in.

    Raises:
        ValueError: ``trial_metrics`` is empty.
    """
    if not trial_metrics:
        raise ValueError("no trial reported the sweep metric")
    return min(trial_metrics, key=lambda trial: _rank_key(trial, trial_metrics[trial], mode))


def loss_success_correlation(trial_table: dict[str, dict[str, float]]) -> tuple[float, int]:
    """Spearman's rank correlation of ``-val_loss`` and ``val_success`` over the trials that reported both (each
    trial's last values), and how many trials that is: +1 means ``val_loss`` ranks the trials exactly as tracking
    does, 0 not at all, -1 backwards. NaN for fewer than two trials or a constant column."""
    both = [row for row in trial_table.values() if "val_loss" in row and "val_success" in row]
    return rank_correlation([-row["val_loss"] for row in both], [row["val_success"] for row in both]), len(both)


def tracking_epochs(epochs: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The 0-based epochs at which ASHA compares trials, and the last epoch, in order.

    ASHA (one bracket) compares a trial at ``training_iteration = grace_period · reduction_factor^k`` for
    ``k = 0 … ⌊log(max_t / grace_period) / log(reduction_factor)⌋`` (Ray's ``_Bracket`` rungs, the same formula),
    ``max_t = epochs``; iteration ``i`` is the report of epoch ``i - 1``. The last epoch gives each finished trial's
    final figure (what the best pick compares).
    """
    if epochs < 1:
        return []
    rungs = int(math.log(epochs / grace_period) / math.log(reduction_factor) + 1) if grace_period <= epochs else 0
    iterations = {grace_period * reduction_factor**k for k in range(max(rungs, 0))}
    return sorted({i - 1 for i in iterations if 1 <= i <= epochs} | {epochs - 1})


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y``: the Pearson correlation of their ranks (ties get their mean
    rank). NaN for fewer than two pairs or when either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"rank_correlation needs pairs, got {len(x)} and {len(y)} values")
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return float("nan")
    return sxy / math.sqrt(sxx * syy)


def format_trial_table(result: SweepResult) -> str:
    """Every trial of the sweep, best first: its status, the epochs Tune saw, its sampled values, its last
    ``val_loss``, ``val_success`` and ``val_precision`` (``-`` where it reported none), then the rank correlation
    of ``-val_loss`` with ``val_success`` when both were reported."""
    columns = ["trial", "status", "epochs", *SEARCHED, "val_loss", "val_success", "val_precision"]
    rows = []
    for trial in result.ranked_trials():
        figures = result.trial_table.get(trial, {})
        params = result.trial_params.get(trial, {})
        row = [trial, result.trial_statuses.get(trial, "-"), _cell(figures.get("epochs"), "d")]
        row += [_cell(params.get(name), ".3g") for name in SEARCHED]
        row += [_cell(figures.get(name), ".4f") for name in ("val_loss", "val_success", "val_precision")]
        rows.append(row)
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    lines = [
        "  ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip()
        for row in [columns, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    rho, count = result.loss_success_correlation()
    if count:
        lines.append(
            f"Spearman rank correlation of -val_loss with val_success over {count} trials: "
            f"{'n/a' if math.isnan(rho) else f'{rho:+.2f}'} (each trial's last values; best first by {result.metric})"
        )
    return "\n".join(lines)


def _cell(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    return format(int(value) if spec == "d" else float(value), spec)


def search_space(cfg: Config) -> dict[str, Any]:
    """Log-uniform ranges of ``cfg.tune`` for each searched knob."""
    return {name: tune.loguniform(*getattr(cfg.tune, name)) for name in SEARCHED}


def search_algorithm(cfg: Config) -> BasicVariantGenerator:
    """Random draws from :func:`search_space`, ``tune.num_samples`` trials, at most ``tune.max_concurrent_trials``
    at once, seeded by ``tune.seed`` (``None``: unseeded)."""
    return BasicVariantGenerator(max_concurrent=cfg.tune.max_concurrent_trials, random_state=cfg.tune.seed)


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


def _skipped_too_much(cfg: Config, parent: str) -> set[str]:
    """Trial ids whose run skipped more data than ``data.max_skipped_fraction`` allows (they failed; never picked)."""
    runs = mlflow_runs.find_runs(cfg, f"tags.mlflow.parentRunId = '{parent}'")
    return {run.data.tags[TRIAL_TAG] for run in runs if TRIAL_TAG in run.data.tags and SKIPPED_TAG in run.data.tags}


def _run_trial(
    params: dict[str, float],
    base: dict[str, Any],
    pairs: list[tuple[str, str]],
    parent: str,
    validator: TrackingValidator | None = None,
    teacher: Teacher | None = None,
) -> None:
    context = tune.get_context()
    cfg = trial_config(Config.model_validate(base), params, context.get_trial_name())
    # a trial resumed with its sweep (Tuner.restore) continues its own MLflow run and its own checkpoints
    run_id = _child_runs(cfg, parent).get(context.get_trial_id())
    if run_id is None:
        run_id = mlflow_runs.start_run(
            cfg,
            context.get_trial_name(),
            tags={
                TRIAL_TAG: context.get_trial_id(),
                "cmd_ray.job": "tune-trial",
                **(teacher.tags() if teacher is not None else {}),
                **start_tags(cfg),
            },
            parent_run_id=parent,
        )
    else:
        mlflow_runs.reopen_run(cfg, run_id)
    epochs = tracking_epochs(cfg.distill.epochs, cfg.tune.grace_period, cfg.tune.reduction_factor)
    with mlflow_runs.terminated(cfg, run_id):
        fit(
            cfg,
            pairs,
            run_id,
            callbacks=[TuneReportCallback()],
            teacher=teacher,
            tracking_validator=validator,
            tracking_epochs=epochs,
        )


SWEEP_TAG = "cmd_ray.sweep"


def _sweep_run(cfg: Config, name: str, restoring: bool) -> str:
    """The sweep's MLflow run: the one it had when the sweep is restored, else a new one."""
    if restoring:
        runs = mlflow_runs.find_runs(cfg, f"tags.`{SWEEP_TAG}` = '{name}'", max_results=1)
        if runs:
            return mlflow_runs.reopen_run(cfg, runs[0].info.run_id)
    return mlflow_runs.start_run(cfg, name, tags={"cmd_ray.job": "tune", SWEEP_TAG: name, **start_tags(cfg)})


def _checkpoint(cfg: Config, path: str) -> ray.train.Checkpoint:
    filesystem, _ = ray_storage(cfg.storage.storage_path, cfg.storage.s3_endpoint_url)
    return ray.train.Checkpoint(path, filesystem=filesystem)


def run_sweep(cfg: Config, pairs: list[tuple[str, str]] | None = None) -> SweepResult:
    """Run the sweep of ``cfg.tune``; returns the best trial and its registered model."""
    check_trainable(cfg)
    if pairs is None:
        pairs = list_pairs(cfg)
    metric = cfg.tune.metric
    mode = metric_mode(metric)
    # the tracking objective's sequences are read here, once, before any cluster work (a bad eval_root fails now)
    validator = tracking_validator(cfg) if metric in TRACKING_METRICS else None
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    # every trial starts from these weights: read (a D row's start merged) once, before any cluster work
    teacher = resolve_start(cfg)
    log_start(cfg, teacher)
    if not ray.is_initialized():
        ray.init()
    name = f"{cfg.storage.run_name}-sweep"
    filesystem, storage_path = ray_storage(cfg.storage.storage_path, cfg.storage.s3_endpoint_url)
    sweep_folder = f"{storage_path.rstrip('/')}/{name}"
    # A sweep folder that exists is a sweep started before (interrupted, or finished): it is resumed, not redone.
    restoring = tune.Tuner.can_restore(sweep_folder, storage_filesystem=filesystem)
    sweep_run = _sweep_run(cfg, name, restoring)
    trainable = tune.with_resources(
        tune.with_parameters(
            _run_trial,
            base=cfg.model_dump(mode="json"),
            pairs=pairs,
            parent=sweep_run,
            validator=validator,
            teacher=teacher,
        ),
        {"cpu": cfg.tune.trial_cpus},
    )
    if restoring:
        tuner = tune.Tuner.restore(
            sweep_folder, trainable, resume_errored=True, param_space=search_space(cfg), storage_filesystem=filesystem
        )
    else:
        tuner = _new_tuner(cfg, trainable, name, storage_path, filesystem)
    with mlflow_runs.terminated(cfg, sweep_run):
        grid = tuner.fit()
        trial_runs = _child_runs(cfg, sweep_run)
        results: dict[str, ray.tune.Result] = {}
        for trial in grid:
            trial_id = str((trial.metrics or {}).get("trial_id", ""))
            if trial_id:
                results[trial_id] = trial
        trial_metrics = {t: float(r.metrics[metric]) for t, r in results.items() if r.metrics and metric in r.metrics}
        trial_table = {t: _table_row(r.metrics or {}) for t, r in results.items()}
        trial_params = {t: {n: float(r.config[n]) for n in SEARCHED if n in r.config} for t, r in results.items()}
        refused = _skipped_too_much(cfg, sweep_run)
        checkpointed = {
            t: value
            for t, value in trial_metrics.items()
            if "checkpoint_path" in results[t].metrics and t not in refused
        }
        if refused and not checkpointed:
            raise SkippedDataError(
                f"every trial of sweep {cfg.storage.run_name} skipped more data than data.max_skipped_fraction="
                f"{cfg.data.max_skipped_fraction:g} allows (see the trial runs' {SKIPPED_TAG} tags): nothing registered"
            )
        if not checkpointed:
            raise RuntimeError(f"no trial of sweep {cfg.storage.run_name} reported a checkpoint")
        best_trial = pick_best(checkpointed, mode)
        best = results[best_trial]
        best_cfg = trial_config(cfg, best.config, best_trial)
        with _checkpoint(cfg, best.metrics["checkpoint_path"]).as_directory() as directory:
            model, _ = registry.load_model(directory, best_cfg)
        # registered before the trial runs get their final status: logging the model reopens the best trial's run
        registered = registry.version_from_run(best_cfg, trial_runs[best_trial]) if restoring else None
        if registered is None:
            registered = registry.log_and_register(best_cfg, trial_runs[best_trial], model)
        trial_statuses: dict[str, str] = {}
        for trial_id, trial in results.items():  # the trial itself cannot tell an ASHA stop from a failure; Tune can
            if trial_id in trial_runs:
                trial_statuses[trial_id] = trial_status(trial, cfg.distill.epochs)
                mlflow_runs.end_run(cfg, trial_runs[trial_id], trial_statuses[trial_id])
        best_params = trial_params[best_trial]
        mlflow_runs.set_tags(
            cfg, sweep_run, {"cmd_ray.best_trial": best_trial, "cmd_ray.best_run": trial_runs[best_trial]}
        )
        summary = {f"best_{metric}": trial_metrics[best_trial]}
        rho, _ = loss_success_correlation(trial_table)
        if not math.isnan(rho):  # how well val_loss ranked the trials against tracking (format_trial_table)
            summary["val_loss_success_spearman"] = rho
        mlflow_runs.log_metrics(cfg, sweep_run, summary, step=0)
    return SweepResult(
        sweep_run_id=sweep_run,
        trial_run_ids=trial_runs,
        trial_metrics=trial_metrics,
        best_trial_id=best_trial,
        best_params=best_params,
        trial_statuses=trial_statuses,
        registered=registered,
        run_location=mlflow_runs.run_url(cfg, sweep_run),
        metric=metric,
        mode=mode,
        trial_table=trial_table,
        trial_params=trial_params,
    )


def _table_row(metrics: dict[str, Any]) -> dict[str, float]:
    """A trial's row of :attr:`SweepResult.trial_table` from its last reported metrics."""
    row = {name: float(metrics[name]) for name in (*TABLE_METRICS, "val_tracked_epoch") if name in metrics}
    row["epochs"] = float(metrics.get("training_iteration", 0))
    return row


def _new_tuner(cfg: Config, trainable: Any, name: str, storage_path: str, filesystem: Any) -> tune.Tuner:
    metric = cfg.tune.metric
    return tune.Tuner(
        trainable,
        param_space=search_space(cfg),
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=metric_mode(metric),
            num_samples=cfg.tune.num_samples,
            search_alg=search_algorithm(cfg),
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=cfg.distill.epochs,
                grace_period=cfg.tune.grace_period,
                reduction_factor=cfg.tune.reduction_factor,
            ),
        ),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=filesystem),
    )
