"""Labeled RGB sequences for teacher pretraining: listing (local and moto-S3), errors, frame pairs, samples."""

import numpy as np
import pytest

from cmd_ray.config import SamplingConfig, SynthConfig
from cmd_ray.data.boxes import box_iou
from cmd_ray.data.sequences import (
    SequenceError,
    draw_frame_pair,
    list_sequences,
    make_frame_pair_sample,
    photometric,
    split_sequences,
)
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.storage import write_bytes

SEQUENCES = SynthConfig(num_pairs=1, num_rgb_sequences=3, num_tir_sequences=0, sequence_length=6)


@pytest.fixture(scope="module")
def local_sequences(tmp_path_factory):
    root = tmp_path_factory.mktemp("sequences")
    return write_synthetic_dataset(str(root), SEQUENCES, progress=False).rgb_sequences_uri


def test_local_sequences_are_listed_with_frames_in_order_and_their_boxes(local_sequences):
    sequences = list_sequences(local_sequences)
    assert [s.name for s in sequences] == ["synth_rgb_000", "synth_rgb_001", "synth_rgb_002"]
    for sequence in sequences:
        assert len(sequence.frames) == 6 and sequence.boxes.shape == (6, 4)
        assert [f.rsplit("/", 1)[1] for f in sequence.frames] == [f"{t:04d}.jpg" for t in range(1, 7)]
        assert sequence.valid.all()


def test_sequences_on_s3_are_listed_the_same_way(s3_server):
    bucket = s3_server.make_bucket("sequences-unit")
    summary = write_synthetic_dataset(f"s3://{bucket}/synth", SEQUENCES, progress=False)
    sequences = list_sequences(summary.rgb_sequences_uri)
    assert len(sequences) == 3
    assert sequences[0].frames[0] == f"s3://{bucket}/synth/rgb_sequences/synth_rgb_000/img/0001.jpg"


def test_frames_without_boxes_name_the_ground_truth_file(tmp_path):
    write_bytes(str(tmp_path / "seq" / "img" / "0001.jpg"), b"x")
    write_bytes(str(tmp_path / "seq" / "img" / "0002.jpg"), b"x")
    write_bytes(str(tmp_path / "seq" / "groundtruth_rect.txt"), b"1,2,3,4\n")
    with pytest.raises(SequenceError, match=r"groundtruth_rect\.txt: 1 boxes for 2 frames"):
        list_sequences(str(tmp_path))


def test_a_malformed_line_is_named_with_its_number(tmp_path):
    write_bytes(str(tmp_path / "seq" / "img" / "0001.jpg"), b"x")
    write_bytes(str(tmp_path / "seq" / "groundtruth_rect.txt"), b"1,2,three,4\n")
    with pytest.raises(SequenceError, match=r"groundtruth_rect\.txt:1: expected 4 numbers"):
        list_sequences(str(tmp_path))


def test_missing_ground_truth_and_empty_roots_are_errors(tmp_path):
    write_bytes(str(tmp_path / "seq" / "img" / "0001.jpg"), b"x")
    with pytest.raises(SequenceError, match="missing"):
        list_sequences(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SequenceError, match="no labeled sequences"):
        list_sequences(str(tmp_path / "empty"))


def test_validation_holds_out_whole_sequences(local_sequences):
    sequences = list_sequences(local_sequences)
    train, val = split_sequences(sequences, 0.34)
    assert len(val) == 1 and len(train) == 2
    assert not {s.name for s in train} & {s.name for s in val}
    assert split_sequences(sequences, 0.0) == (sequences, [])


def test_frame_pairs_respect_the_gap_and_skip_frames_without_a_box():
    valid = np.ones(50, dtype=bool)
    valid[[3, 4, 5]] = False
    rng = np.random.default_rng(0)
    pairs = [draw_frame_pair(valid, 4, rng) for _ in range(500)]
    assert all(abs(a - b) <= 4 for a, b in pairs)
    assert not {i for pair in pairs for i in pair} & {3, 4, 5}
    assert len({b - a for a, b in pairs}) == 9  # every gap in [-4, 4] occurs


