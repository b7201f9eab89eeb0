"""What every Ray Data sample stream shares: the seed streams, the sample-index column, index blocks (the
stream's tasks), the execution options and the placement of bookkeeping actors.

Row ``i`` of a stream is sample ``i`` of the run: its draws come from ``(seed, stream, i)``, so a stream is
deterministic per seed whatever the actors. The indices travel as many small blocks so that every actor of the pool
gets work; ``data.object_store_memory_mb`` caps a stream's object-store budget (:func:`execution_options`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ray

from cmd_ray.config import Config
from cmd_ray.storage import RetryPolicy

TRAIN_STREAM, VAL_STREAM = 0, 1
"""Seed streams of the training and the validation samples."""

# How many other pairs a sample may try before the run gives up: reached only when
# nearly every pair is permanently unreadable, which is a data problem to report, not to hide.
# A transient read failure never draws another pair (see read_policy).
MAX_DRAWS_PER_SAMPLE = 64


def read_policy(cfg: Config) -> RetryPolicy:
    """How the data actors retry transient storage errors: ``storage.read_timeout_s`` per read, backoffs up to
    ``storage.retry_max_delay_s``.

    A sample whose read fails transiently waits for the store within that budget, then fails its batch (and the run,
    unless ``storage.max_failures`` restarts it): it is never cut from another pair, so the data actors back off
    while S3 throttles or is down instead of reading other pairs, and every epoch keeps the samples it names.
    """
    return RetryPolicy(budget_s=cfg.storage.read_timeout_s, max_delay_s=cfg.storage.retry_max_delay_s)


MAX_INDEX_BLOCKS = 2048
BATCHES_PER_INDEX_BLOCK = 8
"""Index blocks hold this many batches (more when the run would need over ``MAX_INDEX_BLOCKS`` blocks)."""


SAMPLE_INDEX = "sample_index"
"""Column of every sample batch: the sample's index in the run's stream (int64), which fixes its pair and jitter."""


def stack_samples(samples: list[dict[str, np.ndarray]], indices: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample dicts ─▶ one batch of ``[N, …]`` arrays, plus :data:`SAMPLE_INDEX` (``indices``, int64 ``[N]``)."""
    batch = {key: np.stack([s[key] for s in samples]) for key in samples[0]}
    batch[SAMPLE_INDEX] = np.asarray(indices, dtype=np.int64)
    return batch


def on_driver_node() -> dict[str, Any]:
    """Actor options that pin a bookkeeping actor (:class:`~cmd_ray.data.skips.SkipCounter`,
    :class:`~cmd_ray.data.epochs.EpochCursor`) to the driver's node.

    Zero-CPU actors may otherwise land on any node; on a train or data node they would die with it and take
    the run down, although Ray Train and Ray Data survive the loss of that node.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def index_blocks(indices: np.ndarray, batch_size: int, num_actors: int = 1) -> list[np.ndarray]:
    """Split sample indices into blocks of whole batches, so that every actor of the pool gets work.

    A block is one actor task: at least ``4 * num_actors`` blocks when there are enough batches, at most
    :data:`BATCHES_PER_INDEX_BLOCK` batches a block, and never more than :data:`MAX_INDEX_BLOCKS` blocks.
    """
    if len(indices) == 0:
        return [indices]
    batches = math.ceil(len(indices) / batch_size)
    per_block = min(BATCHES_PER_INDEX_BLOCK, max(1, math.ceil(batches / (4 * num_actors))))
    per_block = max(per_block, math.ceil(batches / MAX_INDEX_BLOCKS))
    rows = per_block * batch_size
    return [indices[i : i + rows] for i in range(0, len(indices), rows)]


def execution_options(cfg: Config) -> Any:
    """Ray Data ``ExecutionOptions`` of the sample streams (``data.object_store_memory_mb`` as resource limit,
    ``data.preserve_order``, ``data.label_selector`` for every task and actor the streams start).

    The pipeline applies them to its datasets; pass ``ray.train.DataConfig(execution_options=…)`` to a
    ``TorchTrainer`` too, because Ray Train replaces a dataset's execution options with its own.
    """
    from ray.data import ExecutionOptions, ExecutionResources

    options = ExecutionOptions(label_selector=dict(cfg.data.label_selector) or None)
    options.preserve_order = cfg.data.preserve_order
    if cfg.data.object_store_memory_mb is not None:
        options.resource_limits = ExecutionResources(object_store_memory=cfg.data.object_store_memory_mb * 2**20)
    return options


def ingest_config(cfg: Config) -> Any:
    """``ray.train.DataConfig`` carrying :func:`execution_options` (for ``TorchTrainer(dataset_config=…)``)."""
    import ray.train

    return ray.train.DataConfig(execution_options=execution_options(cfg))


def configure_dataset(ds: ray.data.Dataset, cfg: Config) -> ray.data.Dataset:
    """``ds`` with the progress-bar setting and :func:`execution_options` of ``cfg`` (returned for chaining)."""
    ds.context.enable_progress_bars = cfg.data.show_progress
    ds.context.execution_options = execution_options(cfg)
    return ds
