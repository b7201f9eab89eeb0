"""The pretraining sample stream: labeled RGB sequences ─▶ a streaming Ray dataset of supervised DiMP samples
(``jobs/pretrain.py`` trains the RGB teacher on it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from cmd_ray import storage
from cmd_ray.config import Config
from cmd_ray.data.epochs import resume_from
from cmd_ray.data.images import ImageDecodeError, decode_rgb
from cmd_ray.data.skips import SkipReport, SkipTally
from cmd_ray.data.streams import MAX_DRAWS_PER_SAMPLE, TRAIN_STREAM, VAL_STREAM, read_policy, stack_samples
from cmd_ray.storage import RetryPolicy, StorageError, TransientStorageError, read_bytes


class SequenceSampleMaker:
    """Ray Data actor: sample indices ``[N]`` ─▶ N supervised samples of labeled RGB sequences.

    Sample ``i`` draws its sequence, its reference/test frames (at most ``max_gap`` apart), its jitter and its
    photometric augmentation (grey crops; brightness in the training stream only) from ``(seed, stream, i)``.
    A permanently unreadable frame (missing, access denied, undecodable) is recorded in the :class:`SkipCounter`
    once and another frame pair is drawn. A transient read error is retried for the budget of ``retry``
    (:func:`~cmd_ray.data.streams.read_policy`); if it persists it is counted (``transient_failures``) and raised,
    never marking the frame bad nor drawing another frame pair. Storage retries are counted (``retries``) per batch.
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
        retry: RetryPolicy | None = None,
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
        self._local = SkipTally() if skip_counter is None else None  # counted here when running without Ray
        self._retry = retry
        self._bad: set[str] = set()

    @property
    def local_report(self) -> SkipReport | None:
        """Skips and storage counts counted here when running without a :class:`SkipCounter`."""
        return None if self._local is None else self._local.report()

    def _record(self, what: str, *args: Any) -> None:
        if self._local is not None:
            getattr(self._local, what)(*args)
        else:
            getattr(self._skip_counter, what).remote(*args)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        before = storage.retry_count()
        transient: list[tuple[str, str]] = []
        try:
            samples = [self._sample(int(index), transient) for index in batch["data"]]
        finally:
            retries = storage.retry_count() - before
            if retries or transient:
                self._record("record_storage", retries, transient)
        return stack_samples(samples, batch["data"])

    def _frame(self, uri: str) -> np.ndarray:
        return decode_rgb(read_bytes(uri, self._endpoint_url, self._retry), uri)

    def _sample(self, index: int, transient: list[tuple[str, str]]) -> dict[str, np.ndarray]:
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
                except TransientStorageError as exc:  # the store, not the frame: neither marked bad nor replaced
                    transient.append((uri, str(exc)))
                    raise TransientStorageError(
                        f"sample {index}: frame {uri} could not be read within the retry budget "
                        f"(storage.read_timeout_s); no other frame pair is drawn in its place: {exc}"
                    ) from exc
                except (StorageError, ImageDecodeError) as exc:
                    self._bad.add(uri)
                    self._record("record", uri, str(exc))
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
            "retry": read_policy(cfg),
        },
        batch_size=schedule.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.data.num_actors),
        num_cpus=cfg.data.cpus_per_actor,
    )
