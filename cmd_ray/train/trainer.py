"""Driver side of a training run: TorchTrainer construction, the MLflow run, resume, registration.

``run_distillation(cfg)`` is what ``jobs/distill.py`` and ``cmd-ray distill`` do: list the pairs (fails fast
on an empty prefix, before Ray starts), open an MLflow run with the resolved config, fit a ``TorchTrainer``
(DDP; gloo on CPU, NCCL with ``use_gpu``) on the Ray Data sample stream, then log the final model and
register it with the configured alias. ``run_pretraining(cfg)`` (``jobs/pretrain.py``) does the same with
supervised samples of labeled RGB sequences and registers the teacher.

With ``distill.select_by`` a tracking score, the registered weights are not the last epoch's but the selected ones
(:mod:`cmd_ray.train.selection`): the epoch that tracks the validation sequences of ``tune.eval_root`` best, the teacher
included as epoch -1. When no epoch beats the teacher, the run registers a new version holding the teacher's weights,
says so in the job log, the run's tags and the version's description and tags, and the alias moves to it: the alias
never names a distilled model that tracks the user's validation split worse than its teacher.

Running a job again with the same run name and storage path resumes it: Ray Train restores the latest
checkpoint, the sample stream continues at the next epoch, and the MLflow run of the first attempt is
reopened so that its metric history stays one record. Before any cluster work the job reads the run's
latest committed checkpoint through Ray Train's public ``ray.train.Result.from_path``: a rerun whose config
differs from the stored one in anything a resume may not change fails with a ``ConfigError``
(:mod:`cmd_ray.resume`), and a run with no epoch left to train says so and registers nothing.
"""

from __future__ import annotations

import logging
import pickle
import re
import signal
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cmd_ray import mlflow_runs, registry, resume
from cmd_ray.config import Config, ConfigError
from cmd_ray.data.distill_stream import list_pairs, split_pairs, training_dataset, validation_dataset
from cmd_ray.data.epochs import EpochCursor
from cmd_ray.data.pretrain_stream import pretraining_dataset
from cmd_ray.data.sequences import LabeledSequence, list_sequences, split_sequences
from cmd_ray.data.skip_limit import SkippedDataError, skipped_share_error
from cmd_ray.data.skips import SkipCounter, SkipReport
from cmd_ray.data.streams import ingest_config, on_driver_node
from cmd_ray.models.training_state import load_training_state
from cmd_ray.resume import RUN_NAME_KEY
from cmd_ray.schedule import Schedule, schedule_for
from cmd_ray.storage import StorageError, ray_storage
from cmd_ray.train.loop import train_loop_per_worker
from cmd_ray.train.selection import (
    BEST_EPOCH,
    CHECKPOINT_SCORE,
    Selection,
    register_selection,
    scored_epochs,
    selected_model,
)
from cmd_ray.train.teacher import Teacher, log_start, resolve_start, resolve_teacher, start_tags
from cmd_ray.vocabulary import get_variant

logger = logging.getLogger(__name__)


RUN_NAME_TAG = "cmd_ray.run_name"
STORAGE_TAG = "cmd_ray.storage_path"
JOB_TAG = "cmd_ray.job"
_EPOCH_DIR = re.compile(r"epoch_(\d+)")


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
    resized_tir: int = 0
    """Pairs whose TIR image was resized to its RGB partner's size (same aspect, other size)."""
    resumed_from_epoch: int | None = None
    teacher: Teacher | None = None
    nothing_to_train: bool = False
    """The run's latest checkpoint already holds every epoch asked for: nothing was trained or registered
    (``registered`` is ``None``; ``run_id``, ``history`` and ``checkpoint_path`` are the earlier run's)."""
    note: str = ""
    """A line for the user about what this invocation did not do and why (set with ``nothing_to_train``)."""
    label: str = ""
    """What a distill run is called (:attr:`cmd_ray.config.DistillConfig.run_label`: ``D3``, ``D3 loss from the
    teacher``); empty for pretraining."""
    selection: Selection | None = None
    """With ``distill.select_by``: the registered weights' epoch and scores (``None``: the final epoch's)."""


