"""Readers for the tracking benchmarks, on local disk or S3 (layouts as ``docs/formats.md`` describes them).

- LSOTB-TIR evaluation set: ``<root>/<seq>/img/0001.jpg`` (4 digits); ground truth ``<root>/anno/<seq>.txt`` or
  ``<root>/<seq>/groundtruth_rect.txt``; attributes ``<root>/anno/att/<seq>.txt`` (16 flags, :data:`LSOTB_ATTRIBUTES`).
  ``subset="120"`` is the full set, ``subset="119"`` the paper's (without ``cat_D_001``).
- PTB-TIR: ``<root>/tirsequences/<seq>/img/00000001.jpg`` (8 digits); ground truth ``<root>/tiranno/<seq>.txt``;
  attributes ``<root>/tiranno/att/<seq>.txt`` (10 flags, :data:`PTB_ATTRIBUTES`).
- cmd-ray synthetic TIR sequences: ``<root>/<seq>/img/NNNN.jpg``, ``<root>/<seq>/groundtruth_rect.txt``, optional
  ``<root>/<seq>/attributes.txt`` with ``name,0|1`` lines.

``root`` is a local folder, a ``file://`` URI or an ``s3://bucket/prefix``. Every reader lists the root once through
:func:`cmd_ray.data.sequence_folders.list_root` (one ``ListObjectsV2`` request per 1000 keys on S3; only the named
sequences' folders when ``sequences`` is given), reads each sequence with
:func:`cmd_ray.data.sequence_folders.read_sequence_folder` (frames numbered 1..T, the benchmark's digit width) and
reads the small text files through :mod:`cmd_ray.storage`; frames
are not read here: :attr:`Sequence.frames` holds their URIs (absolute local paths or ``s3://`` URIs), which any node
can read.

Every benchmark is registered in :data:`BENCHMARK_READERS` (name → reader function and its options model), and
:func:`read_benchmark` dispatches through it: adding a benchmark is one reader function plus one entry there.

Ground-truth lines are ``x, y, w, h`` separated by commas, tabs or spaces. A malformed line, missing ground truth or a
frame/ground-truth count mismatch raises an error naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from cmd_ray import storage
from cmd_ray.data.sequence_folders import (
    FRAME_EXTENSIONS,
    GROUND_TRUTH_FILE,
    FolderListing,
    list_root,
    numbered_frames,
    parse_boxes,
    read_sequence_folder,
)

LSOTB_ATTRIBUTES: tuple[str, ...] = (
    "deformation",
    "occlusion",
    "distractor",
    "background_clutter",
    "out_of_view",
    "scale_variation",
    "fast_motion",
    "motion_blur",
    "thermal_crossover",
    "intensity_variation",
    "low_resolution",
    "aspect_ratio_variation",
    "vehicle_mounted",
    "drone_mounted",
    "surveillance",
    "hand_held",
)
"""The 16 LSOTB-TIR attribute flags, in the order of ``anno/att/<seq>.txt``."""

PTB_ATTRIBUTES: tuple[str, ...] = (
    "deformation",
    "occlusion",
    "scale_variation",
    "background_clutter",
    "low_resolution",
    "fast_motion",
    "motion_blur",
    "out_of_view",
    "intensity_variation",
    "thermal_crossover",
)
"""The 10 PTB-TIR attribute flags, in the order of ``tiranno/att/<seq>.txt`` (its toolkit's order)."""

LSOTB_EXCLUDED_BY_PAPER = "cat_D_001"
"""The one LSOTB-TIR evaluation sequence the paper left out (120 → 119)."""

IMAGE_SUFFIXES = FRAME_EXTENSIONS
_SEP = re.compile(r"[,\t ]+")


@dataclass(frozen=True, eq=False)
class Sequence:
    """One benchmark sequence.

    Attributes:
        name: the sequence's folder name.
        frames: frame URIs in order (absolute local paths or ``s3://`` URIs; frame ``k`` is ``frames[k-1]``).
        ground_truth: ``[T, 4]`` float64 ``x, y, w, h`` pixels (NaN kept as NaN).
        attributes: attribute name → flag (empty when the benchmark gives none for this sequence).
    """

    name: str
    frames: tuple[str, ...]
    ground_truth: np.ndarray
    attributes: dict[str, bool] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


def _split(line: str) -> list[str]:
    return _SEP.split(line.strip())


def _read_text(uri: str, endpoint_url: str | None) -> str:
    """The text of ``uri``; a local file that does not exist raises ``FileNotFoundError`` naming it."""
    if not storage.is_s3(uri) and not Path(storage.resolve(uri)[1]).is_file():
        raise FileNotFoundError(f"file not found: {uri}")
    return storage.read_bytes(uri, endpoint_url).decode()


def parse_ground_truth(path: Path | str, endpoint_url: str | None = None) -> np.ndarray:
    """``[T, 4]`` float64 ``x, y, w, h`` pixel boxes from a text file (local path or ``s3://`` URI) of ``x,y,w,h``
    lines (commas, tabs or spaces; blank lines skipped).

    Raises ``FileNotFoundError`` (a local file), ``StorageError`` (an unreadable URI), or ``ValueError`` naming
    ``path:line`` for a malformed line or no boxes at all.
    """
    uri = str(path)
    try:
        text = _read_text(uri, endpoint_url)
    except FileNotFoundError:
        raise FileNotFoundError(f"ground truth file not found: {uri}") from None
    boxes = parse_boxes(text, uri)  # SequenceError is a ValueError
    if not len(boxes):
        raise ValueError(f"{uri}: ground truth file has no boxes")
    return boxes


def _parse_flag(token: str, path: str, what: str) -> bool:
    if token not in ("0", "1"):
        raise ValueError(f"{path}: attribute {what}: expected 0 or 1, got {token!r}")
    return token == "1"


def parse_attribute_flags(path: Path | str, names: tuple[str, ...], endpoint_url: str | None = None) -> dict[str, bool]:
    """``len(names)`` 0/1 flags (commas, tabs, spaces or newlines between them), in ``names``' order."""
    uri = str(path)
    tokens = [t for t in re.split(r"[,\s]+", _read_text(uri, endpoint_url).strip()) if t]
    if len(tokens) != len(names):
        raise ValueError(f"{uri}: expected {len(names)} attribute flags, got {len(tokens)}")
    return {n: _parse_flag(t, uri, n) for n, t in zip(names, tokens, strict=True)}


def parse_named_attributes(path: Path | str, endpoint_url: str | None = None) -> dict[str, bool]:
    """``name,0|1`` lines (comma, tab or space between) → {name: flag}."""
    uri = str(path)
    out: dict[str, bool] = {}
    for lineno, line in enumerate(_read_text(uri, endpoint_url).splitlines(), start=1):
        if not line.strip():
            continue
        tokens = _split(line)
        if len(tokens) != 2:
            raise ValueError(f"{uri}:{lineno}: expected 'name,0|1', got {line!r}")
        out[tokens[0]] = _parse_flag(tokens[1], uri, tokens[0])
    return out


# ---------------------------------------------------------------------------------------------------------------------
# one listing of the root


def _list_root(root: str, subfolders: Iterable[str] | None, endpoint_url: str | None) -> FolderListing:
    """List ``root`` once (or only its ``subfolders``); a local root that does not exist raises
    ``FileNotFoundError``."""
    try:
        return list_root(root, endpoint_url, subfolders)
    except storage.MissingFolderError as exc:
        raise FileNotFoundError(f"benchmark folder not found: {root}") from exc


def _root_uri(root: Path | str) -> str:
    """``root`` as a URI without a trailing slash: ``s3://…`` as given, anything else as an absolute local path."""
    uri = str(root)
    return uri.rstrip("/") if storage.is_s3(uri) else storage.resolve(uri)[1]


def list_frames(img_dir: Path | str, digits: int | None = None, endpoint_url: str | None = None) -> tuple[str, ...]:
    """Numbered image files of ``img_dir`` (local folder or ``s3://`` prefix) in frame order, as URIs; they must be
    numbered 1, 2, …, T without gaps. ``digits`` fixes the zero-padded width (4 for LSOTB-TIR, 8 for PTB-TIR)."""
    try:
        listing = _list_root(_root_uri(img_dir), None, endpoint_url)
    except FileNotFoundError:
        raise FileNotFoundError(f"frame folder not found: {img_dir}") from None
    return numbered_frames(listing.files_in(""), listing.prefix.rstrip("/"), digits=digits)


def _build(
    listing: FolderListing,
    name: str,
    img_dir: str,
    gt: str,
    attributes: dict[str, bool],
    digits: int | None,
    endpoint_url: str | None,
) -> Sequence:
    """Sequence ``name``: frames ``img_dir/`` numbered 1..T, ground truth ``gt`` (both relative to the root)."""
    folder = read_sequence_folder(
        listing, name, frames_folder=img_dir, ground_truth=gt, digits=digits, endpoint_url=endpoint_url
    )
    return Sequence(name=name, frames=folder.frames, ground_truth=folder.boxes, attributes=attributes)


def _names(found: Iterable[str], sequences: Iterable[str] | None, where: str) -> list[str]:
    found = sorted(found)
    if sequences is None:
        return found
    wanted = list(sequences)
    missing = [s for s in wanted if s not in set(found)]
    if missing:
        raise FileNotFoundError(f"sequences not found under {where}: {missing}")
    return wanted


def _lsotb_sequence(listing: FolderListing, name: str, ep: str | None) -> Sequence:
    candidates = (f"anno/{name}.txt", f"{name}/{GROUND_TRUTH_FILE}")
    gt = next((c for c in candidates if listing.has(c)), None)
    if gt is None:
        raise FileNotFoundError(
            f"no ground truth for LSOTB-TIR sequence {name!r}: tried {[listing.uri(c) for c in candidates]}"
        )
    att = f"anno/att/{name}.txt"
    attributes = parse_attribute_flags(listing.uri(att), LSOTB_ATTRIBUTES, ep) if listing.has(att) else {}
    return _build(listing, name, f"{name}/img", gt, attributes, 4, ep)


def read_lsotb_sequence(root: Path | str, name: str, endpoint_url: str | None = None) -> Sequence:
    """One LSOTB-TIR sequence; ground truth from ``anno/<seq>.txt``, else ``<seq>/groundtruth_rect.txt``."""
    listing = _list_root(_root_uri(root), [name, "anno"], endpoint_url)
    return _lsotb_sequence(listing, name, endpoint_url)


def read_lsotb_tir(
    root: Path | str,
    subset: Literal["119", "120"] = "119",
    sequences: Iterable[str] | None = None,
    endpoint_url: str | None = None,
) -> list[Sequence]:
    """The LSOTB-TIR evaluation set under ``root`` (every ``<seq>/`` with an ``img/`` folder), sorted by name.

    ``subset="119"`` (the paper's set) leaves out ``cat_D_001``; ``"120"`` keeps it. ``sequences`` picks names
    explicitly (then ``subset`` still removes ``cat_D_001`` under ``"119"``).
    """
    if subset not in ("119", "120"):
        raise ValueError(
            f"subset must be '119' (the paper's, without {LSOTB_EXCLUDED_BY_PAPER}) or '120', got {subset!r}"
        )
    uri = _root_uri(root)
    wanted = None if sequences is None else list(sequences)
    listing = _list_root(uri, None if wanted is None else [*wanted, "anno"], endpoint_url)
    names = _names(listing.sequence_dirs(), wanted, uri)
    if subset == "119":
        names = [n for n in names if n != LSOTB_EXCLUDED_BY_PAPER]
    return [_lsotb_sequence(listing, n, endpoint_url) for n in names]


def read_ptb_tir(
    root: Path | str, sequences: Iterable[str] | None = None, endpoint_url: str | None = None
) -> list[Sequence]:
    """PTB-TIR: ``tirsequences/<seq>/img/00000001.jpg``, ``tiranno/<seq>.txt``, ``tiranno/att/<seq>.txt``."""
    uri = _root_uri(root)
    wanted = None if sequences is None else list(sequences)
    subfolders = None if wanted is None else [*(f"tirsequences/{n}" for n in wanted), "tiranno"]
    listing = _list_root(uri, subfolders, endpoint_url)
    names = _names(listing.sequence_dirs("tirsequences/"), wanted, storage.join(uri, "tirsequences"))
    out = []
    for name in names:
        att = f"tiranno/att/{name}.txt"
        attributes = parse_attribute_flags(listing.uri(att), PTB_ATTRIBUTES, endpoint_url) if listing.has(att) else {}
        gt = f"tiranno/{name}.txt"
        out.append(_build(listing, name, f"tirsequences/{name}/img", gt, attributes, 8, endpoint_url))
    return out


def read_synthetic(
    root: Path | str, sequences: Iterable[str] | None = None, endpoint_url: str | None = None
) -> list[Sequence]:
    """cmd-ray's synthetic TIR sequences: ``<seq>/img/NNNN.jpg``, ``<seq>/groundtruth_rect.txt``, ``attributes.txt``."""
    uri = _root_uri(root)
    wanted = None if sequences is None else list(sequences)
    listing = _list_root(uri, wanted, endpoint_url)
    names = _names(listing.sequence_dirs(), wanted, uri)
    out = []
    for name in names:
        att = f"{name}/attributes.txt"
        attributes = parse_named_attributes(listing.uri(att), endpoint_url) if listing.has(att) else {}
        gt = f"{name}/{GROUND_TRUTH_FILE}"
        out.append(_build(listing, name, f"{name}/img", gt, attributes, None, endpoint_url))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the registry: benchmark name → reader


class LsotbOptions(BaseModel):
    """Options of the ``lsotb`` reader (:func:`read_lsotb_tir`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subset: Literal["119", "120"] = "119"
    """``"119"``: the paper's set, without ``cat_D_001``; ``"120"``: the full evaluation set."""


@dataclass(frozen=True)
class BenchmarkReader:
    """One registered benchmark.

    Attributes:
        read: ``read(root, sequences=…, endpoint_url=…, **options)`` → the sequences sorted by name; ``root`` a local
            folder or ``s3://`` prefix, ``sequences`` None (all) or the names to read, the options as keywords.
        options: the pydantic model of the reader's options (its fields are the keywords), None when it has none.
        description: what the benchmark is, for messages and help texts.
    """

    read: Callable[..., list[Sequence]]
    options: type[BaseModel] | None
    description: str


BENCHMARK_READERS: dict[str, BenchmarkReader] = {
    "synthetic": BenchmarkReader(read_synthetic, None, "cmd-ray's synthetic TIR sequences"),
    "lsotb": BenchmarkReader(read_lsotb_tir, LsotbOptions, "LSOTB-TIR evaluation set"),
    "ptb": BenchmarkReader(read_ptb_tir, None, "PTB-TIR"),
}
"""Benchmark name → its reader: the one place a benchmark is registered (``evaluation.benchmark`` names a key).

Adding a benchmark is one reader function (signature as :attr:`BenchmarkReader.read`) and one entry here."""

BENCHMARKS: tuple[str, ...] = tuple(BENCHMARK_READERS)
"""Benchmark names of :func:`read_benchmark`: the keys of :data:`BENCHMARK_READERS`."""


def _reader(benchmark: str) -> BenchmarkReader:
    try:
        return BENCHMARK_READERS[benchmark]
    except KeyError:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}") from None


