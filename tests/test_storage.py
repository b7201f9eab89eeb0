import multiprocessing
import socket
import threading
import time
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow.fs as pafs
import pytest
from s3_faults import FaultyS3Proxy

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

FAST = storage.RetryPolicy(budget_s=0.3, base_delay_s=0.002, max_delay_s=0.01)
"""Short backoffs and budget for the tests (the attempts stay real)."""


@pytest.fixture
def flaky(s3_server):
    """A :class:`FaultyS3Proxy` in front of the moto server; operations without a policy get :data:`FAST`."""
    proxy = FaultyS3Proxy(s3_server.endpoint_url)
    patch = pytest.MonkeyPatch()
    patch.setattr(storage, "DEFAULT_POLICY", FAST)
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


def test_a_persistent_transient_error_raises_the_transient_subclass_when_the_budget_is_spent(flaky, flaky_bucket):
    storage.write_bytes(f"s3://{flaky_bucket}/ok/down.bin", b"d")
    flaky.fail(f"/{flaky_bucket}/ok/down.bin", -1, "503")
    before = storage.stats()
    started = time.monotonic()
    with pytest.raises(storage.TransientStorageError, match=r"SlowDown.*transient.*budget of 0.3 s") as caught:
        storage.read_bytes(f"s3://{flaky_bucket}/ok/down.bin", flaky.endpoint_url)
    assert time.monotonic() - started >= FAST.budget_s  # it kept trying for the whole budget
    assert isinstance(caught.value, storage.StorageError)  # old callers still catch it
    after = storage.stats()
    attempts = flaky.seen[f"/{flaky_bucket}/ok/down.bin"]
    assert attempts > 5  # backoffs of at most 10 ms within 0.3 s: a budget of time, not of attempts
    assert after.retries - before.retries == attempts - 1
    assert after.transient_failures - before.transient_failures == 1


def test_a_read_outlasts_a_long_run_of_slow_downs_within_its_budget(flaky, flaky_bucket):
    """40 SlowDowns in a row: five attempts (the old policy) gave up after 1-2 s; a budget waits them out."""
    storage.write_bytes(f"s3://{flaky_bucket}/ok/patient.bin", b"p")
    flaky.fail(f"/{flaky_bucket}/ok/patient.bin", 40, "503")
    patient = storage.RetryPolicy(budget_s=60.0, base_delay_s=0.002, max_delay_s=0.01)
    before = storage.stats()
    assert storage.read_bytes(f"s3://{flaky_bucket}/ok/patient.bin", flaky.endpoint_url, patient) == b"p"
    after = storage.stats()
    assert flaky.seen[f"/{flaky_bucket}/ok/patient.bin"] == 41
    assert after.retries - before.retries == 40 and after.transient_failures == before.transient_failures