def run_config(
    cfg: Config, callbacks: Sequence[Any] = (), run_name: str | None = None, keep_selected: bool = False
) -> RunConfig:
    """RunConfig with checkpoints under ``storage.storage_path`` (local or s3://, endpoint honoured).

    Ray Train keeps the latest ``storage.checkpoints_to_keep`` checkpoints; with ``keep_selected`` (a run that
    selects its weights) it keeps those with the highest :data:`~cmd_ray.train.selection.CHECKPOINT_SCORE` and the
    latest one, so the selected epoch's checkpoint is never deleted.
    """
    filesystem, storage_path = ray_storage(cfg.storage.storage_path, cfg.storage.s3_endpoint_url)
    keep = {"checkpoint_score_attribute": CHECKPOINT_SCORE, "checkpoint_score_order": "max"} if keep_selected else {}
    return RunConfig(
        name=run_name or cfg.storage.run_name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.storage.checkpoints_to_keep, **keep),
        failure_config=FailureConfig(max_failures=cfg.storage.max_failures),
        callbacks=list(callbacks),
    )


def _run_folder(cfg: Config, run_name: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path in it)`` of the run's folder ``storage.storage_path/run_name``."""
    filesystem, storage_path = ray_storage(cfg.storage.storage_path, cfg.storage.s3_endpoint_url)
    return filesystem, f"{storage_path.rstrip('/')}/{run_name}"


def committed_result(cfg: Config, run_name: str) -> ray.train.Result | None:
    """Ray Train's record of the run ``storage.storage_path/run_name``, or ``None`` when it has no checkpoint.

    Read with the public ``ray.train.Result.from_path`` (local or s3://, endpoint honoured), which restores
    the record Ray Train itself resumes from: only checkpoints the controller has committed count, not a
    folder a worker wrote before it died. ``result.checkpoint`` is the latest committed checkpoint and
    ``result.metrics`` what was reported with it. Needs no running Ray cluster.

    Raises:
        ConfigError: the folder holds a run record Ray Train cannot restore (another Ray version, checkpoints
            deleted under it); the message says how to start a new run.
    """
    filesystem, path = _run_folder(cfg, run_name)
    try:
        result = ray.train.Result.from_path(path, storage_filesystem=filesystem)
    except RuntimeError:
        return None  # no run folder yet, or a run that ended before its first committed checkpoint
    except Exception as exc:  # Ray Train's own error for an unrestorable record; it would fail the fit too
        raise ConfigError(
            f"run {run_name!r} in {cfg.storage.storage_path}: Ray Train cannot restore it: {exc}. Start a new "
            "run under another run name (storage.run_name, pretrain.run_name) or storage.storage_path."
        ) from None
    return result if result.checkpoint is not None else None


def _checkpoint_epoch(result: ray.train.Result) -> int:
    """The epoch of ``result``'s checkpoint: the ``epoch`` reported with it, else its ``epoch_NNNN`` folder name."""
    epoch = (result.metrics or {}).get("epoch")
    if epoch is not None:
        return int(epoch)
    assert result.checkpoint is not None
    match = _EPOCH_DIR.fullmatch(result.checkpoint.path.rstrip("/").rsplit("/", 1)[-1])
    if match is None:
        raise ConfigError(f"checkpoint {result.checkpoint.path} names no epoch (not written by cmd-ray)")
    return int(match.group(1))


def latest_checkpoint_epoch(cfg: Config, run_name: str) -> int | None:
    """The last epoch whose checkpoint Ray Train has committed for ``storage_path/run_name``, or ``None``.

    Read through ``ray.train.Result.from_path`` (see :func:`committed_result`): a checkpoint folder written by
    a worker that died before the controller registered it does not count.
    """
    result = committed_result(cfg, run_name)
    return None if result is None else _checkpoint_epoch(result)


@dataclass(frozen=True)
class PreviousRun:
    """The latest committed checkpoint of an earlier run with this job's run name and storage path."""

    last_epoch: int
    """The epoch the checkpoint ends; a resume starts at ``last_epoch + 1``."""
    checkpoint_path: str
    metrics: dict[str, Any]
    """What the run reported with the checkpoint."""
    config: dict[str, Any] | None
    """The config tree the run trained with (``None`` for a checkpoint that holds none)."""
    job: str | None
    mlflow_run_id: str | None


