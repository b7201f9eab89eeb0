"""Resuming a sample stream: the :class:`EpochCursor` actor holds the epoch a (re)started worker group continues
at, and :func:`resume_from` drops the sample indices of the epochs before it when the stream starts."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray


@ray.remote(num_cpus=0)
class EpochCursor:
    """The epoch a (re)started worker group continues at; set by the train loop before its first batch."""

    def __init__(self) -> None:
        self._epoch = 0

    def set(self, epoch: int) -> None:
        self._epoch = int(epoch)

    def get(self) -> int:
        return self._epoch


def _drop_done_rows(batch: dict[str, np.ndarray], cursor: Any, per_epoch: int) -> dict[str, np.ndarray]:
    """Keep the sample indices ``>= cursor epoch × per_epoch`` (runs when the stream starts, per index block)."""
    first = ray.get(cursor.get.remote()) * per_epoch
    return {"data": batch["data"][batch["data"] >= first]}


def resume_from(cursor: Any, per_epoch: int) -> Any:
    """A dataset transform dropping the sample indices of epochs before ``cursor`` (``None``: keep every row)."""
    if cursor is None:
        return None

    def transform(rows: ray.data.Dataset) -> ray.data.Dataset:
        # Zero CPUs, so a cheap index filter never waits behind training workers for a core; and one task at a
        # time, because Ray bounds zero-CPU tasks by nothing else: each index block would get a worker process
        # of its own (measured: 16 extra processes for the demo's 38 blocks).
        return rows.map_batches(
            _drop_done_rows,
            fn_kwargs={"cursor": cursor, "per_epoch": per_epoch},
            batch_size=None,
            batch_format="numpy",
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=1),
        )

    return transform
