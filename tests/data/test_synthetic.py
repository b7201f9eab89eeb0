"""The procedural RGB–TIR generator: determinism, shapes, a real modality gap, labels, and the on-disk layout."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from cmd_ray.config import SynthConfig
from cmd_ray.data.images import decode_rgb, decode_tir
from cmd_ray.data.synthetic import (
    ATTRIBUTES,
    generate_pair,
    generate_pair_with_info,
    generate_sequence,
    item_rng,
    write_synthetic_dataset,
)

W, H = 160, 128


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)


# ---------------------------------------------------------------------------------------------------------- pairs


@pytest.mark.parametrize(("width", "height"), [(160, 128), (97, 64)])
def test_pair_shapes_and_dtypes(width: int, height: int) -> None:
    rgb, tir = generate_pair(_rng(0), width, height)
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    assert tir.shape == (height, width) and tir.dtype == np.uint8
    assert rgb.std() > 5 and tir.std() > 2  # not blank


def test_pair_is_deterministic_per_seed() -> None:
    rgb1, tir1 = generate_pair(_rng(7), W, H)
    rgb2, tir2 = generate_pair(_rng(7), W, H)
    np.testing.assert_array_equal(rgb1, rgb2)
    np.testing.assert_array_equal(tir1, tir2)
    rgb3, tir3 = generate_pair(_rng(8), W, H)
    assert not np.array_equal(rgb1, rgb3)
    assert not np.array_equal(tir1, tir3)
    rgb4, tir4, _ = generate_pair_with_info(_rng(7), W, H)
    np.testing.assert_array_equal(rgb1, rgb4)
    np.testing.assert_array_equal(tir1, tir4)


def test_item_rng_depends_on_seed_kind_and_index() -> None:
    draws = {
        key: item_rng(*key).integers(0, 2**62)
        for key in [(0, "pair", 0), (0, "pair", 1), (1, "pair", 0), (0, "tir_sequence", 0), (-3, "pair", 0)]
    }
    assert len(set(draws.values())) == len(draws)
    assert item_rng(0, "pair", 1).integers(0, 2**62) == draws[(0, "pair", 1)]


def _pairs(n: int) -> list[tuple[np.ndarray, np.ndarray, object]]:
    return [generate_pair_with_info(item_rng(123, "pair", i), W, H) for i in range(n)]


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray, object]]:
    return _pairs(60)


def test_modality_gap_grey_rgb_is_not_tir(pairs) -> None:
    """TIR is not a colour conversion of RGB: their pixel correlation is weak on average and never near 1."""
    corrs = np.array([np.corrcoef(_grey(rgb).ravel(), tir.astype(np.float64).ravel())[0, 1] for rgb, tir, _ in pairs])
    assert np.abs(corrs).mean() < 0.5, corrs
    assert corrs.max() < 0.9, corrs


def test_objects_are_textured_in_rgb_and_smooth_in_tir(pairs) -> None:
    ratios = []
    for rgb, tir, info in pairs:
        if info.mask is None:
            continue
        inside = cv2.erode((info.mask > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if inside.sum() < 50:
            continue
        ratios.append(_grey(rgb)[inside].var() / max(tir[inside].astype(np.float64).var(), 1e-6))
    assert len(ratios) >= 30
    assert np.median(ratios) > 4.0, sorted(ratios)


def test_warm_objects_stand_out_in_tir_unless_in_crossover(pairs) -> None:
    contrast: dict[bool, list[float]] = {True: [], False: []}
    for _, tir, info in pairs + _pairs_with_crossover():
        if info.mask is None or (info.mask > 0.5).sum() < 80:
            continue
        mask = (info.mask > 0.5).astype(np.uint8)
        inner = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0
        ring = (cv2.dilate(mask, np.ones((9, 9), np.uint8)) > 0) & ~(cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0)
        contrast[info.crossover].append(abs(float(tir[inner].mean()) - float(tir[ring].mean())))
    assert len(contrast[True]) >= 3 and len(contrast[False]) >= 20
    assert np.median(contrast[False]) > 25
    assert np.median(contrast[True]) < 0.4 * np.median(contrast[False]), contrast


def _pairs_with_crossover() -> list[tuple[np.ndarray, np.ndarray, object]]:
    found = []
    for i in range(200):
        rgb, tir, info = generate_pair_with_info(item_rng(5, "pair", i), W, H)
        if info.crossover:
            found.append((rgb, tir, info))
        if len(found) == 5:
            break
    return found


def test_center_box_usually_but_not_always_covers_an_object(pairs) -> None:
    side = 0.3 * min(W, H)
    y0, x0 = int(H / 2 - side / 2), int(W / 2 - side / 2)
    covered = []
    for _, _, info in pairs:
        fraction = 0.0 if info.mask is None else float(info.mask[y0 : y0 + int(side), x0 : x0 + int(side)].mean())
        covered.append(fraction > 0.2)
    assert 0.6 <= np.mean(covered) < 1.0, np.mean(covered)


def test_pair_box_is_the_main_objects_silhouette(pairs) -> None:
    checked = 0
    for _, _, info in pairs:
        if info.box is None or (info.mask > 0.5).sum() < 20:
            continue
        x, y, w, h = info.box
        assert x >= 0 and y >= 0 and x + w <= W + 1e-3 and y + h <= H + 1e-3
        rows = np.flatnonzero((info.mask > 0.5).any(axis=1))
        cols = np.flatnonzero((info.mask > 0.5).any(axis=0))
        # the visible part lies inside the box (occluders can only shrink it)
        assert cols[0] >= x - 1.5 and cols[-1] + 1 <= x + w + 1.5
        assert rows[0] >= y - 1.5 and rows[-1] + 1 <= y + h + 1.5
        checked += 1
    assert checked >= 30


# ------------------------------------------------------------------------------------------------------ sequences


@pytest.mark.parametrize("modality", ["rgb", "tir"])
def test_sequence_shapes_boxes_inside_and_moving(modality: str) -> None:
    for seed in range(4):
        frames, boxes, attributes = generate_sequence(_rng(seed), 96, 80, 20, modality)
        assert len(frames) == 20
        shape = (80, 96, 3) if modality == "rgb" else (80, 96)
        assert all(f.shape == shape and f.dtype == np.uint8 for f in frames)
        assert boxes.shape == (20, 4) and boxes.dtype == np.float32
        x, y, w, h = boxes.T
        assert (x >= 0).all() and (y >= 0).all() and (x + w <= 96 + 1e-3).all() and (y + h <= 80 + 1e-3).all()
        assert (w > 2).all() and (h > 2).all()
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        assert np.linalg.norm(centres[-1] - centres[0]) > 2 or steps.sum() > 5, "target does not move"
        assert steps.max() < 0.2 * 80, "target jumps"
        assert set(attributes) == set(ATTRIBUTES) and all(isinstance(v, bool) for v in attributes.values())


def test_sequence_is_deterministic_and_both_modalities_share_the_scene() -> None:
    f_rgb, b_rgb, a_rgb = generate_sequence(_rng(3), 96, 80, 8, "rgb")
    f_rgb2, b_rgb2, _ = generate_sequence(_rng(3), 96, 80, 8, "rgb")
    _, b_tir, a_tir = generate_sequence(_rng(3), 96, 80, 8, "tir")
    assert all(np.array_equal(a, b) for a, b in zip(f_rgb, f_rgb2, strict=True))
    np.testing.assert_array_equal(b_rgb, b_rgb2)
    np.testing.assert_array_equal(b_rgb, b_tir)  # one scene, pixel-aligned labels
    assert a_rgb == a_tir
    _, b_other, _ = generate_sequence(_rng(4), 96, 80, 8, "tir")
    assert not np.array_equal(b_tir, b_other)


def test_sequence_events_occur_and_vary() -> None:
    seen = {name: set() for name in ATTRIBUTES}
    for seed in range(16):
        _, _, attributes = generate_sequence(_rng(seed), 64, 48, 16, "tir")
        for name, flag in attributes.items():
            seen[name].add(flag)
    assert all(flags == {True, False} for flags in seen.values()), seen


def test_sequence_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="modality"):
        generate_sequence(_rng(0), 64, 48, 4, "depth")
    with pytest.raises(ValueError, match="length"):
        generate_sequence(_rng(0), 64, 48, 0, "rgb")


# --------------------------------------------------------------------------------------------------------- writer

TINY = SynthConfig(
    num_pairs=3, image_width=64, image_height=48, num_rgb_sequences=1, num_tir_sequences=2, sequence_length=4, seed=11
)
SPLITS = TINY.model_copy(update={"num_tir_val_sequences": 2, "num_tir_train_sequences": 1, "num_tir_sequences": 1})


def _expected_files(cfg: SynthConfig) -> set[str]:
    files = {f"pairs/{m}/{i:06d}.jpg" for m in ("rgb", "tir") for i in range(cfg.num_pairs)}
    splits = [
        ("rgb_sequences", "rgb", cfg.num_rgb_sequences),
        ("tir_sequences", "tir", cfg.num_tir_sequences),
        ("tir_sequences_rgb", "tir", cfg.num_tir_sequences if cfg.rgb_twins else 0),
        ("tir_val_sequences", "tir_val", cfg.num_tir_val_sequences),
        ("tir_train_sequences", "tir_train", cfg.num_tir_train_sequences),
    ]
    for folder, prefix, count in splits:
        for i in range(count):
            seq = f"{folder}/synth_{prefix}_{i:03d}"
            files |= {f"{seq}/img/{t:04d}.jpg" for t in range(1, cfg.sequence_length + 1)}
            files.add(f"{seq}/groundtruth_rect.txt")
            if folder != "rgb_sequences":
                files.add(f"{seq}/attributes.txt")
    return files


def _local_files(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/") for d, _, fs in os.walk(root) for f in fs}


def test_writer_local_layout_and_labels(tmp_path) -> None:
    out = tmp_path / "synth"
    summary = write_synthetic_dataset(str(out), TINY, progress=False)
    assert _local_files(out) == _expected_files(TINY)
    assert summary.num_pairs == 3 and summary.num_rgb_sequences == 1 and summary.num_tir_sequences == 2
    assert summary.num_files == len(_expected_files(TINY))
    assert summary.pairs_uri == str(out / "pairs")
    assert summary.tir_sequences_uri == str(out / "tir_sequences")
    assert "pairs" in str(summary)

    rgb = decode_rgb((out / "pairs/rgb/000000.jpg").read_bytes())
    tir = decode_tir((out / "pairs/tir/000000.jpg").read_bytes())
    assert rgb.shape == (48, 64, 3) and tir.shape == (48, 64)
    frame = decode_tir((out / "tir_sequences/synth_tir_001/img/0004.jpg").read_bytes())
    assert frame.shape == (48, 64)

    for seq in ("rgb_sequences/synth_rgb_000", "tir_sequences/synth_tir_000", "tir_sequences/synth_tir_001"):
        lines = (out / seq / "groundtruth_rect.txt").read_text().splitlines()
        boxes = np.array([[float(v) for v in line.split(",")] for line in lines])
        assert boxes.shape == (4, 4)
        assert (boxes[:, 2:] > 0).all() and (boxes[:, 0] + boxes[:, 2] <= 64.01).all()
    attrs = dict(line.split(",") for line in (out / "tir_sequences/synth_tir_000/attributes.txt").read_text().split())
    assert list(attrs) == list(ATTRIBUTES) and set(attrs.values()) <= {"0", "1"}


def _boxes(folder) -> np.ndarray:
    return np.loadtxt(folder / "groundtruth_rect.txt", delimiter=",")


def test_writer_splits_are_separate_and_twins_aligned(tmp_path) -> None:
    out = tmp_path / "synth"
    summary = write_synthetic_dataset(str(out), SPLITS, progress=False)
    assert _local_files(out) == _expected_files(SPLITS)
    assert summary.splits == {"rgb": 1, "tir": 1, "tir_rgb_twins": 1, "tir_val": 2, "tir_train": 1}
    assert summary.tir_twins_uri == str(out / "tir_sequences_rgb")
    assert summary.split_uri("tir_val") == str(out / "tir_val_sequences")
    # a twin is its TIR sequence's scene seen in RGB: the same boxes and attributes, colour frames
    tir, twin = out / "tir_sequences/synth_tir_000", out / "tir_sequences_rgb/synth_tir_000"
    np.testing.assert_array_equal(_boxes(tir), _boxes(twin))
    assert (tir / "attributes.txt").read_text() == (twin / "attributes.txt").read_text()
    assert decode_rgb((twin / "img/0002.jpg").read_bytes()).shape == (48, 64, 3)
    # every split draws its own scenes: no two splits share a sequence
    first_boxes = [
        _boxes(out / folder / name)[0].tolist()
        for folder, name in (
            ("rgb_sequences", "synth_rgb_000"),
            ("tir_sequences", "synth_tir_000"),
            ("tir_val_sequences", "synth_tir_val_000"),
            ("tir_val_sequences", "synth_tir_val_001"),
            ("tir_train_sequences", "synth_tir_train_000"),
        )
    ]
    assert len({tuple(b) for b in first_boxes}) == len(first_boxes)
    # without twins, no tir_sequences_rgb folder
    plain = write_synthetic_dataset(str(tmp_path / "plain"), TINY.model_copy(update={"rgb_twins": False}), False)
    assert plain.splits["tir_rgb_twins"] == 0 and not (tmp_path / "plain/tir_sequences_rgb").exists()


def test_writer_output_does_not_depend_on_threads(tmp_path) -> None:
    write_synthetic_dataset(str(tmp_path / "a"), TINY, progress=False, workers=1, io_workers=1)
    write_synthetic_dataset(str(tmp_path / "b"), TINY, progress=False, workers=4, io_workers=8)
    for rel in _expected_files(TINY):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    write_synthetic_dataset(str(tmp_path / "c"), TINY.model_copy(update={"seed": 12}), progress=False)
    assert (tmp_path / "a/pairs/tir/000000.jpg").read_bytes() != (tmp_path / "c/pairs/tir/000000.jpg").read_bytes()


def test_writer_to_s3_through_moto_server(s3_server) -> None:
    bucket = s3_server.make_bucket("synth-test")
    summary = write_synthetic_dataset(f"s3://{bucket}/prefix", TINY, progress=False)
    assert summary.pairs_uri == f"s3://{bucket}/prefix/pairs"
    keys = s3_server.list_keys(bucket, "prefix/")
    assert {k[len("prefix/") :] for k in keys} == _expected_files(TINY)
    body = s3_server.client().get_object(Bucket=bucket, Key="prefix/pairs/rgb/000002.jpg")["Body"].read()
    assert decode_rgb(body).shape == (48, 64, 3)
    gt = s3_server.client().get_object(Bucket=bucket, Key="prefix/tir_sequences/synth_tir_001/groundtruth_rect.txt")
    assert len(gt["Body"].read().decode().splitlines()) == TINY.sequence_length
