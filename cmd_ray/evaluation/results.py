"""Result files of an OPE evaluation, the metadata of a result folder, scoring a folder and comparison tables.

Layout of a results folder (local disk)::

    results_dir/<tracker>/meta.json              what produced the folder: tracker, model, benchmark, root, protocol
    results_dir/<tracker>/<sequence>.txt         one line per frame: x,y,w,h (pixels, comma separated)
    results_dir/<tracker>/<sequence>_time.txt    one line per frame: seconds the tracker spent on that frame
    results_dir/plots/*.png, results_dir/ope_tables.txt

Every file is written to a temporary file in the same folder and renamed over its name, so a killed run leaves
either the complete file or none; a rerun then tracks only the sequences without a complete result (both files, one
line per frame). The time file is written before the box file, so a box file never exists without its times.

``meta.json`` lets ``cmd-ray compare`` score a folder with nothing but the folder: it names the benchmark and its
root (for the ground truth), the sequences evaluated and the protocol.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as SequenceOf
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmd_ray.data.sequences import SequenceError, parse_boxes
from cmd_ray.evaluation.benchmarks import Sequence, read_benchmark
from cmd_ray.evaluation.metrics import PROTOCOLS, DatasetScores, Scores, aggregate, sequence_curves

META_FILE = "meta.json"
BOXES_SUFFIX = ".txt"
TIMES_SUFFIX = "_time.txt"
META_VERSION = 1


class ResultsError(ValueError):
    """A result file or folder is missing, malformed or inconsistent; the message names it."""


# ---------------------------------------------------------------------------------------------------------------------
# result files


def result_paths(tracker_dir: Path | str, sequence: str) -> tuple[Path, Path]:
    """``(boxes file, times file)`` of ``sequence`` in ``tracker_dir``."""
    d = Path(tracker_dir)
    return d / f"{sequence}{BOXES_SUFFIX}", d / f"{sequence}{TIMES_SUFFIX}"


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename.

    A reader (or a rerun) sees the old file or the complete new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def format_boxes(boxes: np.ndarray) -> str:
    """``[N, 4]`` ``x, y, w, h`` boxes as text: one ``x,y,w,h`` line per frame, 4 decimals."""
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


def write_result(tracker_dir: Path | str, sequence: str, boxes: np.ndarray, times: np.ndarray) -> Path:
    """Write one sequence's result atomically: ``<sequence>_time.txt`` first, then ``<sequence>.txt``.

    Args:
        boxes: ``[N, 4]`` float ``x, y, w, h`` pixels, one row per frame (frame 1 first).
        times: ``[N]`` seconds the tracker spent per frame.

    Returns:
        the path of the boxes file.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or times.shape != (boxes.shape[0],):
        raise ValueError(f"{sequence}: boxes must be [N, 4] and times [N], got {boxes.shape} and {times.shape}")
    if boxes.shape[0] == 0:
        raise ValueError(f"{sequence}: no frames to write")
    boxes_path, times_path = result_paths(tracker_dir, sequence)
    atomic_write_text(times_path, format_times(times))
    atomic_write_text(boxes_path, format_boxes(boxes))
    return boxes_path


def _text(path: Path) -> str:
    if not path.is_file():
        raise ResultsError(f"result file not found: {path}")
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"cannot read result file {path}: {exc}") from exc


def _lines(path: Path) -> list[tuple[int, str]]:
    return [(i, line) for i, line in enumerate(_text(path).splitlines(), start=1) if line.strip()]


def read_boxes(path: Path | str) -> np.ndarray:
    """``[N, 4]`` float64 boxes of a result file (``x,y,w,h`` lines; commas, tabs or spaces; ``nan`` allowed)."""
    path = Path(path)
    try:
        boxes = parse_boxes(_text(path), str(path))
    except SequenceError as exc:
        raise ResultsError(str(exc)) from None
    if not len(boxes):
        raise ResultsError(f"result file {path} holds no boxes")
    return boxes


