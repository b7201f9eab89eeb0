import http.client
import multiprocessing
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow.fs as pafs
import pytest

from cmd_ray import storage


def test_local_round_trip_and_listing(tmp_path):
    uri = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(uri, b"xyz")
    assert storage.read_bytes(uri) == b"xyz"
    assert storage.read_bytes("file://" + uri) == b"xyz"
    assert list(storage.iter_relative_files(str(tmp_path))) == ["a/b.bin"]
    assert storage.listing_prefix(str(tmp_path)) + "a/b.bin" == uri


def test_missing_things_are_named(tmp_path):
    with pytest.raises(storage.StorageError, match="nope"):
        storage.read_bytes(str(tmp_path / "nope"))
    with pytest.raises(storage.MissingFolderError, match="absent does not exist"):
        list(storage.iter_relative_files(str(tmp_path / "absent")))
    with pytest.raises(storage.StorageError, match="unsupported URI scheme"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(storage.StorageError, match="names no bucket"):
        storage.resolve("s3://")


def test_s3_endpoint_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs, path = storage.resolve("s3://bucket/some/prefix")
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == "bucket/some/prefix"
    assert storage.s3_endpoint() == "http://127.0.0.1:9"
    assert storage.s3_endpoint("http://other:1") == "http://other:1"


def test_s3_round_trip_through_moto_server(s3_server):
    bucket = s3_server.make_bucket("storage-test")
    uri = f"s3://{bucket}/x/y.txt"
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello"
    listed = list(storage.iter_relative_files(f"s3://{bucket}/x"))
    assert listed == ["y.txt"] and storage.listing_prefix(f"s3://{bucket}/x") + listed[0] == uri
    with pytest.raises(storage.StorageError, match="NoSuchBucket"):
        list(storage.iter_relative_files("s3://no-such-bucket/x"))


# --------------------------------------------------------------------------- real transient errors: a flaky proxy

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>flaky</RequestId></Error>"
)
PERMANENT_REDIRECT = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code>'
    b"<Message>The bucket you are attempting to access must be addressed using the specified endpoint.</Message>"
    b"<RequestId>flaky</RequestId></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>flaky</RequestId></Error>"
)


