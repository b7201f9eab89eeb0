"""URIs to filesystems: local paths, ``file://`` and ``s3://bucket/prefix``.

Every byte cmd-ray reads or writes, and every folder it lists, goes through here. Local files go through pyarrow's
local filesystem. On S3, :func:`read_bytes` and :func:`write_bytes` are one ``GetObject`` / ``PutObject`` request
each, made with one boto3 client per process (pyarrow's S3 filesystem would add a ``HeadObject`` to every read, and
on a failed ``GetObject`` it reports only "INTERNAL_FAILURE … Failed to flush response stream", losing the status).
A read is a plain HTTP GET of a URL the client presigns, over one urllib3 connection pool per process: a third of
the CPU of ``client.get_object`` (0.6–0.9 ms against 1.5–1.9 ms per 100 kB object, measured against a local
server). Listing streams ``ListObjectsV2`` pages through the client (one request per 1000 keys). :func:`resolve`
hands out one pyarrow ``S3FileSystem`` per process for the callers that need a filesystem (Ray Train's
checkpoints). All are created lazily, once per process, endpoint, region and access key, under a lock, and
reused; a forked child builds its own (the cache is keyed by the process id and cleared after ``fork``).

Errors. Every read, write, listing page and delete follows one :class:`RetryPolicy`: a transient error (throttling
such as ``SlowDown``, HTTP 429/5xx, timeouts, connection resets and refusals) is retried with exponential backoff and
full jitter until the operation's time budget (``storage.read_timeout_s``, default :data:`DEFAULT_READ_TIMEOUT_S`)
is spent; then :class:`TransientStorageError` is raised. A permanent one (missing key or bucket, access denied, an
invalid request) raises :class:`StorageError` at once. The threads of a process back off together
(:class:`_Gate`): after a transient error no attempt starts until the backoff has passed, then one attempt at a
time probes the store until it answers, so a throttled or unreachable store sees each process as one client that
backs off, not eight threads that keep retrying (nor, in the data actors, reads of other pairs: see
:func:`cmd_ray.data.streams.read_policy`). :func:`stats` counts this process's retries and failures.

S3 credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles,
instance roles); the endpoint from ``endpoint_url`` if given, else ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``),
else AWS itself; the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs
from tqdm import tqdm

T = TypeVar("T")

DEFAULT_READ_TIMEOUT_S = 300.0
"""Seconds one storage operation keeps retrying transient errors by default (``storage.read_timeout_s``)."""
BASE_DELAY_S = 0.1
"""Upper end of the backoff before the 2nd attempt in seconds; doubled before each further attempt."""
MAX_DELAY_S = 20.0
"""Upper end of any backoff between two attempts, in seconds (``storage.retry_max_delay_s``; AWS SDKs use 20 s)."""
MAX_POOL_CONNECTIONS = 32
"""HTTP connections the shared boto3 client keeps (threads of one process share it, e.g. ``cmd-ray synth``)."""


class StorageError(OSError):
    """A URI cannot be resolved, read or written; the message names it. Permanent unless a subclass says otherwise."""


class MissingFolderError(StorageError):
    """A local folder to list does not exist (S3 has no folders: an empty prefix lists nothing)."""


class MissingObjectError(StorageError):
    """The object or file (or its bucket) does not exist: permanent. Its ``__cause__`` is a ``FileNotFoundError``
    (on local disk pyarrow's; on S3 one whose own cause is the ``NoSuchKey`` / ``NoSuchBucket`` / 404 error)."""


class TransientStorageError(StorageError):
    """A transient error (throttling, 5xx, timeout, connection reset) persisted for the whole retry budget.

    The object may well be readable later: callers must not treat it as bad data.
    """


@dataclass(frozen=True)
class RetryPolicy:
    """How one storage operation retries transient errors: exponential backoff with full jitter within a time budget.

    After its ``n``-th failed attempt an operation waits ``uniform(0, min(max_delay_s, base_delay_s * 2**(n - 1)))``
    seconds (AWS's "full jitter": clients that failed together spread out instead of retrying in lockstep), and as
    long as the store fails, the same after the ``n``-th failed probe of its process (:class:`_Gate`). An operation
    stops once ``budget_s`` seconds have passed since it started: a failure after that, or a backoff that reaches
    it, raises :class:`TransientStorageError`. A
    single attempt is bounded by the connection timeouts (:data:`READ_TIMEOUT_S`), so an operation can overrun its
    budget by at most one attempt.

    Attributes:
        budget_s: total seconds an operation keeps retrying (``storage.read_timeout_s``).
        base_delay_s: upper end of the first backoff.
        max_delay_s: upper end of any backoff (``storage.retry_max_delay_s``).
    """

    budget_s: float = DEFAULT_READ_TIMEOUT_S
    base_delay_s: float = BASE_DELAY_S
    max_delay_s: float = MAX_DELAY_S

    def __post_init__(self) -> None:
        if not (self.budget_s >= 0 and self.base_delay_s > 0 and self.max_delay_s >= self.base_delay_s):
            raise ValueError(f"invalid retry policy {self}: needs budget_s >= 0 and 0 < base_delay_s <= max_delay_s")

    def ceiling_s(self, attempt: int) -> float:
        """Upper end of the backoff after failed attempt ``attempt`` (1-based)."""
        return min(self.max_delay_s, self.base_delay_s * 2 ** min(attempt - 1, 62))

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): uniform in ``[0, ceiling_s(attempt)]``."""
        return rng.uniform(0.0, self.ceiling_s(attempt))


DEFAULT_POLICY = RetryPolicy()
"""The policy of an operation given none (a caller with a config passes ``storage.read_timeout_s``'s)."""


# --------------------------------------------------------------------------- per-process state


@dataclass(frozen=True)
class StorageStats:
    """This process's storage counters since it started (or forked).

    Attributes:
        retries: attempts repeated after a transient error (whether a later attempt succeeded or not).
        transient_failures: operations that failed transiently for their whole retry budget
            (:class:`TransientStorageError`).
        filesystems_created: pyarrow ``S3FileSystem`` objects built (one per endpoint, region and access key).
        clients_created: boto3 S3 clients built (likewise).
    """

    retries: int = 0
    transient_failures: int = 0
    filesystems_created: int = 0
    clients_created: int = 0


class _Gate:
    """This process's view of the store, shared by its threads: healthy (attempts run freely) or failing.

    A transient error turns it to failing: no attempt starts until a backoff has passed, then one attempt at a
    time probes the store while the others wait; any answer that is not a transient error (success, or a permanent
    error: the store answered) turns it healthy again and releases them all. The backoff's exponent counts the
    probes that failed in a row, whichever thread made them, so a process behaves as one client that backs off,
    not as many that retry on their own. Attempts already under way when the store started failing do not raise the
    exponent. Each operation also waits its own backoff (:func:`with_retries`): one object can keep failing while
    the process's other reads succeed.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.failures = 0  # failed probes in a row (0: healthy)
        self.hold_until = 0.0  # time.monotonic() before which no attempt starts while failing
        self.probing = False
        self.last_error: BaseException | None = None

    def enter(self, deadline: float, not_before: float = 0.0) -> bool | None:
        """Wait for this operation's turn: until ``not_before`` (its own backoff, ``time.monotonic()``) and, while
        the store fails, until the process's backoff has passed and no other thread probes. Returns False to
        attempt freely (healthy), True to attempt as the probe (then :meth:`leave` must follow), None when
        ``deadline`` came first."""
        with self.cond:
            while True:
                now = time.monotonic()
                until = max(not_before, self.hold_until if self.failures else 0.0)
                if now < until or (self.failures and self.probing):
                    if now >= deadline:
                        return None
                    self.cond.wait((min(until, deadline) if now < until else deadline) - now)  # the backoff
                    continue
                if self.failures:
                    self.probing = True
                    return True
                return False

    def leave(self, probe: bool, failure: BaseException | None, policy: RetryPolicy, rng: random.Random) -> None:
        """After an attempt: ``failure`` is its transient error, or None when the store answered."""
        with self.cond:
            if probe:
                self.probing = False
            if failure is None:
                self.failures = 0
            elif probe or not self.failures:
                self.failures += 1
                self.last_error = failure
                until = time.monotonic() + policy.backoff_s(self.failures, rng)
                self.hold_until = max(self.hold_until, until)
            self.cond.notify_all()


class _State:
    """Caches and counters of one process (rebuilt in a forked child)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.cache: dict[tuple[Any, ...], Any] = {}
        self.counts = {"retries": 0, "transient_failures": 0, "filesystems_created": 0, "clients_created": 0}
        self.random = random.Random()
        self.gate = _Gate()


_state = _State()


def _current() -> _State:
    global _state
    if _state.pid != os.getpid():  # forked without the at-fork hook (or a copied module): start afresh
        _state = _State()
    return _state


def _after_fork_in_child() -> None:
    global _state
    _state = _State()  # a lock held by another thread at fork time would never be released in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _count(name: str, amount: int = 1) -> None:
    state = _current()
    with state.lock:
        state.counts[name] += amount


def stats() -> StorageStats:
    """This process's counters (retries, transient failures, filesystems and clients built)."""
    state = _current()
    with state.lock:
        return StorageStats(**state.counts)


def retry_count() -> int:
    """Attempts this process repeated after a transient storage error (count, since the process started)."""
    return stats().retries


def clear_cache() -> None:
    """Forget this process's filesystems and clients (the next use builds new ones); counters are kept."""
    state = _current()
    with state.lock:
        state.cache.clear()


def _cached(key: tuple[Any, ...], build: Callable[[], T], counter: str | None) -> T:
    state = _current()
    full_key = (state.pid, *key)
    found = state.cache.get(full_key)
    if found is not None:
        return found
    with state.lock:
        found = state.cache.get(full_key)
        if found is None:
            found = build()
            state.cache[full_key] = found
            if counter is not None:
                state.counts[counter] += 1
        return found


# --------------------------------------------------------------------------- endpoints and clients


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


_URI_AUTHORITY = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<authority>[^\s/?#\"'<>]*)")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|token|access_token|secret|api_key|apikey)=)(?P<value>[^&;#\s\"'<>]+)",
    re.IGNORECASE,
)
MASK = "***"


def mask_credentials(text: str) -> str:
    """``text`` with the credentials inside any URI it holds masked: the password of ``scheme://user:password@host``
    (``user:***@host``), a user part without a password (often a token: ``***@host``), and the value of a
    ``password``, ``token``, ``secret`` or ``api_key`` query parameter. The one helper every log line, printed
    line, MLflow param or tag and error message that may carry a URI goes through (``mlflow.tracking_uri``
    ``https://user:pw@host``, ``postgresql://user:pw@host/db``, ``s3://key:secret@bucket``)."""

    def authority(match: re.Match[str]) -> str:
        userinfo, at, host = match["authority"].rpartition("@")
        if not at:
            return match[0]
        user, colon, _ = userinfo.partition(":")
        return f"{match['scheme']}{user + ':' + MASK if colon else MASK}@{host}"

    return _SECRET_QUERY.sub(lambda m: m["key"] + MASK, _URI_AUTHORITY.sub(authority, text))


def has_credentials(uri: str) -> bool:
    """Whether :func:`mask_credentials` would hide something in ``uri``."""
    return mask_credentials(uri) != uri


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint in force: the argument, else the standard environment variables."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")


