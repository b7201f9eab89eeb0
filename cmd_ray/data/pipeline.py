"""The only Ray Data module: RGB–TIR pairs ─▶ a streaming dataset of DiMP training samples.

Decoding, pseudo boxes and crops run on Ray Data actors (sized by
``data.num_actors`` / ``data.cpus_per_actor``), never on the training workers.
Row ``i`` of the dataset is sample ``i`` of the whole run: its pair and its
jitter are drawn from ``(seed, i)``, so the stream is deterministic per seed
and an epoch is exactly ``samples_per_epoch`` rows whatever the data-set size.
A pair that cannot be read, decoded or aligned is recorded once in a
:class:`SkipCounter` actor (key and reason) and another pair is drawn instead;
a pair whose detector found nothing is trained on the centre box and counted
there too (``fallback_boxes``), as are the listing's unpaired files.

Memory. The pairs travel as one :class:`~cmd_ray.data.pairs.PairTable` (pyarrow
string columns, about the URIs' length per pair) put in the object store once
(``ray.put``); every actor maps it zero-copy instead of receiving a pickled list.
The sample indices are split into many small blocks so that every actor of the
pool gets work, and ``data.object_store_memory_mb`` caps the stream's object-store
budget (:func:`execution_options`).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from cmd_ray import storage
from cmd_ray.config import Config, DataConfig
from cmd_ray.data.boxes import PseudoBoxes, pseudo_boxes_with_fallback, resize_to_patch, usable_boxes
from cmd_ray.data.images import ImageDecodeError, decode_rgb, decode_tir
from cmd_ray.data.pairs import PairTable, list_pairs_for, split_mask
from cmd_ray.data.processing import PairMismatchError, align_pair, make_sample, split_side_by_side
from cmd_ray.storage import StorageError, TransientStorageError, read_bytes

logger = logging.getLogger(__name__)

TRAIN_STREAM, VAL_STREAM = 0, 1
BOX_STREAM = 2
"""Seed stream of the per-pair 'random' regions (fixed per pair and run seed, whatever the sample)."""

# How many other pairs a sample may try before the run gives up: reached only when
# nearly every pair is unreadable, which is a data problem to report, not to hide.
MAX_DRAWS_PER_SAMPLE = 64

EXAMPLES_KEPT = 20
"""Keys a report keeps by name (counts are exact)."""

DETECTION_CACHE_SIZE = 4096
"""Pairs whose detections an actor keeps (detection is deterministic per pair; the manifest avoids it entirely)."""

PREFETCH_THREADS = 8
"""Threads of a :class:`SampleMaker` that read its batch's objects from S3 concurrently (hiding request latency)."""

MAX_INDEX_BLOCKS = 2048
BATCHES_PER_INDEX_BLOCK = 8
"""Index blocks hold this many batches (more when the run would need over ``MAX_INDEX_BLOCKS`` blocks)."""

PairList = PairTable | list[tuple[str, str]]
"""What the dataset builders take: a :class:`PairTable` (compact) or a list of ``(rgb_uri, tir_uri)``."""


@dataclass
class SkipReport:
    """What the data stream could not use as intended.

    Attributes:
        skipped: pairs skipped as unreadable (count; each pair once), ``by_reason`` per message,
            ``examples`` the first few ``"key: reason"``.
        fallback_boxes: pairs whose detector found nothing, trained on the centre box instead (each once);
            ``fallback_examples`` the first few keys.
        unpaired: files of the listing without a partner in the other modality (``unpaired_examples``).
        retries: storage requests repeated after a transient error (throttling, 5xx, timeout, reset), whether a
            later attempt succeeded or not (count, summed over the data actors).
        transient_failures: reads that failed transiently on every attempt (count of occurrences); the pair was
            not used for that sample but stays in the data set. ``transient_examples``: the first few
            ``"key: reason"``.
    """

    skipped: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    fallback_boxes: int = 0
    fallback_examples: list[str] = field(default_factory=list)
    unpaired: int = 0
    unpaired_examples: list[str] = field(default_factory=list)
    retries: int = 0
    transient_failures: int = 0
    transient_examples: list[str] = field(default_factory=list)


