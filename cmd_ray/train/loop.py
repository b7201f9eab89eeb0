"""``train_loop_per_worker``: one Ray Train worker's loop, for distillation and for teacher pretraining.

Each worker builds the network, loads the teacher, trains exactly the parameters of the job's
:class:`~cmd_ray.schedule.Schedule` (Adam with one group per module, StepLR), reads its shard of the
sample stream, and at the end of every epoch reports the global mean losses with a checkpoint (rank 0 writes
it and logs the metrics to MLflow). A restarted worker group resumes from the latest checkpoint: model,
optimizer, scheduler, RNG states and the position in the sample stream (the :class:`EpochCursor`).

A sweep with a tracking objective also hands the loop a ``tracking_validator``: any callable ``model →
{name: value}`` (the sweep builds :class:`cmd_ray.evaluation.validation.TrackingValidator`; this layer does not
import it) and its ``tracking_epochs``. Rank 0 calls it with the in-memory network at the end of the epoch, before
writing the epoch's checkpoint, at those epochs and at the first epoch this worker group trains (a restart included),
and adds what it returns to every later report until the next call (Tune needs the sweep metric in each report);
MLflow gets the values only at the epochs that computed them, with ``val_tracked_epoch`` naming that epoch in every
report.

A distillation run that selects its weights (``distill.select_by``) passes ``select_by`` too: rank 0 then also scores
the teacher's weights before the first epoch (``teacher_val_success``, ``teacher_val_precision``), applies the rule of
:mod:`cmd_ray.train.selection` to each epoch it tracked, logs ``best_epoch`` and ``best_<select_by>`` every epoch,
keeps the selection in the checkpoint (a restart goes on from it) and reports
:data:`~cmd_ray.train.selection.CHECKPOINT_SCORE` for Ray Train to keep the selected epoch's checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
import time
import zlib
from contextlib import nullcontext
from typing import Any

import numpy as np
import pyarrow.fs
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from cmd_ray import mlflow_runs
from cmd_ray.config import Config
from cmd_ray.data.streams import SAMPLE_INDEX
from cmd_ray.distill.step import distill_step, loss_options
from cmd_ray.models.backbone import freeze_batchnorm_stats
from cmd_ray.models.dimpnet import apply_variant_trainability, build_model, parameter_groups
from cmd_ray.models.training_state import load_training_state, restore_rng_state, rng_state, save_training_state
from cmd_ray.schedule import Job, Schedule, schedule_for
from cmd_ray.train.epoch_line import epoch_line
from cmd_ray.train.selection import CHECKPOINT_SCORE, BestEpoch, checkpoint_score
from cmd_ray.train.teacher import Teacher, load_teacher_weights

LOSS_KEYS = ("loss", "loss_tcl", "loss_bbe")
logger = logging.getLogger(__name__)


def build_optimizer(
    model: nn.Module, cfg: Config, job: Job = "distill"
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    """Adam with the job's trained groups (``tcl``, ``bbe``, ``backbone``) at their learning rates, and StepLR."""
    schedule = schedule_for(cfg, job)
    groups = parameter_groups(model, schedule.variant, schedule.trainable_backbone_layers)
    lrs = schedule.learning_rates
    param_groups = [{"params": params, "lr": lrs[name], "name": name} for name, params in groups.items() if params]
    if not param_groups:
        raise ValueError(f"{job}: variant {schedule.variant.name} trains no parameters")
    optimizer = torch.optim.Adam(param_groups)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.lr_step, gamma=schedule.lr_gamma)
    return optimizer, scheduler


def _global_mean(sums: dict[str, float], count: int) -> dict[str, float]:
    """Per-key sums over all workers divided by the global count."""
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return {k: float(totals[i] / max(float(totals[-1]), 1.0)) for i, k in enumerate(keys)}


def epoch_sample_metrics(indices: torch.Tensor) -> dict[str, float]:
    """What an epoch trained on, from the sample indices of every worker (int64 ``[N]``, any order).

    ``epoch_samples`` (N), ``epoch_unique_samples`` and ``epoch_sample_digest``: the CRC-32 of the sorted indices.
    An epoch ``e`` of ``P`` samples that lost none and repeated none has the digest of ``e·P … (e+1)·P - 1``
    (:func:`sample_digest`), the same as a run without any failure.
    """
    ordered = torch.sort(indices.to(torch.int64)).values
    return {
        "epoch_samples": float(len(ordered)),
        "epoch_unique_samples": float(len(torch.unique(ordered))),
        "epoch_sample_digest": float(sample_digest(ordered.numpy())),
    }


def sample_digest(sorted_indices: np.ndarray) -> int:
    """CRC-32 of sorted sample indices (int64, little-endian bytes): one number naming the set an epoch saw."""
    return zlib.crc32(np.ascontiguousarray(sorted_indices, dtype="<i8").tobytes())


