"""The one sequence-folder reader (numbered frames + ground truth), on local disk and on S3 (moto server mode)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator

import numpy as np
import pytest

from cmd_ray import storage
from cmd_ray.config import SynthConfig
from cmd_ray.data.sequence_folders import (
    BoxCountError,
    MissingFramesError,
    MissingGroundTruthError,
    SequenceError,
    list_root,
    numbered_frames,
    parse_boxes,
    read_sequence_folder,
)
from cmd_ray.data.sequences import list_sequences
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.evaluation.benchmarks import read_synthetic


def _write(root: str, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        storage.write_bytes(f"{root}/{rel}", content.encode() if isinstance(content, str) else content)


def _sequence(name: str, frames: int, *, sep: str = ",", gt_lines: int | None = None) -> dict[str, str | bytes]:
    """Files of one sequence folder: ``frames`` 4-digit JPEG names and ``gt_lines`` (default: one per frame) boxes."""
    files: dict[str, str | bytes] = {f"{name}/img/{t:04d}.jpg": b"jpeg" for t in range(1, frames + 1)}
    lines = frames if gt_lines is None else gt_lines
    files[f"{name}/groundtruth_rect.txt"] = "".join(f"{t}{sep}2{sep}10{sep}20\n" for t in range(1, lines + 1))
    return files


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty root: a local folder, or a fresh prefix of a moto bucket."""
    if request.param == "local":
        (tmp_path / "root").mkdir()
        yield str(tmp_path / "root")
    else:
        server = request.getfixturevalue("s3_server")
        bucket = server.make_bucket("sequence-folders")
        yield f"s3://{bucket}/{tmp_path.name}"


def test_one_listing_reads_every_sequence_with_frames_in_order(root: str) -> None:
    _write(root, {**_sequence("a", 3), **_sequence("b", 12, sep="\t"), "README.txt": "not a sequence"})
    listing = list_root(root)
    assert listing.prefix == storage.listing_prefix(root)
    assert listing.sequence_dirs() == ["a", "b"]
    assert listing.dirs_with("groundtruth_rect.txt") == ["a", "b"]
    b = read_sequence_folder(listing, "b")
    assert b.name == "b" and len(b.frames) == 12
    assert b.frames[0] == listing.prefix + "b/img/0001.jpg" and b.frames[11].endswith("b/img/0012.jpg")
    assert b.boxes.dtype == np.float64 and b.boxes.shape == (12, 4)
    np.testing.assert_array_equal(b.boxes[11], [12, 2, 10, 20])


def test_an_s3_root_is_listed_with_one_request(s3_server) -> None:
    bucket = s3_server.make_bucket("sequence-folders-requests")
    root = f"s3://{bucket}/three"
    _write(root, {**_sequence("a", 2), **_sequence("b", 2), **_sequence("c", 2)})
    lists: list[dict] = []
    events = storage.s3_client().meta.events

    def count(params: dict, **_: object) -> None:
        lists.append(params)

    events.register("before-call.s3.ListObjectsV2", count)
    try:
        listing = list_root(root)
        sequences = [read_sequence_folder(listing, name) for name in listing.sequence_dirs()]
    finally:
        events.unregister("before-call.s3.ListObjectsV2", count)
    assert len(lists) == 1
    assert [s.name for s in sequences] == ["a", "b", "c"] and all(len(s.frames) == 2 for s in sequences)


def test_subfolders_limit_the_listing_and_missing_ones_are_skipped(root: str) -> None:
    _write(root, {**_sequence("a", 2), **_sequence("b", 2)})
    listing = list_root(root, subfolders=["b", "nope"])
    assert listing.sequence_dirs() == ["b"]
    assert read_sequence_folder(listing, "b").frames[0] == listing.prefix + "b/img/0001.jpg"


