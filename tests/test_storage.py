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
