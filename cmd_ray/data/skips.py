"""What a sample stream could not use as intended: skipped pairs, centre-box fallbacks, unpaired files, TIR images
resized to their RGB partner and storage retries, counted once per key across every data actor (a zero-CPU
:class:`SkipCounter` actor) or locally (:class:`SkipTally`, when a maker runs without Ray)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import ray

logger = logging.getLogger(__name__)

EXAMPLES_KEPT = 20
"""Keys a report keeps by name (counts are exact)."""


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
        transient_failures: reads that still failed transiently when their retry budget (``storage.read_timeout_s``)
            was spent (count of occurrences). Each failed its batch: no other pair stood in, and the pair stays in
            the data set. ``transient_examples``: the first few ``"key: reason"``.
        resized_tir: pairs whose TIR image had another size (same aspect) than its RGB partner and was resized to
            it (:func:`cmd_ray.data.processing.align_pair`; each pair once); ``resized_examples`` the first few
            ``"key: TIR wxh -> wxh"``.
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
    resized_tir: int = 0
    resized_examples: list[str] = field(default_factory=list)


class SkipTally:
    """Counts skips and fallbacks, each key once, logging each once (the state of :class:`SkipCounter`).

    Also used directly by a :class:`SampleMaker` running without Ray (``skip_counter=None``).
    """

    def __init__(self) -> None:
        self._skipped: set[str] = set()
        self._fallbacks: set[str] = set()
        self._resized: set[str] = set()
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

    def record_resized(self, key: str, change: str) -> None:
        """Pair ``key``'s TIR image was resized to its RGB partner's size (``change``: ``"TIR 320x256 -> 640x512"``);
        counted and logged once per key."""
        if key in self._resized:
            return
        self._resized.add(key)
        self._report.resized_tir += 1
        if len(self._report.resized_examples) < EXAMPLES_KEPT:
            self._report.resized_examples.append(f"{key}: {change}")
        logger.info("pair %s: %s (resized to its RGB partner)", key, change)

    def record_storage(self, retries: int, transient: list[tuple[str, str]]) -> None:
        """Add ``retries`` storage retries and the ``(key, reason)`` of reads that failed transiently for their whole
        retry budget (each occurrence counts; the pair is not marked bad). Logs the first few failures as warnings."""
        self._report.retries += int(retries)
        for key, reason in transient:
            self._report.transient_failures += 1
            if len(self._report.transient_examples) < EXAMPLES_KEPT:
                self._report.transient_examples.append(f"{key}: {reason}")
                logger.warning("transient read failure in pair %s (not marked bad, not replaced): %s", key, reason)

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
    """Counts skipped pairs, centre-box fallbacks, unpaired files, resized TIR images, storage retries and transient
    read failures across all data actors (see :class:`SkipTally`)."""

    def __init__(self) -> None:
        self._tally = SkipTally()

    def record(self, key: str, reason: str) -> None:
        self._tally.record(key, reason)

    def record_fallback(self, key: str) -> None:
        self._tally.record_fallback(key)

    def record_resized(self, key: str, change: str) -> None:
        self._tally.record_resized(key, change)

    def record_storage(self, retries: int, transient: list[tuple[str, str]]) -> None:
        self._tally.record_storage(retries, transient)

    def record_unpaired(self, count: int, examples: list[str]) -> None:
        self._tally.record_unpaired(count, examples)

    def report(self) -> SkipReport:
        return self._tally.report()
