"""Result files of an OPE evaluation, the metadata of a result folder, scoring a folder and comparison tables.

Layout of a results folder (a local folder or an ``s3://bucket/prefix``; every byte goes through
:mod:`cmd_ray.storage`)::

    results_dir/<tracker>/meta.json              what produced the folder: tracker, model, benchmark, root, protocol
    results_dir/<tracker>/<sequence>.txt         one line per frame: x,y,w,h (pixels, comma separated)
    results_dir/<tracker>/<sequence>_time.txt    one line per frame: seconds the tracker spent on that frame
    results_dir/plots/*.png, results_dir/ope_tables.txt

Every file is written atomically: on local disk to a temporary file in the same folder renamed over its name; on S3
in one upload (an object becomes visible only once its upload is complete, whole). A sequence's result is complete
when both files exist and hold one line per frame each. :func:`write_result` makes the box file the commit marker of
the pair: it removes an old box file first, then writes the time file, then the box file, so a run killed at any
point leaves either a complete pair of this run or no box file — never a box file with the times of another run.

Completeness is checked the same way on both stores (:func:`complete_sequences`): one listing of the tracker's
folder (:func:`cmd_ray.storage.iter_relative_files`: one request per 1000 keys on S3, no HEAD per file), then the
line counts of the pairs that exist.

``meta.json`` lets ``cmd-ray compare`` score a folder with nothing but the folder: it names the benchmark and its
root (for the ground truth), the sequences evaluated and the protocol.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as SequenceOf
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from cmd_ray import storage
from cmd_ray.data.sequences import SequenceError, parse_boxes
from cmd_ray.evaluation.benchmarks import Sequence, read_benchmark
from cmd_ray.evaluation.metrics import PROTOCOLS, DatasetScores, Scores, aggregate, sequence_curves

META_FILE = "meta.json"
BOXES_SUFFIX = ".txt"
TIMES_SUFFIX = "_time.txt"
META_VERSION = 1
S3_READ_THREADS = 16
"""Concurrent reads of result files on S3 (small objects: latency-bound, not bandwidth-bound)."""

_T = TypeVar("_T")


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
    tracker_dir: Path | str, frame_counts: Mapping[str, int], endpoint_url: str | None
) -> dict[str, tuple[np.ndarray, np.ndarray] | ResultsError]:
    """For each sequence of ``frame_counts``: its ``(boxes, times)`` when complete, else the error saying why.

    One listing of ``tracker_dir``; only the pairs it shows are read (concurrently on S3).
    """
    files = list_files(tracker_dir, endpoint_url)
    out: dict[str, tuple[np.ndarray, np.ndarray] | ResultsError] = {}
    present = []
    for name in frame_counts:
        if f"{name}{BOXES_SUFFIX}" in files and f"{name}{TIMES_SUFFIX}" in files:
            present.append(name)
        else:
            out[name] = ResultsError(f"{name}: no {name}{BOXES_SUFFIX} and {name}{TIMES_SUFFIX} pair")

    def read(name: str) -> tuple[np.ndarray, np.ndarray] | ResultsError:
        try:
            boxes, times = read_result(tracker_dir, name, endpoint_url)
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

    IDENTITY = ("kind", "model", "model_version", "benchmark", "root", "lsotb_subset")

    def identity(self) -> dict[str, Any]:
        """The fields that must agree for existing result files to be reused."""
        return {k: getattr(self, k) for k in self.IDENTITY}

    def to_json(self) -> str:
        tree = asdict(self)
        tree["sequences"] = list(self.sequences)
        tree["version"] = META_VERSION
        return json.dumps(tree, indent=2) + "\n"


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
    return ResultMeta(**kwargs)


def prepare_tracker_dir(
    tracker_dir: Path | str, meta: ResultMeta, overwrite: bool = False, endpoint_url: str | None = None
) -> ResultMeta:
    """Write ``meta`` into the folder (created on local disk); refuse to mix results of another model or benchmark.

    When ``meta.json`` already exists with the same identity (:meth:`ResultMeta.identity`), its sequences are kept
    and the new ones appended, so results of an earlier run stay part of the folder. A different identity raises
    :class:`ResultsError` unless ``overwrite`` (then the new meta replaces the old one).

    Returns:
        the meta written.
    """
    if not overwrite and _read_meta_text(tracker_dir, endpoint_url) is not None:
        old = read_meta(tracker_dir, endpoint_url)
        changed = {k: (v, meta.identity()[k]) for k, v in old.identity().items() if v != meta.identity()[k]}
        if changed:
            diff = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
            raise ResultsError(
                f"{tracker_dir} holds results of another run ({diff}); use another results_dir or tracker name, "
                "or set evaluation.overwrite=true to re-track"
            )
        merged = list(old.sequences) + [s for s in meta.sequences if s not in old.sequences]
        meta = ResultMeta(**{**asdict(meta), "sequences": tuple(merged)})
    write_meta(tracker_dir, meta, endpoint_url)
    return meta


# ---------------------------------------------------------------------------------------------------------------------
# scoring


def score_directory(
    tracker_dir: Path | str,
    sequences: SequenceOf[Sequence],
    protocol: str = "lsotb",
    endpoint_url: str | None = None,
) -> DatasetScores:
    """OPE scores of the results in ``tracker_dir`` on ``sequences`` (ground truth and attributes from them).

    Raises:
        ResultsError: naming the sequences whose result is missing or has the wrong frame count.
    """
    if not sequences:
        raise ResultsError(f"no sequences to score in {tracker_dir}")
    found = _read_listed(tracker_dir, {s.name: len(s) for s in sequences}, endpoint_url)
    incomplete = [name for name, got in found.items() if isinstance(got, ResultsError)]
    if incomplete:
        raise ResultsError(
            f"{tracker_dir}: no complete result (one line per frame in <seq>.txt and <seq>_time.txt) for "
            f"{len(incomplete)} sequence(s): {incomplete[:10]}{' …' if len(incomplete) > 10 else ''}"
        )
    curves = {}
    for s in sequences:
        boxes, _ = found[s.name]  # type: ignore[misc]  # complete: a (boxes, times) pair
        curves[s.name] = sequence_curves(boxes, s.ground_truth, protocol)
    attributes = {s.name: s.attributes for s in sequences} if any(s.attributes for s in sequences) else None
    return aggregate(curves, attributes)


def frame_rate(
    tracker_dir: Path | str, sequences: Iterable[str], kind: str = "dimp", endpoint_url: str | None = None
) -> float:
    """Frames per second over ``sequences``: total frames / total tracker seconds, frame 1's initialisation included
    (NaN when no time was spent, and for the ``static`` baseline, whose "speed" is that of copying a box)."""
    if kind == "static":
        return float("nan")
    names = list(sequences)
    remote = storage.is_s3(str(tracker_dir))
    all_times = _map(lambda name: read_times(result_paths(tracker_dir, name)[1], endpoint_url), names, remote)
    frames = sum(t.shape[0] for t in all_times)
    seconds = float(sum(float(t.sum()) for t in all_times))
    return frames / seconds if seconds > 0 else float("nan")


@dataclass(frozen=True, eq=False)
class TrackerResults:
    """One tracker's scored result folder (``directory``: absolute local path or ``s3://`` URI)."""

    label: str
    directory: str
    meta: ResultMeta
    scores: DatasetScores
    fps: float