class SkipTally:
    """Counts skips and fallbacks, each key once, logging each once (the state of :class:`SkipCounter`).

    Also used directly by a :class:`SampleMaker` running without Ray (``skip_counter=None``).
    """

    def __init__(self) -> None:
        self._skipped: set[str] = set()
        self._fallbacks: set[str] = set()
        self._report = SkipReport()

    def record(self, key: str, reason: str) -> None:
        """Pair ``key`` was skipped for ``reason`` (counted and logged once per key)."""
        if key in self._skipped:
            return
        self._skipped.add(key)
        self._report.skipped += 1
        self._report.by_reason[reason] = self._report.by_reason.get(reason, 0) + 1
        if len(self._report.examples) < EXAMPLES_KEPT:
            self._report.examples.append(f"{key}: {reason}")
        logger.warning("skipping pair %s: %s", key, reason)

    def record_fallback(self, key: str) -> None:
        """The detector found nothing in pair ``key``: the centre box stood in (counted and logged once)."""
        if key in self._fallbacks:
            return
        self._fallbacks.add(key)
        self._report.fallback_boxes += 1
        if len(self._report.fallback_examples) < EXAMPLES_KEPT:
            self._report.fallback_examples.append(key)
        logger.info("no detection in pair %s: using the centre box", key)

    def record_storage(self, retries: int, transient: list[tuple[str, str]]) -> None:
        """Add ``retries`` storage retries and the ``(key, reason)`` of reads that failed transiently after every
        retry (each occurrence counts; the pair is not marked bad). Logs the first few failures as warnings."""
        self._report.retries += int(retries)
        for key, reason in transient:
            self._report.transient_failures += 1
            if len(self._report.transient_examples) < EXAMPLES_KEPT:
                self._report.transient_examples.append(f"{key}: {reason}")
                logger.warning("transient read failure in pair %s (kept for later samples): %s", key, reason)

    def record_unpaired(self, count: int, examples: list[str]) -> None:
        """The listing had ``count`` unpaired files (a fact of the listing: set, not added)."""
        if count and count != self._report.unpaired:
            logger.warning("%d listed file(s) have no partner in the other modality, e.g. %s", count, examples[:3])
        self._report.unpaired = count
        self._report.unpaired_examples = list(examples[:EXAMPLES_KEPT])

    def report(self) -> SkipReport:
        return self._report


@ray.remote(num_cpus=0)
class SkipCounter:
    """Counts skipped pairs, centre-box fallbacks, unpaired files, storage retries and transient read failures
    across all data actors (see :class:`SkipTally`)."""

    def __init__(self) -> None:
        self._tally = SkipTally()

    def record(self, key: str, reason: str) -> None:
        self._tally.record(key, reason)

    def record_fallback(self, key: str) -> None:
        self._tally.record_fallback(key)

    def record_storage(self, retries: int, transient: list[tuple[str, str]]) -> None:
        self._tally.record_storage(retries, transient)

    def record_unpaired(self, count: int, examples: list[str]) -> None:
        self._tally.record_unpaired(count, examples)

    def report(self) -> SkipReport:
        return self._tally.report()


SAMPLE_INDEX = "sample_index"
"""Column of every sample batch: the sample's index in the run's stream (int64), which fixes its pair and jitter."""


def stack_samples(samples: list[dict[str, np.ndarray]], indices: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample dicts ─▶ one batch of ``[N, …]`` arrays, plus :data:`SAMPLE_INDEX` (``indices``, int64 ``[N]``)."""
    batch = {key: np.stack([s[key] for s in samples]) for key in samples[0]}
    batch[SAMPLE_INDEX] = np.asarray(indices, dtype=np.int64)
    return batch


def on_driver_node() -> dict[str, Any]:
    """Actor options that pin a bookkeeping actor (:class:`SkipCounter`, :class:`EpochCursor`) to the driver's node.

    Zero-CPU actors may otherwise land on any node; on a train or data node they would die with it and take
    the run down, although Ray Train and Ray Data survive the loss of that node.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}