def previous_run(cfg: Config, schedule: Schedule) -> PreviousRun | None:
    """The earlier run of ``schedule.run_name`` under ``storage.storage_path``, or ``None`` for a fresh run.

    Reads the latest committed checkpoint's training state for the stored config (one download of it).
    """
    result = committed_result(cfg, schedule.run_name)
    if result is None:
        return None
    assert result.checkpoint is not None
    try:
        with result.checkpoint.as_directory() as directory:
            state = load_training_state(directory)
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ConfigError(
            f"{_run_label(cfg, schedule)}: unreadable checkpoint {result.checkpoint.path}: {exc}. Start a new run: "
            f"set {RUN_NAME_KEY[schedule.job]}=<new name> (or another storage.storage_path)."
        ) from None
    stored = state.get("config")
    return PreviousRun(
        last_epoch=int(state["epoch"]) if "epoch" in state else _checkpoint_epoch(result),
        checkpoint_path=result.checkpoint.path,
        metrics=dict(result.metrics or {}),
        config=dict(stored) if isinstance(stored, dict) else None,
        job=state.get("job"),
        mlflow_run_id=state.get("mlflow_run_id"),
    )


def _run_label(cfg: Config, schedule: Schedule) -> str:
    return f"{RUN_NAME_KEY[schedule.job]}={schedule.run_name} in {cfg.storage.storage_path}"


def check_resume(cfg: Config, schedule: Schedule) -> PreviousRun | None:
    """The earlier run this job resumes (``None``: a fresh run), after checking that ``cfg`` may resume it.

    Raises:
        ConfigError: the stored config differs in a setting a resume may not change; names every such key
            with its stored and new value, and how to start a new run instead. Secrets are redacted.
    """
    previous = previous_run(cfg, schedule)
    if previous is None:
        return None
    if previous.config is None:
        logger.warning("%s: its checkpoint holds no config; resuming unchecked", _run_label(cfg, schedule))
        return previous
    try:
        resume.check_resume(
            previous.config,
            cfg.model_dump(mode="json"),
            schedule.job,
            run=_run_label(cfg, schedule),
            old_job=previous.job,
            note=f"(stored config: checkpoint {previous.checkpoint_path}, epoch {previous.last_epoch})",
        )
    except ConfigError as exc:
        raise ConfigError(mlflow_runs.redact(str(exc))) from None
    return previous