def _identity(endpoint_url: str | None) -> tuple[str | None, str | None, str | None]:
    # the access key is part of the key so that a changed environment (tests, profiles) gets its own client
    return s3_endpoint(endpoint_url), _region(), os.environ.get("AWS_ACCESS_KEY_ID")


def s3_filesystem(endpoint_url: str | None = None) -> pafs.S3FileSystem:
    """This process's pyarrow S3 filesystem for the endpoint in force (AWS when none is set), built on first use.

    It keeps pyarrow's own retries (it is used by callers that do not go through :func:`read_bytes`).
    """
    endpoint, region, access_key = _identity(endpoint_url)

    def build() -> pafs.S3FileSystem:
        kwargs: dict[str, object] = {"region": region or "us-east-1"}
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = parsed.netloc
            kwargs["scheme"] = parsed.scheme or "https"
        return pafs.S3FileSystem(**kwargs)

    return _cached(("pyarrow", endpoint, region, access_key), build, "filesystems_created")


def s3_client(endpoint_url: str | None = None) -> Any:
    """This process's boto3 S3 client for the endpoint in force (standard AWS credential chain), built on first use.

    It is thread-safe and makes one attempt per call: the retries of :func:`read_bytes`, :func:`write_bytes` and
    :func:`iter_relative_files` are this module's (counted in :func:`stats`). Wrap other calls in
    :func:`with_retries` to get the same.
    """
    endpoint, region, access_key = _identity(endpoint_url)

    def build() -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        config = BotoConfig(
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=MAX_POOL_CONNECTIONS,
        )
        return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=region, config=config)

    return _cached(("boto3", endpoint, region, access_key), build, "clients_created")