def as_pair_table(pairs: Any) -> PairTable:
    """A :class:`PairTable` from a table, an ``ObjectRef`` to one, or a list of ``(rgb_uri, tir_uri)``."""
    if isinstance(pairs, ray.ObjectRef):
        pairs = ray.get(pairs)
    if isinstance(pairs, PairTable):
        return pairs
    return PairTable.from_pairs(list(pairs))


class SampleMaker:
    """Ray Data actor: sample indices ``[N]`` ─▶ N training samples (schema of ``make_sample``).

    Args:
        pairs: a :class:`PairTable`, an ``ObjectRef`` to one (what the pipeline passes), or a list of
            ``(rgb_uri, tir_uri)``.
        data: ``DataConfig`` (or its JSON dump): layout, pseudo-box method and options, sampling.
        seed, stream: sample ``i`` draws from ``(seed, stream, i)``.
        endpoint_url: S3 endpoint override.
        skip_counter: a :class:`SkipCounter` handle, or None to count here (:attr:`local_report`), which
            lets benchmarks run the maker without Ray.

    Errors. A permanent one (missing object, access denied, undecodable bytes, misaligned pair) marks the pair bad
    for the rest of the run (recorded once). A read that failed transiently after every retry
    (:class:`~cmd_ray.storage.TransientStorageError`) only costs this sample its pair: another is drawn, the pair
    stays usable, and the failure is counted as ``transient_failures``. The storage retries made while loading are
    counted as ``retries``. Both go to the :class:`SkipCounter` in at most one call per batch.

    Reads. On S3, a batch's objects (the first pair each sample draws) are requested concurrently on
    :data:`PREFETCH_THREADS` threads when the batch starts, so that request latency overlaps decoding; the samples
    are the same as with sequential reads.
    """

    def __init__(
        self,
        pairs: Any,
        data: dict[str, Any] | DataConfig,
        seed: int,
        stream: int,
        endpoint_url: str | None,
        skip_counter: Any = None,
    ) -> None:
        self._pairs = as_pair_table(pairs)
        if len(self._pairs) == 0:
            raise ValueError("SampleMaker needs at least one pair")
        self._data = data if isinstance(data, DataConfig) else DataConfig.model_validate(data)
        self._seed = seed
        self._stream = stream
        self._endpoint_url = endpoint_url
        self._skip_counter = skip_counter
        self._local = SkipTally() if skip_counter is None else None
        self._bad: set[int] = set()
        self._retries = 0  # storage retries made by this maker's loads, not yet reported
        self._transient: list[tuple[str, str]] = []  # (key, reason) not yet reported
        self._remote = self._pairs.rgb_uri(0).startswith("s3://")
        self._pool: ThreadPoolExecutor | None = None
        self._fetched: dict[str, Future] = {}  # URI -> its bytes, being read for the current batch
        self._in_batch = False
        self._detector: Any = None
        self._detections: OrderedDict[int, np.ndarray] = OrderedDict()
        boxes = self._pairs.boxes
        if self._data.boxes == "detection" and (boxes is None or boxes.null_count):
            self._build_detector()  # a missing HOG or unusable weights fail the actor at start, not a pair

    def _build_detector(self) -> Any:
        from cmd_ray.data.detect import build_detector

        if self._detector is None:
            self._detector = build_detector(self._data, self._endpoint_url)
        return self._detector

    @property
    def local_report(self) -> SkipReport | None:
        """Skips and fallbacks counted here when running without a :class:`SkipCounter`."""
        return None if self._local is None else self._local.report()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices = [int(index) for index in batch["data"]]
        retries_before = storage.retry_count()
        self._in_batch = True
        try:
            self._prefetch(indices)
            samples = [self.sample(index) for index in indices]
        finally:
            self._drain_prefetch()
            self._in_batch = False
            self._retries += storage.retry_count() - retries_before  # this process's reads are this maker's
            self.flush_storage_counts()
        return stack_samples(samples, batch["data"])

    def _prefetch(self, indices: list[int]) -> None:
        """Start reading the objects of each sample's first draw (S3 only; the draw is the one :meth:`sample`
        makes first, from the same seed)."""
        if not self._remote:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="cmd-ray-read")
        for index in indices:
            pair_index = int(np.random.default_rng([self._seed, self._stream, index]).integers(len(self._pairs)))
            if pair_index in self._bad:
                continue
            uris = [self._pairs.rgb_uri(pair_index)] if self._pairs.side_by_side else list(self._pairs[pair_index])
            for uri in uris:
                if uri not in self._fetched:
                    self._fetched[uri] = self._pool.submit(read_bytes, uri, self._endpoint_url)

    def _drain_prefetch(self) -> None:
        futures = list(self._fetched.values())
        self._fetched.clear()
        for future in futures:
            future.cancel()
        wait_futures(futures)

    def _read(self, uri: str) -> bytes:
        """The bytes of ``uri``: prefetched for this batch, else read now (a failed prefetch is used once)."""
        future = self._fetched.get(uri)
        if future is None:
            return read_bytes(uri, self._endpoint_url)
        if future.exception() is not None:
            del self._fetched[uri]  # another sample of the batch drawing this pair reads it again
        return future.result()

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """Sample ``index`` of this stream (a dict of :func:`~cmd_ray.data.processing.make_sample`)."""
        rng = np.random.default_rng([self._seed, self._stream, index])
        transient = 0
        for _ in range(MAX_DRAWS_PER_SAMPLE):
            pair_index = int(rng.integers(len(self._pairs)))
            if pair_index in self._bad:
                continue
            try:
                return self._cut(pair_index, rng)
            except TransientStorageError as exc:  # S3 failed on every retry: not the pair's fault
                transient += 1
                self._transient.append((self._pairs.key(pair_index), str(exc)))
                if self._local is not None:
                    self.flush_storage_counts()
            except (StorageError, ImageDecodeError, PairMismatchError) as exc:
                self._bad.add(pair_index)
                self._record("record", self._pairs.key(pair_index), str(exc))
        raise RuntimeError(
            f"sample {index}: {MAX_DRAWS_PER_SAMPLE} pairs in a row could not be read under {self._data.uri} "
            f"({transient} of them failed transiently after every retry); see the skipped-pair log"
        )

    _sample = sample  # the name benchmarks and older callers use

    def flush_storage_counts(self) -> None:
        """Report the storage retries and transient failures counted since the last flush (one call, if any)."""
        if not self._retries and not self._transient:
            return
        retries, transient = self._retries, self._transient
        self._retries, self._transient = 0, []
        self._record("record_storage", retries, transient)

    def _record(self, what: str, *args: Any) -> None:
        if self._local is not None:
            getattr(self._local, what)(*args)
        else:
            getattr(self._skip_counter, what).remote(*args)

    def load(self, pair_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read and decode pair ``pair_index``: ``(rgb uint8 [H, W, 3], tir [H, W])``, aligned.

        Storage retries made meanwhile are added to this maker's count (reported by :meth:`flush_storage_counts`).
        """
        if self._in_batch:  # counted for the whole batch by __call__
            return self._load(pair_index)
        before = storage.retry_count()
        try:
            return self._load(pair_index)
        finally:
            self._retries += storage.retry_count() - before
            if self._local is not None and self._retries:
                self.flush_storage_counts()

    def _load(self, pair_index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pairs.side_by_side:
            uri = self._pairs.rgb_uri(pair_index)
            image = decode_rgb(self._read(uri), uri)
            try:
                return split_side_by_side(image, uri)
            except ValueError as exc:  # e.g. an odd width: this file is not a side-by-side pair
                raise PairMismatchError(str(exc)) from exc
        rgb_uri, tir_uri = self._pairs[pair_index]
        rgb = decode_rgb(self._read(rgb_uri), rgb_uri)
        tir = decode_tir(self._read(tir_uri), tir_uri)
        return align_pair(rgb, tir, key=rgb_uri)

    def boxes(self, pair_index: int, rgb: np.ndarray, tir: np.ndarray) -> PseudoBoxes:
        """The pseudo boxes of pair ``pair_index`` (decoded as ``rgb``, ``tir``) for ``data.boxes``."""
        # the method's randomness is fixed per pair (seeded by its URI), so a pair's pseudo targets are a finite set
        uri_seed = zlib.crc32(self._pairs.rgb_uri(pair_index).encode())
        pair_rng = np.random.default_rng([self._seed, BOX_STREAM, uri_seed])
        found = pseudo_boxes_with_fallback(
            self._data.boxes,
            rgb,
            tir,
            pair_rng,
            detector=lambda _rgb, _tir: self._detections_of(pair_index, rgb, tir),  # called by 'detection' only
            settings=self._data,
        )
        if found.fallback:
            self._record("record_fallback", self._pairs.key(pair_index))
        return found

    def _detections_of(self, pair_index: int, rgb: np.ndarray, tir: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        precomputed = self._pairs.boxes_of(pair_index)
        if precomputed is not None:  # a manifest written by `cmd-ray boxes`: no detector runs
            return usable_boxes(precomputed, height, width, self._data.min_box_size)[: self._data.max_boxes]
        cached = self._detections.get(pair_index)
        if cached is not None:
            self._detections.move_to_end(pair_index)
            return cached
        from cmd_ray.data.detect import detect_pair

        found = detect_pair(
            self._build_detector(),
            rgb,
            tir,
            detect_on_tir=self._data.detect_on_tir,
            nms_iou=self._data.nms_iou,
            max_boxes=self._data.max_boxes,
            min_box_size=self._data.min_box_size,
        )
        self._detections[pair_index] = found
        if len(self._detections) > DETECTION_CACHE_SIZE:
            self._detections.popitem(last=False)
        return found

    def _cut(self, pair_index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        rgb, tir = self.load(pair_index)
        boxes = self.boxes(pair_index, rgb, tir).boxes
        box = boxes[int(rng.integers(len(boxes)))] if len(boxes) > 1 else boxes[0]
        if self._data.boxes == "random" and self._data.random_box_patch:
            rgb, tir, box = resize_to_patch(rgb, tir, box, self._data.random_box_patch)
        return make_sample(rgb, tir, box, self._data.sampling, rng)


def list_pairs(cfg: Config) -> PairTable:
    """The pairs of ``cfg.data`` in its layout, as a compact :class:`PairTable` (``len``, ``[i]``, iteration).

    Unpaired files are logged here and travel with the table (:attr:`PairTable.unpaired_count`), so the
    run's :class:`SkipReport` reports them too.

    Raises:
        EmptyPrefixError: no pair (naming the URI); ManifestError: a bad manifest.
    """
    listing = list_pairs_for(cfg.data, cfg.storage.s3_endpoint_url, progress=cfg.data.progress)
    if listing.unpaired:
        logger.warning(
            "%d file(s) under %s have no partner in the other modality, e.g. %s",
            len(listing.unpaired),
            cfg.data.manifest or cfg.data.uri,
            listing.unpaired[0],
        )
    logger.info("%d pairs under %s (%d bytes of pair table)", len(listing.table), cfg.data.uri, listing.table.nbytes)
    return listing.table


def split_pairs(pairs: Any, val_fraction: float) -> tuple[Any, Any]:
    """``(train, val)``: a pair is held out when the hash of its RGB URI falls below ``val_fraction``.

    The split depends on each URI alone, so it is stable when pairs are added or removed; a tiny set with
    ``val_fraction > 0`` holds out at least one pair. A :class:`PairTable` gives tables, a list gives lists.

    Raises:
        ValueError: nothing left to train on (naming ``data.val_fraction``).
    """
    if isinstance(pairs, PairTable):
        mask = split_mask([pairs.root + rel for rel in pairs.rgb.to_pylist()], val_fraction)
        return pairs.take(np.flatnonzero(~mask)), pairs.take(np.flatnonzero(mask))
    pairs = list(pairs)
    mask = split_mask([p[0] for p in pairs], val_fraction)
    train = [p for p, held in zip(pairs, mask, strict=True) if not held]
    return train, [p for p, held in zip(pairs, mask, strict=True) if held]


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


def _configure(ds: ray.data.Dataset, cfg: Config) -> ray.data.Dataset:
    ds.context.enable_progress_bars = cfg.data.progress
    ds.context.execution_options = execution_options(cfg)
    return ds


def _samples(
    cfg: Config,
    pairs: PairList,
    skip_counter: Any,
    indices: np.ndarray,
    stream: int,
    transform: Any = None,
) -> ray.data.Dataset:
    table = as_pair_table(pairs)
    if skip_counter is not None and table.unpaired_count:
        skip_counter.record_unpaired.remote(table.unpaired_count, list(table.unpaired_examples))
    # from_numpy keeps the index blocks on the driver: no read tasks competing with training for CPUs.
    blocks = index_blocks(indices, cfg.distill.batch_size, cfg.data.num_actors)
    rows = _configure(ray.data.from_numpy(blocks), cfg)
    if transform is not None:
        rows = transform(rows)
    return rows.map_batches(
        SampleMaker,
        fn_constructor_kwargs={
            "pairs": ray.put(table),  # once in the object store; actors on a node share it zero-copy
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
    cfg: Config, pairs: PairList, skip_counter: Any, start_epoch: int = 0, epoch_cursor: Any = None
) -> ray.data.Dataset:
    """Samples for epochs ``start_epoch … epochs-1``, in order; row i is sample ``start_epoch*spe + i``.

    With an :class:`EpochCursor`, rows of the epochs before the cursor's value (read when the stream starts) are
    dropped before any image is read: a restarted worker group continues the stream where its checkpoint ends.
    Rows hold the keys of :func:`cmd_ray.data.processing.make_sample` (crops, boxes, label, proposals).
    """
    per_epoch = cfg.steps_per_epoch() * cfg.distill.batch_size * cfg.scaling.num_workers
    first = start_epoch * per_epoch
    count = (cfg.distill.epochs - start_epoch) * per_epoch
    indices = np.arange(first, first + count, dtype=np.int64)
    return _samples(cfg, pairs, skip_counter, indices, TRAIN_STREAM, resume_from(epoch_cursor, per_epoch))


def validation_dataset(cfg: Config, pairs: PairList, skip_counter: Any) -> ray.data.Dataset:
    """The same ``distill.val_samples`` samples of the held-out pairs every epoch (the dataset re-executes)."""
    return _samples(cfg, pairs, skip_counter, np.arange(cfg.distill.val_samples, dtype=np.int64), VAL_STREAM)


# --------------------------------------------------------------------------- precomputed detection boxes


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
    ds = _configure(ray.data.from_numpy(blocks), cfg)
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


# --------------------------------------------------------------------------- resuming the stream


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


# --------------------------------------------------------------------------- supervised samples (pretraining)


class SequenceSampleMaker:
    """Ray Data actor: sample indices ``[N]`` ─▶ N supervised samples of labeled RGB sequences.

    Sample ``i`` draws its sequence, its reference/test frames (at most ``max_gap`` apart), its jitter and its
    photometric augmentation (grey crops; brightness in the training stream only) from ``(seed, stream, i)``.
    An unreadable frame is recorded in the :class:`SkipCounter` once and another frame pair is drawn.
    """

    def __init__(
        self,
        sequences: list[Any],
        sampling: dict[str, Any],
        max_gap: int,
        seed: int,
        stream: int,
        endpoint_url: str | None,
        skip_counter: Any,
        grayscale_probability: float = 0.0,
        brightness_jitter: float = 0.0,
    ) -> None:
        from cmd_ray.config import SamplingConfig

        self._photometric = {"grayscale_probability": grayscale_probability, "brightness_jitter": brightness_jitter}
        self._sequences = sequences
        self._sampling = SamplingConfig.model_validate(sampling)
        self._max_gap = max_gap
        self._seed = seed
        self._stream = stream
        self._endpoint_url = endpoint_url
        self._skip_counter = skip_counter
        self._bad: set[str] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples = [self._sample(int(index)) for index in batch["data"]]
        return stack_samples(samples, batch["data"])

    def _frame(self, uri: str) -> np.ndarray:
        return decode_rgb(read_bytes(uri, self._endpoint_url), uri)

    def _sample(self, index: int) -> dict[str, np.ndarray]:
        from cmd_ray.data.sequences import draw_frame_pair, make_frame_pair_sample

        rng = np.random.default_rng([self._seed, self._stream, index])
        for _ in range(MAX_DRAWS_PER_SAMPLE):
            sequence = self._sequences[int(rng.integers(len(self._sequences)))]
            ref, test = draw_frame_pair(sequence.valid, self._max_gap, rng)
            uris = (sequence.frames[ref], sequence.frames[test])
            if self._bad.intersection(uris):
                continue
            images = []
            for uri in uris:
                try:
                    images.append(self._frame(uri))
                except (StorageError, ImageDecodeError) as exc:
                    self._bad.add(uri)
                    self._skip_counter.record.remote(uri, str(exc))
                    break
            else:
                boxes = sequence.boxes
                return make_frame_pair_sample(
                    images[0], boxes[ref], images[1], boxes[test], self._sampling, rng, **self._photometric
                )
        raise RuntimeError(f"sample {index}: {MAX_DRAWS_PER_SAMPLE} frame pairs in a row could not be read")


def pretraining_dataset(
    cfg: Config, sequences: list[Any], skip_counter: Any, epoch_cursor: Any = None, validation: bool = False
) -> ray.data.Dataset:
    """Supervised samples for ``jobs/pretrain.py``: every epoch of ``pretrain`` in order, or the fixed validation set.

    Row ``i`` is sample ``i`` of the run (training) or of the validation set; see :class:`SequenceSampleMaker`.
    """
    from cmd_ray.schedule import schedule_for

    schedule = schedule_for(cfg, "pretrain")
    per_epoch = schedule.samples_per_run_epoch(cfg.scaling.num_workers)
    count = schedule.val_samples if validation else schedule.epochs * per_epoch
    rows = ray.data.from_numpy(np.arange(count, dtype=np.int64))
    transform = resume_from(epoch_cursor, per_epoch)
    if transform is not None:
        rows = transform(rows)
    return rows.map_batches(
        SequenceSampleMaker,
        fn_constructor_kwargs={
            "sequences": sequences,
            "sampling": cfg.data.sampling.model_dump(mode="json"),
            "max_gap": cfg.pretrain.max_gap,
            "seed": schedule.seed,
            "stream": VAL_STREAM if validation else TRAIN_STREAM,
            "endpoint_url": cfg.storage.s3_endpoint_url,
            "skip_counter": skip_counter,
            # as DiMP trains: grey crops in both streams, brightness jitter in training only (the validation
            # samples stay the same every epoch either way: their draws are fixed by their index)
            "grayscale_probability": cfg.pretrain.grayscale_probability,
            "brightness_jitter": 0.0 if validation else cfg.pretrain.brightness_jitter,
        },
        batch_size=schedule.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.data.num_actors),
        num_cpus=cfg.data.cpus_per_actor,
    )
