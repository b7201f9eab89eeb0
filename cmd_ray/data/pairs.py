"""Find RGB–TIR image pairs under a root URI (local path, ``file://`` or ``s3://``).

Generic two-folder layout::

    <root>/<rgb_dir>/a/0001.jpg   pairs with   <root>/<tir_dir>/a/0001.png

Files are matched by their path relative to ``<rgb_dir>`` / ``<tir_dir>`` with
the extension stripped. The root is listed once, recursively (one listing, no
per-object requests); only image files (``.jpg .jpeg .png .bmp .tif .tiff``,
any case) take part. Files without a partner are reported, never dropped
silently.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from cmd_ray.storage import StorageError, iter_files, join, resolve, to_uri

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})


class EmptyPrefixError(ValueError):
    """No RGB–TIR pair was found under a URI; the message names it and the expected subfolders."""


@dataclass
class PairListing:
    """Result of a pair search.

    Attributes:
        pairs: ``(rgb_uri, tir_uri)`` full URIs (``s3://`` kept for S3 roots, absolute
            paths for local roots), sorted by their shared relative key.
        unpaired: URIs of image files without a partner in the other modality, sorted.
            A second file with the same key in one modality (``0001.jpg`` and
            ``0001.png``) is listed here too: the pair takes the first in sorted order.
    """

    pairs: list[tuple[str, str]] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)


def _clean_dir(name: str, what: str) -> str:
    cleaned = name.strip().strip("/")
    if not cleaned:
        raise ValueError(f"{what} must name a subfolder, got {name!r}")
    return cleaned


def list_two_folder_pairs(
    root_uri: str, rgb_dir: str = "rgb", tir_dir: str = "tir", endpoint_url: str | None = None
) -> PairListing:
    """Pair ``<root>/<rgb_dir>/…`` with ``<root>/<tir_dir>/…`` images by relative path without extension.

    Args:
        root_uri: local path, ``file://…`` or ``s3://bucket/prefix``.
        rgb_dir, tir_dir: subfolders of the root (may be nested, e.g. ``"visible/images"``).
        endpoint_url: S3 endpoint override (else ``AWS_ENDPOINT_URL``).

    Returns:
        :class:`PairListing` with deterministic order.

    Raises:
        EmptyPrefixError: no pair at all (including a root that does not exist).
        StorageError: the root cannot be listed for another reason.
        ValueError: ``rgb_dir``/``tir_dir`` empty, equal or nested in one another.
    """
    rgb_dir = _clean_dir(rgb_dir, "rgb_dir")
    tir_dir = _clean_dir(tir_dir, "tir_dir")
    if rgb_dir == tir_dir or rgb_dir.startswith(tir_dir + "/") or tir_dir.startswith(rgb_dir + "/"):
        raise ValueError(f"rgb_dir {rgb_dir!r} and tir_dir {tir_dir!r} must be distinct, non-nested subfolders")
    expected = f"expected images in {join(root_uri, rgb_dir)}/… and {join(root_uri, tir_dir)}/… with matching names"

    _, root_path = resolve(root_uri, endpoint_url)
    prefix = root_path.rstrip("/") + "/"
    try:
        paths = list(iter_files(root_uri, endpoint_url))
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise EmptyPrefixError(f"no RGB–TIR pairs under {root_uri}: it does not exist; {expected}") from exc
        raise

    by_modality: dict[str, dict[str, list[str]]] = {"rgb": {}, "tir": {}}
    for path in paths:
        if not path.startswith(prefix):
            continue
        rel = path[len(prefix) :]
        stem, ext = posixpath.splitext(rel)
        if ext.lower() not in IMAGE_EXTENSIONS:
            continue
        for modality, sub in (("rgb", rgb_dir), ("tir", tir_dir)):
            if stem.startswith(sub + "/"):
                by_modality[modality].setdefault(stem[len(sub) + 1 :], []).append(path)
                break

    rgb, tir = by_modality["rgb"], by_modality["tir"]
    pairs: list[tuple[str, str]] = []
    unpaired: list[str] = []
    for key in sorted(rgb.keys() | tir.keys()):
        rgb_paths, tir_paths = sorted(rgb.get(key, [])), sorted(tir.get(key, []))
        if rgb_paths and tir_paths:
            pairs.append((to_uri(root_uri, rgb_paths[0]), to_uri(root_uri, tir_paths[0])))
            unpaired.extend(to_uri(root_uri, p) for p in rgb_paths[1:] + tir_paths[1:])
        else:
            unpaired.extend(to_uri(root_uri, p) for p in rgb_paths + tir_paths)
    unpaired.sort()

    if not pairs:
        n_rgb = sum(len(v) for v in rgb.values())
        n_tir = sum(len(v) for v in tir.values())
        raise EmptyPrefixError(
            f"no RGB–TIR pairs under {root_uri}: found {n_rgb} RGB and {n_tir} TIR image(s); {expected}"
        )
    return PairListing(pairs=pairs, unpaired=unpaired)