def test_a_supervised_sample_crops_each_frame_around_its_own_box():
    cfg = SamplingConfig(output_sz=128, num_proposals=16)
    rng = np.random.default_rng(3)
    ref_image = np.zeros((120, 160, 3), np.uint8)
    test_image = np.zeros((100, 200, 3), np.uint8)
    ref_box = np.array([20.0, 30.0, 24.0, 18.0])
    test_box = np.array([150.0, 40.0, 30.0, 20.0])
    ref_image[30:48, 20:44] = 255
    test_image[40:60, 150:180] = 255
    sample = make_frame_pair_sample(ref_image, ref_box, test_image, test_box, cfg, rng)
    assert sample["rgb_ref"].shape == (128, 128, 3) and sample["rgb_test"].shape == (128, 128, 3)
    assert "tir_ref" not in sample
    for crop_key, box_key in (("rgb_ref", "ref_box"), ("rgb_test", "test_box")):
        x, y, w, h = sample[box_key]
        inside = sample[crop_key][int(y + 0.25 * h) : int(y + 0.75 * h), int(x + 0.25 * w) : int(x + 0.75 * w)]
        assert inside.size and inside.min() > 200, f"{box_key} does not land on the target in {crop_key}"
    peak = np.unravel_index(np.argmax(sample["test_label"]), sample["test_label"].shape)
    x, y, w, h = sample["test_box"]
    assert abs((peak[1] + 0.5) * 16 - (x + w / 2)) <= 16 and abs((peak[0] + 0.5) * 16 - (y + h / 2)) <= 16
    np.testing.assert_allclose(sample["proposal_iou"], box_iou(sample["test_proposals"], sample["test_box"]), atol=1e-6)


def test_photometric_augmentation_changes_pixels_only():
    """Grey crops and brightness jitter (DiMP's training recipe) leave crops, labels and proposals as they were."""
    cfg = SamplingConfig(output_sz=64, num_proposals=8)
    pixels = np.random.default_rng(0).integers(20, 200, (90, 120, 3), dtype=np.uint8)
    boxes = (np.array([30.0, 20.0, 24.0, 30.0]), np.array([40.0, 30.0, 26.0, 28.0]))
    plain = make_frame_pair_sample(pixels, boxes[0], pixels, boxes[1], cfg, np.random.default_rng(5))
    grey = make_frame_pair_sample(
        pixels, boxes[0], pixels, boxes[1], cfg, np.random.default_rng(5), grayscale_probability=1.0
    )
    bright = make_frame_pair_sample(
        pixels, boxes[0], pixels, boxes[1], cfg, np.random.default_rng(5), brightness_jitter=0.2
    )
    for key in ("ref_box", "test_box", "test_label", "test_proposals", "proposal_iou"):
        np.testing.assert_array_equal(plain[key], grey[key])
        np.testing.assert_array_equal(plain[key], bright[key])
    for key in ("rgb_ref", "rgb_test"):
        assert grey[key].dtype == np.uint8 and grey[key].shape == plain[key].shape
        assert np.all(grey[key] == grey[key][..., :1])  # the same value in all three channels
        assert not np.array_equal(plain[key][..., 0], plain[key][..., 1])
        ratio = bright[key].astype(np.float64).sum() / plain[key].astype(np.float64).sum()
        assert 0.8 - 0.01 <= ratio <= 1.2 + 0.01 and ratio != 1.0


def test_photometric_uses_luma_and_clips():
    crop = np.zeros((2, 2, 3), np.uint8)
    crop[..., 0] = 200  # pure red: BT.601 luma 0.299 * 200
    grey = photometric(crop, grey=True, brightness=1.0)
    assert np.all(np.abs(grey.astype(int) - round(0.299 * 200)) <= 1)
    assert photometric(crop, grey=False, brightness=1.5)[0, 0].tolist() == [255, 0, 0]
    np.testing.assert_array_equal(photometric(crop, grey=False, brightness=1.0), crop)
