"""The cap on unreadable data (``data.max_skipped_fraction``): a run that skipped a larger share of its pairs (or,
pretraining, of its frames) as unreadable fails instead of registering a model trained on what was left.

Pure: the training jobs (:mod:`cmd_ray.train.trainer`, :mod:`cmd_ray.tune`) call :func:`skipped_share_error` with
the counts of their :class:`~cmd_ray.data.skips.SkipReport` and raise what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence

LIMIT_KEY = "data.max_skipped_fraction"
EXAMPLES_IN_MESSAGE = 3


class SkippedDataError(RuntimeError):
    """More of the data was unreadable than ``data.max_skipped_fraction`` allows; the message gives the count, the
    share and where the skipped items are listed."""


def skipped_share_error(
    skipped: int,
    total: int,
    limit: float,
    unit: str = "pairs",
    examples: Sequence[str] = (),
    where: str = "",
) -> SkippedDataError | None:
    """The error of a run that skipped ``skipped`` of its ``total`` items (``unit``: ``pairs`` or ``frames``) as
    unreadable, when that share exceeds ``limit``; ``None`` when it does not (or nothing was listed).

    ``examples`` are the first ``"key: reason"`` lines of the skip report (a few are quoted); ``where`` says where the
    skipped items are listed (the MLflow artifact, the job log).
    """
    if total <= 0 or skipped / total <= limit:
        return None
    quoted = "; ".join(" ".join(line.split()) for line in examples[:EXAMPLES_IN_MESSAGE])  # one line
    more = " …" if len(examples) > EXAMPLES_IN_MESSAGE or skipped > len(examples) else ""
    return SkippedDataError(
        f"{skipped} of {total} {unit} ({skipped / total:.1%}) were unreadable and skipped, more than "
        f"{LIMIT_KEY}={limit:g} ({limit:.1%}) allows: the run failed and registered nothing. "
        f"Skipped: {quoted}{more}" + (f" (listed in {where})" if where else "") + ". Repair or remove those "
        f"files, or raise {LIMIT_KEY} to train on the rest"
    )