def build_trainer(
    cfg: Config,
    datasets: dict[str, ray.data.Dataset],
    loop_config: dict[str, Any],
    callbacks: Sequence[Any] = (),
    run_name: str | None = None,
) -> TorchTrainer:
    """A TorchTrainer for ``cfg.scaling`` (gloo on CPU, NCCL when ``use_gpu``), its workers placed on nodes that
    match ``scaling.label_selector`` and hold ``scaling.resources_per_worker``."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={
                "CPU": cfg.scaling.cpus_per_worker,
                **({"GPU": 1} if cfg.scaling.use_gpu else {}),
                **cfg.scaling.resources_per_worker,
            },
            label_selector=dict(cfg.scaling.label_selector) or None,
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        # Ray Train replaces the datasets' execution options with these: carry the object-store cap over
        dataset_config=ingest_config(cfg),
        run_config=run_config(cfg, callbacks, run_name, keep_selected=loop_config.get("select_by") is not None),
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
    tracking: dict[str, Any] | None = None,
) -> ray.train.Result:
    loop_config = {
        **(tracking or {}),
        "config": cfg.model_dump(mode="json"),
        "job": schedule.job,
        "mlflow_run_id": run_id,
        "teacher": ray.put(teacher),  # read once on the driver; every worker gets it from the object store
        "skip_counter": skip_counter,
        "epoch_cursor": cursor,
        "has_val": "val" in datasets,
    }
    trainer = build_trainer(cfg, datasets, loop_config, callbacks, schedule.run_name)
    return fit_releasing_the_controller(trainer)


def fit_releasing_the_controller(trainer: TorchTrainer) -> ray.train.Result:
    """``trainer.fit()``, then the driver's SIGINT handler as it was before.

    On the main thread Ray Train installs a SIGINT handler that holds the run's controller actor. Left in place,
    that handle keeps the finished run's controller alive, and with it the Ray Data actors of its datasets and
    their CPUs: the next run in the same driver (table1's rows, a test session) waits for CPUs that never free.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if on_main_thread else None
    try:
        return trainer.fit()
    finally:
        if previous is not None:  # None: off the main thread, or a handler not set from Python
            signal.signal(signal.SIGINT, previous)


def fit(
    cfg: Config,
    pairs: list[Any],
    run_id: str,
    callbacks: Sequence[Any] = (),
    teacher: Teacher | None = None,
    tracking_validator: Callable[[Any], dict[str, float]] | None = None,
    tracking_epochs: Collection[int] = (),
    select_by: str | None = None,
) -> tuple[ray.train.Result, SkipReport]:
    """Fit one distillation run on ``pairs``; metrics go to MLflow run ``run_id`` every epoch.

    ``teacher`` is the run's starting weights (default: :func:`~cmd_ray.train.teacher.resolve_start` of ``cfg``,
    read here).

    ``tracking_validator`` (a picklable ``model → {name: value}``, e.g. the sweep's tracking objective) is called by
    rank 0 at ``tracking_epochs`` (0-based) and at the first epoch it trains; its values are in every later report
    (:mod:`cmd_ray.train.loop`). With ``select_by`` (one of the validator's scores) it also scores the teacher first,
    every report carries the selection (:mod:`cmd_ray.train.selection`), and Ray Train keeps the selected epoch's
    checkpoint; ``tracking_epochs`` then defaults to ``distill.select_every``'s :func:`scored_epochs`.

    Returns the Ray Train result and the pairs skipped as unreadable.
    """
    schedule = schedule_for(cfg, "distill")
    teacher = teacher or resolve_start(cfg)
    skip_counter = SkipCounter.options(**on_driver_node()).remote()
    cursor = EpochCursor.options(**on_driver_node()).remote()
    train_pairs, val_pairs = split_pairs(pairs, cfg.data.val_fraction)
    datasets = {"train": training_dataset(cfg, train_pairs, skip_counter, epoch_cursor=cursor)}
    if val_pairs and cfg.distill.val_samples:
        datasets["val"] = validation_dataset(cfg, val_pairs, skip_counter)
    mlflow_runs.log_metrics(cfg, run_id, {"train_pairs": len(train_pairs), "val_pairs": len(val_pairs)}, step=0)
    tracking = None
    if select_by is not None:
        if tracking_validator is None:
            raise ValueError(f"select_by={select_by} needs a tracking_validator that scores it")
        tracking_epochs = tracking_epochs or scored_epochs(schedule.epochs, cfg.distill.select_every)
    if tracking_validator is not None:
        tracking = {
            "tracking_validator": tracking_validator,
            "tracking_epochs": sorted(tracking_epochs),
            "select_by": select_by,
        }
    result = _fit(cfg, schedule, datasets, run_id, teacher, skip_counter, cursor, callbacks, tracking)
    report = ray.get(skip_counter.report.remote())
    totals = {
        "skipped_pairs_total": report.skipped,
        "fallback_boxes_total": report.fallback_boxes,
        "unpaired_files": report.unpaired,
        "s3_retries_total": report.retries,
        "transient_read_failures_total": report.transient_failures,
        "resized_tir_total": report.resized_tir,
    }
    mlflow_runs.log_metrics(cfg, run_id, totals, step=schedule.epochs)
    if report.skipped:
        logger.warning("%d pair(s) skipped: %s", report.skipped, "; ".join(report.examples[:5]))
    if report.fallback_boxes:
        logger.warning("%d pair(s) had no detection and trained on the centre box", report.fallback_boxes)
    if report.resized_tir:
        logger.warning(
            "%d pair(s) had a TIR image of another size than its RGB partner, resized to it (same aspect), e.g. %s",
            report.resized_tir,
            report.resized_examples[:3],
        )
    check_skipped(cfg, run_id, report, len(pairs), "pairs")
    return result, report


SKIPPED_TAG = "cmd_ray.too_much_skipped"
"""Run tag of a run that skipped more than ``data.max_skipped_fraction``: ``"<skipped>/<total> <unit>"``."""
SKIPPED_ARTIFACT = "skipped.txt"
"""Run artifact listing the skipped items (the first ones, with their reasons) and the count per reason."""


def skipped_listing(report: SkipReport, total: int, unit: str) -> str:
    """The text of :data:`SKIPPED_ARTIFACT`: the count and share, the count per reason, the first skipped items."""
    lines = [f"{report.skipped} of {total} {unit} skipped as unreadable", "", "by reason:"]
    lines += [f"  {count}  {reason}" for reason, count in sorted(report.by_reason.items(), key=lambda kv: -kv[1])]
    lines += ["", f"first {len(report.examples)}:", *(f"  {line}" for line in report.examples)]
    return "\n".join(lines) + "\n"


def check_skipped(cfg: Config, run_id: str, report: SkipReport, total: int, unit: str) -> None:
    """Fail the run when more than ``data.max_skipped_fraction`` of its ``total`` items (``unit``) were skipped.

    Whenever anything was skipped the list goes to the run's artifact :data:`SKIPPED_ARTIFACT`; a run over the limit
    also gets :data:`SKIPPED_TAG` (so that a rerun of it registers nothing either, :func:`_nothing_to_train`).

    Raises:
        SkippedDataError: the count, the share, the first skipped items and where the rest are listed.
    """
    if report.skipped:
        mlflow_runs.log_text(cfg, run_id, skipped_listing(report, total, unit), SKIPPED_ARTIFACT)
    where = f"artifact {SKIPPED_ARTIFACT} of MLflow run {run_id} and the job log's 'skipping' warnings"
    error = skipped_share_error(report.skipped, total, cfg.data.max_skipped_fraction, unit, report.examples, where)
    if error is not None:
        mlflow_runs.set_tags(cfg, run_id, {SKIPPED_TAG: f"{report.skipped}/{total} {unit}"})
        raise error


def _refused_for_skips(cfg: Config, tags: dict[str, str], run_id: str) -> SkippedDataError | None:
    """The error of a finished run whose :data:`SKIPPED_TAG` still exceeds ``data.max_skipped_fraction``."""
    recorded = tags.get(SKIPPED_TAG)
    if not recorded:
        return None
    counts, _, unit = recorded.partition(" ")
    skipped, _, total = counts.partition("/")
    where = f"artifact {SKIPPED_ARTIFACT} of MLflow run {run_id}"
    return skipped_share_error(int(skipped), int(total), cfg.data.max_skipped_fraction, unit, (), where)


def storage_uri(cfg: Config, path: str) -> str:
    """A path Ray Train reports under ``storage.storage_path`` (``bucket/key`` on S3) as a URI cmd-ray reads."""
    if cfg.storage.storage_path.startswith("s3://") and not path.startswith("s3://"):
        return f"s3://{path.lstrip('/')}"
    return path


def final_model(result: ray.train.Result, cfg: Config) -> Any:
    """The network of the run's latest checkpoint."""
    if result.checkpoint is None:
        raise RuntimeError(f"run {cfg.storage.run_name} reported no checkpoint")
    with result.checkpoint.as_directory() as directory:
        model, _ = registry.load_model(directory, cfg)
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
    tracking = ("val_success", "val_precision", BEST_EPOCH, "teacher_val_success", "teacher_val_precision")
    for key in (*keys, "teacher_val_loss", *tracking):
        for metric in client.get_metric_history(run_id, key):
            rows.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [rows[epoch] for epoch in sorted(rows)]


def open_run(
    cfg: Config,
    schedule: Schedule,
    tags: dict[str, str],
    previous: PreviousRun | None,
    parent_run_id: str | None = None,
) -> tuple[str, int | None]:
    """The MLflow run of this job: reopened when ``previous`` (see :func:`check_resume`) says it is a resume,
    else a new one (nested under ``parent_run_id`` when given).

    Returns ``(run_id, resumed_from_epoch)``; ``resumed_from_epoch`` is ``None`` for a fresh run.
    """
    last = previous.last_epoch if previous is not None else None
    all_tags = {
        JOB_TAG: schedule.job,
        RUN_NAME_TAG: schedule.run_name,
        STORAGE_TAG: cfg.storage.storage_path,
        **tags,
    }
    if last is not None:
        runs = mlflow_runs.find_runs(
            cfg, f"tags.`{RUN_NAME_TAG}` = '{schedule.run_name}' and tags.`{JOB_TAG}` = '{schedule.job}'", max_results=5
        )
        same_storage = [r for r in runs if r.data.tags.get(STORAGE_TAG) == cfg.storage.storage_path]
        if same_storage:
            run_id = same_storage[0].info.run_id
            mlflow_runs.reopen_run(cfg, run_id)
            mlflow_runs.set_tags(cfg, run_id, {**tags, "cmd_ray.resumed_from_epoch": last + 1})
            logger.info("resuming %s after epoch %d (MLflow run %s)", schedule.run_name, last, run_id)
            return run_id, last + 1
        logger.info("resuming %s after epoch %d in a new MLflow run", schedule.run_name, last)
        all_tags["cmd_ray.resumed_from_epoch"] = str(last + 1)
    run_id = mlflow_runs.start_run(cfg, schedule.run_name, tags=all_tags, parent_run_id=parent_run_id)
    return run_id, (last + 1 if last is not None else None)


def _finish(
    cfg: Config,
    schedule: Schedule,
    run_id: str,
    resumed: int | None,
    teacher: Teacher,
    train: Any,
    register: bool = True,
    select_by: str | None = None,
) -> TrainingResult:
    """Run ``train()`` -> (Result, SkipReport) inside the MLflow run, then register the final model (unless not
    ``register``), or with ``select_by`` the selected one (:func:`selected_model`)."""
    selection = None
    with mlflow_runs.terminated(cfg, run_id):
        result, skipped = train()
        registered = None
        if register and select_by is not None:
            model, selection = selected_model(result, cfg, teacher, select_by)
            registered = register_selection(cfg, run_id, model, selection, schedule.registered_model_name)
        elif register:
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
        resized_tir=skipped.resized_tir,
        resumed_from_epoch=resumed,
        teacher=teacher,
        selection=selection,
    )


