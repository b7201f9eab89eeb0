"""Driver side of a training run: TorchTrainer construction, the MLflow run, resume, registration.

``run_distillation(cfg)`` is what ``jobs/distill.py`` and ``cmd-ray distill`` do: list the pairs (fails fast
on an empty prefix, before Ray starts), open an MLflow run with the resolved config, fit a ``TorchTrainer``
(DDP; gloo on CPU, NCCL with ``use_gpu``) on the Ray Data sample stream, then log the final model and
register it with the configured alias. ``run_pretraining(cfg)`` (``jobs/pretrain.py``) does the same with
supervised samples of labeled RGB sequences and registers the teacher.

Running a job again with the same run name and storage path resumes it: Ray Train restores the latest
checkpoint, the sample stream continues at the next epoch, and the MLflow run of the first attempt is
reopened so that its metric history stays one record.
"""

from __future__ import annotations

import json
import logging
import re
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
from cmd_ray.data.sequences import LabeledSequence, list_sequences, split_sequences
from cmd_ray.distill.variants import get_variant
from cmd_ray.models.checkpoint import load_training_state
from cmd_ray.models.dimpnet import build_model
from cmd_ray.storage import StorageError, is_s3, read_bytes, resolve
from cmd_ray.train.loop import train_loop_per_worker
from cmd_ray.train.schedule import Schedule, schedule_for
from cmd_ray.train.teacher import Teacher, resolve_teacher

logger = logging.getLogger(__name__)


RUN_NAME_TAG = "cmd_ray.run_name"
STORAGE_TAG = "cmd_ray.storage_path"
JOB_TAG = "cmd_ray.job"
_EPOCH_DIR = re.compile(r"epoch_(\d+)")
CHECKPOINT_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
"""Ray Train's record of the committed checkpoints of a run, in the run's storage folder."""


@dataclass(frozen=True)
class TrainingResult:
    """What a distill or pretrain job leaves behind."""

    run_id: str
    run_location: str
    registered: registry.RegisteredModel | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    checkpoint_path: str
    skipped_pairs: int
    fallback_boxes: int = 0
    unpaired_files: int = 0
    resumed_from_epoch: int | None = None
    teacher: Teacher | None = None


def run_config(cfg: Config, callbacks: Sequence[Any] = (), run_name: str | None = None) -> RunConfig:
    """RunConfig with checkpoints under ``storage.storage_path`` (local or s3://, endpoint honoured)."""
    filesystem = None
    storage_path = cfg.storage.storage_path
    if is_s3(storage_path):
        filesystem, storage_path = resolve(storage_path, cfg.storage.s3_endpoint_url)
    else:
        _, storage_path = resolve(storage_path)
    return RunConfig(
        name=run_name or cfg.storage.run_name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.checkpoints_to_keep),
        failure_config=FailureConfig(max_failures=cfg.storage.max_failures),
        callbacks=list(callbacks),
    )


def latest_checkpoint_epoch(cfg: Config, run_name: str) -> int | None:
    """The last epoch whose checkpoint Ray Train has committed for ``storage_path/run_name``, or ``None``.

    Read from the run's checkpoint-manager snapshot, the record Ray Train itself restores from: a checkpoint
    folder written by a worker that died before the controller registered it does not count.
    """
    snapshot = f"{cfg.storage.storage_path.rstrip('/')}/{run_name}/{CHECKPOINT_SNAPSHOT_FILE}"
    try:
        state = json.loads(read_bytes(snapshot, cfg.storage.s3_endpoint_url))
    except StorageError:
        return None  # no run of that name yet
    except ValueError as exc:
        raise ConfigError(f"storage.run_name {run_name!r}: unreadable checkpoint record {snapshot}: {exc}") from None
    epochs = [
        int(match.group(1))
        for result in state.get("checkpoint_results", [])
        if (match := _EPOCH_DIR.fullmatch(str(result.get("checkpoint_dir_name", ""))))
    ]
    return max(epochs, default=None)


def build_trainer(
    cfg: Config,
    datasets: dict[str, ray.data.Dataset],
    loop_config: dict[str, Any],
    callbacks: Sequence[Any] = (),
    run_name: str | None = None,
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
        # Ray Train replaces the datasets' execution options with these: carry the object-store cap over
        dataset_config=pipeline.ingest_config(cfg),
        run_config=run_config(cfg, callbacks, run_name),
        datasets=datasets,
    )