def find_tracker_dirs(paths: Iterable[Path | str], endpoint_url: str | None = None) -> list[str]:
    """Tracker result folders (local paths or ``s3://`` URIs) named by ``paths``, in order.

    A folder with ``meta.json`` is one tracker; a folder without it (an ``evaluation.results_dir``) stands for its
    sub-folders that have one, ordered as the evaluation listed the trackers. Each folder is listed once.
    """
    found: list[str] = []
    for p in paths:
        loc = location(p)
        try:
            files = set(storage.iter_relative_files(loc, endpoint_url))
        except storage.MissingFolderError:
            raise ResultsError(f"results folder not found: {p}") from None
        if META_FILE in files:
            found.append(loc)
            continue
        children = sorted({f.split("/")[0] for f in files if f.count("/") == 1 and f.endswith(f"/{META_FILE}")})
        if not children:
            what = "nothing under this prefix" if storage.is_s3(loc) else f"{META_FILE} in it or in a sub-folder"
            raise ResultsError(f"{p} holds no tracker results ({what})")
        dirs = [storage.join(loc, c) for c in children]
        found += sorted(dirs, key=lambda c: (read_meta(c, endpoint_url).index, basename(c)))
    return found


def _labels(dirs: list[str], metas: list[ResultMeta]) -> list[str]:
    names = [m.tracker for m in metas]
    labels = []
    for d, name in zip(dirs, names, strict=True):
        labels.append(name if names.count(name) == 1 else f"{name}@{basename(parent(d))}")
    if len(set(labels)) != len(labels):
        labels = list(dirs)
    if len(set(labels)) != len(labels):
        raise ResultsError(f"the same results folder is named twice: {labels}")
    return labels


