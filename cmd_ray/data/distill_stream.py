"""The distillation sample stream: RGB–TIR pairs ─▶ a streaming Ray dataset of DiMP training samples.

Decoding, pseudo boxes and crops run on Ray Data actors (:class:`SampleMaker`, sized by ``data.num_actors`` /
``data.cpus_per_actor``), never on the training workers. Row ``i`` of the dataset is sample ``i`` of the whole run:
its pair and its jitter are drawn from ``(seed, i)``, so the stream is deterministic per seed and an epoch is exactly
``samples_per_epoch`` rows whatever the data-set size. A pair that cannot be read (permanently: missing, access
denied), decoded or aligned is recorded once in a :class:`~cmd_ray.data.skips.SkipCounter` actor (key and reason) and
another pair is drawn instead; a read that fails transiently (throttling, 5xx, resets) is retried for
``storage.read_timeout_s`` and then fails the batch, never drawing another pair. A pair whose detector found nothing
is trained on the centre box and counted there too (``fallback_boxes``), as are the listing's unpaired files.

Memory. The pairs travel as one :class:`~cmd_ray.data.pairs.PairTable` (pyarrow string columns, about the URIs'
length per pair) put in the object store once (``ray.put``); every actor maps it zero-copy instead of receiving a
pickled list. The sample indices are split into many small blocks (:func:`~cmd_ray.data.streams.index_blocks`).
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import numpy as np
import ray

from cmd_ray import storage
from cmd_ray.config import Config, DataConfig
from cmd_ray.data.boxes import PseudoBoxes, pseudo_boxes_with_fallback, resize_to_patch, usable_boxes
from cmd_ray.data.epochs import resume_from
from cmd_ray.data.images import ImageDecodeError, decode_rgb, decode_tir
from cmd_ray.data.pairs import PairTable, list_pairs_for, split_mask
from cmd_ray.data.processing import (
    PairMismatchError,
    align_pair,
    make_sample,
    make_side_by_side_sample,
    split_side_by_side,
)
from cmd_ray.data.skips import SkipReport, SkipTally
from cmd_ray.data.streams import (
    MAX_DRAWS_PER_SAMPLE,
    TRAIN_STREAM,
    VAL_STREAM,
    configure_dataset,
    index_blocks,
    read_policy,
    stack_samples,
)
from cmd_ray.storage import RetryPolicy, StorageError, TransientStorageError, read_bytes
from cmd_ray.vocabulary import MIXINGS

logger = logging.getLogger(__name__)

BOX_STREAM = 2
"""Seed stream of the per-pair 'random' regions (fixed per pair and run seed, whatever the sample)."""

DETECTION_CACHE_SIZE = 4096
"""Pairs whose detections an actor keeps (detection is deterministic per pair; the manifest avoids it entirely)."""

PREFETCH_THREADS = 8
"""Threads of a :class:`SampleMaker` that read its batch's objects from S3 concurrently (hiding request latency)."""


