"""Result files of an OPE evaluation, the metadata of a result folder, scoring folders and per-sequence results.

Layout of a results folder (a local folder or an ``s3://bucket/prefix``; every byte goes through
:mod:`cmd_ray.storage`)::

    results_dir/<tracker>/meta.json              what produced the folder: tracker, model, benchmark, root, protocol
    results_dir/<tracker>/<sequence>.txt         one line per frame: x,y,w,h (pixels, comma separated)
    results_dir/<tracker>/<sequence>_time.txt    one line per frame: seconds the tracker spent on that frame
    results_dir/plots/*.png, results_dir/ope_tables.txt
    results_dir/per_sequence.csv, per_sequence.json   per-sequence scores and FPS (:func:`write_per_sequence`)

Every file is written atomically: on local disk to a temporary file in the same folder renamed over its name; on S3
in one upload (an object becomes visible only once its upload is complete, whole). A sequence's result is complete
when both files exist and hold one line per frame each. :func:`write_result` makes the box file the commit marker of
the pair: it removes an old box file first, then writes the time file, then the box file, so a run killed at any
point leaves either a complete pair of this run or no box file — never a box file with the times of another run.

Completeness is checked the same way on both stores (:func:`complete_sequences`): one listing of the tracker's
folder (:func:`cmd_ray.storage.iter_relative_files`: one request per 1000 keys on S3, no HEAD per file), then the
line counts of the pairs that exist.

``meta.json`` lets ``cmd-ray compare`` score a folder with nothing but the folder: it names the benchmark and its
root (for the ground truth), the sequences evaluated and the protocol. A *plain* result folder (``<seq>.txt`` files
of another toolkit, no ``meta.json``, time files optional) is scored too, the benchmark and root given by the caller.
The formats are described in docs/formats.md; the tables are drawn by :mod:`cmd_ray.evaluation.tables`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as SequenceOf
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cmd_ray import storage
from cmd_ray.data.sequence_folders import SequenceError, parse_boxes
from cmd_ray.evaluation.benchmarks import Sequence, benchmark_options, read_benchmark
from cmd_ray.evaluation.metrics import (
    PROTOCOLS,
    DatasetScores,
    SequenceCurves,
    aggregate_trackers,
    sequence_curves,
)

META_FILE = "meta.json"
BOXES_SUFFIX = ".txt"
TIMES_SUFFIX = "_time.txt"
META_VERSION = 1
S3_READ_THREADS = 16
"""Concurrent reads of result files on S3 (small objects: latency-bound, not bandwidth-bound)."""

_T = TypeVar("_T")

logger = logging.getLogger(__name__)


class ResultsError(ValueError):
    """A result file or folder is missing, malformed or inconsistent; the message names it."""


# ---------------------------------------------------------------------------------------------------------------------
# locations


def location(uri: Path | str) -> str:
    """``uri`` as the evaluation stores it: ``s3://bucket/prefix`` without a trailing slash, or an absolute local
    path (``file://``, ``~`` and symbolic links resolved, as ``Path.resolve`` does)."""
    text = str(uri)
    return text.rstrip("/") if storage.is_s3(text) else os.path.realpath(storage.resolve(text)[1])


def basename(uri: Path | str) -> str:
    """The last component of a location (``s3://b/results/dimp`` → ``dimp``)."""
    return posixpath.basename(location(uri)) if storage.is_s3(str(uri)) else os.path.basename(location(uri))


def parent(uri: Path | str) -> str:
    """The location one level up (``s3://b/results/dimp`` → ``s3://b/results``)."""
    loc = location(uri)
    return loc.rsplit("/", 1)[0] if storage.is_s3(loc) else os.path.dirname(loc)


def list_files(folder: Path | str, endpoint_url: str | None = None) -> set[str]:
    """Paths (relative to ``folder``) of the files below it, from one listing; empty when the folder does not exist.

    Hidden files (a name starting with ``.``: the temporary files of a local write in progress) are left out.
    """
    try:
        files = storage.iter_relative_files(location(folder), endpoint_url)
        return {f for f in files if not posixpath.basename(f).startswith(".")}
    except storage.MissingFolderError:
        return set()


def is_missing(exc: BaseException) -> bool:
    """Whether a :class:`~cmd_ray.storage.StorageError` says the file or object does not exist (local
    ``FileNotFoundError``, S3 ``NoSuchKey`` / 404), as opposed to any other failure."""
    cause = exc.__cause__
    if isinstance(cause, FileNotFoundError):
        return True
    response = getattr(cause, "response", None)  # botocore's ClientError
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("NoSuchKey", "404", "NotFound") or status == 404
    return False


def _map(fn: Callable[[str], _T], names: list[str], remote: bool) -> list[_T]:
    """``[fn(n) for n in names]``, with threads on S3 (each call waits on a request), in order."""
    if not remote or len(names) < 2:
        return [fn(n) for n in names]
    with ThreadPoolExecutor(max_workers=min(S3_READ_THREADS, len(names))) as pool:
        return list(pool.map(fn, names))


# ---------------------------------------------------------------------------------------------------------------------
# result files


def result_paths(tracker_dir: Path | str, sequence: str) -> tuple[str, str]:
    """``(boxes file, times file)`` URIs of ``sequence`` in ``tracker_dir`` (absolute local paths or ``s3://``)."""
    d = location(tracker_dir)
    return storage.join(d, f"{sequence}{BOXES_SUFFIX}"), storage.join(d, f"{sequence}{TIMES_SUFFIX}")


def atomic_write_text(path: Path | str, text: str, endpoint_url: str | None = None) -> None:
    """Write ``text`` to ``path`` so that a reader (or a rerun) sees the old file or the complete new one.

    Local: a temporary file in the same folder, ``fsync``, and an atomic rename. S3: one upload through
    :func:`cmd_ray.storage.write_bytes` (S3 makes an object visible only when its upload completes).
    """
    uri = str(path)
    if storage.is_s3(uri):
        storage.write_bytes(uri, text.encode(), endpoint_url)
        return
    target = Path(location(uri))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def format_boxes(boxes: np.ndarray) -> str:
    """``[N, 4]`` ``x, y, w, h`` boxes (pixels) as text: one ``x,y,w,h`` line per frame, 4 decimals."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (x, y, w, h), got {boxes.shape}")
    return "".join(",".join(f"{v:.4f}" for v in row) + "\n" for row in boxes.tolist())


def format_times(times: np.ndarray) -> str:
    """``[N]`` seconds per frame as text, one value per line."""
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1:
        raise ValueError(f"times must have shape [N], got {times.shape}")
    return "".join(f"{t:.9f}\n" for t in times.tolist())


def write_result(
    tracker_dir: Path | str, sequence: str, boxes: np.ndarray, times: np.ndarray, endpoint_url: str | None = None
) -> str:
    """Write one sequence's result atomically: remove an old ``<sequence>.txt``, write ``<sequence>_time.txt``, then
    ``<sequence>.txt`` (the commit marker of the pair; see the module docstring).

    Args:
        tracker_dir: the tracker's result folder (local path or ``s3://`` URI).
        boxes: ``[N, 4]`` float ``x, y, w, h`` pixels, one row per frame (frame 1 first).
        times: ``[N]`` seconds the tracker spent per frame.
        endpoint_url: S3 endpoint (default: ``AWS_ENDPOINT_URL``).

    Returns:
        the URI of the boxes file.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or times.shape != (boxes.shape[0],):
        raise ValueError(f"{sequence}: boxes must be [N, 4] and times [N], got {boxes.shape} and {times.shape}")
    if boxes.shape[0] == 0:
        raise ValueError(f"{sequence}: no frames to write")
    boxes_path, times_path = result_paths(tracker_dir, sequence)
    storage.delete_file(boxes_path, endpoint_url)
    atomic_write_text(times_path, format_times(times), endpoint_url)
    atomic_write_text(boxes_path, format_boxes(boxes), endpoint_url)
    return boxes_path


def _text(uri: str, endpoint_url: str | None = None) -> str:
    try:
        return storage.read_bytes(uri, endpoint_url).decode()
    except storage.StorageError as exc:
        if is_missing(exc):
            raise ResultsError(f"result file not found: {uri}") from None
        raise ResultsError(f"cannot read result file {uri}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ResultsError(f"cannot read result file {uri}: {exc}") from exc


def _parse_boxes(text: str, uri: str) -> np.ndarray:
    try:
        boxes = parse_boxes(text, uri)
    except SequenceError as exc:
        raise ResultsError(str(exc)) from None
    if not len(boxes):
        raise ResultsError(f"result file {uri} holds no boxes")
    return boxes


def _parse_times(text: str, uri: str) -> np.ndarray:
    values = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            t = float(line.strip())
        except ValueError:
            raise ResultsError(f"{uri}:{lineno}: expected seconds per frame, got {line!r}") from None
        if not (math.isfinite(t) and t >= 0):
            raise ResultsError(f"{uri}:{lineno}: seconds per frame must be finite and >= 0, got {t}")
        values.append(t)
    if not values:
        raise ResultsError(f"time file {uri} holds no values")
    return np.asarray(values, dtype=np.float64)


def read_boxes(path: Path | str, endpoint_url: str | None = None) -> np.ndarray:
    """``[N, 4]`` float64 pixel boxes of a result file (``x,y,w,h`` lines; commas, tabs or spaces; ``nan`` allowed)."""
    uri = str(path)
    return _parse_boxes(_text(uri, endpoint_url), uri)


def read_times(path: Path | str, endpoint_url: str | None = None) -> np.ndarray:
    """``[N]`` float64 seconds per frame of a ``*_time.txt`` file (finite, ≥ 0)."""
    uri = str(path)
    return _parse_times(_text(uri, endpoint_url), uri)


def read_result(
    tracker_dir: Path | str, sequence: str, endpoint_url: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes [N, 4] pixels, times [N] seconds)`` of one sequence; their frame counts must agree."""
    boxes_path, times_path = result_paths(tracker_dir, sequence)
    boxes, times = read_boxes(boxes_path, endpoint_url), read_times(times_path, endpoint_url)
    if boxes.shape[0] != times.shape[0]:
        raise ResultsError(f"{boxes_path} has {boxes.shape[0]} boxes but {times_path} has {times.shape[0]} times")
    return boxes, times


def _read_listed(
    tracker_dir: Path | str, frame_counts: Mapping[str, int], endpoint_url: str | None, times_required: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray | None] | ResultsError]:
    """For each sequence of ``frame_counts``: its ``(boxes, times)`` when complete, else the error saying why.

    One listing of ``tracker_dir``; only the files it shows are read (concurrently on S3). With
    ``times_required=False`` (a plain result folder) a box file alone is complete and its times are None when there
    is no time file; a time file that exists must still parse and agree with the frame count.
    """
    files = list_files(tracker_dir, endpoint_url)
    out: dict[str, tuple[np.ndarray, np.ndarray | None] | ResultsError] = {}
    present = []
    for name in frame_counts:
        has_boxes, has_times = f"{name}{BOXES_SUFFIX}" in files, f"{name}{TIMES_SUFFIX}" in files
        if has_boxes and (has_times or not times_required):
            present.append(name)
        elif times_required:
            out[name] = ResultsError(f"{name}: no {name}{BOXES_SUFFIX} and {name}{TIMES_SUFFIX} pair")
        else:
            out[name] = ResultsError(f"{name}: no {name}{BOXES_SUFFIX}")

    def read(name: str) -> tuple[np.ndarray, np.ndarray | None] | ResultsError:
        try:
            if times_required or f"{name}{TIMES_SUFFIX}" in files:
                boxes, times = read_result(tracker_dir, name, endpoint_url)
            else:
                boxes, times = read_boxes(result_paths(tracker_dir, name)[0], endpoint_url), None
        except ResultsError as exc:
            return exc
        if boxes.shape[0] != frame_counts[name]:
            return ResultsError(f"{name}: {boxes.shape[0]} lines for {frame_counts[name]} frames")
        return boxes, times

    remote = storage.is_s3(str(tracker_dir))
    out.update(zip(present, _map(read, present, remote), strict=True))
    return {name: out[name] for name in frame_counts}


def complete_sequences(
    tracker_dir: Path | str, frame_counts: Mapping[str, int], endpoint_url: str | None = None
) -> set[str]:
    """The sequences of ``frame_counts`` (name → number of frames) whose results in ``tracker_dir`` are complete:
    both files exist, parse, and hold exactly that many lines each.

    Works alike on local folders and S3: one listing of ``tracker_dir`` (no request per missing file), then reads of
    the pairs that exist.
    """
    found = _read_listed(tracker_dir, frame_counts, endpoint_url)
    return {name for name, got in found.items() if not isinstance(got, ResultsError)}


def has_complete_result(
    tracker_dir: Path | str, sequence: str, num_frames: int, endpoint_url: str | None = None
) -> bool:
    """Whether both files of ``sequence`` exist, parse, and hold exactly ``num_frames`` lines each."""
    return sequence in complete_sequences(tracker_dir, {sequence: num_frames}, endpoint_url)


def remove_result(tracker_dir: Path | str, sequence: str, endpoint_url: str | None = None) -> None:
    """Delete both result files of ``sequence`` (the box file, the commit marker, first); missing files are fine."""
    for uri in result_paths(tracker_dir, sequence):
        storage.delete_file(uri, endpoint_url)


# ---------------------------------------------------------------------------------------------------------------------
# meta.json


@dataclass(frozen=True)
class ResultMeta:
    """What produced a tracker's result folder (``meta.json``).

    Attributes:
        tracker: the tracker's name (the folder name).
        kind: ``dimp`` or ``static``.
        model: ``models:/NAME@ALIAS`` or checkpoint URI (None for ``static``).
        model_version: the registry version the alias pointed at (None for a checkpoint file).
        benchmark: ``synthetic``, ``lsotb`` or ``ptb``.
        root: the benchmark folder: absolute local path or ``s3://`` URI (ground truth for ``compare``).
        lsotb_subset: ``"119"`` / ``"120"`` for ``lsotb``, else None.
        protocol: the protocol of the evaluation (``compare``'s default).
        sequences: the sequences evaluated into this folder, in order.
        index: the tracker's position in the evaluation (order of the comparison table).
        settings: what the tracked boxes depend on besides the identity (:func:`tracking_settings`: the tracker's
            parameters and the weights file's stamp); None when unknown (a ``meta.json`` written before cmd-ray
            recorded it). Results are reused only under the same settings (:func:`prepare_tracker_dir`).
    """

    tracker: str
    kind: str
    model: str | None
    model_version: str | None
    benchmark: str
    root: str
    lsotb_subset: str | None
    protocol: str
    sequences: tuple[str, ...] = ()
    index: int = 0
    settings: dict[str, Any] | None = None

    IDENTITY = ("kind", "model", "model_version", "benchmark", "root", "lsotb_subset")

    def identity(self) -> dict[str, Any]:
        """The fields that must agree for existing result files to be reused."""
        return {k: getattr(self, k) for k in self.IDENTITY}

    def to_json(self) -> str:
        tree = asdict(self)
        tree["sequences"] = list(self.sequences)
        tree["version"] = META_VERSION
        return json.dumps(tree, indent=2) + "\n"


def tracking_settings(
    kind: str, tracker_params: Mapping[str, Any] | None, weights: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The settings a tracker's boxes depend on besides :meth:`ResultMeta.identity`, as stored in ``meta.json``.

    Args:
        kind: ``dimp`` or ``static``; the static baseline copies the first box whatever the parameters, so its
            settings are empty.
        tracker_params: the online tracker's parameters (a :class:`~cmd_ray.config.TrackerConfig` dump).
        weights: the stamp of the model's weights file (:func:`cmd_ray.models.loading.weights_stamp`; None for a
            registry model, whose version is part of the identity): a file rebuilt under the same URI changes it.

    The protocol is not part of it: it decides how boxes are scored, not which boxes are tracked.
    """
    if kind == "static":
        return {}
    # through JSON, so that a fresh dict compares equal to the one read back from meta.json (tuples become lists)
    return json.loads(json.dumps({"tracker": dict(tracker_params or {}), "weights": weights}))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> str:
    """``key: old → new`` for each dotted key whose value differs between two nested mappings (a log line)."""
    a, b = _flatten(old), _flatten(new)
    keys = [k for k in dict.fromkeys([*a, *b]) if a.get(k, "<unset>") != b.get(k, "<unset>")]
    parts = [f"{k}: {a.get(k, '<unset>')!r} → {b.get(k, '<unset>')!r}" for k in keys[:limit]]
    return "; ".join(parts) + (f"; … ({len(keys) - limit} more)" if len(keys) > limit else "")


def write_meta(tracker_dir: Path | str, meta: ResultMeta, endpoint_url: str | None = None) -> str:
    """Write ``tracker_dir/meta.json`` atomically; returns its URI."""
    uri = storage.join(location(tracker_dir), META_FILE)
    atomic_write_text(uri, meta.to_json(), endpoint_url)
    return uri


def _read_meta_text(tracker_dir: Path | str, endpoint_url: str | None) -> str | None:
    """The text of ``meta.json``; None when the folder has none."""
    uri = storage.join(location(tracker_dir), META_FILE)
    try:
        return storage.read_bytes(uri, endpoint_url).decode()
    except storage.StorageError as exc:
        if is_missing(exc):
            return None
        raise ResultsError(f"cannot read {uri}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ResultsError(f"cannot read {uri}: {exc}") from exc


def read_meta(tracker_dir: Path | str, endpoint_url: str | None = None) -> ResultMeta:
    """The ``meta.json`` of a tracker's result folder; errors name the file and the key."""
    text = _read_meta_text(tracker_dir, endpoint_url)
    path = storage.join(location(tracker_dir), META_FILE)
    if text is None:
        raise ResultsError(f"{tracker_dir} is not a tracker result folder: no {META_FILE}")
    try:
        tree = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"cannot read {path}: {exc}") from exc
    if not isinstance(tree, dict):
        raise ResultsError(f"{path} must hold a JSON object")
    tree.pop("version", None)
    required = ("tracker", "kind", "benchmark", "root", "protocol", "sequences")
    missing = [k for k in required if k not in tree]
    if missing:
        raise ResultsError(f"{path} lacks {missing}")
    if tree["protocol"] not in PROTOCOLS:
        raise ResultsError(f"{path}: protocol {tree['protocol']!r} is not one of {PROTOCOLS}")
    if not isinstance(tree["sequences"], list) or not all(isinstance(s, str) for s in tree["sequences"]):
        raise ResultsError(f"{path}: sequences must be a list of names")
    kwargs = {k: v for k, v in tree.items() if k in ResultMeta.__dataclass_fields__}  # newer keys are ignored
    kwargs.setdefault("model", None)
    kwargs.setdefault("model_version", None)
    kwargs.setdefault("lsotb_subset", None)
    kwargs["sequences"] = tuple(kwargs["sequences"])
    if not isinstance(kwargs.get("settings"), dict | None):
        raise ResultsError(f"{path}: settings must be a JSON object")
    return ResultMeta(**kwargs)


def _settings_change(old: ResultMeta, new: ResultMeta) -> str | None:
    """Why results made under ``old`` cannot stand for ``new``'s tracker settings; None when they can (or when
    ``new`` does not say what its settings are)."""
    if new.settings is None or old.settings == new.settings:
        return None
    if old.settings is None:
        return f"its {META_FILE} records no tracker settings (written before cmd-ray recorded them)"
    return f"the tracker settings changed ({describe_changes(old.settings, new.settings)})"


def foreign_result_files(
    tracker_dir: Path | str, sequences: Iterable[str], endpoint_url: str | None = None
) -> list[str]:
    """The result files of ``sequences`` (``<seq>.txt``, ``<seq>_time.txt``) in a folder cmd-ray did not write: one
    without ``meta.json`` (cmd-ray writes it before any result file). Empty for cmd-ray's folders and new ones."""
    if _read_meta_text(tracker_dir, endpoint_url) is not None:
        return []
    names = {f"{seq}{suffix}" for seq in sequences for suffix in (BOXES_SUFFIX, TIMES_SUFFIX)}
    return sorted(list_files(tracker_dir, endpoint_url) & names)


def check_not_foreign(tracker_dir: Path | str, sequences: Iterable[str], endpoint_url: str | None = None) -> None:
    """Refuse a result folder that holds another tool's results of ``sequences`` (:func:`foreign_result_files`):
    evaluating into it would overwrite them, or take a complete one for cmd-ray's. ``evaluation.overwrite`` is the
    permission to replace what cmd-ray wrote, not another tool's files: it does not lift this.

    Raises:
        ResultsError: naming the first such file, their count, and how to proceed.
    """
    found = foreign_result_files(tracker_dir, sequences, endpoint_url)
    if found:
        folder = location(tracker_dir)
        raise ResultsError(
            f"{storage.join(folder, found[0])} was not written by cmd-ray ({folder} has no {META_FILE}; "
            f"{len(found)} result file(s) of this evaluation's sequences there): evaluate neither overwrites nor "
            "reuses another tool's results, with or without evaluation.overwrite=true. Move those files away, or "
            "evaluate into a folder of its own (evaluation.results_dir, or another tracker name)"
        )


def prepare_tracker_dir(
    tracker_dir: Path | str, meta: ResultMeta, overwrite: bool = False, endpoint_url: str | None = None
) -> ResultMeta:
    """Write ``meta`` into the folder (created on local disk); refuse to mix results of another model or benchmark,
    refuse a folder of another tool's results (:func:`check_not_foreign`, whatever ``overwrite`` says), and drop
    results tracked under other settings.

    When ``meta.json`` already exists with the same identity (:meth:`ResultMeta.identity`), its sequences are kept
    and the new ones appended, so results of an earlier run stay part of the folder. A different identity raises
    :class:`ResultsError` unless ``overwrite`` (then the new meta replaces the old one).

    Same identity but other :attr:`ResultMeta.settings` (a ``tracker.*`` knob changed, the weights file was
    rewritten, or the old ``meta.json`` does not record them): the results are not reused. The folder's result
    files are removed (logged, saying why) *before* the new ``meta.json`` is written, so a run killed in between
    leaves the old ``meta.json`` and is detected again, and the sequences are tracked anew.

    Returns:
        the meta written.
    """
    check_not_foreign(tracker_dir, meta.sequences, endpoint_url)
    if not overwrite and _read_meta_text(tracker_dir, endpoint_url) is not None:
        old = read_meta(tracker_dir, endpoint_url)
        changed = {k: (v, meta.identity()[k]) for k, v in old.identity().items() if v != meta.identity()[k]}
        if changed:
            diff = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
            raise ResultsError(
                f"{tracker_dir} holds results of another run ({diff}); use another results_dir or tracker name, "
                "or set evaluation.overwrite=true to re-track"
            )
        why = _settings_change(old, meta)
        if why is not None:
            files = list_files(tracker_dir, endpoint_url)
            names = sorted(f for f in files if "/" not in f and f.endswith(BOXES_SUFFIX))  # <seq>.txt, <seq>_time.txt
            logger.warning(
                "%s: results not reused, re-tracking every sequence: %s; removing %d old result file(s)",
                tracker_dir,
                why,
                len(names),
            )
            # box files first: each one is the commit marker of its pair
            for f in sorted(names, key=lambda f: f.endswith(TIMES_SUFFIX)):
                storage.delete_file(storage.join(location(tracker_dir), f), endpoint_url)
        else:
            merged = list(old.sequences) + [s for s in meta.sequences if s not in old.sequences]
            meta = ResultMeta(**{**asdict(meta), "sequences": tuple(merged)})
    write_meta(tracker_dir, meta, endpoint_url)
    return meta


# ---------------------------------------------------------------------------------------------------------------------
# scoring


def _incomplete_message(tracker_dir: str, incomplete: list[str], times_required: bool = True) -> str:
    files = "<seq>.txt and <seq>_time.txt" if times_required else "<seq>.txt"
    return (
        f"{tracker_dir}: no complete result (one line per frame in {files}) for "
        f"{len(incomplete)} sequence(s): {incomplete[:10]}{' …' if len(incomplete) > 10 else ''}"
    )


@dataclass(frozen=True, eq=False)
class ScoredTrackers:
    """Scores of several trackers over one set of sequences, and the times their folders hold.

    Attributes:
        scores: label → :class:`~cmd_ray.evaluation.metrics.DatasetScores`, in table order.
        times: label → (sequence → ``[T]`` seconds per frame), for each scored sequence that has a time file.
    """

    scores: dict[str, DatasetScores]
    times: dict[str, dict[str, np.ndarray]]


def read_and_score(
    tracker_dirs: Mapping[str, Path | str],
    sequences: SequenceOf[Sequence],
    protocol: str = "lsotb",
    endpoint_url: str | None = None,
    plain: Iterable[str] = (),
) -> ScoredTrackers:
    """Read several trackers' result folders and score them on the same ``sequences`` as one comparison, by the
    protocol's rule for which sequences are averaged (:func:`cmd_ray.evaluation.metrics.aggregate_trackers`).

    Args:
        tracker_dirs: label → result folder (local path or ``s3://`` URI), in table order.
        sequences: the benchmark sequences (ground truth and attributes).
        protocol: ``lsotb`` (every tracker needs a complete result for every sequence) or ``pytracking`` (a sequence
            some tracker has no complete result for is excluded for all trackers, with a warning).
        plain: labels of plain result folders (no ``meta.json``): their time files are optional.

    Raises:
        ResultsError: naming the folder and the sequences whose result is missing or has the wrong frame count
            (``lsotb``), or a folder with no complete result at all (``pytracking``).
    """
    if not sequences:
        raise ResultsError(f"no sequences to score in {', '.join(map(str, tracker_dirs.values()))}")
    if protocol not in PROTOCOLS:
        raise ResultsError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    plain = set(plain)
    counts = {s.name: len(s) for s in sequences}
    curves: dict[str, dict[str, SequenceCurves]] = {}
    times: dict[str, dict[str, np.ndarray]] = {}
    for label, d in tracker_dirs.items():
        required = label not in plain
        found = _read_listed(d, counts, endpoint_url, times_required=required)
        incomplete = [name for name, got in found.items() if isinstance(got, ResultsError)]
        if incomplete and (protocol == "lsotb" or len(incomplete) == len(sequences)):
            raise ResultsError(_incomplete_message(str(d), incomplete, required))
        curves[label], times[label] = {}, {}
        for s in sequences:
            got = found[s.name]
            if isinstance(got, ResultsError):
                continue
            boxes, seconds = got
            curves[label][s.name] = sequence_curves(boxes, s.ground_truth, protocol)
            if seconds is not None:
                times[label][s.name] = seconds
    attributes = {s.name: s.attributes for s in sequences} if any(s.attributes for s in sequences) else None
    try:
        scores = aggregate_trackers(curves, [s.name for s in sequences], attributes)
    except ValueError as exc:
        raise ResultsError(str(exc)) from exc
    return ScoredTrackers(scores, times)


def score_trackers(
    tracker_dirs: Mapping[str, Path | str],
    sequences: SequenceOf[Sequence],
    protocol: str = "lsotb",
    endpoint_url: str | None = None,
) -> dict[str, DatasetScores]:
    """The scores of :func:`read_and_score` (label → :class:`~cmd_ray.evaluation.metrics.DatasetScores`)."""
    return read_and_score(tracker_dirs, sequences, protocol, endpoint_url).scores


def score_directory(
    tracker_dir: Path | str,
    sequences: SequenceOf[Sequence],
    protocol: str = "lsotb",
    endpoint_url: str | None = None,
) -> DatasetScores:
    """OPE scores of the results in ``tracker_dir`` on ``sequences`` (ground truth and attributes from them): one
    tracker alone (:func:`read_and_score`).

    Raises:
        ResultsError: naming the sequences whose result is missing or has the wrong frame count (``lsotb``).
    """
    return score_trackers({str(tracker_dir): tracker_dir}, sequences, protocol, endpoint_url)[str(tracker_dir)]


def _fps(times: Iterable[np.ndarray]) -> float:
    """Frames per second over the given ``[T]`` seconds-per-frame arrays (NaN when no time was spent)."""
    arrays = list(times)
    frames = sum(t.shape[0] for t in arrays)
    seconds = float(sum(float(t.sum()) for t in arrays))
    return frames / seconds if seconds > 0 else float("nan")


def frames_per_second(times: Mapping[str, np.ndarray], sequences: Iterable[str], kind: str = "dimp") -> float:
    """Frames per second over those of ``sequences`` that have times (sequence → ``[T]`` seconds per frame): total
    frames / total seconds, frame 1's initialisation included. NaN when no time was spent, and for the ``static``
    baseline, whose "speed" is that of copying a box."""
    if kind == "static":
        return float("nan")
    return _fps(times[n] for n in sequences if n in times)


def sequence_frame_rates(times: Mapping[str, np.ndarray], kind: str = "dimp") -> dict[str, float]:
    """Sequence → frames per second of that sequence (its frames / its seconds; NaN for ``static``)."""
    return {n: float("nan") if kind == "static" else _fps([t]) for n, t in times.items()}


def frame_rate(
    tracker_dir: Path | str, sequences: Iterable[str], kind: str = "dimp", endpoint_url: str | None = None
) -> float:
    """Frames per second of the time files of ``sequences`` in ``tracker_dir`` (see :func:`frames_per_second`)."""
    if kind == "static":
        return float("nan")
    names = list(sequences)
    remote = storage.is_s3(str(tracker_dir))
    all_times = _map(lambda name: read_times(result_paths(tracker_dir, name)[1], endpoint_url), names, remote)
    return _fps(all_times)


@dataclass(frozen=True, eq=False)
class TrackerResults:
    """One tracker's scored result folder (``directory``: absolute local path or ``s3://`` URI).

    Attributes:
        label: the tracker's name in the tables (the folder name for a plain folder).
        meta: its ``meta.json``; None for a plain result folder.
        benchmark: the benchmark it was scored on.
        fps: frames per second over the scored sequences that have a time file (NaN when none, or ``static``).
        sequence_fps: sequence → frames per second, for the scored sequences that have a time file.
    """

    label: str
    directory: str
    meta: ResultMeta | None
    scores: DatasetScores
    fps: float
    benchmark: str = ""
    sequence_fps: dict[str, float] = field(default_factory=dict)


def _box_files(files: Iterable[str]) -> list[str]:
    """Result box files (``<seq>.txt``, not ``<seq>_time.txt``) among relative paths, directly in the folder."""
    return [f for f in files if "/" not in f and f.endswith(BOXES_SUFFIX) and not f.endswith(TIMES_SUFFIX)]


def find_tracker_folders(paths: Iterable[Path | str], endpoint_url: str | None = None) -> list[tuple[str, bool]]:
    """Tracker result folders named by ``paths`` as ``(location, has meta.json)``, in order.

    - a folder with ``meta.json`` is one tracker;
    - a folder without it whose sub-folders have one (an ``evaluation.results_dir``) stands for those sub-folders,
      ordered as the evaluation listed the trackers;
    - otherwise a folder holding ``<seq>.txt`` files is one *plain* tracker folder (results of another toolkit);
    - otherwise a folder whose sub-folders hold ``<seq>.txt`` files stands for those plain folders, by name.

    Each folder is listed once.
    """
    found: list[tuple[str, bool]] = []
    for p in paths:
        loc = location(p)
        try:
            files = set(storage.iter_relative_files(loc, endpoint_url))
        except storage.MissingFolderError:
            raise ResultsError(f"results folder not found: {p}") from None
        if META_FILE in files:
            found.append((loc, True))
            continue
        children = sorted({f.split("/")[0] for f in files if f.count("/") == 1 and f.endswith(f"/{META_FILE}")})
        if children:
            dirs = [storage.join(loc, c) for c in children]
            dirs.sort(key=lambda c: (read_meta(c, endpoint_url).index, basename(c)))
            found += [(d, True) for d in dirs]
            continue
        if _box_files(files):
            found.append((loc, False))
            continue
        plain = sorted(
            {f.split("/")[0] for f in files if f.count("/") == 1 and _box_files([f.split("/")[1]])} - {"plots"}
        )
        if not plain:
            what = "nothing under this prefix" if storage.is_s3(loc) else f"{META_FILE} or <seq>.txt result files"
            raise ResultsError(f"{p} holds no tracker results ({what} in it or in a sub-folder)")
        found += [(storage.join(loc, c), False) for c in plain]
    return found


def find_tracker_dirs(paths: Iterable[Path | str], endpoint_url: str | None = None) -> list[str]:
    """The locations of :func:`find_tracker_folders` (cmd-ray result folders and plain ones)."""
    return [d for d, _ in find_tracker_folders(paths, endpoint_url)]


def _labels(dirs: list[str], names: list[str]) -> list[str]:
    labels = []
    for d, name in zip(dirs, names, strict=True):
        labels.append(name if names.count(name) == 1 else f"{name}@{basename(parent(d))}")
    if len(set(labels)) != len(labels):
        labels = list(dirs)
    if len(set(labels)) != len(labels):
        raise ResultsError(f"the same results folder is named twice: {labels}")
    return labels


def load_results(
    paths: Iterable[Path | str],
    protocol: str | None = None,
    endpoint_url: str | None = None,
    *,
    benchmark: str | None = None,
    root: str | None = None,
    lsotb_subset: str | None = None,
) -> list[TrackerResults]:
    """Score every tracker folder of ``paths`` (see :func:`find_tracker_folders`; local or ``s3://``) on one
    benchmark's ground truth, as one comparison.

    The benchmark, its root and the LSOTB-TIR subset come from the arguments, else from the first ``meta.json``;
    plain folders (no ``meta.json``) alone need ``benchmark`` and ``root``. Every ``meta.json`` must name that
    benchmark. The sequences compared are those the ``meta.json`` files list (all of them, in order; under ``lsotb``
    every folder must list the same), or, with plain folders only, every sequence of the benchmark. Under ``lsotb``
    every folder needs a complete result for every sequence; under ``pytracking`` a sequence that some folder has no
    result for is excluded for all (:func:`read_and_score`). ``protocol`` defaults to the first ``meta.json``'s, else
    ``lsotb``.
    """
    folders = find_tracker_folders(paths, endpoint_url)
    dirs = [d for d, _ in folders]
    metas = [read_meta(d, endpoint_url) if has_meta else None for d, has_meta in folders]
    with_meta = [(d, m) for d, m in zip(dirs, metas, strict=True) if m is not None]
    ref = with_meta[0][1] if with_meta else None
    bench = benchmark or (ref.benchmark if ref else None)
    gt_root = root or (ref.root if ref else None)
    if bench is None or gt_root is None:
        raise ResultsError(
            f"{dirs[0]} has no {META_FILE}: name the benchmark and its root for plain result folders "
            "(cmd-ray compare --benchmark NAME --root URI)"
        )
    protocol = protocol or (ref.protocol if ref else "lsotb")
    if protocol not in PROTOCOLS:
        raise ResultsError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    subset: Any = lsotb_subset or (ref.lsotb_subset if ref else None) or "119"
    names: list[str] | None = None
    if ref is not None:
        first_dir = with_meta[0][0]
        names = list(ref.sequences)
        for d, m in with_meta:
            same = set(m.sequences) == set(ref.sequences)
            if m.benchmark != bench or (protocol == "lsotb" and not same):
                only_first = sorted(set(ref.sequences) - set(m.sequences))
                only_here = sorted(set(m.sequences) - set(ref.sequences))
                raise ResultsError(
                    f"{d} ({m.benchmark}) and {first_dir} ({bench}) cover different sequences or benchmarks: "
                    f"only in {basename(first_dir)}: {only_first[:10]}, only in {basename(d)}: {only_here[:10]}"
                    + ("" if m.benchmark != bench else " (protocol pytracking compares the sequences in common)")
                )
            names += [n for n in m.sequences if n not in names]
    try:
        options = benchmark_options(bench, {"subset": subset})
        sequences = read_benchmark(bench, gt_root, names, endpoint_url=endpoint_url, options=options)
    except (OSError, ValueError) as exc:
        raise ResultsError(f"cannot read the ground truth of {bench} at {gt_root}: {exc}") from exc
    if not sequences:
        raise ResultsError(f"{gt_root} holds no {bench} sequences")
    labels = _labels(dirs, [m.tracker if m else basename(d) for d, m in zip(dirs, metas, strict=True)])
    plain = [label for label, m in zip(labels, metas, strict=True) if m is None]
    scored = read_and_score(dict(zip(labels, dirs, strict=True)), sequences, protocol, endpoint_url, plain)
    out = []
    for d, m, label in zip(dirs, metas, labels, strict=True):
        scores = scored.scores[label]
        kind = m.kind if m else "plain"
        times = {n: t for n, t in scored.times[label].items() if n not in scores.excluded}
        fps = frames_per_second(times, times, kind)
        out.append(TrackerResults(label, d, m, scores, fps, bench, sequence_frame_rates(times, kind)))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# per-sequence results

PER_SEQUENCE_CSV = "per_sequence.csv"
PER_SEQUENCE_JSON = "per_sequence.json"
PER_SEQUENCE_COLUMNS: tuple[str, ...] = (
    "tracker",
    "sequence",
    "frames",
    "success_auc",
    "precision_20px",
    "norm_precision",
    "op50",
    "op75",
    "fps",
    "status",
)
"""Columns of ``per_sequence.csv`` (and keys of each row of ``per_sequence.json``); see docs/formats.md."""


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def per_sequence_rows(
    scores: Mapping[str, DatasetScores], fps: Mapping[str, Mapping[str, float]] | None = None
) -> list[dict[str, Any]]:
    """One row per (tracker, sequence it has a result for), trackers in table order, sequences in scoring order.

    Keys: :data:`PER_SEQUENCE_COLUMNS`. Scores are fractions in [0, 1] (``norm_precision`` under the protocol: AUC
    for ``lsotb``, the value at 0.20 for ``pytracking``); ``fps`` is None without a time file (or for ``static``);
    ``status`` is ``averaged``, ``dropped`` (all-zero success under ``lsotb``) or ``excluded`` (some tracker lacks
    the sequence, ``pytracking``).
    """
    rows = []
    for tracker, r in scores.items():
        rates = (fps or {}).get(tracker, {})
        for name, c in r.per_sequence.items():
            status = "excluded" if name in r.excluded else "dropped" if name in r.dropped else "averaged"
            rows.append(
                {
                    "tracker": tracker,
                    "sequence": name,
                    "frames": c.num_frames,
                    "success_auc": c.success_score,
                    "precision_20px": c.precision_score,
                    "norm_precision": c.norm_precision_score,
                    "op50": c.op50,
                    "op75": c.op75,
                    "fps": _number(rates.get(name, float("nan"))),
                    "status": status,
                }
            )
    return rows


def format_per_sequence_csv(rows: SequenceOf[Mapping[str, Any]]) -> str:
    """Rows of :func:`per_sequence_rows` as CSV text (header :data:`PER_SEQUENCE_COLUMNS`; scores with 6 decimals,
    FPS with 3; an empty cell where a value is missing)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_SEQUENCE_COLUMNS)
    for row in rows:
        cells = []
        for key in PER_SEQUENCE_COLUMNS:
            value = row[key]
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                cells.append("")
            elif key == "fps":
                cells.append(f"{value:.3f}")
            elif isinstance(value, float):
                cells.append(f"{value:.6f}")
            else:
                cells.append(str(value))
        writer.writerow(cells)
    return buffer.getvalue()


def format_per_sequence_json(
    rows: SequenceOf[Mapping[str, Any]], scores: Mapping[str, DatasetScores], benchmark: str | None = None
) -> str:
    """Rows of :func:`per_sequence_rows` as a JSON document: ``protocol``, ``benchmark``, ``excluded`` (sequences
    excluded for every tracker) and ``rows`` (NaN written as null)."""
    protocol = next(iter(scores.values())).protocol if scores else None
    excluded = next((list(r.excluded) for r in scores.values() if r.excluded), [])
    clean = [{k: _number(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    tree = {"protocol": protocol, "benchmark": benchmark, "excluded": excluded, "rows": clean}
    return json.dumps(tree, indent=1, allow_nan=False) + "\n"


def write_per_sequence(
    out_dir: Path | str,
    scores: Mapping[str, DatasetScores],
    fps: Mapping[str, Mapping[str, float]] | None = None,
    benchmark: str | None = None,
    endpoint_url: str | None = None,
) -> list[str]:
    """Write :data:`PER_SEQUENCE_CSV` and :data:`PER_SEQUENCE_JSON` into ``out_dir`` (local folder or ``s3://``
    prefix), each atomically; returns their locations."""
    rows = per_sequence_rows(scores, fps)
    d = location(out_dir)
    csv_uri, json_uri = storage.join(d, PER_SEQUENCE_CSV), storage.join(d, PER_SEQUENCE_JSON)
    atomic_write_text(csv_uri, format_per_sequence_csv(rows), endpoint_url)
    atomic_write_text(json_uri, format_per_sequence_json(rows, scores, benchmark), endpoint_url)
    return [csv_uri, json_uri]