def _register_finished(cfg: Config, schedule: Schedule, run_id: str, checkpoint_path: str) -> registry.RegisteredModel:
    """The version registered from finished run ``run_id``; registered now from its last checkpoint when this store
    has the run but no version of it (the registration was lost, or the store holds the run without the model)."""
    name = schedule.registered_model_name
    registered = registry.version_from_run(cfg, run_id, name)
    if registered is not None:
        return registered
    model, _ = registry.load_model(checkpoint_path, cfg)
    logger.warning("run %s finished but %s holds no version of it: registering %s now", run_id, name, checkpoint_path)
    return registry.log_and_register(cfg, run_id, model, name)


def _nothing_to_train(cfg: Config, schedule: Schedule, previous: PreviousRun, register: bool = True) -> TrainingResult:
    """The result of a rerun whose run already holds ``schedule.epochs`` epochs: no training. Its model stays
    registered as it was; a store that has the run but lost its registration gets it now (with ``register``)."""
    done = previous.last_epoch + 1
    note = (
        f"nothing to train: {_run_label(cfg, schedule)} already holds {done} epoch(s) and {schedule.job}.epochs is "
        f"{schedule.epochs}. To train on, raise {schedule.job}.epochs; to train "
        f"anew, set {RUN_NAME_KEY[schedule.job]}=<new name> (or another storage.storage_path)."
    )
    logger.warning("%s", note)
    run_id = previous.mlflow_run_id or ""
    history: list[dict[str, Any]] = []
    location = ""
    registered = None
    if run_id:
        try:
            history = epoch_history(cfg, run_id)
            location = mlflow_runs.run_url(cfg, run_id)
            tags = mlflow_runs.client(cfg).get_run(run_id).data.tags
        except Exception as exc:  # the run's MLflow record is elsewhere (another tracking_uri): report without it
            store = mlflow_runs.redact(mlflow_runs.tracking_uri(cfg))
            logger.info("MLflow run %s not readable from %s: %s", run_id, store, exc)
            note += (
                f" Its MLflow run {run_id} is not in {store}, so nothing is registered there:"
                f" train anew under another {RUN_NAME_KEY[schedule.job]} to record it in this store."
            )
        else:
            refused = _refused_for_skips(cfg, tags, run_id)
            if refused is not None:  # its training skipped too much: a rerun registers nothing either
                raise refused
            if register:
                registered = _register_finished(cfg, schedule, run_id, previous.checkpoint_path)
    return TrainingResult(
        run_id=run_id,
        run_location=location,
        registered=registered,
        metrics=previous.metrics,
        history=history,
        checkpoint_path=previous.checkpoint_path,
        skipped_pairs=0,
        nothing_to_train=True,
        note=note,
    )