def _gather_indices(local: list[torch.Tensor]) -> torch.Tensor:
    """This epoch's sample indices of every worker (equal counts per worker: whole batches, ``drop_last``)."""
    mine = torch.cat(local) if local else torch.zeros(0, dtype=torch.int64)
    if not (dist.is_available() and dist.is_initialized()):
        return mine
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return torch.cat(parts)


def validate(model: nn.Module, shard: Any, cfg: Config, schedule: Schedule, device: torch.device) -> dict[str, float]:
    """Mean losses over this epoch's pass of the validation shard (all workers), as ``val_*`` keys.

    With the ``mse`` BBE loss, ``val_loss_bbe_chance`` is the loss of the best constant prediction on the same
    targets (their variance): a ``val_loss_bbe`` at or above it means the IoU-Net has learnt nothing yet.
    """
    options = loss_options(cfg.distill)
    chance = options["bbe_loss"] == "mse"
    model.eval()
    sums = dict.fromkeys(LOSS_KEYS, 0.0) | ({"target": 0.0, "target_sq": 0.0} if chance else {})
    count = 0
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=schedule.batch_size, device=device):
            size = len(batch["test_box"])
            losses = distill_step(model, batch, schedule.variant, schedule.loss_weight_bbe, **options)
            for key in LOSS_KEYS:
                sums[key] += float(losses[key]) * size
            if chance:  # per-sample means: every sample has the same number of proposals
                target = 2.0 * batch["proposal_iou"].double() - 1.0  # what the mse BBE loss compares with
                sums["target"] += float(target.mean(dim=-1).sum())
                sums["target_sq"] += float((target**2).mean(dim=-1).sum())
            count += size
    means = _global_mean(sums, count)
    out = {f"val_{key}": means[key] for key in LOSS_KEYS}
    if chance:
        out["val_loss_bbe_chance"] = means["target_sq"] - means["target"] ** 2
    return out


