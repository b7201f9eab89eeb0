"""One reader for labeled sequence folders, on local disk or S3: a folder of numbered frames plus a ground-truth file.

Both the pretraining sequences (:func:`cmd_ray.data.sequences.list_sequences`) and the tracking benchmarks
(:mod:`cmd_ray.evaluation.benchmarks`: synthetic, LSOTB-TIR, PTB-TIR) are read through here::

    <root>/<seq>/img/0001.jpg … NNNN.jpg       numbered frames (.jpg, .jpeg, .png, .bmp)
    <root>/<seq>/groundtruth_rect.txt          one ``x,y,w,h`` line per frame (commas, tabs or spaces), pixels

(the benchmarks place the frame folder and the ground truth elsewhere below the root; both are parameters).

- :func:`list_root` lists a root once (one ``ListObjectsV2`` request per 1000 keys on S3, a walk locally), or only
  some of its subfolders, into a :class:`FolderListing` that every sequence below it is then read from.
- :func:`numbered_frames` picks the numbered frames of a folder out of a listing, in frame order.
- :func:`parse_boxes` parses ground-truth text; a malformed line raises :class:`SequenceError` naming ``file:line``.
- :func:`read_sequence_folder` does all three for one sequence and checks that boxes and frames agree.

Errors name the file or folder: :class:`SequenceError` (a ``ValueError``) for malformed content (a bad line, a
frame gap, :class:`BoxCountError` for a box/frame count mismatch); :class:`MissingFramesError` and
:class:`MissingGroundTruthError` (both ``FileNotFoundError``) for what is absent.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmd_ray import storage

GROUND_TRUTH_FILE = "groundtruth_rect.txt"
"""The ground-truth file of a sequence folder (``<seq>/groundtruth_rect.txt``)."""
FRAMES_FOLDER = "img"
"""The frame folder of a sequence folder (``<seq>/img/``)."""
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
"""File name suffixes (any case) of frames."""

_SEPARATORS = re.compile(r"[,\t ]+")


class SequenceError(ValueError):
    """A labeled sequence is malformed; the message names the file and what is wrong."""


class BoxCountError(SequenceError):
    """The ground truth holds a different number of boxes than the sequence has frames (none at all included).

    Attributes:
        ground_truth: the ground-truth file's URI.
        frames_folder: the frame folder's URI.
        num_boxes: boxes in the ground truth.
        num_frames: frames in the folder.
    """

    def __init__(self, ground_truth: str, frames_folder: str, num_boxes: int, num_frames: int) -> None:
        self.ground_truth = ground_truth
        self.frames_folder = frames_folder
        self.num_boxes = num_boxes
        self.num_frames = num_frames
        if num_boxes == 0:
            message = f"{ground_truth}: ground truth file has no boxes"
        else:
            message = f"{ground_truth}: {num_boxes} ground-truth boxes but {num_frames} frames in {frames_folder}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str, int, int]]:
        # rebuilt from the facts, not the message (an error raised in a Ray task is pickled)
        return type(self), (self.ground_truth, self.frames_folder, self.num_boxes, self.num_frames)


class MissingFramesError(FileNotFoundError):
    """A frame folder holds no numbered frames (of the required width ``digits``); ``folder`` is its URI."""

    def __init__(self, folder: str, digits: int | None) -> None:
        self.folder = folder
        self.digits = digits
        width = f"{digits}-digit " if digits else ""
        super().__init__(f"no {width}numbered frames ({', '.join(FRAME_EXTENSIONS)}) in {folder}")

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:
        return type(self), (self.folder, self.digits)


class MissingGroundTruthError(FileNotFoundError):
    """A sequence's ground-truth file does not exist; ``uri`` names it."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        super().__init__(f"ground truth file not found: {uri}")

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return type(self), (self.uri,)


# ---------------------------------------------------------------------------------------------------------------------
# one listing of the root