def read_times(path: Path | str) -> np.ndarray:
    """``[N]`` float64 seconds per frame of a ``*_time.txt`` file (finite, ≥ 0)."""
    path = Path(path)
    values = []
    for lineno, line in _lines(path):
        try:
            t = float(line.strip())
        except ValueError:
            raise ResultsError(f"{path}:{lineno}: expected seconds per frame, got {line!r}") from None
        if not (math.isfinite(t) and t >= 0):
            raise ResultsError(f"{path}:{lineno}: seconds per frame must be finite and >= 0, got {t}")
        values.append(t)
    if not values:
        raise ResultsError(f"time file {path} holds no values")
    return np.asarray(values, dtype=np.float64)


def read_result(tracker_dir: Path | str, sequence: str) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes [N, 4], times [N])`` of one sequence; their frame counts must agree."""
    boxes_path, times_path = result_paths(tracker_dir, sequence)
    boxes, times = read_boxes(boxes_path), read_times(times_path)
    if boxes.shape[0] != times.shape[0]:
        raise ResultsError(f"{boxes_path} has {boxes.shape[0]} boxes but {times_path} has {times.shape[0]} times")
    return boxes, times


def has_complete_result(tracker_dir: Path | str, sequence: str, num_frames: int) -> bool:
    """Whether both files of ``sequence`` exist, parse, and hold exactly ``num_frames`` lines each."""
    try:
        boxes, _ = read_result(tracker_dir, sequence)
    except ResultsError:
        return False
    return boxes.shape[0] == num_frames


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
        root: absolute path of the benchmark folder (ground truth for ``compare``).
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


def write_meta(tracker_dir: Path | str, meta: ResultMeta) -> Path:
    path = Path(tracker_dir) / META_FILE
    atomic_write_text(path, meta.to_json())
    return path


def read_meta(tracker_dir: Path | str) -> ResultMeta:
    """The ``meta.json`` of a tracker's result folder; errors name the file and the key."""
    path = Path(tracker_dir) / META_FILE
    if not path.is_file():
        raise ResultsError(f"{tracker_dir} is not a tracker result folder: no {META_FILE}")
    try:
        tree = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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


def prepare_tracker_dir(tracker_dir: Path | str, meta: ResultMeta, overwrite: bool = False) -> ResultMeta:
    """Create the folder and write ``meta``; refuse to mix results of another model or benchmark.

    When ``meta.json`` already exists with the same identity (:meth:`ResultMeta.identity`), its sequences are kept
    and the new ones appended, so results of an earlier run stay part of the folder. A different identity raises
    :class:`ResultsError` unless ``overwrite`` (then the new meta replaces the old one).

    Returns:
        the meta written.
    """
    tracker_dir = Path(tracker_dir)
    if (tracker_dir / META_FILE).is_file() and not overwrite:
        old = read_meta(tracker_dir)
        changed = {k: (v, meta.identity()[k]) for k, v in old.identity().items() if v != meta.identity()[k]}
        if changed:
            diff = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
            raise ResultsError(
                f"{tracker_dir} holds results of another run ({diff}); use another results_dir or tracker name, "
                "or set evaluation.overwrite=true to re-track"
            )
        merged = list(old.sequences) + [s for s in meta.sequences if s not in old.sequences]
        meta = ResultMeta(**{**asdict(meta), "sequences": tuple(merged)})
    tracker_dir.mkdir(parents=True, exist_ok=True)
    write_meta(tracker_dir, meta)
    return meta


# ---------------------------------------------------------------------------------------------------------------------
# scoring