def test_a_missing_local_root_is_named(tmp_path) -> None:
    for subfolders in (None, ["a"]):
        with pytest.raises(storage.MissingFolderError, match=f"{tmp_path}/nope does not exist"):
            list_root(str(tmp_path / "nope"), subfolders=subfolders)


def test_hidden_files_are_left_out_of_the_listing(tmp_path) -> None:
    _write(str(tmp_path), {**_sequence("a", 2), "a/img/.0003.jpg": b"x", "a/img/._0001.jpg": b"x"})
    listing = list_root(str(tmp_path))
    assert sorted(listing.files_in("a/img")) == ["0001.jpg", "0002.jpg"]
    assert len(read_sequence_folder(listing, "a").frames) == 2


def test_frames_and_ground_truth_may_live_elsewhere_with_a_fixed_width(root: str) -> None:
    """The PTB-TIR shape: ``tirsequences/<seq>/img/00000001.jpg`` and ``tiranno/<seq>.txt``."""
    _write(root, {f"tirsequences/s/img/{t:08d}.jpg": b"x" for t in (1, 2)} | {"tiranno/s.txt": "1 2 3 4\n5 6 7 8\n"})
    listing = list_root(root)
    assert listing.sequence_dirs("tirsequences/") == ["s"]
    seq = read_sequence_folder(listing, "s", frames_folder="tirsequences/s/img", ground_truth="tiranno/s.txt", digits=8)
    assert [f.rsplit("/", 1)[1] for f in seq.frames] == ["00000001.jpg", "00000002.jpg"]
    np.testing.assert_array_equal(seq.boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
    with pytest.raises(MissingFramesError, match=r"no 4-digit numbered frames .* in .*tirsequences/s/img"):
        read_sequence_folder(listing, "s", frames_folder="tirsequences/s/img", ground_truth="tiranno/s.txt", digits=4)


# ------------------------------------------------------------------------------------------------- bad input


def test_missing_ground_truth_names_the_file(root: str) -> None:
    _write(root, {"seq/img/0001.jpg": b"x"})
    listing = list_root(root)
    with pytest.raises(MissingGroundTruthError, match=r"ground truth file not found: .*seq/groundtruth_rect\.txt$"):
        read_sequence_folder(listing, "seq")
    with pytest.raises(FileNotFoundError) as caught:
        read_sequence_folder(listing, "seq")
    assert caught.value.uri == listing.prefix + "seq/groundtruth_rect.txt"


def test_a_frame_gap_names_the_folder_and_the_missing_numbers(root: str) -> None:
    files = _sequence("seq", 6)
    del files["seq/img/0003.jpg"], files["seq/img/0005.jpg"]
    _write(root, files)
    listing = list_root(root)
    with pytest.raises(SequenceError, match=r"seq/img: frames must be numbered 1\.\.T .* missing \[3, 5\]"):
        read_sequence_folder(listing, "seq")


def test_a_malformed_line_names_the_file_and_line(root: str) -> None:
    _write(root, {"seq/img/0001.jpg": b"x", "seq/img/0002.jpg": b"x", "seq/groundtruth_rect.txt": "1,2,3,4\n\n1,2,3\n"})
    listing = list_root(root)
    with pytest.raises(SequenceError, match=r"seq/groundtruth_rect\.txt:3: expected 4 numbers x,y,w,h"):
        read_sequence_folder(listing, "seq")


def test_boxes_and_frames_must_agree_in_number(root: str) -> None:
    _write(root, {**_sequence("short", 3, gt_lines=2), **_sequence("empty", 2, gt_lines=0)})
    listing = list_root(root)
    with pytest.raises(BoxCountError, match=r"short/groundtruth_rect\.txt: 2 ground-truth boxes but 3 frames in ") as e:
        read_sequence_folder(listing, "short")
    assert (e.value.num_boxes, e.value.num_frames) == (2, 3)
    assert e.value.frames_folder == listing.prefix + "short/img"
    with pytest.raises(BoxCountError, match=r"empty/groundtruth_rect\.txt: ground truth file has no boxes"):
        read_sequence_folder(listing, "empty")


def test_a_folder_without_numbered_frames_is_named(root: str) -> None:
    _write(root, {"seq/img/cover.jpg": b"x", "seq/img/0001.txt": b"x", "seq/groundtruth_rect.txt": "1,2,3,4\n"})
    listing = list_root(root)
    for numbered_from_one in (True, False):
        with pytest.raises(
            MissingFramesError, match=r"no numbered frames \(\.jpg, \.jpeg, \.png, \.bmp\) in .*seq/img"
        ):
            read_sequence_folder(listing, "seq", numbered_from_one=numbered_from_one)


def test_errors_survive_pickling_with_their_facts() -> None:
    """A reader error raised in a Ray task reaches the driver pickled."""
    for error in (
        BoxCountError("s3://b/gt.txt", "s3://b/img", 2, 3),
        MissingFramesError("s3://b/img", 8),
        MissingGroundTruthError("s3://b/gt.txt"),
        SequenceError("s3://b/gt.txt:1: bad"),
    ):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and str(back) == str(error) and vars(back) == vars(error)


# ------------------------------------------------------------------------------------------------- frame numbering


def test_numbering_from_one_or_in_any_order() -> None:
    names = ["10.jpg", "2.JPG", "3.png", "notes.txt", "x1.jpg", "0004.bmp"]
    assert numbered_frames(names, "d", numbered_from_one=False) == ("d/2.JPG", "d/3.png", "d/0004.bmp", "d/10.jpg")
    with pytest.raises(SequenceError, match=r"^d: frames must be numbered 1\.\.T .*missing \[1, 5, 6, 7, 8, 9\]"):
        numbered_frames(names, "d")
    assert numbered_frames(["2.jpg", "1.jpg", "3.jpg"], "d") == ("d/1.jpg", "d/2.jpg", "d/3.jpg")
    assert numbered_frames(["0001.jpg", "00000002.jpg"], "d", digits=4, numbered_from_one=False) == ("d/0001.jpg",)
    assert numbered_frames([], "d", numbered_from_one=False) == ()
    with pytest.raises(SequenceError, match="repeats"):
        numbered_frames(["1.jpg", "01.jpg"], "d")


def test_parse_boxes_separators_nan_and_blank_lines() -> None:
    boxes = parse_boxes("1,2,3,4\n5\t6\t7\t8\n\n9 10 11 12\n13, 14, 15, 16\nnan,NaN,nan,nan\n", "gt.txt")
    np.testing.assert_array_equal(boxes[:4], np.arange(1, 17).reshape(4, 4))
    assert np.isnan(boxes[4]).all()
    assert parse_boxes("", "gt.txt").shape == (0, 4)
    with pytest.raises(SequenceError, match=r"^gt\.txt:2: .* got '1,2,3,4,5'"):
        parse_boxes("1,2,3,4\n1,2,3,4,5\n", "gt.txt")


# ------------------------------------------------------------------------------------------------- both callers


def test_pretraining_and_benchmark_readers_see_the_same_sequences(root: str) -> None:
    """``list_sequences`` and the synthetic benchmark reader, both built on this reader, agree on one folder."""
    cfg = SynthConfig(
        num_pairs=1, image_width=48, image_height=32, num_rgb_sequences=2, num_tir_sequences=0, sequence_length=4
    )
    uri = write_synthetic_dataset(root, cfg, progress=False, workers=1, io_workers=1).rgb_sequences_uri
    pretraining = list_sequences(uri)
    benchmark = read_synthetic(uri)
    assert [s.name for s in pretraining] == [s.name for s in benchmark] == ["synth_rgb_000", "synth_rgb_001"]
    for mine, theirs in zip(pretraining, benchmark, strict=True):
        assert mine.frames == theirs.frames and len(mine.frames) == 4
        np.testing.assert_array_equal(mine.boxes, theirs.ground_truth)