def _fit(
    cfg: Config,
    schedule: Schedule,
    datasets: dict[str, ray.data.Dataset],
    run_id: str,
    teacher: Teacher,
    skip_counter: Any,
    cursor: Any,
    callbacks: Sequence[Any] = (),
) -> ray.train.Result:
    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "job": schedule.job,
        "mlflow_run_id": run_id,
        "teacher": ray.put(teacher),  # read once on the driver; every worker gets it from the object store
        "skip_counter": skip_counter,
        "epoch_cursor": cursor,
        "has_val": "val" in datasets,
    }
    trainer = build_trainer(cfg, datasets, loop_config, callbacks, schedule.run_name)
    return trainer.fit()


def fit(
    cfg: Config,
    pairs: list[Any],
    run_id: str,
    callbacks: Sequence[Any] = (),
    teacher: Teacher | None = None,
) -> tuple[ray.train.Result, pipeline.SkipReport]:
    """Fit one distillation run on ``pairs``; metrics go to MLflow run ``run_id`` every epoch.

    Returns the Ray Train result and the pairs skipped as unreadable.
    """
    schedule = schedule_for(cfg, "distill")
    teacher = teacher or resolve_teacher(cfg)
    skip_counter = pipeline.SkipCounter.remote()
    cursor = pipeline.EpochCursor.remote()
    train_pairs, val_pairs = pipeline.split_pairs(pairs, cfg.data.val_fraction)
    datasets = {"train": pipeline.training_dataset(cfg, train_pairs, skip_counter, epoch_cursor=cursor)}
    if val_pairs and cfg.distill.val_samples:
        datasets["val"] = pipeline.validation_dataset(cfg, val_pairs, skip_counter)
    mlflow_runs.log_metrics(cfg, run_id, {"train_pairs": len(train_pairs), "val_pairs": len(val_pairs)}, step=0)
    result = _fit(cfg, schedule, datasets, run_id, teacher, skip_counter, cursor, callbacks)
    report = ray.get(skip_counter.report.remote())
    totals = {
        "skipped_pairs_total": report.skipped,
        "fallback_boxes_total": report.fallback_boxes,
        "unpaired_files": report.unpaired,
    }
    mlflow_runs.log_metrics(cfg, run_id, totals, step=schedule.epochs)
    if report.skipped:
        logger.warning("%d pair(s) skipped: %s", report.skipped, "; ".join(report.examples[:5]))
    if report.fallback_boxes:
        logger.warning("%d pair(s) had no detection and trained on the centre box", report.fallback_boxes)
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
    keys = ("loss", "loss_tcl", "loss_bbe", "val_loss", "val_loss_tcl", "val_loss_bbe", "val_loss_bbe_chance")
    for key in (*keys, "teacher_val_loss"):
        for metric in client.get_metric_history(run_id, key):
            rows.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [rows[epoch] for epoch in sorted(rows)]