RATE_OVERRIDES_TAG = "cmd_ray.rate_overrides"


def rate_override_tags(cfg: Config) -> dict[str, str]:
    """``{RATE_OVERRIDES_TAG: "lr_tcl=1e-05 (row D3: 2e-08), …"}`` when the run trains at rates other than its
    row's paper rates times ``distill.lr_scale`` (each also logged as a warning; the row's rate reads
    ``2e-06 = 2e-08 x lr_scale 100`` when scaled); empty when every rate is the row's paper rate times the scale.
    The scale itself and the effective rates are the run's params ``distill.lr_scale``, ``distill.lr_tcl``, …"""
    overrides = cfg.distill.rate_overrides()
    if not overrides:
        return {}
    row, scale = cfg.distill.variant, cfg.distill.lr_scale
    variant = get_variant(row)

    def paper_text(key: str, paper: float) -> str:
        return f"{paper:g}" if scale == 1 else f"{paper:g} = {getattr(variant, key):g} x lr_scale {scale:g}"

    text = ", ".join(
        f"{key}={rate:g} (row {row}: {paper_text(key, paper)})" for key, (rate, paper) in overrides.items()
    )
    logger.warning("training at rates other than the paper's for row %s: %s", row, text)
    return {RATE_OVERRIDES_TAG: text}


