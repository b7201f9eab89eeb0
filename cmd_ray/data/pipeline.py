"""The only Ray Data module: RGB–TIR pairs ─▶ a streaming dataset of DiMP training samples.

Decoding, pseudo boxes and crops run on Ray Data actors (sized by
``data.num_actors`` / ``data.cpus_per_actor``), never on the training workers.
Row ``i`` of the dataset is sample ``i`` of the whole run: its pair and its
jitter are drawn from ``(seed, i)``, so the stream is deterministic per seed
and an epoch is exactly ``samples_per_epoch`` rows whatever the data-set size.
A pair that cannot be read, decoded or aligned is recorded once in a
:class:`SkipCounter` actor (key and reason) and another pair is drawn instead.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from cmd_ray.config import Config, DataConfig
from cmd_ray.data.boxes import pseudo_boxes
from cmd_ray.data.images import ImageDecodeError, decode_rgb, decode_tir
from cmd_ray.data.pairs import list_two_folder_pairs
from cmd_ray.data.processing import PairMismatchError, align_pair, make_sample
from cmd_ray.storage import StorageError, read_bytes

logger = logging.getLogger(__name__)

TRAIN_STREAM, VAL_STREAM = 0, 1

# How many other pairs a sample may try before the run gives up: reached only when
# nearly every pair is unreadable, which is a data problem to report, not to hide.
MAX_DRAWS_PER_SAMPLE = 64


@dataclass
class SkipReport:
    """Pairs skipped so far: total, count per reason and the first few keys."""

    skipped: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)


@ray.remote(num_cpus=0)
class SkipCounter:
    """Counts skipped pairs across all data actors; each key is logged and counted once."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._report = SkipReport()

    def record(self, key: str, reason: str) -> None:
        if key in self._seen:
            return
        self._seen.add(key)
        self._report.skipped += 1
        self._report.by_reason[reason] = self._report.by_reason.get(reason, 0) + 1
        if len(self._report.examples) < 20:
            self._report.examples.append(f"{key}: {reason}")
        logger.warning("skipping pair %s: %s", key, reason)

    def report(self) -> SkipReport:
        return self._report


class SampleMaker:
    """Ray Data actor: sample indices ``[N]`` ─▶ N training samples (schema of ``make_sample``)."""

    def __init__(
        self,
        pairs: list[tuple[str, str]],
        data: dict[str, Any],
        seed: int,
        stream: int,
        endpoint_url: str | None,
        skip_counter: Any,
    ) -> None:
        self._pairs = pairs
        self._data = DataConfig.model_validate(data)
        self._seed = seed
        self._stream = stream
        self._endpoint_url = endpoint_url
        self._skip_counter = skip_counter
        self._bad: set[int] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples = [self._sample(int(index)) for index in batch["data"]]
        return {key: np.stack([s[key] for s in samples]) for key in samples[0]}

    def _sample(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self._seed, self._stream, index])
        for _ in range(MAX_DRAWS_PER_SAMPLE):
            pair_index = int(rng.integers(len(self._pairs)))
            if pair_index in self._bad:
                continue
            try:
                return self._cut(pair_index, rng)
            except (StorageError, ImageDecodeError, PairMismatchError) as exc:
                self._bad.add(pair_index)
                rgb_key, tir_key = self._pairs[pair_index]
                self._skip_counter.record.remote(f"{rgb_key} | {tir_key}", str(exc))
        raise RuntimeError(
            f"sample {index}: {MAX_DRAWS_PER_SAMPLE} pairs in a row could not be read under {self._data.uri}; "
            "see the skipped-pair log"
        )

    def _cut(self, pair_index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rgb_key, tir_key = self._pairs[pair_index]
        rgb = decode_rgb(read_bytes(rgb_key, self._endpoint_url), rgb_key)
        tir = decode_tir(read_bytes(tir_key, self._endpoint_url), tir_key)
        rgb, tir = align_pair(rgb, tir, key=rgb_key)
        box = pseudo_boxes(self._data.boxes, rgb, tir, rng, center_fraction=self._data.center_box_fraction)[0]
        return make_sample(rgb, tir, box, self._data.sampling, rng)


def list_pairs(cfg: Config) -> list[tuple[str, str]]:
    """The pairs of ``cfg.data.uri`` (raises ``EmptyPrefixError`` naming the URI when there are none)."""
    listing = list_two_folder_pairs(
        cfg.data.uri, rgb_dir=cfg.data.rgb_dir, tir_dir=cfg.data.tir_dir, endpoint_url=cfg.storage.s3_endpoint_url
    )
    if listing.unpaired:
        logger.warning(
            "%d file(s) under %s have no partner in the other modality, e.g. %s",
            len(listing.unpaired),
            cfg.data.uri,
            listing.unpaired[0],
        )
    return listing.pairs


def split_pairs(
    pairs: list[tuple[str, str]], val_fraction: float
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, val)``: a pair is held out when the hash of its RGB key falls below ``val_fraction``.

    The split depends on each key alone, so it is stable when pairs are added or removed; a tiny set with
    ``val_fraction > 0`` holds out at least one pair.
    """

    def position(pair: tuple[str, str]) -> float:
        return int.from_bytes(hashlib.sha1(pair[0].encode()).digest()[:8], "big") / 2**64

    val = [pair for pair in pairs if position(pair) < val_fraction]
    if val_fraction > 0 and not val and len(pairs) > 1:
        val = [min(pairs, key=position)]  # a tiny set still gets a validation pair
    held_out = set(val)
    train = [pair for pair in pairs if pair not in held_out]
    if not train:
        raise ValueError(f"data.val_fraction={val_fraction} leaves no training pairs out of {len(pairs)}")
    return train, val


def _samples(
    cfg: Config, pairs: list[tuple[str, str]], skip_counter: Any, indices: np.ndarray, stream: int
) -> ray.data.Dataset:
    # from_numpy keeps the index blocks on the driver: no read tasks competing with training for CPUs.
    return ray.data.from_numpy(indices).map_batches(
        SampleMaker,
        fn_constructor_kwargs={
            "pairs": pairs,
            "data": cfg.data.model_dump(mode="json"),
            "seed": cfg.distill.seed,
            "stream": stream,
            "endpoint_url": cfg.storage.s3_endpoint_url,
            "skip_counter": skip_counter,
        },
        batch_size=cfg.distill.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.data.num_actors),
        num_cpus=cfg.data.cpus_per_actor,
    )


def training_dataset(
    cfg: Config, pairs: list[tuple[str, str]], skip_counter: Any, start_epoch: int = 0
) -> ray.data.Dataset:
    """Samples for epochs ``start_epoch … epochs-1``, in order; row i is sample ``start_epoch*spe + i``.

    Rows hold the keys of :func:`cmd_ray.data.processing.make_sample` (crops, boxes, label, proposals).
    """
    per_epoch = cfg.steps_per_epoch() * cfg.distill.batch_size * cfg.scaling.num_workers
    first = start_epoch * per_epoch
    count = (cfg.distill.epochs - start_epoch) * per_epoch
    return _samples(cfg, pairs, skip_counter, np.arange(first, first + count, dtype=np.int64), TRAIN_STREAM)


def validation_dataset(cfg: Config, pairs: list[tuple[str, str]], skip_counter: Any) -> ray.data.Dataset:
    """The same ``distill.val_samples`` samples of the held-out pairs every epoch (the dataset re-executes)."""
    return _samples(cfg, pairs, skip_counter, np.arange(cfg.distill.val_samples, dtype=np.int64), VAL_STREAM)
