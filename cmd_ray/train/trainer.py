"""Driver side of a distillation run: TorchTrainer construction, the MLflow run, registration.

``run_distillation(cfg)`` is what ``jobs/distill.py`` and ``cmd-ray distill`` do:
list the pairs (fails fast on an empty prefix, before Ray starts), open an
MLflow run with the resolved config, fit a ``TorchTrainer`` (DDP; gloo on CPU,
NCCL with ``use_gpu``) on the Ray Data sample stream, then log the final model
and register it with the configured alias.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import Config, ConfigError
from cmd_ray.data import pipeline
from cmd_ray.distill.variants import get_variant
from cmd_ray.models.checkpoint import load_training_state
from cmd_ray.models.dimpnet import build_model
from cmd_ray.storage import is_s3, resolve
from cmd_ray.train.loop import train_loop_per_worker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillResult:
    run_id: str
    run_location: str
    registered: registry.RegisteredModel | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    checkpoint_path: str
    skipped_pairs: int


def run_config(cfg: Config, callbacks: Sequence[Any] = ()) -> RunConfig:
    """RunConfig with checkpoints under ``storage.storage_path`` (local or s3://, endpoint honoured)."""
    filesystem = None
    storage_path = cfg.storage.storage_path
    if is_s3(storage_path):
        filesystem, storage_path = resolve(storage_path, cfg.storage.s3_endpoint_url)
    else:
        _, storage_path = resolve(storage_path)
    return RunConfig(
        name=cfg.storage.run_name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.checkpoints_to_keep),
        failure_config=FailureConfig(max_failures=cfg.storage.max_failures),
        callbacks=list(callbacks),
    )


def build_trainer(
    cfg: Config,
    datasets: dict[str, ray.data.Dataset],
    loop_config: dict[str, Any],
    callbacks: Sequence[Any] = (),
) -> TorchTrainer:
    """A TorchTrainer for ``cfg.scaling`` (gloo on CPU, NCCL when ``use_gpu``)."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=run_config(cfg, callbacks),
        datasets=datasets,
    )


def fit(
    cfg: Config, pairs: list[tuple[str, str]], run_id: str, callbacks: Sequence[Any] = ()
) -> tuple[ray.train.Result, pipeline.SkipReport]:
    """Fit one distillation run on ``pairs``; metrics go to MLflow run ``run_id`` every epoch.

    Returns the Ray Train result and the pairs skipped as unreadable.
    """
    skip_counter = pipeline.SkipCounter.remote()
    train_pairs, val_pairs = pipeline.split_pairs(pairs, cfg.data.val_fraction)
    datasets = {"train": pipeline.training_dataset(cfg, train_pairs, skip_counter)}
    if val_pairs and cfg.distill.val_samples:
        datasets["val"] = pipeline.validation_dataset(cfg, val_pairs, skip_counter)
    mlflow_runs.log_metrics(cfg, run_id, {"train_pairs": len(train_pairs), "val_pairs": len(val_pairs)}, step=0)
    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "mlflow_run_id": run_id,
        "skip_counter": skip_counter,
        "has_val": "val" in datasets,
    }
    trainer = build_trainer(cfg, datasets, loop_config, callbacks)
    result = trainer.fit()
    report = ray.get(skip_counter.report.remote())
    mlflow_runs.log_metrics(cfg, run_id, {"skipped_pairs_total": report.skipped}, step=cfg.distill.epochs)
    if report.skipped:
        logger.warning("%d pair(s) skipped: %s", report.skipped, "; ".join(report.examples[:5]))
    return result, report


def final_model(result: ray.train.Result, cfg: Config) -> Any:
    """The network of the run's latest checkpoint."""
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.storage.run_name} reported no checkpoint")
    with result.checkpoint.as_directory() as directory:
        state = load_training_state(directory)
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model


def check_trainable(cfg: Config) -> None:
    """Fail before any cluster work when the variant cannot be distilled as configured."""
    variant = get_variant(cfg.distill.variant)
    if variant.is_merge:
        parts = ", ".join(f"{module} {branch} branch of {source}" for module, branch, source in variant.merge_of)
        raise ConfigError(f"distill.variant={variant.name} is not trained but merged ({parts})")
    if not variant.trains_anything:
        raise ConfigError(
            f"distill.variant={variant.name} trains nothing ({variant.meaning}); pick B1, B2, C1 or D1-D5"
        )
    if variant.box_method != cfg.data.boxes:
        raise ConfigError(
            f"distill.variant={variant.name} distills on {variant.box_method!r} pseudo boxes but data.boxes is "
            f"{cfg.data.boxes!r}; set data.boxes={variant.box_method}"
        )


def epoch_history(cfg: Config, run_id: str) -> list[dict[str, float]]:
    """Per-epoch losses of a run, read back from MLflow (the record of the run)."""
    client = mlflow_runs.client(cfg)
    rows: dict[int, dict[str, float]] = {}
    for key in ("loss", "loss_tcl", "loss_bbe", "val_loss", "val_loss_tcl", "val_loss_bbe", "teacher_val_loss"):
        for metric in client.get_metric_history(run_id, key):
            rows.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [rows[epoch] for epoch in sorted(rows)]


def run_distillation(cfg: Config, pairs: list[tuple[str, str]] | None = None) -> DistillResult:
    """The whole distill job on the cluster that ``RAY_ADDRESS`` names (a local one when unset)."""
    check_trainable(cfg)
    if pairs is None:
        pairs = pipeline.list_pairs(cfg)  # fails on an empty prefix before any cluster work
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    if not ray.is_initialized():
        ray.init()
    run_id = mlflow_runs.start_run(
        cfg, cfg.storage.run_name, tags={"cmd_ray.job": "distill", "cmd_ray.data_uri": cfg.data.uri}
    )
    status = "FAILED"
    try:
        result, skipped = fit(cfg, pairs, run_id)
        model = final_model(result, cfg)
        registered = registry.log_and_register(cfg, run_id, model)
        status = "FINISHED"
    finally:
        mlflow_runs.end_run(cfg, run_id, status)
    return DistillResult(
        run_id=run_id,
        run_location=mlflow_runs.run_url(cfg, run_id),
        registered=registered,
        metrics=dict(result.metrics or {}),
        history=epoch_history(cfg, run_id),
        checkpoint_path=result.checkpoint.path if result.checkpoint else "",
        skipped_pairs=skipped.skipped,
    )