@dataclass(frozen=True)
class FolderListing:
    """The files below a root, from one listing.

    Attributes:
        prefix: what the paths are relative to: ``"s3://bucket/prefix/"`` or ``"/abs/root/"``.
        files: paths relative to ``prefix`` (``"<seq>/img/0001.jpg"``); files whose name starts with ``.`` are left out.
    """

    prefix: str
    files: frozenset[str]

    def uri(self, rel: str) -> str:
        """The URI (absolute local path or ``s3://`` URI) of ``rel``."""
        return self.prefix + rel

    def has(self, rel: str) -> bool:
        """Whether the file ``rel`` was listed."""
        return rel in self.files

    def sequence_dirs(self, under: str = "") -> list[str]:
        """Names, sorted, of the folders ``under<name>/`` whose ``img/`` folder holds at least one file (any file)."""
        cut = len(under)
        names = set()
        for rel in self.files:
            if rel.startswith(under):
                parts = rel[cut:].split("/")
                if len(parts) == 3 and parts[1] == FRAMES_FOLDER:
                    names.add(parts[0])
        return sorted(names)

    def dirs_with(self, file_name: str, under: str = "") -> list[str]:
        """Names, sorted, of the folders ``under<name>/`` that hold a file ``file_name``."""
        cut = len(under)
        names = set()
        for rel in self.files:
            if rel.startswith(under):
                parts = rel[cut:].split("/")
                if len(parts) == 2 and parts[1] == file_name:
                    names.add(parts[0])
        return sorted(names)

    def files_in(self, folder: str) -> list[str]:
        """Names of the files directly in ``folder`` (relative to the root, no trailing slash; ``""``: the root)."""
        head = folder + "/" if folder else ""
        return [rel[len(head) :] for rel in self.files if rel.startswith(head) and "/" not in rel[len(head) :]]


def list_root(
    root: Path | str, endpoint_url: str | None = None, subfolders: Iterable[str] | None = None
) -> FolderListing:
    """List ``root`` (a local folder, ``file://`` URI or ``s3://bucket/prefix``) once, or only its ``subfolders``.

    Subfolders that do not exist are skipped (S3 has no folders: an empty prefix lists nothing).

    Raises:
        storage.MissingFolderError: a local root that does not exist (naming it).
        storage.StorageError: the store refuses the listing (missing bucket, credentials).
    """
    uri = str(root)
    prefix = storage.listing_prefix(uri)
    files: set[str] = set()
    if subfolders is None:
        files.update(storage.iter_relative_files(uri, endpoint_url))
    else:
        if not storage.is_s3(uri) and not Path(prefix).is_dir():
            raise storage.MissingFolderError(f"{prefix.rstrip('/')} does not exist")
        for sub in subfolders:
            try:
                files.update(storage.iter_relative_files(uri, endpoint_url, subfolder=sub))
            except storage.MissingFolderError:
                continue
    return FolderListing(prefix, frozenset(f for f in files if not posixpath.basename(f).startswith(".")))


# ---------------------------------------------------------------------------------------------------------------------
# frames and ground truth