def open_run(cfg: Config, schedule: Schedule, tags: dict[str, str]) -> tuple[str, int | None]:
    """The MLflow run of this job: reopened when its checkpoints say it is a resume, else a new one.

    Returns ``(run_id, resumed_from_epoch)``; ``resumed_from_epoch`` is ``None`` for a fresh run.
    """
    last = latest_checkpoint_epoch(cfg, schedule.run_name)
    all_tags = {
        JOB_TAG: schedule.job,
        RUN_NAME_TAG: schedule.run_name,
        STORAGE_TAG: cfg.storage.storage_path,
        **tags,
    }
    if last is not None:
        client = mlflow_runs.client(cfg)
        runs = client.search_runs(
            [mlflow_runs.experiment_id(cfg)],
            filter_string=f"tags.`{RUN_NAME_TAG}` = '{schedule.run_name}' and tags.`{JOB_TAG}` = '{schedule.job}'",
            order_by=["attributes.start_time DESC"],
            max_results=5,
        )
        same_storage = [r for r in runs if r.data.tags.get(STORAGE_TAG) == cfg.storage.storage_path]
        if same_storage:
            run_id = same_storage[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            mlflow_runs.set_tags(cfg, run_id, {**tags, "cmd_ray.resumed_from_epoch": last + 1})
            logger.info("resuming %s after epoch %d (MLflow run %s)", schedule.run_name, last, run_id)
            return run_id, last + 1
        logger.info("resuming %s after epoch %d in a new MLflow run", schedule.run_name, last)
        all_tags["cmd_ray.resumed_from_epoch"] = str(last + 1)
    return mlflow_runs.start_run(cfg, schedule.run_name, tags=all_tags), (last + 1 if last is not None else None)


def _finish(
    cfg: Config,
    schedule: Schedule,
    run_id: str,
    resumed: int | None,
    teacher: Teacher,
    train: Any,
) -> TrainingResult:
    """Run ``train()`` -> (Result, SkipReport) inside the MLflow run, then register the final model."""
    with mlflow_runs.terminated(cfg, run_id):
        result, skipped = train()
        model = final_model(result, cfg)
        registered = registry.log_and_register(cfg, run_id, model, schedule.registered_model_name)
    return TrainingResult(
        run_id=run_id,
        run_location=mlflow_runs.run_url(cfg, run_id),
        registered=registered,
        metrics=dict(result.metrics or {}),
        history=epoch_history(cfg, run_id),
        checkpoint_path=result.checkpoint.path if result.checkpoint else "",
        skipped_pairs=skipped.skipped,
        fallback_boxes=skipped.fallback_boxes,
        unpaired_files=skipped.unpaired,
        resumed_from_epoch=resumed,
        teacher=teacher,
    )


def run_distillation(cfg: Config, pairs: list[Any] | None = None) -> TrainingResult:
    """The whole distill job on the cluster that ``RAY_ADDRESS`` names (a local one when unset)."""
    check_trainable(cfg)
    if pairs is None:
        pairs = pipeline.list_pairs(cfg)  # fails on an empty prefix before any cluster work
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    teacher = resolve_teacher(cfg)  # a bad init_checkpoint fails here, before the cluster starts
    if not ray.is_initialized():
        ray.init()
    schedule = schedule_for(cfg, "distill")
    run_id, resumed = open_run(cfg, schedule, {"cmd_ray.data_uri": cfg.data.uri, **teacher.tags()})

    def train() -> tuple[ray.train.Result, pipeline.SkipReport]:
        return fit(cfg, pairs, run_id, teacher=teacher)

    return _finish(cfg, schedule, run_id, resumed, teacher, train)


def list_pretraining_sequences(cfg: Config) -> list[LabeledSequence]:
    """The labeled sequences of ``pretrain.sequences_uri`` (``ConfigError`` naming the URI when unusable)."""
    from cmd_ray.data.sequences import SequenceError

    try:
        return list_sequences(cfg.pretrain.sequences_uri, cfg.storage.s3_endpoint_url)
    except (SequenceError, StorageError) as exc:
        raise ConfigError(f"pretrain.sequences_uri: {exc}") from None


def run_pretraining(cfg: Config, sequences: list[LabeledSequence] | None = None) -> TrainingResult:
    """The teacher-pretraining job: supervised DiMP/ATOM training on labeled RGB sequences, then registration."""
    if sequences is None:
        sequences = list_pretraining_sequences(cfg)
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    teacher = resolve_teacher(cfg, "pretrain")
    if not ray.is_initialized():
        ray.init()
    schedule = schedule_for(cfg, "pretrain")
    run_id, resumed = open_run(cfg, schedule, {"cmd_ray.data_uri": cfg.pretrain.sequences_uri, **teacher.tags()})

    def train() -> tuple[ray.train.Result, pipeline.SkipReport]:
        skip_counter = pipeline.SkipCounter.remote()
        cursor = pipeline.EpochCursor.remote()
        train_seqs, val_seqs = split_sequences(sequences, cfg.pretrain.val_fraction)
        datasets = {"train": pipeline.pretraining_dataset(cfg, train_seqs, skip_counter, cursor, validation=False)}
        if val_seqs and cfg.pretrain.val_samples:
            datasets["val"] = pipeline.pretraining_dataset(cfg, val_seqs, skip_counter, None, validation=True)
        mlflow_runs.log_metrics(
            cfg, run_id, {"train_sequences": len(train_seqs), "val_sequences": len(val_seqs)}, step=0
        )
        result = _fit(cfg, schedule, datasets, run_id, teacher, skip_counter, cursor)
        report = ray.get(skip_counter.report.remote())
        mlflow_runs.log_metrics(cfg, run_id, {"skipped_frames_total": report.skipped}, step=schedule.epochs)
        return result, report

    return _finish(cfg, schedule, run_id, resumed, teacher, train)
