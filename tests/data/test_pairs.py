import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmd_ray import storage
from cmd_ray.config import load_config
from cmd_ray.data.pairs import (
    EmptyPrefixError,
    ManifestError,
    PairListing,
    PairTable,
    list_concatenated_pairs,
    list_kaist_pairs,
    list_llvip_pairs,
    list_pairs_for,
    list_two_folder_pairs,
    read_manifest,
    write_manifest,
)


def _touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


# --------------------------------------------------------------------------- two folders


def test_pairs_match_nested_paths_across_extensions(tmp_path):
    _touch(
        tmp_path,
        "rgb/a/0001.jpg", "tir/a/0001.png",
        "rgb/a/b/0002.jpeg", "tir/a/b/0002.TIFF",
        "rgb/0003.PNG", "tir/0003.bmp",
        "tir/a/0002.tif",  # same name, other folder: not a partner of rgb/a/b/0002
    )  # fmt: skip
    listing = list_two_folder_pairs(str(tmp_path))
    assert isinstance(listing, PairListing)
    root = str(tmp_path)
    assert listing.pairs == [
        (f"{root}/rgb/0003.PNG", f"{root}/tir/0003.bmp"),
        (f"{root}/rgb/a/0001.jpg", f"{root}/tir/a/0001.png"),
        (f"{root}/rgb/a/b/0002.jpeg", f"{root}/tir/a/b/0002.TIFF"),
    ]
    assert listing.unpaired == [f"{root}/tir/a/0002.tif"]
    assert listing.table.unpaired_count == 1 and listing.table.unpaired_examples == (f"{root}/tir/a/0002.tif",)
    # file:// roots and trailing slashes give the same listing
    assert list_two_folder_pairs(f"file://{root}/").pairs == listing.pairs


def test_unpaired_files_are_reported_and_non_images_ignored(tmp_path):
    _touch(
        tmp_path,
        "rgb/s1/0001.jpg", "tir/s1/0001.jpg",
        "rgb/s1/0002.jpg",  # no TIR partner
        "tir/s2/0001.png",  # no RGB partner
        "rgb/s1/0001.png",  # second RGB file with the same key
        "rgb/notes.txt", "tir/s1/0002.json", "README.md", "other/0001.jpg",  # not counted
    )  # fmt: skip
    listing = list_two_folder_pairs(str(tmp_path))
    root = str(tmp_path)
    assert listing.pairs == [(f"{root}/rgb/s1/0001.jpg", f"{root}/tir/s1/0001.jpg")]
    assert listing.unpaired == [f"{root}/rgb/s1/0001.png", f"{root}/rgb/s1/0002.jpg", f"{root}/tir/s2/0001.png"]


def test_custom_subfolders(tmp_path):
    _touch(tmp_path, "visible/x/1.jpg", "lwir/deep/x/1.png", "rgb/x/2.jpg", "tir/x/2.png")
    listing = list_two_folder_pairs(str(tmp_path), rgb_dir="visible/", tir_dir="lwir/deep")
    assert listing.pairs == [(f"{tmp_path}/visible/x/1.jpg", f"{tmp_path}/lwir/deep/x/1.png")]
    assert listing.unpaired == []
    with pytest.raises(ValueError, match="distinct"):
        list_two_folder_pairs(str(tmp_path), rgb_dir="rgb", tir_dir="rgb/")