def score_directory(tracker_dir: Path | str, sequences: SequenceOf[Sequence], protocol: str = "lsotb") -> DatasetScores:
    """OPE scores of the results in ``tracker_dir`` on ``sequences`` (ground truth and attributes from them).

    Raises:
        ResultsError: naming the sequences whose result is missing or has the wrong frame count.
    """
    tracker_dir = Path(tracker_dir)
    if not sequences:
        raise ResultsError(f"no sequences to score in {tracker_dir}")
    incomplete = [s.name for s in sequences if not has_complete_result(tracker_dir, s.name, len(s))]
    if incomplete:
        raise ResultsError(
            f"{tracker_dir}: no complete result (one line per frame in <seq>.txt and <seq>_time.txt) for "
            f"{len(incomplete)} sequence(s): {incomplete[:10]}{' …' if len(incomplete) > 10 else ''}"
        )
    curves = {
        s.name: sequence_curves(read_boxes(result_paths(tracker_dir, s.name)[0]), s.ground_truth, protocol)
        for s in sequences
    }
    attributes = {s.name: s.attributes for s in sequences} if any(s.attributes for s in sequences) else None
    return aggregate(curves, attributes)


def frame_rate(tracker_dir: Path | str, sequences: Iterable[str], kind: str = "dimp") -> float:
    """Frames per second over ``sequences``: total frames / total tracker seconds, frame 1's initialisation included
    (NaN when no time was spent, and for the ``static`` baseline, whose "speed" is that of copying a box)."""
    if kind == "static":
        return float("nan")
    frames, seconds = 0, 0.0
    for name in sequences:
        times = read_times(result_paths(tracker_dir, name)[1])
        frames += times.shape[0]
        seconds += float(times.sum())
    return frames / seconds if seconds > 0 else float("nan")


@dataclass(frozen=True, eq=False)
class TrackerResults:
    """One tracker's scored result folder."""

    label: str
    directory: Path
    meta: ResultMeta
    scores: DatasetScores
    fps: float


def find_tracker_dirs(paths: Iterable[Path | str]) -> list[Path]:
    """Tracker result folders named by ``paths``, in order.

    A folder with ``meta.json`` is one tracker; a folder without it (an ``evaluation.results_dir``) stands for its
    sub-folders that have one, ordered as the evaluation listed the trackers.
    """
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.is_dir():
            raise ResultsError(f"results folder not found: {p}")
        if (p / META_FILE).is_file():
            found.append(p)
            continue
        children = [c for c in sorted(p.iterdir()) if (c / META_FILE).is_file()]
        if not children:
            raise ResultsError(f"{p} holds no tracker results ({META_FILE} in it or in a sub-folder)")
        found += sorted(children, key=lambda c: (read_meta(c).index, c.name))
    return found


def _labels(dirs: list[Path], metas: list[ResultMeta]) -> list[str]:
    names = [m.tracker for m in metas]
    labels = []
    for d, name in zip(dirs, names, strict=True):
        labels.append(name if names.count(name) == 1 else f"{name}@{d.parent.name}")
    if len(set(labels)) != len(labels):
        labels = [str(d) for d in dirs]
    if len(set(labels)) != len(labels):
        raise ResultsError(f"the same results folder is named twice: {labels}")
    return labels


def load_results(paths: Iterable[Path | str], protocol: str | None = None) -> list[TrackerResults]:
    """Score every tracker folder of ``paths`` (see :func:`find_tracker_dirs`) on its benchmark's ground truth.

    All folders must hold the same benchmark and sequences (the comparison is over one set). ``protocol`` defaults
    to the first folder's.
    """
    dirs = find_tracker_dirs(paths)
    metas = [read_meta(d) for d in dirs]
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
                f"only in {dirs[0].name}: {only_first[:10]}, only in {d.name}: {only_here[:10]}"
            )
    cache: dict[tuple[Any, ...], list[Sequence]] = {}
    out = []
    for d, m, label in zip(dirs, metas, _labels(dirs, metas), strict=True):
        key = (m.benchmark, m.root, m.lsotb_subset, m.sequences)
        if key not in cache:
            try:
                cache[key] = read_benchmark(m.benchmark, m.root, list(m.sequences), m.lsotb_subset or "119")
            except (OSError, ValueError) as exc:
                raise ResultsError(
                    f"{d / META_FILE}: cannot read the ground truth of {m.benchmark} at {m.root}: {exc}"
                ) from exc
        sequences = cache[key]
        scores = score_directory(d, sequences, protocol)
        out.append(TrackerResults(label, d, m, scores, frame_rate(d, [s.name for s in sequences], m.kind)))
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
