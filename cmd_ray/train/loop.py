"""``train_loop_per_worker``: one Ray Train worker's distillation loop.

Each worker builds the network, trains exactly the parameters of the variant
(Adam with one group per module, ``lr_tcl`` and ``lr_bbe``, StepLR), reads its
shard of the sample stream, and at the end of every epoch reports the global
mean losses with a checkpoint (rank 0 writes it and logs the metrics to MLflow).
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn

from cmd_ray import mlflow_runs
from cmd_ray.config import Config
from cmd_ray.distill.step import distill_step, loss_options
from cmd_ray.distill.variants import get_variant
from cmd_ray.models.backbone import freeze_batchnorm_stats
from cmd_ray.models.checkpoint import (
    CheckpointError,
    LoadReport,
    load_into,
    load_state_dict,
    load_training_state,
    restore_rng_state,
    rng_state,
    save_training_state,
)
from cmd_ray.models.dimpnet import apply_variant_trainability, build_model, parameter_groups
from cmd_ray.storage import read_bytes

LOSS_KEYS = ("loss", "loss_tcl", "loss_bbe")
logger = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.StepLR]:
    """Adam with the trained groups (``tcl`` at lr_tcl, ``bbe`` at lr_bbe, ``backbone`` at lr_backbone), StepLR."""
    groups = parameter_groups(model, cfg.distill.variant, cfg.model.trainable_backbone_layers)
    lrs = {"tcl": cfg.distill.lr_tcl, "bbe": cfg.distill.lr_bbe, "backbone": cfg.distill.lr_backbone}
    param_groups = [{"params": params, "lr": lrs[name], "name": name} for name, params in groups.items() if params]
    if not param_groups:
        raise ValueError(f"variant {cfg.distill.variant} trains no parameters")
    optimizer = torch.optim.Adam(param_groups)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.distill.lr_step, gamma=cfg.distill.lr_gamma)
    return optimizer, scheduler


def load_teacher(model: nn.Module, cfg: Config) -> LoadReport | None:
    """Initialise from ``model.init_checkpoint`` (cmd-ray weights or a pytracking checkpoint), if set.

    What fits is loaded; missing, unexpected and mis-shaped keys are reported, and a checkpoint that fits
    nothing at all is an error (it belongs to another network).
    """
    uri = cfg.model.init_checkpoint
    if not uri:
        return None
    with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
        tmp.write(read_bytes(uri, cfg.storage.s3_endpoint_url))
        tmp.flush()
        report = load_into(model, load_state_dict(tmp.name))
    if not report.loaded:
        raise CheckpointError(f"model.init_checkpoint {uri} has no weights that fit a {cfg.model.preset} network")
    if not report.ok:
        logger.warning("teacher %s loaded partially:\n%s", uri, report)
    return report


def _global_mean(sums: dict[str, float], count: int) -> dict[str, float]:
    """Per-key sums over all workers divided by the global count."""
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    return {k: float(totals[i] / max(float(totals[-1]), 1.0)) for i, k in enumerate(keys)}


def validate(model: nn.Module, shard: Any, cfg: Config, device: torch.device) -> dict[str, float]:
    """Mean losses over this epoch's pass of the validation shard (all workers), as ``val_*`` keys."""
    variant = get_variant(cfg.distill.variant)
    options = loss_options(cfg.distill)
    model.eval()
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    count = 0
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=cfg.distill.batch_size, device=device):
            size = len(batch["test_box"])
            losses = distill_step(model, batch, variant, cfg.distill.loss_weight_bbe, **options)
            for key in LOSS_KEYS:
                sums[key] += float(losses[key]) * size
            count += size
    return {f"val_{key}": value for key, value in _global_mean(sums, count).items()}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point.

    ``loop_config``: ``config`` (a Config dump), ``mlflow_run_id``, ``skip_counter`` (actor handle) and
    ``has_val`` (whether a ``val`` dataset was given).
    """
    cfg = Config.model_validate(loop_config["config"])
    run_id: str | None = loop_config.get("mlflow_run_id")
    skip_counter = loop_config.get("skip_counter")
    context = ray.train.get_context()
    rank = context.get_world_rank()
    variant = get_variant(cfg.distill.variant)
    options = loss_options(cfg.distill)
    torch.manual_seed(cfg.distill.seed + rank)
    device = ray.train.torch.get_device()

    model = build_model(cfg)
    load_teacher(model, cfg)
    apply_variant_trainability(model, cfg.distill.variant, cfg.model.trainable_backbone_layers)
    optimizer, scheduler = build_optimizer(model, cfg)

    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_training_state(directory)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1

    model = ray.train.torch.prepare_model(model)
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    use_amp = cfg.scaling.amp and device.type == "cuda"

    shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if loop_config.get("has_val") else None
    teacher_metrics: dict[str, float] = {}
    if val_shard is not None and start_epoch == 0:
        teacher_metrics = {f"teacher_{k}": v for k, v in validate(core, val_shard, cfg, device).items()}
    batches = iter(shard.iter_torch_batches(batch_size=cfg.distill.batch_size, drop_last=True, device=device))
    steps = cfg.steps_per_epoch()

    for epoch in range(start_epoch, cfg.distill.epochs):
        model.train()
        freeze_batchnorm_stats(core)
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        wait = 0.0
        started = time.perf_counter()
        for _ in range(steps):
            fetch_start = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - fetch_start
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
            with autocast:
                losses = distill_step(model, batch, variant, cfg.distill.loss_weight_bbe, **options)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            for key in LOSS_KEYS:
                sums[key] += float(losses[key].detach())
        elapsed = time.perf_counter() - started
        lrs = {f"lr_{group['name']}": group["lr"] for group in optimizer.param_groups}
        scheduler.step()

        metrics: dict[str, float] = _global_mean(sums, steps)
        if val_shard is not None:
            metrics.update(validate(core, val_shard, cfg, device))
        if epoch == 0:
            metrics.update(teacher_metrics)
        metrics.update(lrs)
        metrics["epoch"] = epoch
        metrics["samples_per_s"] = steps * cfg.distill.batch_size * context.get_world_size() / elapsed
        metrics["data_wait_s"] = wait
        if skip_counter is not None:
            metrics["skipped_pairs"] = ray.get(skip_counter.report.remote()).skipped

        with tempfile.TemporaryDirectory() as directory:
            report_checkpoint = None
            if rank == 0:
                save_training_state(
                    directory,
                    {
                        "model": core.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "config": cfg.model_dump(mode="json"),
                        "rng": rng_state(),
                    },
                )
                report_checkpoint = ray.train.Checkpoint.from_directory(directory)
                if run_id:
                    mlflow_runs.log_metrics(cfg, run_id, {k: v for k, v in metrics.items() if k != "epoch"}, epoch)
            ray.train.report(metrics, checkpoint=report_checkpoint, checkpoint_dir_name=f"epoch_{epoch:04d}")
