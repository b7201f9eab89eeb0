"""Find RGB–TIR image pairs under a root URI (local path, ``file://`` or ``s3://``) in one of five layouts.

Layouts (``data.layout``):

- ``two_folder``: ``<root>/<rgb_dir>/a/0001.jpg`` pairs with ``<root>/<tir_dir>/a/0001.png``. The match
  key is the path relative to ``<rgb_dir>`` / ``<tir_dir>`` without its extension (``match="stem"``), or its
  folder plus the ``key`` group of a regular expression searched in the file name (``match="regex"``, e.g.
  ``(?P<key>.*FLIR_\\d+)_`` pairs ``FLIR_00001_RGB.jpg`` with ``FLIR_00001_PreviewData.jpeg``).
- ``kaist``: ``<root>/…/setXX/VXXX/visible/IXXXXX.jpg`` with ``…/setXX/VXXX/lwir/IXXXXX.jpg`` (optionally only
  some sets).
- ``llvip``: ``<root>/visible/{train,test}/NAME.jpg`` with ``<root>/infrared/{train,test}/NAME.jpg``; one split
  or both.
- ``manifest``: a CSV or Parquet file with columns ``rgb`` and ``tir`` (URIs, or paths relative to the
  manifest's folder) and optionally ``boxes`` (pseudo boxes per pair, ``[[x, y, w, h], …]`` in pixels; a
  JSON string in CSV). A manifest with an ``image`` column instead lists side-by-side ``[RGB | TIR]`` files.
  ``cmd-ray boxes`` writes one (:func:`write_manifest`).
- ``concatenated``: every image under the root is one pair, ``[RGB | TIR]`` side by side (``uint8 [H, 2W, 3]``).

Listing. A folder is listed once, recursively: on S3 the ``ListObjectsV2`` pages (1000 keys each) are
streamed and classified as they arrive, never one request per object; a tqdm bar counts the keys. Only image
files (``.jpg .jpeg .png .bmp .tif .tiff``, any case) take part. Files without a partner are counted and
reported in :attr:`PairListing.unpaired`, never dropped silently.

Pairs are held in a :class:`PairTable`: two pyarrow string columns relative to one shared root (plus the
optional boxes), about ``len(rgb) + len(tir) + 8`` bytes per pair, which is what the data actors receive.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from cmd_ray.config import DataConfig
from cmd_ray.storage import (
    MissingFolderError,
    is_s3,
    iter_relative_files,
    listing_prefix,
    read_bytes,
    write_bytes,
)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
MANIFEST_EXTENSIONS = (".csv", ".parquet", ".pq")
UNPAIRED_EXAMPLES = 20
"""How many unpaired files a :class:`PairTable` remembers by name (the count is always exact)."""

BOX_TYPE = pa.list_(pa.list_(pa.float32(), 4))
"""Arrow type of a ``boxes`` column: per pair a list of ``(x, y, w, h)`` in pixels (null: not computed)."""

KAIST_PATTERN = re.compile(r"^(?P<pre>(?:.*/)?)(?P<set>set\d+)/(?P<seq>V\d+)/(?P<mod>visible|lwir)/(?P<name>[^/]+)$")
LLVIP_PATTERN = re.compile(r"^(?P<mod>visible|infrared)/(?P<split>train|test)/(?P<name>.+)$")


class EmptyPrefixError(ValueError):
    """No RGB–TIR pair was found under a URI; the message names it and the layout it expected."""


class ManifestError(ValueError):
    """A pair manifest is malformed; the message names the file, the row and the value."""


# --------------------------------------------------------------------------- the pair table


@dataclass(frozen=True, eq=False)
class PairTable:
    """An immutable, compact list of RGB–TIR pairs (what the data actors hold).

    Attributes:
        root: URI prefix shared by every file (``s3://bucket/prefix/`` or ``/abs/path/``); a file's URI is
            ``root + relative path`` (plain concatenation).
        rgb: ``pa.StringArray [N]``, RGB files relative to ``root`` (side-by-side files when ``tir`` is None).
        tir: ``pa.StringArray [N]`` of TIR files, or None for side-by-side ``[RGB | TIR]`` images.
        boxes: ``pa.ListArray [N]`` of ``BOX_TYPE`` (precomputed pseudo boxes, ``x, y, w, h`` in pixels; a
            null row was not computed, an empty row found nothing), or None.
        unpaired_count: files of the listing without a partner (exact).
        unpaired_examples: the first :data:`UNPAIRED_EXAMPLES` of them.

    ``pairs[i]`` is ``(rgb_uri, tir_uri)`` (the same URI twice for side-by-side images), so a table can
    stand where a ``list[tuple[str, str]]`` was used.
    """

    root: str
    rgb: pa.Array
    tir: pa.Array | None = None
    boxes: pa.Array | None = None
    unpaired_count: int = 0
    unpaired_examples: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.tir is not None and len(self.tir) != len(self.rgb):
            raise ValueError(f"rgb and tir columns differ in length: {len(self.rgb)} vs {len(self.tir)}")
        if self.boxes is not None and len(self.boxes) != len(self.rgb):
            raise ValueError(f"boxes column has {len(self.boxes)} rows for {len(self.rgb)} pairs")

    # -- construction

    @classmethod
    def from_pairs(
        cls,
        pairs: Sequence[tuple[str, str]] | Sequence[str],
        boxes: Sequence[np.ndarray | Sequence[Sequence[float]] | None] | None = None,
        side_by_side: bool = False,
        unpaired: Sequence[str] = (),
        unpaired_count: int | None = None,
    ) -> PairTable:
        """A table from full URIs: ``[(rgb, tir), …]``, or ``[image, …]`` with ``side_by_side``.

        Args:
            boxes: per pair ``[K, 4]`` boxes (``x, y, w, h`` pixels) or None (not computed).
            unpaired: URIs of unpaired files (the first :data:`UNPAIRED_EXAMPLES` are kept).
            unpaired_count: their number when ``unpaired`` is only a sample (default ``len(unpaired)``).
        """
        if side_by_side:
            rgb_uris = [str(p) for p in pairs]
            tir_uris: list[str] | None = None
        else:
            rgb_uris = [str(p[0]) for p in pairs]
            tir_uris = [str(p[1]) for p in pairs]
        everything = rgb_uris + (tir_uris or [])
        root = _common_root(everything)
        cut = len(root)
        return cls(
            root=root,
            rgb=pa.array([u[cut:] for u in rgb_uris], pa.string()),
            tir=None if tir_uris is None else pa.array([u[cut:] for u in tir_uris], pa.string()),
            boxes=None if boxes is None else boxes_array(boxes),
            unpaired_count=len(unpaired) if unpaired_count is None else unpaired_count,
            unpaired_examples=tuple(unpaired[:UNPAIRED_EXAMPLES]),
        )

    # -- sequence protocol

    def __len__(self) -> int:
        return len(self.rgb)

    def __getitem__(self, index: int) -> tuple[str, str]:
        rgb = self.rgb_uri(index)
        return rgb, (rgb if self.tir is None else self.root + self.tir[index].as_py())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        tir_column = self.rgb if self.tir is None else self.tir
        for rgb, tir in zip(self.rgb.to_pylist(), tir_column.to_pylist(), strict=True):
            yield self.root + rgb, self.root + tir

    @property
    def side_by_side(self) -> bool:
        """True when each entry is one ``[RGB | TIR]`` image."""
        return self.tir is None

    def rgb_uri(self, index: int) -> str:
        return self.root + self.rgb[index].as_py()

    def key(self, index: int) -> str:
        """A readable name of pair ``index`` for logs: ``"rgb | tir"`` or the side-by-side file's URI."""
        rgb, tir = self[index]
        return rgb if self.side_by_side else f"{rgb} | {tir}"

    def boxes_of(self, index: int) -> np.ndarray | None:
        """Precomputed boxes of pair ``index``: ``float32 [K, 4]`` (K may be 0), or None when not computed."""
        if self.boxes is None or not self.boxes[index].is_valid:
            return None
        flat = self.boxes[index].values.flatten().to_numpy(zero_copy_only=False)
        return np.asarray(flat, dtype=np.float32).reshape(-1, 4)

    def take(self, indices: Sequence[int] | np.ndarray) -> PairTable:
        """The rows ``indices`` in that order (listing statistics are kept)."""
        idx = pa.array(np.asarray(indices, dtype=np.int64))
        return PairTable(
            root=self.root,
            rgb=self.rgb.take(idx),
            tir=None if self.tir is None else self.tir.take(idx),
            boxes=None if self.boxes is None else self.boxes.take(idx),
            unpaired_count=self.unpaired_count,
            unpaired_examples=self.unpaired_examples,
        )

    def to_list(self) -> list[tuple[str, str]]:
        """``[(rgb_uri, tir_uri), …]`` (for small sets and tests)."""
        return list(self)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrow buffers (string data, offsets, boxes)."""
        return sum(a.nbytes for a in (self.rgb, self.tir, self.boxes) if a is not None) + len(self.root)

    def __repr__(self) -> str:
        kind = "side-by-side images" if self.side_by_side else "pairs"
        extra = ", with boxes" if self.boxes is not None else ""
        return f"PairTable({len(self)} {kind} under {self.root!r}{extra}, {self.unpaired_count} unpaired)"


def _common_root(uris: Sequence[str]) -> str:
    """The longest prefix of every URI that ends at a ``/`` (``""`` when there is none)."""
    if not uris:
        return ""
    low, high = min(uris), max(uris)  # the common prefix of the extremes is everyone's
    size = 0
    while size < min(len(low), len(high)) and low[size] == high[size]:
        size += 1
    prefix = low[:size]
    return prefix[: prefix.rfind("/") + 1]


def boxes_array(boxes: Sequence[np.ndarray | Sequence[Sequence[float]] | None]) -> pa.Array:
    """Per-pair boxes (``[K, 4]`` each, or None) as an arrow column of :data:`BOX_TYPE`."""
    rows: list[list[list[float]] | None] = []
    for item in boxes:
        if item is None:
            rows.append(None)
        else:
            rows.append(np.asarray(item, dtype=np.float32).reshape(-1, 4).tolist())
    return pa.array(rows, type=BOX_TYPE)


@dataclass
class PairListing:
    """Result of a pair search.

    Attributes:
        table: the pairs as a :class:`PairTable`, sorted by their shared key.
        unpaired: URIs of image files without a partner in the other modality (or, for a manifest, the
            entries of rows missing one side), sorted. A second file with the same key in one modality
            (``0001.jpg`` and ``0001.png``) is listed here too: the pair takes the first in sorted order.
    """

    table: PairTable
    unpaired: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """``[(rgb_uri, tir_uri), …]`` full URIs (``s3://`` kept, absolute paths for local roots)."""
        return self.table.to_list()


# --------------------------------------------------------------------------- listing


def _is_image(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in IMAGE_EXTENSIONS


Classifier = Callable[[str], "tuple[str, str] | None"]
"""``relative path -> (modality 'rgb' | 'tir', match key)``, or None when the file takes no part."""


def _pair_up(
    root_uri: str,
    paths: Iterable[str],
    classify: Classifier,
    expected: str,
    ignored: list[str] | None = None,
) -> PairListing:
    """Group classified files by key and pair them (shared by the folder layouts)."""
    root = listing_prefix(root_uri)
    groups: dict[str, tuple[list[str], list[str]]] = {}
    counts = {"rgb": 0, "tir": 0}
    for rel in paths:
        if not _is_image(rel):
            continue
        found = classify(rel)
        if found is None:
            continue
        modality, key = found
        counts[modality] += 1
        groups.setdefault(key, ([], []))[0 if modality == "rgb" else 1].append(rel)

    rgb_rel: list[str] = []
    tir_rel: list[str] = []
    unpaired: list[str] = [root + rel for rel in ignored or []]
    for key in sorted(groups):
        rgbs, tirs = sorted(groups[key][0]), sorted(groups[key][1])
        if rgbs and tirs:
            rgb_rel.append(rgbs[0])
            tir_rel.append(tirs[0])
            unpaired.extend(root + p for p in rgbs[1:] + tirs[1:])
        else:
            unpaired.extend(root + p for p in rgbs + tirs)
    unpaired.sort()
    if not rgb_rel:
        raise EmptyPrefixError(
            f"no RGB–TIR pairs under {root_uri}: found {counts['rgb']} RGB and {counts['tir']} TIR image(s); {expected}"
        )
    table = PairTable(
        root=root,
        rgb=pa.array(rgb_rel, pa.string()),
        tir=pa.array(tir_rel, pa.string()),
        unpaired_count=len(unpaired),
        unpaired_examples=tuple(unpaired[:UNPAIRED_EXAMPLES]),
    )
    return PairListing(table=table, unpaired=unpaired)


def _clean_dir(name: str, what: str) -> str:
    cleaned = name.strip().strip("/")
    if not cleaned:
        raise ValueError(f"{what} must name a subfolder, got {name!r}")
    return cleaned


def compile_match_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a two-folder match rule; it must have a ``(?P<key>…)`` group.

    Raises:
        ValueError: not a valid regular expression, or no ``key`` group (the message shows the pattern).
    """
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"match_pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    if "key" not in compiled.groupindex:
        raise ValueError(f"match_pattern {pattern!r} needs a named group (?P<key>…) that both file names share")
    return compiled


def list_two_folder_pairs(
    root_uri: str,
    rgb_dir: str = "rgb",
    tir_dir: str = "tir",
    endpoint_url: str | None = None,
    *,
    match: str = "stem",
    match_pattern: str | None = None,
    client: Any = None,
    progress: bool = False,
) -> PairListing:
    """Pair ``<root>/<rgb_dir>/…`` with ``<root>/<tir_dir>/…`` images.

    Args:
        root_uri: local path, ``file://…`` or ``s3://bucket/prefix``.
        rgb_dir, tir_dir: subfolders of the root (may be nested, e.g. ``"visible/images"``).
        endpoint_url: S3 endpoint override (else ``AWS_ENDPOINT_URL``).
        match: ``"stem"``: the key is the path below the subfolder without extension; ``"regex"``: the
            folder below the subfolder plus the ``key`` group of ``match_pattern`` searched in the file name
            (extension included). A file the pattern does not match counts as unpaired.
        client, progress: see :func:`cmd_ray.storage.iter_relative_files`.

    Returns:
        :class:`PairListing` with deterministic order.

    Raises:
        EmptyPrefixError: no pair at all (including a root that does not exist).
        StorageError: the root cannot be listed for another reason.
        ValueError: ``rgb_dir``/``tir_dir`` empty, equal or nested in one another; a bad ``match`` rule.
    """
    rgb_dir = _clean_dir(rgb_dir, "rgb_dir")
    tir_dir = _clean_dir(tir_dir, "tir_dir")
    if rgb_dir == tir_dir or rgb_dir.startswith(tir_dir + "/") or tir_dir.startswith(rgb_dir + "/"):
        raise ValueError(f"rgb_dir {rgb_dir!r} and tir_dir {tir_dir!r} must be distinct, non-nested subfolders")
    if match not in ("stem", "regex"):
        raise ValueError(f"match must be 'stem' or 'regex', got {match!r}")
    pattern = compile_match_pattern(match_pattern or "") if match == "regex" else None
    root = listing_prefix(root_uri)
    expected = f"expected images in {root}{rgb_dir}/… and {root}{tir_dir}/… with matching names"
    if pattern is not None:
        expected += f" (key: group 'key' of {pattern.pattern!r})"
    unmatched: list[str] = []

    def classify(rel: str) -> tuple[str, str] | None:
        for modality, sub in (("rgb", rgb_dir), ("tir", tir_dir)):
            if rel.startswith(sub + "/"):
                inner = rel[len(sub) + 1 :]
                if pattern is None:
                    return modality, posixpath.splitext(inner)[0]
                folder, name = posixpath.split(inner)
                found = pattern.search(name)
                if found is None or not found.group("key"):
                    unmatched.append(rel)
                    return None
                return modality, posixpath.join(folder, found.group("key"))
        return None

    paths = _listing(root_uri, endpoint_url, client, progress)
    return _pair_up(root_uri, paths, classify, expected, ignored=unmatched)


def _listing(
    root_uri: str, endpoint_url: str | None, client: Any, progress: bool, subfolder: str = ""
) -> Iterator[str]:
    try:
        yield from iter_relative_files(root_uri, endpoint_url, client=client, progress=progress, subfolder=subfolder)
    except MissingFolderError as exc:
        raise EmptyPrefixError(f"no RGB–TIR pairs under {root_uri}: {exc}") from exc


def list_kaist_pairs(
    root_uri: str,
    sets: Sequence[str] = (),
    endpoint_url: str | None = None,
    *,
    client: Any = None,
    progress: bool = False,
) -> PairListing:
    """KAIST: ``<root>/…/setXX/VXXX/visible/IXXXXX.jpg`` with ``…/setXX/VXXX/lwir/IXXXXX.jpg``.

    The root may be the folder holding the ``setXX`` folders or any folder above it (``kaist-cvpr15/``).

    Args:
        sets: only these sets (``["set00", "set01"]``); empty: every set. When given and the sets lie
            directly below the root, only their folders are listed.

    Raises:
        EmptyPrefixError: no pair (the message names the URI and the sets).
    """
    wanted = {s.strip("/") for s in sets}
    for name in wanted:
        if not re.fullmatch(r"set\d+", name):
            raise ValueError(f"KAIST set names look like 'set00', got {name!r}")

    def classify(rel: str) -> tuple[str, str] | None:
        found = KAIST_PATTERN.match(rel)
        if found is None or (wanted and found["set"] not in wanted):
            return None
        key = f"{found['pre']}{found['set']}/{found['seq']}/{posixpath.splitext(found['name'])[0]}"
        return ("rgb" if found["mod"] == "visible" else "tir"), key

    if wanted:
        paths: Iterable[str] = _kaist_set_listing(root_uri, sorted(wanted), endpoint_url, client, progress)
    else:
        paths = _listing(root_uri, endpoint_url, client, progress)
    which = f"sets {', '.join(sorted(wanted))}" if wanted else "any set"
    expected = f"expected KAIST files …/setXX/VXXX/visible/IXXXXX.jpg and …/setXX/VXXX/lwir/IXXXXX.jpg ({which})"
    return _pair_up(root_uri, paths, classify, expected)


def _kaist_set_listing(
    root_uri: str, sets: list[str], endpoint_url: str | None, client: Any, progress: bool
) -> Iterator[str]:
    """List only ``<root>/setXX/`` for the wanted sets; if none is there, list the whole root."""
    found_any = False
    for name in sets:
        try:
            for rel in _listing(root_uri, endpoint_url, client, progress, subfolder=name):
                found_any = True
                yield rel
        except EmptyPrefixError:
            continue  # a local set folder that is not directly below the root
    if not found_any:
        yield from _listing(root_uri, endpoint_url, client, progress)


def list_llvip_pairs(
    root_uri: str,
    split: str = "train",
    endpoint_url: str | None = None,
    *,
    client: Any = None,
    progress: bool = False,
) -> PairListing:
    """LLVIP: ``<root>/visible/<split>/NAME.jpg`` with ``<root>/infrared/<split>/NAME.jpg``.

    Args:
        split: ``"train"``, ``"test"`` or ``"both"``.
    """
    splits = {"train": ("train",), "test": ("test",), "both": ("train", "test")}.get(split)
    if splits is None:
        raise ValueError(f"llvip split must be 'train', 'test' or 'both', got {split!r}")

    def classify(rel: str) -> tuple[str, str] | None:
        found = LLVIP_PATTERN.match(rel)
        if found is None or found["split"] not in splits:
            return None
        modality = "rgb" if found["mod"] == "visible" else "tir"
        return modality, f"{found['split']}/{posixpath.splitext(found['name'])[0]}"

    def paths() -> Iterator[str]:
        for modality in ("visible", "infrared"):
            for name in splits:
                try:
                    yield from _listing(root_uri, endpoint_url, client, progress, subfolder=f"{modality}/{name}")
                except EmptyPrefixError:
                    continue  # counted below as "0 images" of that side

    root = listing_prefix(root_uri)
    folders = " and ".join(f"{root}{{visible,infrared}}/{s}/" for s in splits)
    return _pair_up(root_uri, paths(), classify, f"expected LLVIP images in {folders} with matching names")


def list_concatenated_pairs(
    root_uri: str, endpoint_url: str | None = None, *, client: Any = None, progress: bool = False
) -> PairListing:
    """Every image below ``root_uri`` is one side-by-side ``[RGB | TIR]`` pair (sorted by path)."""
    root = listing_prefix(root_uri)
    files = sorted(rel for rel in _listing(root_uri, endpoint_url, client, progress) if _is_image(rel))
    if not files:
        raise EmptyPrefixError(
            f"no side-by-side [RGB | TIR] images under {root_uri}: expected image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}) anywhere below it"
        )
    return PairListing(table=PairTable(root=root, rgb=pa.array(files, pa.string())))


# --------------------------------------------------------------------------- manifests


def manifest_format(uri: str) -> str:
    """``"csv"`` or ``"parquet"`` from a manifest URI's extension (raises :class:`ManifestError` otherwise)."""
    lower = uri.lower()
    for ext in MANIFEST_EXTENSIONS:
        if lower.endswith(ext):
            return "csv" if ext == ".csv" else "parquet"
    raise ManifestError(f"manifest {uri}: unknown format; name it *.csv or *.parquet")


def _manifest_folder(uri: str) -> str:
    if is_s3(uri) or uri.startswith("file://"):
        return uri.rsplit("/", 1)[0] + "/"
    return os.path.dirname(os.path.abspath(uri)) + "/"


def _absolute(entry: str, folder: str) -> str:
    if is_s3(entry) or os.path.isabs(entry):
        return entry
    if entry.startswith("file://"):
        return entry[len("file://") :]
    if "://" in entry:
        raise ManifestError(f"unsupported URI scheme in manifest entry {entry!r}: use a path, file:// or s3://")
    return folder + entry


def _parse_boxes(value: Any, uri: str, row: int) -> np.ndarray | None:
    """A manifest ``boxes`` cell ─▶ ``float32 [K, 4]`` or None (not computed)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest {uri}, row {row}: boxes {text!r} is not JSON [[x, y, w, h], …]") from exc
    try:
        boxes = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest {uri}, row {row}: boxes {value!r} is not a list of [x, y, w, h]") from exc
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    if boxes.ndim == 1 and boxes.size == 4:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ManifestError(f"manifest {uri}, row {row}: boxes {value!r} must be [[x, y, w, h], …]")
    if not np.all(np.isfinite(boxes)) or np.any(boxes[:, 2:] <= 0):
        raise ManifestError(f"manifest {uri}, row {row}: boxes {boxes.tolist()} need finite values and w, h > 0")
    return boxes.astype(np.float32)


def read_manifest(uri: str, endpoint_url: str | None = None) -> PairListing:
    """Pairs (and optional pseudo boxes) from a CSV or Parquet manifest.

    Columns: ``rgb`` and ``tir`` (or ``image`` for side-by-side ``[RGB | TIR]`` files), optionally
    ``boxes``. Entries are URIs or paths relative to the manifest's folder. A row missing one side counts
    its other side as unpaired.

    Raises:
        ManifestError: unknown format, missing columns, bad boxes (naming the file and row).
        StorageError: the manifest cannot be read.
        EmptyPrefixError: no pair in it.
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fmt = manifest_format(uri)
    data = read_bytes(uri, endpoint_url)
    try:
        if fmt == "csv":
            string_columns = {name: pa.string() for name in ("rgb", "tir", "image", "boxes")}
            options = pacsv.ConvertOptions(column_types=string_columns)
            table = pacsv.read_csv(io.BytesIO(data), convert_options=options)
        else:
            table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"manifest {uri} cannot be parsed as {fmt}: {exc}") from exc
    columns = set(table.column_names)
    side_by_side = "image" in columns and not ({"rgb", "tir"} & columns)
    if not side_by_side and not {"rgb", "tir"} <= columns:
        raise ManifestError(
            f"manifest {uri} needs columns 'rgb' and 'tir' (or 'image' for side-by-side files), has {sorted(columns)}"
        )
    folder = _manifest_folder(uri)
    has_boxes = "boxes" in columns
    names = ("image",) if side_by_side else ("rgb", "tir")
    values = [table.column(name).to_pylist() for name in names]
    box_cells = table.column("boxes").to_pylist() if has_boxes else [None] * table.num_rows
    pairs: list[Any] = []
    boxes: list[np.ndarray | None] = []
    unpaired: list[str] = []
    for row in range(table.num_rows):
        entries = ["" if v[row] is None else str(v[row]).strip() for v in values]
        if not all(entries):
            unpaired.extend(_absolute(e, folder) for e in entries if e)
            continue
        uris = [_absolute(e, folder) for e in entries]
        pairs.append(uris[0] if side_by_side else (uris[0], uris[1]))
        boxes.append(_parse_boxes(box_cells[row], uri, row))
    if not pairs:
        raise EmptyPrefixError(f"no RGB–TIR pairs in manifest {uri} ({table.num_rows} row(s))")
    table_out = PairTable.from_pairs(
        pairs, boxes=boxes if has_boxes else None, side_by_side=side_by_side, unpaired=sorted(unpaired)
    )
    return PairListing(table=table_out, unpaired=sorted(unpaired))


def write_manifest(
    uri: str,
    table: PairTable,
    boxes: Sequence[np.ndarray | None] | None = None,
    endpoint_url: str | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``table`` (and per-pair ``boxes``, ``[K, 4]`` pixels or None) as a CSV or Parquet manifest.

    Parquet gets ``boxes`` as ``list<list<float32>[4]>``; CSV as a JSON string per row. ``metadata`` goes
    into the Parquet schema metadata (e.g. the detector that made the boxes).
    """
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fmt = manifest_format(uri)
    if boxes is not None and len(boxes) != len(table):
        raise ValueError(f"{len(boxes)} box rows for {len(table)} pairs")
    columns: dict[str, pa.Array] = {}
    if table.side_by_side:
        columns["image"] = pa.array([table.rgb_uri(i) for i in range(len(table))], pa.string())
    else:
        rgb, tir = zip(*table, strict=True) if len(table) else ((), ())
        columns["rgb"] = pa.array(list(rgb), pa.string())
        columns["tir"] = pa.array(list(tir), pa.string())
    box_column = boxes_array(boxes) if boxes is not None else table.boxes
    if box_column is not None:
        if fmt == "csv":
            columns["boxes"] = pa.array(
                [None if row is None else json.dumps(row) for row in box_column.to_pylist()], pa.string()
            )
        else:
            columns["boxes"] = box_column
    out = pa.table(columns)
    buffer = io.BytesIO()
    if fmt == "csv":
        pacsv.write_csv(out, buffer)
    else:
        if metadata:
            out = out.replace_schema_metadata({f"cmd_ray.{k}": str(v) for k, v in metadata.items()})
        pq.write_table(out, buffer)
    write_bytes(uri, buffer.getvalue(), endpoint_url)


# --------------------------------------------------------------------------- the configured layout


def list_pairs_for(
    data: DataConfig, endpoint_url: str | None = None, *, client: Any = None, progress: bool = False
) -> PairListing:
    """The pairs of a :class:`cmd_ray.config.DataConfig` (``data.uri`` in ``data.layout``).

    Raises:
        EmptyPrefixError: no pair; ManifestError: a bad manifest; StorageError: listing failed.
    """
    layout = data.layout
    if layout == "two_folder":
        return list_two_folder_pairs(
            data.uri,
            data.rgb_dir,
            data.tir_dir,
            endpoint_url,
            match=data.match,
            match_pattern=data.match_pattern,
            client=client,
            progress=progress,
        )
    if layout == "kaist":
        return list_kaist_pairs(data.uri, data.kaist_sets, endpoint_url, client=client, progress=progress)
    if layout == "llvip":
        return list_llvip_pairs(data.uri, data.llvip_split, endpoint_url, client=client, progress=progress)
    if layout == "concatenated":
        return list_concatenated_pairs(data.uri, endpoint_url, client=client, progress=progress)
    if layout == "manifest":
        if not data.manifest:
            raise ManifestError("data.layout=manifest needs data.manifest (URI of a CSV or Parquet file)")
        return read_manifest(data.manifest, endpoint_url)
    raise ValueError(f"unknown data.layout {layout!r}")


# --------------------------------------------------------------------------- splitting


def split_position(name: str) -> float:
    """Where a pair falls in ``[0, 1)`` for the train/validation split: the SHA-1 of its RGB file's path under the
    pair table's root (:attr:`PairTable.rgb`)."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / 2**64


def split_mask(rgb_names: Sequence[str], val_fraction: float) -> np.ndarray:
    """``bool [N]``: True for the held-out pairs (position below ``val_fraction``; a tiny set keeps one).

    ``rgb_names``: the RGB files relative to the data root, never absolute paths: the split must not change with
    the folder or bucket the data set is read from.

    Raises:
        ValueError: nothing would be left to train on.
    """
    positions = np.fromiter((split_position(u) for u in rgb_names), dtype=np.float64, count=len(rgb_names))
    held_out = positions < val_fraction
    if val_fraction > 0 and not held_out.any() and len(rgb_names) > 1:
        held_out[int(np.argmin(positions))] = True  # a tiny set still gets a validation pair
    if held_out.all():
        raise ValueError(f"data.val_fraction={val_fraction} leaves no training pairs out of {len(rgb_names)}")
    return held_out
