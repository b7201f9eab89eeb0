"""URIs to filesystems: local paths, ``file://`` and ``s3://bucket/prefix``.

Every byte cmd-ray reads or writes goes through here. S3 credentials come from
the standard AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
profiles, instance roles); the endpoint from ``endpoint_url`` if given, else
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), else AWS itself.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs


class StorageError(OSError):
    """A URI cannot be resolved, read or written; the message names it."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint in force: the argument, else the standard environment variables."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem(endpoint_url: str | None = None) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem for the endpoint in force (AWS when none is set)."""
    endpoint = s3_endpoint(endpoint_url)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict[str, object] = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """``uri`` to ``(filesystem, path inside it)``.

    ``s3://bucket/key`` gives an S3 filesystem and ``bucket/key``; a local path
    or ``file://`` URI gives the local filesystem and an absolute path.
    """
    if is_s3(uri):
        path = uri[len("s3://") :].strip("/")
        if not path:
            raise StorageError(f"S3 URI {uri!r} names no bucket")
        return s3_filesystem(endpoint_url), path
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/`` (works for s3:// and local paths)."""
    if is_s3(uri) or uri.startswith("file://"):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def read_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    fs, path = resolve(uri, endpoint_url)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except (OSError, FileNotFoundError) as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc


def write_bytes(uri: str, data: bytes, endpoint_url: str | None = None) -> None:
    """Write ``data`` to ``uri``, creating parent folders on local disk."""
    fs, path = resolve(uri, endpoint_url)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(posixpath.dirname(path), recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from exc


def iter_files(uri: str, endpoint_url: str | None = None) -> Iterator[str]:
    """Paths (inside the filesystem) of every file below ``uri``, recursively.

    Raises:
        StorageError: if ``uri`` does not exist or cannot be listed.
    """
    fs, root = resolve(uri, endpoint_url)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=False)
    try:
        infos = fs.get_file_info(selector)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot list {uri}: {exc}") from exc
    for info in infos:
        if info.type == pafs.FileType.File:
            yield info.path


def to_uri(uri_root: str, fs_path: str) -> str:
    """The URI of a filesystem path found below ``uri_root`` (keeps the scheme)."""
    return f"s3://{fs_path}" if is_s3(uri_root) else fs_path