def test_backoff_is_exponential_with_full_jitter_and_a_cap():
    import random

    policy = storage.RetryPolicy(budget_s=300.0, base_delay_s=0.1, max_delay_s=20.0)
    rng = random.Random(0)
    for attempt in range(1, 40):
        ceiling = policy.ceiling_s(attempt)
        assert ceiling == min(20.0, 0.1 * 2 ** (attempt - 1))
        delays = [policy.backoff_s(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling / 4 and max(delays) > 3 * ceiling / 4  # full jitter: the whole range
    assert policy.ceiling_s(1000) == 20.0
    assert storage.DEFAULT_READ_TIMEOUT_S == 300.0
    with pytest.raises(ValueError, match="retry policy"):
        storage.RetryPolicy(budget_s=1.0, base_delay_s=1.0, max_delay_s=0.5)


def test_the_threads_of_a_process_back_off_together(flaky, flaky_bucket):
    """While the store fails, a process probes it one attempt at a time: eight threads cost about what one does."""
    uri = f"s3://{flaky_bucket}/ok/outage.bin"
    storage.write_bytes(uri, b"o")
    path = f"/{flaky_bucket}/ok/outage.bin"
    flaky.fail(path, -1, "503")
    policy = storage.RetryPolicy(budget_s=1.0, base_delay_s=0.01, max_delay_s=0.04)

    def read() -> BaseException | None:
        try:
            storage.read_bytes(uri, flaky.endpoint_url, policy)
        except storage.TransientStorageError as exc:
            return exc
        return None

    assert isinstance(read(), storage.TransientStorageError)
    alone = flaky.seen[path]
    flaky.fail(path, 0, "503")
    assert read() is None  # the store answers: the process is healthy again
    flaky.fail(path, -1, "503")
    before = flaky.seen[path]
    errors: list[BaseException | None] = []
    threads = [threading.Thread(target=lambda: errors.append(read())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    together = flaky.seen[path] - before
    assert len(errors) == 8 and all(isinstance(e, storage.TransientStorageError) for e in errors)
    # each thread on its own would make about `alone` attempts (8x in all); in step: one series plus the first 8
    assert together < 2 * alone + 8, (alone, together)


def test_one_failing_object_backs_off_and_times_out_while_other_reads_succeed(flaky, flaky_bucket):
    storage.write_bytes(f"s3://{flaky_bucket}/ok/bad-key.bin", b"x")
    storage.write_bytes(f"s3://{flaky_bucket}/ok/good-key.bin", b"g")
    flaky.fail(f"/{flaky_bucket}/ok/bad-key.bin", -1, "unavailable")
    policy = storage.RetryPolicy(budget_s=0.5, base_delay_s=0.01, max_delay_s=0.04)
    errors: list[BaseException] = []

    def read_bad() -> None:
        try:
            storage.read_bytes(f"s3://{flaky_bucket}/ok/bad-key.bin", flaky.endpoint_url, policy)
        except storage.TransientStorageError as exc:
            errors.append(exc)

    bad = threading.Thread(target=read_bad)
    bad.start()
    good = 0
    while bad.is_alive() and good < 2000:  # healthy reads alongside, each one turning the process healthy again
        assert storage.read_bytes(f"s3://{flaky_bucket}/ok/good-key.bin", flaky.endpoint_url, policy) == b"g"
        good += 1
    bad.join(30)
    assert not bad.is_alive() and len(errors) == 1 and "ServiceUnavailable" in str(errors[0])
    assert flaky.seen[f"/{flaky_bucket}/ok/bad-key.bin"] < 100  # backed off: at most 0.04 s apart, 0.5 s in all


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


def _maker(pairs: list[tuple[str, str]], endpoint_url: str, retry: storage.RetryPolicy | None = None) -> Any:
    from cmd_ray.config import load_config
    from cmd_ray.data.distill_stream import SampleMaker

    cfg = load_config(None, [f"data.uri=s3://{pairs[0][0].split('/')[2]}/synthetic/pairs", "data.progress=false"])
    return SampleMaker(pairs, cfg.data.model_dump(mode="json"), 0, 0, endpoint_url, skip_counter=None, retry=retry)


def _first_draws(pairs: list[tuple[str, str]], pair: int, count: int) -> list[int]:
    """Sample indices of stream 0, seed 0 whose first draw is pair ``pair``."""
    return [i for i in range(200) if np.random.default_rng([0, 0, i]).integers(len(pairs)) == pair][:count]


def test_sample_maker_waits_out_throttling_on_its_own_pair(flaky, s3_pairs):
    """Throttled reads are retried, never replaced: the batch is exactly the fault-free one."""
    indices = np.arange(8)
    expected = _maker(s3_pairs, flaky.endpoint_url)({"data": indices})
    flaky_key = "/" + s3_pairs[0][0][len("s3://") :]
    flaky.fail(flaky_key, 6, "503")  # pair 0 is throttled for a while
    patient = storage.RetryPolicy(budget_s=60.0, base_delay_s=0.002, max_delay_s=0.01)
    maker = _maker(s3_pairs, flaky.endpoint_url, retry=patient)
    batch = maker({"data": indices})
    for key, value in expected.items():
        np.testing.assert_array_equal(batch[key], value)
    report = maker.local_report
    assert report.retries == 6 and report.transient_failures == 0 and report.skipped == 0


def test_a_transient_failure_after_the_budget_fails_the_sample_and_draws_no_other_pair(flaky, s3_pairs):
    (index,) = _first_draws(s3_pairs, 0, 1)
    other = "/" + s3_pairs[1][0][len("s3://") :]
    flaky_key = "/" + s3_pairs[0][0][len("s3://") :]
    flaky.fail(flaky_key, -1, "503")  # pair 0 stays throttled beyond the (short) budget
    maker = _maker(s3_pairs, flaky.endpoint_url, retry=FAST)
    with pytest.raises(storage.TransientStorageError, match=rf"sample {index}: pair .* no other pair is drawn"):
        maker.sample(index)
    assert flaky.seen[other] == 0  # pair 1 never stood in
    report = maker.local_report
    assert report.transient_failures == 1 and report.skipped == 0 and report.retries == flaky.seen[flaky_key] - 1
    assert s3_pairs[0][0].rsplit("/", 1)[-1].split(".")[0] in report.transient_examples[0]
    flaky.fail(flaky_key, 0, "503")  # the store is back: the same pair makes the same sample
    expected = _maker(s3_pairs, flaky.endpoint_url).sample(index)
    for key, value in maker.sample(index).items():
        np.testing.assert_array_equal(value, expected[key])
    assert maker.local_report.skipped == 0


def test_box_detector_never_writes_a_null_box_for_a_throttled_pair(flaky, s3_pairs, tmp_path):
    from cmd_ray.config import load_config
    from cmd_ray.data.box_precompute import NOT_SERVED, UNREADABLE, BoxDetector

    cfg = load_config(None, [f"data.uri=s3://{s3_pairs[0][0].split('/')[2]}/synthetic/pairs", "data.progress=false"])
    flaky_key = "/" + s3_pairs[1][1][len("s3://") :]  # the TIR image of pair 1
    flaky.fail(flaky_key, 3, "503")
    patient = storage.RetryPolicy(budget_s=60.0, base_delay_s=0.002, max_delay_s=0.01)
    detector = BoxDetector(s3_pairs, cfg.data.model_dump(mode="json"), flaky.endpoint_url, retry=patient)
    out = detector({"data": np.arange(2)})
    assert list(out["found"] >= 0) == [True, True] and list(out["error"]) == ["", ""]
    flaky.fail(flaky_key, -1, "503")  # throttled beyond the budget: not served, which is no unreadable pair
    detector = BoxDetector(s3_pairs, cfg.data.model_dump(mode="json"), flaky.endpoint_url, retry=FAST)
    out = detector({"data": np.array([1, 0])})
    assert list(out["found"]) == [NOT_SERVED, NOT_SERVED]  # pair 0 is not tried while the store fails
    assert "SlowDown" in out["error"][0] and "not served" in out["error"][1]
    flaky.fail(flaky_key, 0, "503")
    missing = [s3_pairs[0], (s3_pairs[1][0], s3_pairs[1][1].replace(".jpg", "-absent.jpg"))]
    detector = BoxDetector(missing, cfg.data.model_dump(mode="json"), flaky.endpoint_url, retry=FAST)
    out = detector({"data": np.arange(2)})
    assert out["found"][0] >= 0 and out["found"][1] == UNREADABLE and "NoSuchKey" in out["error"][1]


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


# --------------------------------------------------------------------------- the pretraining stream's view


@pytest.fixture(scope="module")
def s3_sequences(s3_server, flaky_bucket) -> list[Any]:
    from cmd_ray.config import SynthConfig
    from cmd_ray.data.sequences import list_sequences
    from cmd_ray.data.synthetic import write_synthetic_dataset

    root = f"s3://{flaky_bucket}/sequences"
    synth = SynthConfig(num_pairs=1, num_rgb_sequences=1, num_tir_sequences=0, sequence_length=6)
    summary = write_synthetic_dataset(root, synth, progress=False)
    return list_sequences(summary.rgb_sequences_uri)


def _sequence_maker(sequences: list[Any], endpoint_url: str, retry: storage.RetryPolicy) -> Any:
    from cmd_ray.config import Config
    from cmd_ray.data.pretrain_stream import SequenceSampleMaker

    sampling = Config().data.sampling.model_dump(mode="json")
    return SequenceSampleMaker(sequences, sampling, 5, 0, 0, endpoint_url, skip_counter=None, retry=retry)


def test_sequence_maker_never_marks_a_frame_bad_after_a_transient_error(flaky, s3_sequences):
    indices = np.arange(6)
    expected = _sequence_maker(s3_sequences, flaky.endpoint_url, FAST)({"data": indices})
    path, _ = flaky.seen.most_common(1)[0]  # a frame these samples read
    flaky.fail(path, -1, "503")  # the frame stays throttled beyond the (short) budget
    maker = _sequence_maker(s3_sequences, flaky.endpoint_url, FAST)
    with pytest.raises(storage.TransientStorageError, match="no other frame pair is drawn"):
        maker({"data": indices})
    report = maker.local_report
    assert report.skipped == 0 and report.transient_failures == 1 and report.retries > 0
    flaky.fail(path, 2, "503")  # the store recovers within the next read's budget
    patient = storage.RetryPolicy(budget_s=60.0, base_delay_s=0.002, max_delay_s=0.01)
    maker._retry = patient
    batch = maker({"data": indices})  # the same maker: the frame was not marked bad
    for key, value in expected.items():
        np.testing.assert_array_equal(batch[key], value)
    assert maker.local_report.skipped == 0