PairList = PairTable | list[tuple[str, str]]
"""What the dataset builders take: a :class:`PairTable` (compact) or a list of ``(rgb_uri, tir_uri)``."""


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
        mixing: ``distill.mixing``. ``"side_by_side"`` (mix rows only; the config refuses it for the others) cuts
            each sample with :func:`~cmd_ray.data.processing.make_side_by_side_sample` (keys ``rgb_tir_ref``,
            ``tir_rgb_test`` in place of the four crops); ``"batch_split"`` with ``make_sample``.
        retry: how reads retry transient errors (:func:`~cmd_ray.data.streams.read_policy`; default
            :data:`~cmd_ray.storage.DEFAULT_POLICY`).

    Errors. A permanent one (missing object, access denied, undecodable bytes, misaligned pair) marks the pair bad
    for the rest of the run (recorded once) and the sample draws another pair. A transient one is retried by the read
    for the whole budget of ``retry`` (the sample waits for the store; the actor's prefetch threads back off
    together); if it persists (:class:`~cmd_ray.storage.TransientStorageError`), the failure is counted as
    ``transient_failures`` and raised: the sample is never cut from another pair, and the pair is never marked bad.
    The storage retries made while loading are counted as ``retries``. Both go to the :class:`SkipCounter` in at
    most one call per batch.

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
        mixing: str = "batch_split",
        retry: RetryPolicy | None = None,
    ) -> None:
        if mixing not in MIXINGS:
            raise ValueError(f"unknown mixing {mixing!r}; allowed: {', '.join(MIXINGS)}")
        self._cut_sample = make_side_by_side_sample if mixing == "side_by_side" else make_sample
        self._pairs = as_pair_table(pairs)
        if len(self._pairs) == 0:
            raise ValueError("SampleMaker needs at least one pair")
        self._data = data if isinstance(data, DataConfig) else DataConfig.model_validate(data)
        self._seed = seed
        self._stream = stream
        self._endpoint_url = endpoint_url
        self._retry = retry
        self._skip_counter = skip_counter
        self._local = SkipTally() if skip_counter is None else None
        self._bad: set[int] = set()
        self._resized: set[int] = set()  # pairs whose TIR resize is reported already (once per maker)
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
                    self._fetched[uri] = self._pool.submit(read_bytes, uri, self._endpoint_url, self._retry)

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
            return read_bytes(uri, self._endpoint_url, self._retry)
        if future.exception() is not None:
            del self._fetched[uri]  # another sample of the batch drawing this pair reads it again
        return future.result()

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """Sample ``index`` of this stream (a dict of :func:`~cmd_ray.data.processing.make_sample`)."""
        rng = np.random.default_rng([self._seed, self._stream, index])
        for _ in range(MAX_DRAWS_PER_SAMPLE):
            pair_index = int(rng.integers(len(self._pairs)))
            if pair_index in self._bad:
                continue
            try:
                return self._cut(pair_index, rng)
            except TransientStorageError as exc:  # the store, not the pair: no other pair stands in
                key = self._pairs.key(pair_index)
                self._transient.append((key, str(exc)))
                self.flush_storage_counts()
                raise TransientStorageError(
                    f"sample {index}: pair {key} could not be read within the retry budget (storage.read_timeout_s); "
                    f"no other pair is drawn in its place: {exc}"
                ) from exc
            except (StorageError, ImageDecodeError, PairMismatchError) as exc:
                self._bad.add(pair_index)
                self._record("record", self._pairs.key(pair_index), str(exc))
        raise RuntimeError(
            f"sample {index}: {MAX_DRAWS_PER_SAMPLE} pairs in a row could not be read under {self._data.uri}; "
            "see the skipped-pair log"
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
        aligned = align_pair(rgb, tir, key=rgb_uri)
        if aligned[1].shape != tir.shape and pair_index not in self._resized:
            self._resized.add(pair_index)
            (th, tw), (rh, rw) = tir.shape, rgb.shape[:2]
            self._record("record_resized", self._pairs.key(pair_index), f"TIR {tw}x{th} -> {rw}x{rh}")
        return aligned

    def boxes(self, pair_index: int, rgb: np.ndarray, tir: np.ndarray) -> PseudoBoxes:
        """The pseudo boxes of pair ``pair_index`` (decoded as ``rgb``, ``tir``) for ``data.boxes``."""
        # the method's randomness is fixed per pair (seeded by its RGB file's path under the data root, never the
        # absolute URI: the same data set in another folder or bucket gets the same boxes), so a pair's pseudo
        # targets are a finite set
        name_seed = zlib.crc32(self._pairs.rgb[pair_index].as_py().encode())
        pair_rng = np.random.default_rng([self._seed, BOX_STREAM, name_seed])
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
        return self._cut_sample(rgb, tir, box, self._data.sampling, rng)


def list_pairs(cfg: Config) -> PairTable:
    """The pairs of ``cfg.data`` in its layout, as a compact :class:`PairTable` (``len``, ``[i]``, iteration).

    Unpaired files are logged here and travel with the table (:attr:`PairTable.unpaired_count`), so the
    run's :class:`SkipReport` reports them too.

    Raises:
        EmptyPrefixError: no pair (naming the URI); ManifestError: a bad manifest.
    """
    listing = list_pairs_for(cfg.data, cfg.storage.s3_endpoint_url, progress=cfg.data.show_progress)
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
    """``(train, val)``: a pair is held out when the hash of its RGB file's path under the data root falls below
    ``val_fraction``.

    The split depends on each path alone, so it is stable when pairs are added or removed, and the same wherever the
    data set lies (another folder or bucket); a tiny set with
    ``val_fraction > 0`` holds out at least one pair. A :class:`PairTable` gives tables, a list gives lists.

    Raises:
        ValueError: nothing left to train on (naming ``data.val_fraction``).
    """
    if isinstance(pairs, PairTable):
        mask = split_mask(pairs.rgb.to_pylist(), val_fraction)  # paths under the table's root
        return pairs.take(np.flatnonzero(~mask)), pairs.take(np.flatnonzero(mask))
    pairs = list(pairs)
    mask = split_mask(PairTable.from_pairs(pairs).rgb.to_pylist(), val_fraction)  # as a table's: under the root
    train = [p for p, held in zip(pairs, mask, strict=True) if not held]
    return train, [p for p, held in zip(pairs, mask, strict=True) if held]


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
    rows = configure_dataset(ray.data.from_numpy(blocks), cfg)
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
            "mixing": cfg.distill.mixing,
            "retry": read_policy(cfg),
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