def test_regex_match_rule_pairs_differently_named_files(tmp_path):
    _touch(
        tmp_path,
        "rgb/d1/FLIR_00001_RGB.jpg", "tir/d1/FLIR_00001_PreviewData.jpeg",
        "rgb/d1/FLIR_00002_RGB.jpg", "tir/d2/FLIR_00002_PreviewData.jpeg",  # other folder: no partner
        "rgb/d1/notes_RGB.jpg",  # the rule does not match: counted as unpaired, not dropped
    )  # fmt: skip
    listing = list_two_folder_pairs(str(tmp_path), match="regex", match_pattern=r"(?P<key>FLIR_\d+)_")
    root = str(tmp_path)
    assert listing.pairs == [(f"{root}/rgb/d1/FLIR_00001_RGB.jpg", f"{root}/tir/d1/FLIR_00001_PreviewData.jpeg")]
    assert listing.unpaired == [
        f"{root}/rgb/d1/FLIR_00002_RGB.jpg",
        f"{root}/rgb/d1/notes_RGB.jpg",
        f"{root}/tir/d2/FLIR_00002_PreviewData.jpeg",
    ]
    with pytest.raises(ValueError, match=r"\(\?P<key>"):
        list_two_folder_pairs(str(tmp_path), match="regex", match_pattern=r"(FLIR_\d+)")
    # through the config, a bad rule fails at validation, naming the key
    with pytest.raises(ValueError, match=r"data\.match_pattern"):
        load_config(None, ["data.match=regex", "data.match_pattern=(x)"])


