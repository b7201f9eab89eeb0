from pathlib import Path

import pytest

from cmd_ray import storage
from cmd_ray.data.pairs import EmptyPrefixError, PairListing, list_two_folder_pairs


def _touch(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


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


def test_pairs_on_s3_keep_the_scheme(request):
    try:
        s3_server = request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        pytest.skip("no s3_server fixture in this test suite")
    bucket = s3_server.make_bucket("pairs-test")
    for key in ("rgb/a/1.jpg", "tir/a/1.png", "tir/a/2.png"):
        storage.write_bytes(f"s3://{bucket}/set/{key}", b"x")
    listing = list_two_folder_pairs(f"s3://{bucket}/set")
    assert listing.pairs == [(f"s3://{bucket}/set/rgb/a/1.jpg", f"s3://{bucket}/set/tir/a/1.png")]
    assert listing.unpaired == [f"s3://{bucket}/set/tir/a/2.png"]
    with pytest.raises(EmptyPrefixError, match=f"s3://{bucket}/empty"):
        list_two_folder_pairs(f"s3://{bucket}/empty")