class FlakyProxy:
    """An HTTP proxy in front of the moto server that fails chosen requests for real.

    ``fail(path, times, mode, method=None)``: the next ``times`` requests for ``path`` (``/bucket/key``; ``-1`` for
    every one) are answered with ``mode``: ``"503"`` (S3's SlowDown), ``"403"`` (AccessDenied), ``"301"``
    (PermanentRedirect) or ``"reset"`` (the TCP connection is reset); the rest are forwarded to moto.
    ``seen[path]`` counts the requests per path.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urlparse(upstream)
        self.plan: dict[tuple[str | None, str], list] = {}
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_request(self) -> None:
                path = self.path.split("?")[0]
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy._next_mode(self.command, path)
                if mode == "reset":
                    linger = struct.pack("ii", 1, 0)  # close with RST, not FIN
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    self.close_connection = True
                    return
                if mode is not None:
                    data = {"503": SLOW_DOWN, "403": ACCESS_DENIED, "301": PERMANENT_REDIRECT}[mode]
                    self.send_response(int(mode))
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(name, value)
                length_out = response.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length_out))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_request  # noqa: N815 (http.server names)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, path: str, times: int, mode: str, method: str | None = None) -> None:
        with self.lock:
            self.plan[(method, path)] = [times, mode]

    def _next_mode(self, method: str, path: str) -> str | None:
        with self.lock:
            self.seen[path] = self.seen.get(path, 0) + 1
            plan = self.plan.get((method, path)) or self.plan.get((None, path))
            if plan is None or plan[0] == 0:
                return None
            plan[0] -= 1
            return plan[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(s3_server):
    """A :class:`FlakyProxy` in front of the moto server, with short backoff delays (the attempts stay real)."""
    proxy = FlakyProxy(s3_server.endpoint_url)
    patch = pytest.MonkeyPatch()
    patch.setattr(storage, "BASE_DELAY_S", 0.002)
    patch.setattr(storage, "MAX_DELAY_S", 0.01)
    try:
        yield proxy
    finally:
        patch.undo()
        proxy.close()


@pytest.fixture(scope="module")
def flaky_bucket(s3_server) -> str:
    return s3_server.make_bucket("storage-flaky")


def test_a_read_survives_transient_503s_and_counts_the_retries(flaky, flaky_bucket):
    storage.write_bytes(f"s3://{flaky_bucket}/ok/a.bin", b"payload")
    flaky.fail(f"/{flaky_bucket}/ok/a.bin", 2, "503")
    before = storage.stats()
    assert storage.read_bytes(f"s3://{flaky_bucket}/ok/a.bin", flaky.endpoint_url) == b"payload"
    after = storage.stats()
    assert flaky.seen[f"/{flaky_bucket}/ok/a.bin"] == 3  # two SlowDown answers, then the object
    assert after.retries - before.retries == 2
    assert after.transient_failures == before.transient_failures


def test_connection_resets_and_refusals_are_transient(flaky, flaky_bucket):
    storage.write_bytes(f"s3://{flaky_bucket}/ok/reset.bin", b"r")
    flaky.fail(f"/{flaky_bucket}/ok/reset.bin", 1, "reset")
    before = storage.retry_count()
    assert storage.read_bytes(f"s3://{flaky_bucket}/ok/reset.bin", flaky.endpoint_url) == b"r"
    assert storage.retry_count() - before >= 1
    with socket.socket() as probe:  # a port nobody listens on: connection refused on every attempt
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(storage.TransientStorageError, match="attempt"):
        storage.read_bytes(f"s3://{flaky_bucket}/ok/reset.bin", closed)


def test_writes_and_listings_are_retried_too(flaky, flaky_bucket):
    flaky.fail(f"/{flaky_bucket}/w/x.bin", 1, "503", method="PUT")
    before = storage.retry_count()
    storage.write_bytes(f"s3://{flaky_bucket}/w/x.bin", b"w", flaky.endpoint_url)
    assert storage.read_bytes(f"s3://{flaky_bucket}/w/x.bin") == b"w"
    flaky.fail(f"/{flaky_bucket}", 2, "503", method="GET")  # ListObjectsV2 is a GET on the bucket
    assert list(storage.iter_relative_files(f"s3://{flaky_bucket}/w", flaky.endpoint_url)) == ["x.bin"]
    assert storage.retry_count() - before == 3


def test_missing_keys_and_access_denied_fail_at_once(flaky, flaky_bucket):
    path = f"/{flaky_bucket}/absent.bin"
    before = storage.stats()
    with pytest.raises(storage.MissingObjectError, match="NoSuchKey") as missing:
        storage.read_bytes(f"s3://{flaky_bucket}/absent.bin", flaky.endpoint_url)
    assert not isinstance(missing.value, storage.TransientStorageError)
    assert isinstance(missing.value.__cause__, FileNotFoundError)  # as pyarrow's errors were (results.py)
    assert flaky.seen[path] == 1
    with pytest.raises(storage.MissingObjectError, match="NoSuchBucket"):
        storage.read_bytes("s3://no-such-bucket-flaky/x", flaky.endpoint_url)
    storage.write_bytes(f"s3://{flaky_bucket}/denied.bin", b"d")
    flaky.fail(f"/{flaky_bucket}/denied.bin", -1, "403")
    with pytest.raises(storage.StorageError, match="AccessDenied") as denied:
        storage.read_bytes(f"s3://{flaky_bucket}/denied.bin", flaky.endpoint_url)
    assert not isinstance(denied.value, storage.TransientStorageError)
    assert flaky.seen[f"/{flaky_bucket}/denied.bin"] == 1
    after = storage.stats()
    assert after.retries == before.retries and after.transient_failures == before.transient_failures


def test_a_persistent_transient_error_raises_the_transient_subclass(flaky, flaky_bucket):
    storage.write_bytes(f"s3://{flaky_bucket}/ok/down.bin", b"d")
    flaky.fail(f"/{flaky_bucket}/ok/down.bin", -1, "503")
    before = storage.stats()
    with pytest.raises(storage.TransientStorageError, match=r"SlowDown.*transient") as caught:
        storage.read_bytes(f"s3://{flaky_bucket}/ok/down.bin", flaky.endpoint_url)
    assert isinstance(caught.value, storage.StorageError)  # old callers still catch it
    after = storage.stats()
    assert flaky.seen[f"/{flaky_bucket}/ok/down.bin"] == storage.MAX_ATTEMPTS
    assert after.retries - before.retries == storage.MAX_ATTEMPTS - 1
    assert after.transient_failures - before.transient_failures == 1


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    for attempt in range(1, 12):
        ceiling = min(storage.MAX_DELAY_S, storage.BASE_DELAY_S * 2 ** (attempt - 1))
        delays = {storage._backoff_s(attempt) for _ in range(20)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered
    assert storage._backoff_s(30) <= storage.MAX_DELAY_S


def test_pyarrow_errors_are_classified_from_what_pyarrow_really_says(flaky, flaky_bucket):
    """The classifier against pyarrow's own messages (resolve() hands out pyarrow filesystems to other callers)."""
    storage.write_bytes(f"s3://{flaky_bucket}/pa/k.bin", b"k")
    host = urlparse(flaky.endpoint_url).netloc
    fs = pafs.S3FileSystem(
        region="us-east-1",
        endpoint_override=host,
        scheme="http",
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
    )

    def error(path: str) -> BaseException:
        with pytest.raises(OSError) as caught, fs.open_input_stream(path) as stream:
            stream.read()
        return caught.value

    path = f"/{flaky_bucket}/pa/k.bin"
    flaky.fail(path, -1, "503", method="HEAD")  # "AWS Error UNKNOWN (HTTP status 503) during HeadObject"
    assert storage.is_transient(error(f"{flaky_bucket}/pa/k.bin"))
    flaky.fail(path, -1, "503", method="GET")  # "AWS Error INTERNAL_FAILURE during GetObject operation"
    flaky.fail(path, 0, "503", method="HEAD")
    assert storage.is_transient(error(f"{flaky_bucket}/pa/k.bin"))
    flaky.fail(path, 0, "503", method="GET")
    flaky.fail(path, -1, "reset", method="HEAD")  # "AWS Error NETWORK_CONNECTION … Connection reset by peer"
    assert storage.is_transient(error(f"{flaky_bucket}/pa/k.bin"))
    flaky.fail(path, -1, "403", method="HEAD")  # "AWS Error ACCESS_DENIED during HeadObject"
    assert not storage.is_transient(error(f"{flaky_bucket}/pa/k.bin"))
    missing = error(f"{flaky_bucket}/pa/absent.bin")  # FileNotFoundError "Path does not exist"
    assert isinstance(missing, FileNotFoundError) and not storage.is_transient(missing)