def run_distillation(
    cfg: Config,
    pairs: list[Any] | None = None,
    *,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    register: bool = True,
    tracking_validator: Callable[[Any], dict[str, float]] | None = None,
) -> TrainingResult:
    """The whole distill job on the cluster that ``RAY_ADDRESS`` names (a local one when unset).

    ``parent_run_id`` nests the run's MLflow run under another (``jobs/table1.py``: one per row and seed), ``tags``
    are added to it, and ``register=False`` leaves the final model unregistered (the checkpoint is the result).

    The run starts from the teacher (``model.init_checkpoint``), or a D row from merge(B3, C1) when
    ``distill.start`` names them (:func:`~cmd_ray.train.teacher.resolve_start`); the log, the run's tags
    ``cmd_ray.start`` and ``cmd_ray.variant`` (``D3``, or ``D3 loss from the teacher``) and the registered
    version's description say which.

    With ``distill.select_by`` a tracking score, ``tracking_validator`` scores the teacher and the epochs on the
    validation sequences (``cmd_ray.evaluation.validation.tracking_validator(cfg)``, built by the caller: evaluation
    sits above this layer; ``cmd-ray distill`` and ``jobs/distill.py`` build it), and the selected weights are
    registered (:func:`selected_model`). ``register=False`` (Table 1's rows) selects nothing: the final epoch is the
    result, as in the paper.

    A rerun of an existing run (same ``storage.run_name`` and ``storage.storage_path``) is checked first,
    before any cluster work: a config that differs in what a resume may not change raises ``ConfigError``;
    a run with every epoch trained returns ``nothing_to_train`` without starting Ray or registering anything.
    """
    check_trainable(cfg)
    select_by = cfg.distill.select_by if register and cfg.distill.select_by != "last" else None
    if select_by is not None and tracking_validator is None:
        raise ConfigError(
            f"distill.select_by={select_by} scores the epochs by tracking tune.eval_root: pass tracking_validator="
            "cmd_ray.evaluation.validation.tracking_validator(cfg) to run_distillation (cmd-ray distill does)"
        )
    schedule = schedule_for(cfg, "distill")
    previous = check_resume(cfg, schedule)
    if previous is not None and previous.last_epoch + 1 >= schedule.epochs:
        done = _nothing_to_train(mlflow_runs.pin_tracking_uri(cfg), schedule, previous, register)
        return replace(done, label=cfg.distill.run_label)
    if pairs is None:
        pairs = list_pairs(cfg)  # fails on an empty prefix before any cluster work
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    teacher = resolve_start(cfg)  # a bad init_checkpoint or distill.start fails here, before the cluster starts
    log_start(cfg, teacher)
    if not ray.is_initialized():
        ray.init()
    run_tags = {
        "cmd_ray.data_uri": cfg.data.uri,
        **teacher.tags(),
        **start_tags(cfg),
        **rate_override_tags(cfg),
        **(tags or {}),
    }
    run_id, resumed = open_run(cfg, schedule, run_tags, previous, parent_run_id)

    def train() -> tuple[ray.train.Result, SkipReport]:
        if select_by is None:
            return fit(cfg, pairs, run_id, teacher=teacher)
        return fit(cfg, pairs, run_id, teacher=teacher, tracking_validator=tracking_validator, select_by=select_by)

    finished = _finish(cfg, schedule, run_id, resumed, teacher, train, register, select_by)
    return replace(finished, label=cfg.distill.run_label)