def numbered_frames(
    names: Iterable[str], folder_uri: str, *, digits: int | None = None, numbered_from_one: bool = True
) -> tuple[str, ...]:
    """URIs (``folder_uri + "/" + name``) of the numbered frames among the file ``names`` of a folder, in frame order.

    A frame is a file ``<digits>.<ext>`` with an extension of :data:`FRAME_EXTENSIONS` (any case); other files are
    ignored.

    Args:
        names: file names in the folder (as :meth:`FolderListing.files_in` gives them).
        folder_uri: the folder's URI, without a trailing slash (named in errors).
        digits: the exact zero-padded width of the numbers (4 for LSOTB-TIR, 8 for PTB-TIR); None: any width.
        numbered_from_one: the frames must be numbered 1, 2, …, T without gaps or repeats; when False, any numbers
            are accepted, sorted by number (then by name), and no frame at all gives an empty tuple.

    Raises:
        MissingFramesError: no numbered frame (only when ``numbered_from_one``).
        SequenceError: the numbers are not 1..T (only when ``numbered_from_one``); names the folder and the missing
            numbers.
    """
    pattern = re.compile(rf"\d{{{digits}}}" if digits else r"\d+")
    numbered: list[tuple[int, str]] = []
    for name in names:
        stem, suffix = posixpath.splitext(name)
        if suffix.lower() in FRAME_EXTENSIONS and pattern.fullmatch(stem):
            numbered.append((int(stem), f"{folder_uri}/{name}"))
    numbered.sort()
    if not numbered_from_one:
        return tuple(uri for _, uri in numbered)
    if not numbered:
        raise MissingFramesError(folder_uri, digits)
    numbers = [n for n, _ in numbered]
    if numbers != list(range(1, len(numbers) + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        raise SequenceError(
            f"{folder_uri}: frames must be numbered 1..T without gaps or repeats; missing {missing[:10]}, "
            f"found {len(numbers)} files up to {numbers[-1]}"
        )
    return tuple(uri for _, uri in numbered)


def parse_boxes(text: str, where: str) -> np.ndarray:
    """``float64 [T, 4]`` from ``x,y,w,h`` lines (commas, tabs or spaces; ``nan`` allowed); blank lines are
    skipped, a malformed line raises :class:`SequenceError` naming ``where:line``."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tokens = _SEPARATORS.split(line.strip())
        try:
            if len(tokens) != 4:
                raise ValueError
            rows.append([float(t) for t in tokens])
        except ValueError:
            raise SequenceError(
                f"{where}:{lineno}: expected 4 numbers x,y,w,h separated by commas, tabs or spaces, got {line!r}"
            ) from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


# ---------------------------------------------------------------------------------------------------------------------
# one sequence


@dataclass(frozen=True, eq=False)
class SequenceFolder:
    """One sequence as read from its folder.

    Attributes:
        name: the sequence's name.
        frames: frame URIs in order (absolute local paths or ``s3://`` URIs; ``frames[t]`` is the ``t+1``-th frame).
        boxes: ``float64 [T, 4]`` ground-truth boxes ``x, y, w, h`` in pixels (NaN kept as NaN).
    """

    name: str
    frames: tuple[str, ...]
    boxes: np.ndarray


def read_sequence_folder(
    listing: FolderListing,
    name: str,
    *,
    frames_folder: str | None = None,
    ground_truth: str | None = None,
    digits: int | None = None,
    numbered_from_one: bool = True,
    endpoint_url: str | None = None,
) -> SequenceFolder:
    """Sequence ``name`` of ``listing``: its numbered frames and its ground truth (the one file read here).

    Checks, in this order: the frames (:func:`numbered_frames`; at least one), the ground truth's presence in the
    listing, its lines (:func:`parse_boxes`), and one box per frame.

    Args:
        listing: the root's listing (:func:`list_root`); it must cover the frame folder and the ground truth.
        frames_folder: the frame folder relative to the root (default ``<name>/img``).
        ground_truth: the ground-truth file relative to the root (default ``<name>/groundtruth_rect.txt``).
        digits, numbered_from_one: what counts as a frame and how they must be numbered (:func:`numbered_frames`).

    Raises:
        MissingFramesError: no numbered frame in the frame folder.
        MissingGroundTruthError: the ground-truth file is not in the listing.
        SequenceError: a frame gap (``numbered_from_one``) or a malformed ground-truth line, naming the folder or
            ``file:line``; :class:`BoxCountError` when boxes and frames disagree in number.
        storage.StorageError, UnicodeDecodeError: the ground truth cannot be read or decoded.
    """
    frames_folder = f"{name}/{FRAMES_FOLDER}" if frames_folder is None else frames_folder
    ground_truth = f"{name}/{GROUND_TRUTH_FILE}" if ground_truth is None else ground_truth
    folder_uri = listing.uri(frames_folder)
    frames = numbered_frames(
        listing.files_in(frames_folder), folder_uri, digits=digits, numbered_from_one=numbered_from_one
    )
    if not frames:
        raise MissingFramesError(folder_uri, digits)
    gt_uri = listing.uri(ground_truth)
    if not listing.has(ground_truth):
        raise MissingGroundTruthError(gt_uri)
    boxes = parse_boxes(storage.read_bytes(gt_uri, endpoint_url).decode(), gt_uri)
    if len(boxes) != len(frames):
        raise BoxCountError(gt_uri, folder_uri, len(boxes), len(frames))
    return SequenceFolder(name, frames, boxes)