def test_one_client_and_one_filesystem_per_process(s3_server, flaky_bucket):
    storage.write_bytes(f"s3://{flaky_bucket}/many/0.bin", b"0")
    client = storage.s3_client()
    fs, _ = storage.resolve(f"s3://{flaky_bucket}/many/0.bin")
    before = storage.stats()
    for i in range(20):
        storage.write_bytes(f"s3://{flaky_bucket}/many/{i}.bin", str(i).encode())
        assert storage.read_bytes(f"s3://{flaky_bucket}/many/{i}.bin") == str(i).encode()
        assert storage.resolve(f"s3://{flaky_bucket}/many/{i}.bin")[0] is fs
        assert storage.s3_client() is client
        assert storage.s3_filesystem() is fs
    assert len(list(storage.iter_relative_files(f"s3://{flaky_bucket}/many"))) == 20
    after = storage.stats()
    assert after.clients_created == before.clients_created
    assert after.filesystems_created == before.filesystems_created
    assert storage.s3_client(s3_server.endpoint_url + "/") is not client  # another endpoint, another client


def _child_reads(uri: str, queue: Any) -> None:
    queue.put((storage.read_bytes(uri), storage.stats().clients_created))


def test_a_forked_child_builds_its_own_client(s3_server, flaky_bucket):
    uri = f"s3://{flaky_bucket}/fork.bin"
    storage.write_bytes(uri, b"f")
    assert storage.stats().clients_created >= 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(uri, queue))
    child.start()
    data, clients = queue.get(timeout=60)
    child.join(60)
    assert data == b"f" and clients == 1  # fresh counters and a client of its own, not the parent's


# --------------------------------------------------------------------------- the sample maker's view


@pytest.fixture(scope="module")
def s3_pairs(s3_server, flaky_bucket) -> list[tuple[str, str]]:
    from cmd_ray.config import SynthConfig
    from cmd_ray.data.pairs import list_two_folder_pairs
    from cmd_ray.data.synthetic import write_synthetic_dataset

    root = f"s3://{flaky_bucket}/synthetic"
    write_synthetic_dataset(root, SynthConfig(num_pairs=2, num_rgb_sequences=0, num_tir_sequences=0), progress=False)
    return list(list_two_folder_pairs(f"{root}/pairs").pairs)