def benchmark_options(benchmark: str, values: Mapping[str, Any]) -> BaseModel | None:
    """The options of ``benchmark``'s reader, built from those of ``values`` its options model declares (the others
    are left out, so one mapping of every known option serves every benchmark); None when it takes no options.

    Raises ``ValueError`` for an unknown benchmark or an invalid value (pydantic's ``ValidationError``).
    """
    model = _reader(benchmark).options
    if model is None:
        return None
    return model.model_validate({k: v for k, v in values.items() if k in model.model_fields})


def read_benchmark(
    benchmark: str,
    root: Path | str,
    sequences: Iterable[str] | None = None,
    *,
    endpoint_url: str | None = None,
    options: BaseModel | Mapping[str, Any] | None = None,
) -> list[Sequence]:
    """The sequences of ``benchmark`` (a key of :data:`BENCHMARK_READERS`) under ``root``, sorted by name.

    Args:
        root: a local folder or an ``s3://`` prefix (``endpoint_url`` overrides ``AWS_ENDPOINT_URL`` for it).
        sequences: names to read (default: every sequence found).
        options: the reader's options, as its options model or a mapping validated by it (default: the model's
            defaults); a benchmark without options takes none.

    Raises:
        ValueError: an unknown benchmark, options it does not take, or a malformed file (naming it).
        FileNotFoundError: a missing folder, sequence or ground-truth file.
    """
    entry = _reader(benchmark)
    if entry.options is None:
        if options:
            raise ValueError(f"benchmark {benchmark!r} takes no options, got {options!r}")
        return entry.read(root, sequences=sequences, endpoint_url=endpoint_url)
    if not isinstance(options, entry.options):
        options = entry.options.model_validate(dict(options or {}))
    return entry.read(root, sequences=sequences, endpoint_url=endpoint_url, **options.model_dump())