# --------------------------------------------------------------------------- transient or permanent


_TRANSIENT_S3_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "OperationAborted",
    }
)
"""S3 error codes worth another attempt (besides any HTTP status 429 or >= 500)."""

_TRANSIENT_AWS_ERRORS = frozenset(
    {
        "SLOW_DOWN",
        "THROTTLING",
        "SERVICE_UNAVAILABLE",
        "INTERNAL_FAILURE",  # also what pyarrow reports for any failed GetObject ("Failed to flush response stream")
        "NETWORK_CONNECTION",  # curl: connection refused or reset, timeouts
        "REQUEST_TIMEOUT",
        "REQUEST_TIME_TOO_SKEWED",
    }
)
"""Names in pyarrow's "AWS Error NAME during …" messages (the AWS C++ SDK's error types) worth another attempt."""

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
    }
)

_AWS_ERROR = re.compile(r"AWS Error ([A-Z_]+)")
_HTTP_STATUS = re.compile(r"HTTP status (\d{3})")


def _transient_status(status: int | None) -> bool:
    return status is not None and (status == 429 or status >= 500)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (from boto3/botocore, pyarrow or the OS) is worth another attempt.

    Transient: throttling (``SlowDown`` and kin), HTTP 429 and 5xx, timeouts, connection refused/reset/closed.
    Everything else is permanent: missing key or bucket, access denied (403), invalid requests (4xx), credentials.
    pyarrow's ``OSError`` messages are read as the AWS C++ SDK writes them ("AWS Error SLOW_DOWN during …",
    "AWS Error UNKNOWN (HTTP status 503) during HeadObject …", "AWS Error NETWORK_CONNECTION … curlCode: 7").
    """
    if isinstance(exc, TransientStorageError):
        return True
    if isinstance(exc, StorageError):
        return False
    try:
        from botocore import exceptions as boto_errors
    except ImportError:  # pragma: no cover - boto3 is a dependency
        boto_errors = None  # type: ignore[assignment]
    if boto_errors is not None:
        if isinstance(exc, boto_errors.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return error.get("Code", "") in _TRANSIENT_S3_CODES or _transient_status(status)
        if isinstance(exc, boto_errors.SSLError):
            return "CERTIFICATE_VERIFY_FAILED" not in str(exc)  # a bad certificate stays bad; an SSL EOF does not
        if isinstance(exc, boto_errors.ConnectionError | boto_errors.HTTPClientError):
            return True  # connect/read timeouts, refused, closed or reset connections, broken response streams
        if isinstance(exc, boto_errors.BotoCoreError):
            return False  # credentials, parameters, configuration
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError):
        if exc.errno in _TRANSIENT_ERRNOS:
            return True
        message = str(exc)
        status = _HTTP_STATUS.search(message)
        if status is not None:
            return _transient_status(int(status.group(1)))
        name = _AWS_ERROR.search(message)
        return name is not None and name.group(1) in _TRANSIENT_AWS_ERRORS
    try:
        import urllib3.exceptions
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, urllib3.exceptions.SSLError):
        return "CERTIFICATE_VERIFY_FAILED" not in str(exc)
    # connection refused (NewConnectionError is a ConnectTimeoutError), timeouts, resets, truncated bodies
    return isinstance(
        exc, urllib3.exceptions.ProtocolError | urllib3.exceptions.TimeoutError | urllib3.exceptions.ProxyError
    )


def _describe(exc: BaseException) -> str:
    try:
        from botocore.exceptions import ClientError
    except ImportError:  # pragma: no cover
        return str(exc)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.get("Code") or f"HTTP {status}"
        if code in ("404", "NotFound"):
            code = "NoSuchKey"
        return f"{code}: {error.get('Message', '')}".rstrip(": ")
    return str(exc)


def with_retries(what: str, call: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """``call()``, repeated after transient errors (see :func:`is_transient`) as ``policy`` says, in step with the
    other operations of this process (:class:`_Gate`).

    Args:
        what: names the operation and URI in errors ("read s3://bucket/key").
        policy: backoff and time budget (default :data:`DEFAULT_POLICY`).

    Raises:
        TransientStorageError: transient errors for the whole budget (the last error is its cause).
        StorageError: a permanent error, at once (the original is its cause).
    """
    policy = DEFAULT_POLICY if policy is None else policy
    state = _current()
    gate = state.gate
    started = time.monotonic()
    deadline = started + policy.budget_s
    attempt = 0
    last: BaseException | None = None
    own_backoff = 0.0  # time.monotonic() before which this operation does not try again
    while True:
        probe = gate.enter(deadline, own_backoff)
        if probe is None:  # the budget passed while backing off
            last = last or gate.last_error
            _count("transient_failures")
            raise TransientStorageError(
                f"cannot {what}: {_describe(last) if last else 'the store kept failing'} (transient; "
                f"{attempt} attempt(s) over {time.monotonic() - started:.1f} s, the retry budget of "
                f"{policy.budget_s:g} s, storage.read_timeout_s)"
            ) from last
        if attempt:
            _count("retries")
        attempt += 1
        try:
            result = call()
        except BaseException as exc:
            transient = isinstance(exc, Exception) and not isinstance(exc, StorageError) and is_transient(exc)
            gate.leave(probe, exc if transient else None, policy, state.random)  # otherwise the store answered
            if not transient:
                _raise_permanent(what, exc)
            last = exc
            now = time.monotonic()
            if now >= deadline:
                _count("transient_failures")
                raise TransientStorageError(
                    f"cannot {what}: {_describe(exc)} (transient; failed {attempt} attempt(s) over "
                    f"{now - started:.1f} s, the retry budget of {policy.budget_s:g} s, storage.read_timeout_s)"
                ) from exc
            # its own backoff too: one object can keep failing while the process's other reads succeed
            own_backoff = now + policy.backoff_s(attempt, state.random)
            continue
        gate.leave(probe, None, policy, state.random)
        return result


def _raise_permanent(what: str, exc: BaseException) -> NoReturn:
    """Raise the permanent error ``exc`` of operation ``what`` as a :class:`StorageError` naming it (a missing
    object as :class:`MissingObjectError`); anything else that is no storage error unchanged."""
    if isinstance(exc, StorageError) or not isinstance(exc, Exception):
        raise exc
    if _is_missing(exc):
        missing = FileNotFoundError(errno.ENOENT, _describe(exc))
        missing.__cause__ = exc
        raise MissingObjectError(f"cannot {what}: {_describe(exc)}") from missing
    if isinstance(exc, OSError) or _is_boto_error(exc):
        raise StorageError(f"cannot {what}: {_describe(exc)}") from exc
    raise exc


_MISSING_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})


def _is_missing(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    try:
        from botocore.exceptions import ClientError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code", "") in _MISSING_CODES


def _is_boto_error(exc: BaseException) -> bool:
    try:
        import urllib3.exceptions
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, BotoCoreError | ClientError | urllib3.exceptions.HTTPError)


# --------------------------------------------------------------------------- URIs, reads and writes


def resolve(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """``uri`` to ``(filesystem, path inside it)``.

    ``s3://bucket/key`` gives this process's S3 filesystem (:func:`s3_filesystem`) and ``bucket/key``; a local
    path or ``file://`` URI gives the local filesystem and an absolute path.
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
    return _local_filesystem(), os.path.abspath(os.path.expanduser(uri))