def _maker(pairs: list[tuple[str, str]], endpoint_url: str) -> Any:
    from cmd_ray.config import load_config
    from cmd_ray.data.distill_stream import SampleMaker

    cfg = load_config(None, [f"data.uri=s3://{pairs[0][0].split('/')[2]}/synthetic/pairs", "data.progress=false"])
    return SampleMaker(pairs, cfg.data.model_dump(mode="json"), 0, 0, endpoint_url, skip_counter=None)


def test_sample_maker_keeps_a_pair_that_failed_transiently(flaky, s3_pairs):
    flaky_key = "/" + s3_pairs[0][0][len("s3://") :]
    flaky.fail(flaky_key, -1, "503")  # pair 0 is throttled for now
    maker = _maker(s3_pairs, flaky.endpoint_url)
    batch = maker({"data": np.arange(8)})
    assert len(batch["ref_box"]) == 8  # pair 1 stood in
    report = maker.local_report
    assert report.transient_failures >= 1 and report.skipped == 0
    assert report.retries == report.transient_failures * (storage.MAX_ATTEMPTS - 1)
    assert s3_pairs[0][0].rsplit("/", 1)[-1].split(".")[0] in report.transient_examples[0]
    flaky.fail(flaky_key, 0, "503")  # the throttling is over: pair 0 is drawn and used again
    requests = flaky.seen[flaky_key]
    maker({"data": np.arange(8, 16)})
    assert flaky.seen[flaky_key] > requests
    assert maker.local_report.skipped == 0


def test_sample_maker_marks_a_missing_pair_bad_once(flaky, s3_pairs):
    absent = (s3_pairs[0][0].replace(".jpg", "-absent.jpg"), s3_pairs[0][1].replace(".jpg", "-absent.jpg"))
    pairs = [absent, s3_pairs[1]]
    maker = _maker(pairs, flaky.endpoint_url)
    before = storage.retry_count()
    maker({"data": np.arange(8)})
    report = maker.local_report
    assert report.skipped == 1 and report.transient_failures == 0 and report.retries == 0
    assert "NoSuchKey" in report.examples[0]
    assert flaky.seen["/" + absent[0][len("s3://") :]] == 1  # read once, never retried, never again
    assert storage.retry_count() == before


def test_prefetched_batches_are_the_samples_of_sequential_reads(s3_server, s3_pairs):
    batched = _maker(s3_pairs, s3_server.endpoint_url)({"data": np.arange(6)})  # reads on the prefetch threads
    one_by_one = _maker(s3_pairs, s3_server.endpoint_url)
    for row, index in enumerate(range(6)):
        sample = one_by_one.sample(index)  # sequential reads, no prefetch
        for key, value in sample.items():
            np.testing.assert_array_equal(batched[key][row], value)


def test_a_redirected_presigned_read_is_left_to_boto3(flaky, flaky_bucket):
    """A 301 (the bucket lives in another region) is not an error of the object: boto3's client reads it instead."""
    storage.write_bytes(f"s3://{flaky_bucket}/ok/moved.bin", b"m")
    flaky.fail(f"/{flaky_bucket}/ok/moved.bin", 1, "301")
    before = storage.retry_count()
    assert storage.read_bytes(f"s3://{flaky_bucket}/ok/moved.bin", flaky.endpoint_url) == b"m"
    assert flaky.seen[f"/{flaky_bucket}/ok/moved.bin"] == 2 and storage.retry_count() == before


def test_ray_storage_is_the_one_resolution_of_the_storage_path(tmp_path, monkeypatch, s3_server):
    monkeypatch.chdir(tmp_path)
    assert storage.ray_storage("runs") == (None, str(tmp_path / "runs"))
    assert storage.ray_storage(f"file://{tmp_path}/runs") == (None, str(tmp_path / "runs"))
    filesystem, path = storage.ray_storage("s3://bucket/prefix/", s3_server.endpoint_url)
    assert path == "bucket/prefix"
    assert filesystem is storage.s3_filesystem(s3_server.endpoint_url)  # this process's one S3 filesystem
