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
from cmd_ray.data.streams import configure_dataset, index_blocks
from cmd_ray.storage import StorageError

logger = logging.getLogger(__name__)


class BoxDetector:
    """Ray Data actor: pair indices ``[N]`` ─▶ their detection boxes (for ``cmd-ray boxes``).

    Output columns: ``index`` int64 [N], ``boxes`` float32 [N, max_boxes, 4] (NaN rows pad), ``found`` int64 [N]
    (boxes found; -1: the pair could not be read, ``error`` holds why).
    """

    def __init__(self, pairs: Any, data: dict[str, Any], endpoint_url: str | None) -> None:
        self._maker = SampleMaker(pairs, data, seed=0, stream=0, endpoint_url=endpoint_url, skip_counter=None)
        self._max = DataConfig.model_validate(data).max_boxes

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = batch["data"].astype(np.int64)
        out = np.full((len(indices), self._max, 4), np.nan, np.float32)
        found = np.zeros(len(indices), np.int64)
        errors: list[str] = []
        for row, index in enumerate(indices):
            try:
                rgb, tir = self._maker.load(int(index))
            except (StorageError, ImageDecodeError, PairMismatchError) as exc:
                found[row] = -1
                errors.append(str(exc))
                continue
            boxes = self._maker._detections_of(int(index), rgb, tir)
            out[row, : len(boxes)] = boxes
            found[row] = len(boxes)
            errors.append("")
        return {"index": indices, "boxes": out, "found": found, "error": np.array(errors, dtype=object)}


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
    null when the pair could not be read). Use it with ``data.layout=manifest data.manifest=<out_uri>``.
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
        fn_constructor_kwargs={"pairs": ray.put(table), "data": data, "endpoint_url": cfg.storage.s3_endpoint_url},
        batch_size=8,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.data.num_actors),
        num_cpus=cfg.data.cpus_per_actor,
    )
    boxes: list[np.ndarray | None] = [None] * len(table)
    unreadable: list[str] = []
    for batch in results.iter_batches(batch_size=256, batch_format="numpy"):
        columns = (batch["index"], batch["boxes"], batch["found"], batch["error"])
        for index, rows, found, error in zip(*columns, strict=True):
            if found < 0:
                unreadable.append(f"{table.key(int(index))}: {error}")
            else:
                boxes[int(index)] = rows[:found].astype(np.float32)
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
