"""``cmd-ray boxes``: run the configured detector once over every pair on Ray Data actors and write a manifest
whose ``boxes`` column training then reads instead of detecting."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from cmd_ray.config import Config, DataConfig
from cmd_ray.data.distill_stream import SampleMaker, as_pair_table, list_pairs
from cmd_ray.data.images import ImageDecodeError
from cmd_ray.data.pairs import PairTable
from cmd_ray.data.processing import PairMismatchError
from cmd_ray.data.skips import EXAMPLES_KEPT
from cmd_ray.data.streams import configure_dataset, index_blocks, read_policy
from cmd_ray.storage import RetryPolicy, StorageError, TransientStorageError

logger = logging.getLogger(__name__)


UNREADABLE = -1
"""``found`` of a pair that is permanently unreadable (missing, access denied, undecodable, misaligned)."""
NOT_SERVED = -2
"""``found`` of a pair the store did not serve within the retry budget (and of the batch's pairs after it)."""


class BoxDetector:
    """Ray Data actor: pair indices ``[N]`` ─▶ their detection boxes (for ``cmd-ray boxes``).

    Output columns: ``index`` int64 [N], ``boxes`` float32 [N, max_boxes, 4] (NaN rows pad), ``found`` int64 [N]
    (boxes found, or :data:`UNREADABLE`), ``error`` (why not). A read that fails transiently is retried for the
    budget of ``retry``; if it persists, that pair and the batch's later ones (not tried: the store is down for them
    too) come back :data:`NOT_SERVED`, which :func:`precompute_boxes` turns into an error: the manifest never
    records a pair as unreadable because the store was throttling or down.
    """

    def __init__(
        self, pairs: Any, data: dict[str, Any], endpoint_url: str | None, retry: RetryPolicy | None = None
    ) -> None:
        self._maker = SampleMaker(
            pairs, data, seed=0, stream=0, endpoint_url=endpoint_url, skip_counter=None, retry=retry
        )
        self._max = DataConfig.model_validate(data).max_boxes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = batch["data"].astype(np.int64)
        out = np.full((len(indices), self._max, 4), np.nan, np.float32)
        found = np.full(len(indices), NOT_SERVED, np.int64)
        errors = np.full(len(indices), "", dtype=object)
        for row, index in enumerate(indices):
            try:
                rgb, tir = self._maker.load(int(index))
            except TransientStorageError as exc:  # the store, not the pair: no null box for it
                errors[row:] = f"not served: {exc}"
                break
            except (StorageError, ImageDecodeError, PairMismatchError) as exc:
                found[row] = UNREADABLE
                errors[row] = str(exc)
                continue
            boxes = self._maker._detections_of(int(index), rgb, tir)
            out[row, : len(boxes)] = boxes
            found[row] = len(boxes)
        return {"index": indices, "boxes": out, "found": found, "error": errors}


@dataclass
class BoxManifestSummary:
    """What ``cmd-ray boxes`` wrote: pairs, pairs with boxes, without any (centre fallback), unreadable."""

    uri: str
    pairs: int
    with_boxes: int
    no_detection: int
    unreadable: int
    unreadable_examples: list[str] = field(default_factory=list)


def precompute_boxes(cfg: Config, out_uri: str, pairs: PairTable | None = None) -> BoxManifestSummary:
    """Run the configured detector once over every pair (on Ray Data actors) and write a manifest.

    The manifest (``*.parquet`` or ``*.csv``) has the pairs' URIs and a ``boxes`` column (``[K, 4]`` pixels,
    ``K <= data.max_boxes``; empty when nothing was found, which training counts as a centre-box fallback;
    null when the pair is permanently unreadable). Use it with ``data.layout=manifest data.manifest=<out_uri>``.

    Raises:
        TransientStorageError: a read still failed transiently after ``storage.read_timeout_s``; nothing is written.
    """
    from cmd_ray.data.pairs import manifest_format, write_manifest

    manifest_format(out_uri)  # a wrong extension fails before any detection
    table = list_pairs(cfg) if pairs is None else as_pair_table(pairs)
    if not ray.is_initialized():
        ray.init()  # the cluster RAY_ADDRESS names, else a local one
    data = cfg.data.model_dump(mode="json")
    data["boxes"] = "detection"
    blocks = index_blocks(np.arange(len(table), dtype=np.int64), 8, cfg.data.num_actors)
    ds = configure_dataset(ray.data.from_numpy(blocks), cfg)
    results = ds.map_batches(
        BoxDetector,
        fn_constructor_kwargs={
            "pairs": ray.put(table),
            "data": data,
            "endpoint_url": cfg.storage.s3_endpoint_url,
            "retry": read_policy(cfg),
        },
        batch_size=8,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.data.num_actors),
        num_cpus=cfg.data.cpus_per_actor,
    )
    boxes: list[np.ndarray | None] = [None] * len(table)
    unreadable: list[str] = []
    batches = iter(results.iter_batches(batch_size=256, batch_format="numpy"))
    try:
        for batch in batches:
            columns = (batch["index"], batch["boxes"], batch["found"], batch["error"])
            for index, rows, found, error in zip(*columns, strict=True):
                if found == NOT_SERVED:
                    raise TransientStorageError(
                        f"pair {table.key(int(index))} {error} (storage.read_timeout_s="
                        f"{cfg.storage.read_timeout_s:g}); no manifest was written to {out_uri}"
                    )
                if found == UNREADABLE:
                    unreadable.append(f"{table.key(int(index))}: {error}")
                else:
                    boxes[int(index)] = rows[:found].astype(np.float32)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the actors now, not when the iterator is collected
    write_manifest(
        out_uri,
        table,
        boxes,
        cfg.storage.s3_endpoint_url,
        metadata={"detector": cfg.data.detector, "detect_on_tir": str(cfg.data.detect_on_tir)},
    )
    with_boxes = sum(1 for b in boxes if b is not None and len(b))
    no_detection = sum(1 for b in boxes if b is not None and not len(b))
    for line in unreadable[:EXAMPLES_KEPT]:
        logger.warning("unreadable pair: %s", line)
    return BoxManifestSummary(
        out_uri, len(table), with_boxes, no_detection, len(unreadable), unreadable[:EXAMPLES_KEPT]
    )