def test_empty_prefix_error_names_the_uri_and_subfolders(tmp_path):
    _touch(tmp_path, "rgb/0001.jpg", "thermal/0001.png")
    with pytest.raises(EmptyPrefixError) as info:
        list_two_folder_pairs(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message
    assert f"{tmp_path}/rgb" in message and f"{tmp_path}/tir" in message
    assert "1 RGB and 0 TIR" in message
    assert isinstance(info.value, ValueError)

    missing = str(tmp_path / "nowhere")
    with pytest.raises(EmptyPrefixError, match=r"nowhere.*does not exist"):
        list_two_folder_pairs(missing)


# --------------------------------------------------------------------------- KAIST, LLVIP, side by side


def test_kaist_layout_pairs_visible_with_lwir_and_filters_sets(tmp_path):
    root = tmp_path / "kaist-cvpr15" / "images"
    _touch(
        root,
        "set00/V000/visible/I00000.jpg", "set00/V000/lwir/I00000.jpg",
        "set00/V000/visible/I00001.jpg", "set00/V000/lwir/I00001.jpg",
        "set00/V001/visible/I00000.jpg", "set00/V001/lwir/I00000.jpg",
        "set01/V000/visible/I00000.jpg", "set01/V000/lwir/I00000.jpg",
        "set01/V000/visible/I00002.jpg",  # no lwir partner
        "set00/V000/visible/readme.txt",
    )  # fmt: skip
    listing = list_kaist_pairs(str(root))
    assert len(listing.pairs) == 4
    assert listing.pairs[0] == (f"{root}/set00/V000/visible/I00000.jpg", f"{root}/set00/V000/lwir/I00000.jpg")
    assert listing.unpaired == [f"{root}/set01/V000/visible/I00002.jpg"]

    only = list_kaist_pairs(str(root), sets=["set01"])
    assert only.pairs == [(f"{root}/set01/V000/visible/I00000.jpg", f"{root}/set01/V000/lwir/I00000.jpg")]
    # the root may be a folder above the sets (then the whole root is listed)
    above = list_kaist_pairs(str(tmp_path / "kaist-cvpr15"), sets=["set00"])
    assert [p for p, _ in above.pairs] == [p for p, _ in listing.pairs[:3]]
    with pytest.raises(EmptyPrefixError, match="set07"):
        list_kaist_pairs(str(root), sets=["set07"])
    with pytest.raises(ValueError, match="set00"):
        list_kaist_pairs(str(root), sets=["s0"])


def test_llvip_layout_with_splits(tmp_path):
    _touch(
        tmp_path,
        "visible/train/010001.jpg", "infrared/train/010001.jpg",
        "visible/train/010002.jpg", "infrared/train/010002.jpg",
        "visible/test/190001.jpg", "infrared/test/190001.jpg",
        "infrared/test/190002.jpg",  # no visible partner
        "Annotations/010001.xml",
    )  # fmt: skip
    root = str(tmp_path)
    train = list_llvip_pairs(root, "train")
    assert train.pairs == [
        (f"{root}/visible/train/010001.jpg", f"{root}/infrared/train/010001.jpg"),
        (f"{root}/visible/train/010002.jpg", f"{root}/infrared/train/010002.jpg"),
    ]
    assert train.unpaired == []
    test = list_llvip_pairs(root, "test")
    assert test.pairs == [(f"{root}/visible/test/190001.jpg", f"{root}/infrared/test/190001.jpg")]
    assert test.unpaired == [f"{root}/infrared/test/190002.jpg"]
    assert len(list_llvip_pairs(root, "both").pairs) == 3
    with pytest.raises(EmptyPrefixError, match="visible,infrared"):
        list_llvip_pairs(str(tmp_path / "visible"), "train")


def test_concatenated_layout_lists_every_image_as_one_pair(tmp_path):
    _touch(tmp_path, "a/0001.jpg", "a/0002.png", "b/0003.jpg", "a/list.txt")
    listing = list_concatenated_pairs(str(tmp_path))
    assert listing.table.side_by_side and len(listing.table) == 3
    assert listing.pairs[0] == (f"{tmp_path}/a/0001.jpg", f"{tmp_path}/a/0001.jpg")
    _touch(tmp_path, "empty/list.txt")
    with pytest.raises(EmptyPrefixError, match=r"\[RGB \| TIR\]"):
        list_concatenated_pairs(str(tmp_path / "empty"))


def test_layout_dispatch_from_the_config(tmp_path):
    _touch(tmp_path, "set00/V000/visible/I00000.jpg", "set00/V000/lwir/I00000.jpg", "rgb/1.jpg", "tir/1.jpg")
    kaist = load_config(None, [f"data.uri={tmp_path}", "data.layout=kaist", "data.kaist_sets=[set00]"])
    assert len(list_pairs_for(kaist.data).pairs) == 1
    two = load_config(None, [f"data.uri={tmp_path}"])
    assert list_pairs_for(two.data).pairs == [(f"{tmp_path}/rgb/1.jpg", f"{tmp_path}/tir/1.jpg")]
    with pytest.raises(ValueError, match=r"data\.manifest"):
        load_config(None, ["data.layout=manifest"])


# --------------------------------------------------------------------------- manifests


def test_csv_manifest_with_relative_paths_boxes_and_incomplete_rows(tmp_path):
    (tmp_path / "m.csv").write_text(
        "rgb,tir,boxes\n"
        'v/1.jpg,t/1.jpg,"[[1, 2, 30, 40], [5, 6, 7, 8]]"\n'
        "v/2.jpg,t/2.jpg,\n"
        "v/3.jpg,,\n"  # no TIR: its RGB side is unpaired
        's3://bucket/v/4.jpg,/abs/t/4.jpg,"[]"\n'
    )
    listing = read_manifest(str(tmp_path / "m.csv"))
    root = str(tmp_path)
    assert listing.pairs == [
        (f"{root}/v/1.jpg", f"{root}/t/1.jpg"),
        (f"{root}/v/2.jpg", f"{root}/t/2.jpg"),
        ("s3://bucket/v/4.jpg", "/abs/t/4.jpg"),
    ]
    assert listing.unpaired == [f"{root}/v/3.jpg"]
    table = listing.table
    np.testing.assert_array_equal(table.boxes_of(0), [[1, 2, 30, 40], [5, 6, 7, 8]])
    assert table.boxes_of(1) is None  # not computed
    assert table.boxes_of(2).shape == (0, 4)  # computed, nothing found


def test_parquet_manifest_round_trip_and_side_by_side(tmp_path):
    pairs = [(f"{tmp_path}/rgb/{i}.jpg", f"{tmp_path}/tir/{i}.jpg") for i in range(3)]
    boxes = [np.array([[1, 2, 3, 4]], np.float32), None, np.zeros((0, 4), np.float32)]
    table = PairTable.from_pairs(pairs)
    for name in ("m.parquet", "m.csv"):
        write_manifest(str(tmp_path / name), table, boxes, metadata={"detector": "hog"})
        back = read_manifest(str(tmp_path / name)).table
        assert back.to_list() == pairs
        np.testing.assert_array_equal(back.boxes_of(0), boxes[0])
        assert back.boxes_of(1) is None and back.boxes_of(2).shape == (0, 4)
    schema = pq.read_schema(tmp_path / "m.parquet")
    assert schema.metadata[b"cmd_ray.detector"] == b"hog"

    sbs = PairTable.from_pairs([f"{tmp_path}/c/{i}.jpg" for i in range(2)], side_by_side=True)
    write_manifest(str(tmp_path / "s.parquet"), sbs)
    back = read_manifest(str(tmp_path / "s.parquet")).table
    assert back.side_by_side and back.to_list() == sbs.to_list() and back.boxes is None


def test_manifest_errors_name_the_file_row_and_value(tmp_path):
    (tmp_path / "bad.csv").write_text('rgb,tir,boxes\na.jpg,b.jpg,"[[1, 2, 0, 4]]"\n')
    with pytest.raises(ManifestError, match=r"bad\.csv, row 0.*w, h > 0"):
        read_manifest(str(tmp_path / "bad.csv"))
    (tmp_path / "json.csv").write_text("rgb,tir,boxes\na.jpg,b.jpg,[[1\n")
    with pytest.raises(ManifestError, match=r"json\.csv, row 0.*not JSON"):
        read_manifest(str(tmp_path / "json.csv"))
    (tmp_path / "cols.csv").write_text("visible,thermal\na.jpg,b.jpg\n")
    with pytest.raises(ManifestError, match=r"cols\.csv needs columns 'rgb' and 'tir'"):
        read_manifest(str(tmp_path / "cols.csv"))
    with pytest.raises(ManifestError, match=r"m\.json: unknown format"):
        read_manifest(str(tmp_path / "m.json"))
    (tmp_path / "empty.csv").write_text("rgb,tir\n,b.jpg\n")
    with pytest.raises(EmptyPrefixError, match=r"empty\.csv"):
        read_manifest(str(tmp_path / "empty.csv"))


# --------------------------------------------------------------------------- the compact table


def test_pair_table_is_a_compact_sequence_of_uris():
    pairs = [(f"s3://b/set/rgb/{i:06d}.jpg", f"s3://b/set/tir/{i:06d}.jpg") for i in range(5)]
    table = PairTable.from_pairs(pairs, boxes=[None, [[1, 2, 3, 4]], None, None, np.zeros((0, 4))])
    assert table.root == "s3://b/set/"
    assert len(table) == 5 and table[3] == pairs[3] and list(table) == pairs
    assert table.key(1) == f"{pairs[1][0]} | {pairs[1][1]}"
    picked = table.take([4, 1])
    assert picked.to_list() == [pairs[4], pairs[1]]
    np.testing.assert_array_equal(picked.boxes_of(1), [[1, 2, 3, 4]])
    assert pickle.loads(pickle.dumps(table)).to_list() == pairs
    assert PairTable.from_pairs([("a.jpg", "b.jpg")]).root == ""  # no shared folder: full names kept


def test_pair_table_of_100k_pairs_is_smaller_than_the_list_it_replaces():
    n = 100_000
    pairs = [
        (f"s3://bucket/kaist/set{i % 12:02d}/V{i % 7:03d}/visible/I{i:05d}.jpg",
         f"s3://bucket/kaist/set{i % 12:02d}/V{i % 7:03d}/lwir/I{i:05d}.jpg")
        for i in range(n)
    ]  # fmt: skip
    table = PairTable.from_pairs(pairs)
    chars = sum(len(a) + len(b) for a, b in pairs) - 2 * n * len(table.root)
    # arrow strings: the characters below the shared root plus a 4-byte offset per string
    assert table.nbytes <= chars + 8 * n + len(table.root) + 4096
    in_memory_list = sys.getsizeof(pairs) + sum(map(sys.getsizeof, pairs))
    in_memory_list += sum(sys.getsizeof(a) + sys.getsizeof(b) for a, b in pairs)
    assert table.nbytes < 0.3 * in_memory_list, (table.nbytes, in_memory_list)
    assert len(pickle.dumps(table, protocol=5)) < len(pickle.dumps(pairs, protocol=5))


# --------------------------------------------------------------------------- S3: paged listing


def _put_many(s3_server, bucket: str, keys: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = s3_server.client()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), keys))