def ray_storage(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem | None, str]:
    """Where Ray Train and Tune keep runs under ``uri`` (``storage.storage_path``): ``(storage_filesystem, path)``.

    The one resolution of the storage path for ``RunConfig(storage_path=…, storage_filesystem=…)``,
    ``ray.train.Result.from_path`` and ``ray.train.Checkpoint``: ``s3://bucket/prefix`` gives this process's S3
    filesystem (``endpoint_url`` honoured) and ``bucket/prefix``; a local path or ``file://`` URI gives ``None``
    (Ray's local filesystem) and the absolute path.
    """
    if is_s3(uri):
        return resolve(uri, endpoint_url)
    return None, resolve(uri)[1]


def _local_filesystem() -> pafs.LocalFileSystem:
    return _cached(("local",), pafs.LocalFileSystem, None)


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/`` (works for s3:// and local paths)."""
    if is_s3(uri) or uri.startswith("file://"):
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def _bucket_and_key(uri: str) -> tuple[str, str]:
    path = uri[len("s3://") :].lstrip("/")
    bucket, _, key = path.partition("/")
    if not bucket:
        raise StorageError(f"S3 URI {uri!r} names no bucket")
    if not key or key.endswith("/"):
        raise StorageError(f"S3 URI {uri!r} names no object (a key after the bucket)")
    return bucket, key


def read_bytes(uri: str, endpoint_url: str | None = None, policy: RetryPolicy | None = None) -> bytes:
    """The whole content of ``uri`` (an S3 object: one ``GetObject`` request per attempt).

    Args:
        policy: retries of transient errors (default :data:`DEFAULT_POLICY`: minutes, not seconds).

    Raises:
        TransientStorageError: S3 failed transiently for the whole retry budget of ``policy``.
        StorageError: a permanent error (missing object or bucket, access denied, unsupported URI), at once.
    """
    if is_s3(uri):
        bucket, key = _bucket_and_key(uri)
        client = s3_client(endpoint_url)

        pool = _http_pool(endpoint_url)

        def get() -> bytes:
            if pool is None:
                return _get_object(client, bucket, key)
            return _get_presigned(client, pool, bucket, key)

        return with_retries(f"read {uri}", get, policy)
    fs, path = resolve(uri)

    def read_local() -> bytes:
        with fs.open_input_stream(path) as stream:
            return stream.read()

    return with_retries(f"read {uri}", read_local, policy)


PRESIGNED_EXPIRY_S = 900
"""Lifetime of the presigned URL of one read attempt, in seconds."""


def _get_object(client: Any, bucket: str, key: str) -> bytes:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return body.read()  # read to the end, the connection goes back to the pool (close() would drop it)
    except BaseException:
        body.close()
        raise


def _http_pool(endpoint_url: str | None) -> Any:
    """This process's urllib3 pool for presigned S3 reads (None where they are off: an HTTP(S) proxy is set,
    which only boto3 honours)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return None
    endpoint, region, access_key = _identity(endpoint_url)

    def build() -> Any:
        import urllib3
        from botocore.httpsession import DEFAULT_CA_BUNDLE

        return urllib3.PoolManager(
            maxsize=MAX_POOL_CONNECTIONS,
            retries=False,  # this module retries, and counts
            timeout=urllib3.Timeout(connect=READ_CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
            ca_certs=os.environ.get("AWS_CA_BUNDLE") or DEFAULT_CA_BUNDLE,
        )

    return _cached(("urllib3", endpoint, region, access_key), build, None)


READ_CONNECT_TIMEOUT_S = 10.0
"""Seconds to open a connection for a read (then a transient error)."""
READ_TIMEOUT_S = 60.0
"""Seconds a read may wait for the next bytes (then a transient error)."""

_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]*)</\1>")


def _get_presigned(client: Any, pool: Any, bucket: str, key: str) -> bytes:
    """``GetObject`` as a plain HTTP GET of a URL presigned by ``client`` (its endpoint, addressing style, region
    and credentials), about a third of the CPU of ``client.get_object``. An error answer becomes botocore's
    ``ClientError`` (code, message, status), as ``get_object`` would raise it; an answer that is not an S3 error
    of its own (a redirect to the bucket's region, an unexpected status) is left to ``client.get_object``."""
    from botocore.exceptions import ClientError

    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=PRESIGNED_EXPIRY_S
    )
    response = pool.request("GET", url, preload_content=True, redirect=False)
    if response.status == 200:
        return response.data
    fields = {name.decode(): value.decode(errors="replace") for name, value in _ERROR_FIELD.findall(response.data)}
    code = fields.get("Code") or str(response.status)
    if response.status in (301, 302, 307, 400) and code != "NoSuchBucket":
        return _get_object(client, bucket, key)  # e.g. the bucket's region differs: boto3 follows S3's redirect
    error = {"Error": {"Code": code, "Message": fields.get("Message", "")}}
    error["ResponseMetadata"] = {"HTTPStatusCode": response.status}
    raise ClientError(error, "GetObject")


MULTIPART_THRESHOLD = 1 << 30
"""Bytes from which :func:`write_bytes` uploads to S3 in parts (one ``PutObject`` below)."""


def write_bytes(uri: str, data: bytes, endpoint_url: str | None = None, policy: RetryPolicy | None = None) -> None:
    """Write ``data`` to ``uri`` (replacing it), creating parent folders on local disk.

    On S3 this is one ``PutObject`` per attempt (a multipart upload from :data:`MULTIPART_THRESHOLD` bytes).

    Raises:
        TransientStorageError, StorageError: as :func:`read_bytes`.
    """
    if is_s3(uri):
        bucket, key = _bucket_and_key(uri)
        client = s3_client(endpoint_url)

        def put() -> None:
            if len(data) < MULTIPART_THRESHOLD:
                client.put_object(Bucket=bucket, Key=key, Body=data)
            else:
                import io

                client.upload_fileobj(io.BytesIO(data), bucket, key)

        with_retries(f"write {uri}", put, policy)
        return
    fs, path = resolve(uri)

    def write_local() -> None:
        fs.create_dir(posixpath.dirname(path), recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)

    with_retries(f"write {uri}", write_local, policy)


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


def iter_relative_files(
    root_uri: str,
    endpoint_url: str | None = None,
    *,
    client: Any = None,
    progress: bool = False,
    subfolder: str = "",
    policy: RetryPolicy | None = None,
) -> Iterator[str]:
    """Paths (relative to ``root_uri``) of every file below ``root_uri/subfolder``, streamed as listed.

    On S3 this pages through ``ListObjectsV2`` (1000 keys a page, one request per page, each retried after a
    transient error as ``policy`` says); locally it walks the folder. Order is the store's (sorted on S3).

    Args:
        client: a boto3 S3 client to list with (default: :func:`s3_client`).
        progress: show a tqdm bar counting the listed keys.
        subfolder: only list below this folder of the root (``"set00"``); paths stay relative to the root.

    Raises:
        MissingFolderError: a local root (or subfolder) that does not exist.
        TransientStorageError: a page failed transiently for the whole retry budget.
        StorageError: the store refuses the listing (missing bucket, credentials); names the URI.
    """
    root = _root(root_uri)
    sub = subfolder.strip("/")
    sub = sub + "/" if sub else ""
    bar = tqdm(desc=f"listing {root.uri_prefix}{sub}", unit=" keys", disable=not progress, mininterval=0.5)
    try:
        if root.bucket is not None:
            yield from _iter_s3(root, sub, client or s3_client(endpoint_url), bar, root_uri, policy)
        else:
            yield from _iter_local(root, sub, bar, root_uri)
    finally:
        bar.close()


def _iter_s3(root: _Root, sub: str, client: Any, bar: tqdm, root_uri: str, policy: RetryPolicy | None) -> Iterator[str]:
    cut = len(root.key_prefix)
    request: dict[str, Any] = {"Bucket": root.bucket, "Prefix": root.key_prefix + sub, "MaxKeys": 1000}
    while True:
        page = with_retries(f"list {root_uri}", lambda: client.list_objects_v2(**request), policy)
        contents = page.get("Contents", [])
        bar.update(len(contents))
        for item in contents:
            key = item["Key"]
            if not key.endswith("/"):  # folder markers written by some tools
                yield key[cut:]
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return
        request["ContinuationToken"] = token


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


def delete_file(uri: str, endpoint_url: str | None = None) -> None:
    """Delete the file at ``uri``; a file that does not exist is no error (S3's DeleteObject is idempotent).

    On S3 this is one ``DeleteObject`` request (no HEAD first, and no folder marker left behind, unlike pyarrow's
    ``delete_file``).
    """
    if is_s3(uri):
        bucket, key = _bucket_and_key(uri)
        client = s3_client(endpoint_url)
        with_retries(f"delete {uri}", lambda: client.delete_object(Bucket=bucket, Key=key))
        return
    _, path = resolve(uri)

    def unlink() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    with_retries(f"delete {uri}", unlink)