def _read_training_state(checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    """The checkpoint's training state; a remote one is downloaded into this worker's own temporary folder.

    ``Checkpoint.as_directory()`` shares one download folder among the workers of a node and deletes it when they
    are done. Once, after a lost node, a worker restarting next to another read a truncated ``training_state.pt``
    ("PytorchStreamReader failed reading file"); a private copy (a few MB) takes the shared folder out of the way.
    """
    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return load_training_state(checkpoint.path)
    with tempfile.TemporaryDirectory(prefix="cmd-ray-restore-") as directory:
        return load_training_state(checkpoint.to_directory(directory))


def _restore(
    checkpoint: ray.train.Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, dict[str, Any] | None]:
    """Load a training checkpoint into model, optimizer, scheduler and the RNGs; returns the next epoch and the
    checkpoint's weight selection (``None`` when the run selects none)."""
    state = _read_training_state(checkpoint)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    return int(state["epoch"]) + 1, state.get("selection")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point.

    ``loop_config``: ``config`` (a Config dump), ``job`` (``distill`` | ``pretrain``), ``mlflow_run_id``,
    ``teacher`` (a :class:`~cmd_ray.train.teacher.Teacher` or an object ref to one), ``skip_counter`` and
    ``epoch_cursor`` (actor handles, optional), ``has_val`` (whether a ``val`` dataset was given), and
    optionally ``tracking_validator`` with ``tracking_epochs`` (0-based epochs) and ``select_by`` (a score the
    validator returns; see the module docstring).
    """
    cfg = Config.model_validate(loop_config["config"])
    schedule = schedule_for(cfg, loop_config.get("job", "distill"))
    run_id: str | None = loop_config.get("mlflow_run_id")
    skip_counter = loop_config.get("skip_counter")
    cursor = loop_config.get("epoch_cursor")
    teacher = loop_config.get("teacher")
    tracking_validator = loop_config.get("tracking_validator")
    tracking_epochs = frozenset(int(e) for e in loop_config.get("tracking_epochs") or ())
    select_by: str | None = loop_config.get("select_by")
    if select_by is not None and tracking_validator is None:
        raise ValueError(f"select_by={select_by} needs a tracking_validator to score the epochs")
    if isinstance(teacher, ray.ObjectRef):
        teacher = ray.get(teacher)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    variant = schedule.variant
    options = loss_options(cfg.distill)
    if cfg.scaling.torch_threads is not None:
        torch.set_num_threads(cfg.scaling.torch_threads)
    torch.manual_seed(schedule.seed + rank)
    device = ray.train.torch.get_device()

    model = build_model(cfg)
    if isinstance(teacher, Teacher):
        load_teacher_weights(model, teacher)
    apply_variant_trainability(model, variant, schedule.trainable_backbone_layers)
    optimizer, scheduler = build_optimizer(model, cfg, schedule.job)

    start_epoch = 0
    stored_selection: dict[str, Any] | None = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        start_epoch, stored_selection = _restore(checkpoint, model, optimizer, scheduler)
        logger.info("resuming %s at epoch %d from %s", schedule.run_name, start_epoch, checkpoint.path)
        if rank == 0 and run_id:
            mlflow_runs.log_metrics(cfg, run_id, {"resumed_at_epoch": start_epoch}, start_epoch)
    if cursor is not None:
        # before the first batch is requested: the stream then starts at this epoch's first sample
        ray.get(cursor.set.remote(start_epoch))

    model = ray.train.torch.prepare_model(model)
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    use_amp = cfg.scaling.amp and device.type == "cuda"

    shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if loop_config.get("has_val") else None
    teacher_metrics: dict[str, float] = {}
    if val_shard is not None and start_epoch == 0:
        teacher_metrics = {f"teacher_{k}": v for k, v in validate(core, val_shard, cfg, schedule, device).items()}
    best: BestEpoch | None = None  # rank 0, with select_by: the weights selected so far
    if select_by is not None and rank == 0:
        if start_epoch == 0:  # the teacher's weights, before any step: epoch -1 of the selection
            scores = tracking_validator(core)
            teacher_metrics.update({f"teacher_{k}": v for k, v in scores.items()})
            best = BestEpoch.of_teacher(select_by, scores[select_by])
        elif stored_selection is None or stored_selection.get("metric") != select_by:
            raise ValueError(
                f"checkpoint {checkpoint.path if checkpoint else '?'} holds no selection by {select_by}: "
                "it was written by a run with another distill.select_by"
            )
        else:
            best = BestEpoch.from_state(stored_selection)
    batches = iter(shard.iter_torch_batches(batch_size=schedule.batch_size, drop_last=True, device=device))
    steps = schedule.steps_per_epoch(context.get_world_size())
    tracked: dict[str, float] = {}  # rank 0: the last tracking figures, carried into every later report

    for epoch in range(start_epoch, schedule.epochs):
        model.train()
        freeze_batchnorm_stats(core)
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        seen: list[torch.Tensor] = []
        wait = 0.0
        started = time.perf_counter()
        for _ in range(steps):
            fetch_start = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - fetch_start
            seen.append(batch.pop(SAMPLE_INDEX).to("cpu", torch.int64))
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
            with autocast:
                losses = distill_step(model, batch, variant, schedule.loss_weight_bbe, **options)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            for key in LOSS_KEYS:
                sums[key] += float(losses[key].detach())
        elapsed = time.perf_counter() - started
        lrs = {f"lr_{group['name']}": group["lr"] for group in optimizer.param_groups}
        scheduler.step()

        metrics: dict[str, float] = _global_mean(sums, steps)
        metrics.update(epoch_sample_metrics(_gather_indices(seen)))
        if val_shard is not None:
            metrics.update(validate(core, val_shard, cfg, schedule, device))
        if epoch == 0:
            metrics.update(teacher_metrics)
        metrics.update(lrs)
        metrics["epoch"] = epoch
        metrics["samples_per_s"] = steps * schedule.batch_size * context.get_world_size() / elapsed
        metrics["data_wait_s"] = wait
        metrics["data_wait_fraction"] = wait / elapsed if elapsed > 0 else 0.0
        metrics["torch_threads"] = torch.get_num_threads()  # with samples_per_s: what a worker's speed came from
        if skip_counter is not None:
            report = ray.get(skip_counter.report.remote())
            metrics["skipped_pairs"] = report.skipped
            metrics["fallback_boxes"] = report.fallback_boxes
            metrics["s3_retries"] = report.retries  # storage retries so far (transient errors; cumulative count)
            metrics["transient_read_failures"] = report.transient_failures  # reads failed after every retry

        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                logged = {k: v for k, v in metrics.items() if k != "epoch"}
                if tracking_validator is not None:
                    fresh = epoch in tracking_epochs or not tracked
                    if fresh:
                        tracked = {**tracking_validator(core), "val_tracked_epoch": float(epoch)}
                        logged.update(tracked)
                    metrics.update(tracked)
                    if best is not None:
                        before = best
                        if fresh:
                            best = best.after(epoch, tracked[best.metric])
                        metrics[CHECKPOINT_SCORE] = checkpoint_score(before, best, epoch)
                        selection = best.metrics()
                        metrics.update(selection)  # every report: the driver reads the last one
                        teacher_key = f"teacher_{best.metric}"  # MLflow has it once, at epoch 0
                        logged.update({k: v for k, v in selection.items() if k != teacher_key})
                save_training_state(
                    directory,
                    {
                        "model": core.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "job": schedule.job,
                        "config": cfg.model_dump(mode="json"),
                        "rng": rng_state(),
                        "mlflow_run_id": run_id,
                        "selection": best.state() if best is not None else None,
                    },
                )
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
                if run_id:
                    mlflow_runs.log_metrics(cfg, run_id, logged, epoch)
                # the run's progress in its log, bars or not (Ray Train sends a worker's INFO records to the driver)
                speed = metrics["samples_per_s"]
                logger.info("%s: %s  [%.1f samples/s]", schedule.run_name, epoch_line(metrics), speed)
            ray.train.report(metrics, checkpoint=report_checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}")