def test_pairs_on_s3_keep_the_scheme(s3_server):
    bucket = s3_server.make_bucket("pairs-test")
    for key in ("rgb/a/1.jpg", "tir/a/1.png", "tir/a/2.png"):
        storage.write_bytes(f"s3://{bucket}/set/{key}", b"x")
    listing = list_two_folder_pairs(f"s3://{bucket}/set")
    assert listing.pairs == [(f"s3://{bucket}/set/rgb/a/1.jpg", f"s3://{bucket}/set/tir/a/1.png")]
    assert listing.unpaired == [f"s3://{bucket}/set/tir/a/2.png"]
    with pytest.raises(EmptyPrefixError, match=f"s3://{bucket}/empty"):
        list_two_folder_pairs(f"s3://{bucket}/empty")
    with pytest.raises(storage.StorageError, match=r"s3://no-such-bucket-here/x.*NoSuchBucket"):
        list_two_folder_pairs("s3://no-such-bucket-here/x")


def test_s3_listing_streams_list_pages_without_per_object_requests(s3_server):
    bucket = s3_server.make_bucket("paged-listing")
    n = 1100  # 2 200 keys: three LIST pages of at most 1000 keys
    keys = [f"kaist/set00/V000/{m}/I{i:05d}.jpg" for i in range(n) for m in ("visible", "lwir")]
    keys += ["kaist/set00/V000/visible/I99999.jpg"]  # unpaired
    _put_many(s3_server, bucket, keys)

    client = s3_server.client()
    calls: list[str] = []
    client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    listing = list_kaist_pairs(f"s3://{bucket}/kaist", client=client, progress=True)

    assert len(listing.pairs) == n and listing.table.unpaired_count == 1
    assert listing.pairs[0] == (
        f"s3://{bucket}/kaist/set00/V000/visible/I00000.jpg",
        f"s3://{bucket}/kaist/set00/V000/lwir/I00000.jpg",
    )
    assert calls == ["ListObjectsV2"] * 3, calls  # ceil(2201 / 1000) pages, nothing per object