def list_pretraining_sequences(cfg: Config) -> list[LabeledSequence]:
    """The labeled sequences of ``pretrain.sequences_uri`` (``ConfigError`` naming the URI when unusable)."""
    from cmd_ray.data.sequences import SequenceError

    try:
        return list_sequences(cfg.pretrain.sequences_uri, cfg.storage.s3_endpoint_url)
    except (SequenceError, StorageError) as exc:
        raise ConfigError(f"pretrain.sequences_uri: {exc}") from None


def run_pretraining(cfg: Config, sequences: list[LabeledSequence] | None = None) -> TrainingResult:
    """The teacher-pretraining job: supervised DiMP/ATOM training on labeled RGB sequences, then registration.

    Reruns are checked like :func:`run_distillation`'s (run name ``pretrain.run_name``, epochs ``pretrain.epochs``).
    """
    schedule = schedule_for(cfg, "pretrain")
    previous = check_resume(cfg, schedule)
    if previous is not None and previous.last_epoch + 1 >= schedule.epochs:
        return _nothing_to_train(mlflow_runs.pin_tracking_uri(cfg), schedule, previous)
    if sequences is None:
        sequences = list_pretraining_sequences(cfg)
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    teacher = resolve_teacher(cfg, "pretrain")
    if not ray.is_initialized():
        ray.init()
    tags = {"cmd_ray.data_uri": cfg.pretrain.sequences_uri, **teacher.tags()}
    run_id, resumed = open_run(cfg, schedule, tags, previous)

    def train() -> tuple[ray.train.Result, SkipReport]:
        skip_counter = SkipCounter.options(**on_driver_node()).remote()
        cursor = EpochCursor.options(**on_driver_node()).remote()
        train_seqs, val_seqs = split_sequences(sequences, cfg.pretrain.val_fraction)
        datasets = {"train": pretraining_dataset(cfg, train_seqs, skip_counter, cursor, validation=False)}
        if val_seqs and cfg.pretrain.val_samples:
            datasets["val"] = pretraining_dataset(cfg, val_seqs, skip_counter, None, validation=True)
        mlflow_runs.log_metrics(
            cfg, run_id, {"train_sequences": len(train_seqs), "val_sequences": len(val_seqs)}, step=0
        )
        result = _fit(cfg, schedule, datasets, run_id, teacher, skip_counter, cursor)
        report = ray.get(skip_counter.report.remote())
        mlflow_runs.log_metrics(cfg, run_id, {"skipped_frames_total": report.skipped}, step=schedule.epochs)
        check_skipped(cfg, run_id, report, sum(len(s.frames) for s in sequences), "frames")
        return result, report

    return _finish(cfg, schedule, run_id, resumed, teacher, train)