def load_results(
    paths: Iterable[Path | str], protocol: str | None = None, endpoint_url: str | None = None
) -> list[TrackerResults]:
    """Score every tracker folder of ``paths`` (see :func:`find_tracker_dirs`; local or ``s3://``) on its benchmark's
    ground truth.

    All folders must hold the same benchmark and sequences (the comparison is over one set). ``protocol`` defaults
    to the first folder's.
    """
    dirs = find_tracker_dirs(paths, endpoint_url)
    metas = [read_meta(d, endpoint_url) for d in dirs]
    first = metas[0]
    protocol = protocol or first.protocol
    if protocol not in PROTOCOLS:
        raise ResultsError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    for d, m in zip(dirs[1:], metas[1:], strict=True):
        if m.benchmark != first.benchmark or set(m.sequences) != set(first.sequences):
            only_first = sorted(set(first.sequences) - set(m.sequences))
            only_here = sorted(set(m.sequences) - set(first.sequences))
            raise ResultsError(
                f"{d} ({m.benchmark}) and {dirs[0]} ({first.benchmark}) cover different sequences or benchmarks: "
                f"only in {basename(dirs[0])}: {only_first[:10]}, only in {basename(d)}: {only_here[:10]}"
            )
    cache: dict[tuple[Any, ...], list[Sequence]] = {}
    out = []
    for d, m, label in zip(dirs, metas, _labels(dirs, metas), strict=True):
        key = (m.benchmark, m.root, m.lsotb_subset, m.sequences)
        if key not in cache:
            try:
                subset: Any = m.lsotb_subset or "119"
                cache[key] = read_benchmark(m.benchmark, m.root, list(m.sequences), subset, endpoint_url)
            except (OSError, ValueError) as exc:
                raise ResultsError(
                    f"{storage.join(d, META_FILE)}: cannot read the ground truth of {m.benchmark} at {m.root}: {exc}"
                ) from exc
        sequences = cache[key]
        scores = score_directory(d, sequences, protocol, endpoint_url)
        fps = frame_rate(d, [s.name for s in sequences], m.kind, endpoint_url)
        out.append(TrackerResults(label, d, m, scores, fps))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# tables


def norm_precision_label(protocol: str) -> str:
    return "NormPrec(AUC)" if protocol == "lsotb" else "NormPrec@0.20"


def _one_protocol(results: Mapping[str, DatasetScores]) -> str:
    if not results:
        raise ValueError("a table needs at least one tracker")
    protocols = {r.protocol for r in results.values()}
    if len(protocols) != 1:
        raise ValueError(f"results under different protocols cannot share one table: {sorted(protocols)}")
    return protocols.pop()


def _cell(value: float, reference: float | None) -> str:
    if reference is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({value - reference:+.3f})"


def _render(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=True)]

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return "\n".join([title, fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def format_comparison(
    results: Mapping[str, DatasetScores],
    *,
    dataset: str | None = None,
    show_norm_precision: bool = True,
    fps: Mapping[str, float] | None = None,
) -> str:
    """Table-1 style: one row per tracker, Success / Precision / Norm. Precision with deltas to the first row.

    ``results`` is ordered: the first tracker is the reference. ``fps`` adds a frames-per-second column.
    """
    protocol = _one_protocol(results)
    header = ["Tracker", "Success", "Prec@20px"]
    if show_norm_precision:
        header.append(norm_precision_label(protocol))
    if fps is not None:
        header.append("FPS")
    header.append("Seqs")
    reference = next(iter(results.values()))
    rows = []
    for i, (name, r) in enumerate(results.items()):
        ref = None if i == 0 else reference
        cells = [
            name,
            _cell(r.success, None if ref is None else ref.success),
            _cell(r.precision, None if ref is None else ref.precision),
        ]
        if show_norm_precision:
            cells.append(_cell(r.norm_precision, None if ref is None else ref.norm_precision))
        if fps is not None:
            rate = fps.get(name, float("nan"))
            cells.append(f"{rate:.1f}" if math.isfinite(rate) else "–")
        cells.append(f"{r.num_sequences_averaged}" + (f" ({len(r.dropped)} dropped)" if r.dropped else ""))
        rows.append(cells)
    first = next(iter(results))
    title = f"OPE — protocol: {protocol}" + (f" — dataset: {dataset}" if dataset else "")
    if len(results) > 1:
        title += f" — deltas to {first}"
    return _render(title, header, rows)


def format_attribute_table(
    results: Mapping[str, DatasetScores],
    metric: Literal["success", "precision", "norm_precision"] = "success",
) -> str:
    """Per-attribute scores: one row per attribute, one column per tracker, deltas to the first tracker.

    Attributes no evaluated sequence carries are left out. ``Seqs`` counts the sequences averaged for the first
    tracker.
    """
    protocol = _one_protocol(results)
    names = list(results)
    attrs: list[str] = []
    for r in results.values():
        attrs += [a for a in r.per_attribute if a not in attrs]
    label = {"success": "Success", "precision": "Prec@20px", "norm_precision": norm_precision_label(protocol)}[metric]
    title = f"Per attribute — {label} — protocol: {protocol}" + (f" — deltas to {names[0]}" if len(names) > 1 else "")
    rows = []
    for a in attrs:
        per: list[Scores | None] = [r.per_attribute.get(a) for r in results.values()]
        if all(s is None or s.num_sequences_averaged == 0 for s in per):
            continue
        ref = per[0]
        cells = [a, str(ref.num_sequences_averaged if ref else 0)]
        for i, s in enumerate(per):
            if s is None or s.num_sequences_averaged == 0:
                cells.append("-")
                continue
            base = None if i == 0 or ref is None or ref.num_sequences_averaged == 0 else getattr(ref, metric)
            cells.append(_cell(getattr(s, metric), base))
        rows.append(cells)
    if not rows:
        return f"{title}\n(no attributes: the sequences carry none)"
    return _render(title, ["Attribute", "Seqs", *names], rows)
