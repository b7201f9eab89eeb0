"""URIs to filesystems: local paths, ``file://`` and ``s3://bucket/prefix``.

Every byte cmd-ray reads or writes, and every folder it lists, goes through here. Reads and writes use
pyarrow's filesystems; listing streams S3's ``ListObjectsV2`` pages through boto3 (one request per 1000 keys,
never one per object). S3 credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, profiles, instance roles); the endpoint from ``endpoint_url`` if given, else
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), else AWS itself.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
from tqdm import tqdm


class StorageError(OSError):
    """A URI cannot be resolved, read or written; the message names it."""


class MissingFolderError(StorageError):
    """A local folder to list does not exist (S3 has no folders: an empty prefix lists nothing)."""


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


# --------------------------------------------------------------------------- paged listing


@dataclass(frozen=True)
class _Root:
    """A listed folder: its URI prefix for output, and where to list."""

    uri_prefix: str  # "s3://bucket/prefix/" or "/abs/path/"
    bucket: str | None  # S3 only
    key_prefix: str  # S3 key prefix ("prefix/" or ""), or the absolute local folder with a trailing "/"


def _root(root_uri: str) -> _Root:
    if is_s3(root_uri):
        path = root_uri[len("s3://") :].strip("/")
        if not path:
            raise StorageError(f"S3 URI {root_uri!r} names no bucket")
        bucket, _, prefix = path.partition("/")
        prefix = prefix + "/" if prefix else ""
        return _Root(f"s3://{bucket}/{prefix}", bucket, prefix)
    _, local = resolve(root_uri)
    local = local.rstrip("/") + "/"
    return _Root(local, None, local)


def listing_prefix(root_uri: str) -> str:
    """What :func:`iter_relative_files` paths are relative to: ``"s3://bucket/prefix/"`` or ``"/abs/folder/"``."""
    return _root(root_uri).uri_prefix


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client for the endpoint in force (the standard AWS credential chain)."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=s3_endpoint(endpoint_url))


def iter_relative_files(
    root_uri: str,
    endpoint_url: str | None = None,
    *,
    client: Any = None,
    progress: bool = False,
    subfolder: str = "",
) -> Iterator[str]:
    """Paths (relative to ``root_uri``) of every file below ``root_uri/subfolder``, streamed as listed.

    On S3 this pages through ``ListObjectsV2`` (1000 keys a page, one request per page); locally it walks
    the folder. Order is the store's (sorted on S3).

    Args:
        client: a boto3 S3 client to list with (default: :func:`s3_client`).
        progress: show a tqdm bar counting the listed keys.
        subfolder: only list below this folder of the root (``"set00"``); paths stay relative to the root.

    Raises:
        MissingFolderError: a local root (or subfolder) that does not exist.
        StorageError: the store refuses the listing (missing bucket, credentials, network); names the URI.
    """
    root = _root(root_uri)
    sub = subfolder.strip("/")
    sub = sub + "/" if sub else ""
    bar = tqdm(desc=f"listing {root.uri_prefix}{sub}", unit=" keys", disable=not progress, mininterval=0.5)
    try:
        if root.bucket is not None:
            yield from _iter_s3(root, sub, client or s3_client(endpoint_url), bar, root_uri)
        else:
            yield from _iter_local(root, sub, bar, root_uri)
    finally:
        bar.close()


def _iter_s3(root: _Root, sub: str, client: Any, bar: tqdm, root_uri: str) -> Iterator[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    cut = len(root.key_prefix)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=root.bucket, Prefix=root.key_prefix + sub, PaginationConfig={"PageSize": 1000}
    )
    try:
        for page in pages:
            contents = page.get("Contents", [])
            bar.update(len(contents))
            for item in contents:
                key = item["Key"]
                if not key.endswith("/"):  # folder markers written by some tools
                    yield key[cut:]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise StorageError(f"cannot list {root_uri}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot list {root_uri}: {exc}") from exc


def _iter_local(root: _Root, sub: str, bar: tqdm, root_uri: str) -> Iterator[str]:
    top = root.key_prefix + sub
    if not os.path.isdir(top):
        raise MissingFolderError(f"{top.rstrip('/')} does not exist")
    cut = len(root.key_prefix)
    for folder, dirs, files in os.walk(top, onerror=None, followlinks=True):
        dirs.sort()
        bar.update(len(files))
        base = folder.rstrip("/") + "/"
        for name in sorted(files):
            yield (base + name)[cut:]