def test_s3_manifest_round_trip(s3_server, tmp_path):
    bucket = s3_server.make_bucket("manifest-s3")
    table = PairTable.from_pairs([(f"s3://{bucket}/rgb/1.jpg", f"s3://{bucket}/tir/1.jpg")])
    write_manifest(f"s3://{bucket}/m/pairs.parquet", table, [np.array([[1, 1, 5, 5]])])
    back = read_manifest(f"s3://{bucket}/m/pairs.parquet").table
    assert back.to_list() == table.to_list()
    np.testing.assert_array_equal(back.boxes_of(0), [[1, 1, 5, 5]])
    # relative entries are relative to the manifest's folder on S3 too
    buffer = io.BytesIO()
    pq.write_table(pa.table({"rgb": ["v/1.jpg"], "tir": ["t/1.jpg"], "boxes": [json.dumps([[1, 2, 3, 4]])]}), buffer)
    storage.write_bytes(f"s3://{bucket}/m/rel.parquet", buffer.getvalue())
    rel = read_manifest(f"s3://{bucket}/m/rel.parquet")
    assert rel.pairs == [(f"s3://{bucket}/m/v/1.jpg", f"s3://{bucket}/m/t/1.jpg")]
    np.testing.assert_array_equal(rel.table.boxes_of(0), [[1, 2, 3, 4]])
