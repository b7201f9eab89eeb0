"""The distillation sample stream (data/distill_stream.py): splitting, the sample maker without Ray, and the
stream on a local Ray cluster."""

import cv2
import numpy as np
import pytest
import ray
import torch
from pair_samples import data_config, maker_for

from cmd_ray.config import load_config
from cmd_ray.data.detect import DetectorWeightsError, hog_available
from cmd_ray.data.distill_stream import SampleMaker, list_pairs, split_pairs, training_dataset
from cmd_ray.data.images import encode_rgb, encode_tir
from cmd_ray.data.pairs import PairTable, write_manifest
from cmd_ray.data.skips import SkipCounter
from cmd_ray.data.streams import TRAIN_STREAM
from cmd_ray.data.synthetic import generate_pair
from cmd_ray.distill.step import distill_step
from cmd_ray.models.dimpnet import build_dimpnet


def pairs(n):
    return [(f"s3://b/rgb/{i:05d}.jpg", f"s3://b/tir/{i:05d}.jpg") for i in range(n)]


# --------------------------------------------------------------------------- splitting


def test_split_is_deterministic_disjoint_and_near_the_fraction():
    train, val = split_pairs(pairs(2000), 0.1)
    assert split_pairs(pairs(2000), 0.1) == (train, val)
    assert not set(train) & set(val)
    assert len(train) + len(val) == 2000
    assert 150 < len(val) < 250


def test_split_is_stable_when_pairs_are_added():
    _, val_small = split_pairs(pairs(500), 0.2)
    _, val_large = split_pairs(pairs(1000), 0.2)
    assert set(val_small) <= set(val_large)


def test_tiny_sets_still_get_a_validation_pair_and_zero_disables_it():
    train, val = split_pairs(pairs(3), 0.01)
    assert len(val) == 1 and len(train) == 2
    assert split_pairs(pairs(3), 0.0) == (pairs(3), [])


def test_split_that_leaves_nothing_to_train_names_the_setting():
    with pytest.raises(ValueError, match="val_fraction"):
        split_pairs(pairs(1), 0.99)


def test_a_pair_table_splits_exactly_like_the_list():
    table = PairTable.from_pairs(pairs(1000), boxes=[[[i, i, 5, 5]] for i in range(1000)])
    train, val = split_pairs(table, 0.2)
    list_train, list_val = split_pairs(pairs(1000), 0.2)
    assert isinstance(train, PairTable) and train.to_list() == list_train and val.to_list() == list_val
    first_val = pairs(1000).index(list_val[0])
    np.testing.assert_array_equal(val.boxes_of(0), [[first_val, first_val, 5, 5]])


# --------------------------------------------------------------------------- the sample maker, without Ray


def test_corrupt_and_mismatched_pairs_are_counted_once_and_skipped(pair_root):
    cfg = data_config(str(pair_root))
    table = list_pairs(cfg)
    assert len(table) == 10
    maker = maker_for(cfg, table)
    batch = maker({"data": np.arange(40)})
    assert len(batch["rgb_ref"]) == 40
    report = maker.local_report
    assert report.skipped == 2
    assert any("900000.jpg" in line and "not a decodable image" in line for line in report.examples)
    assert any("900001" in line and "aspect ratios differ" in line for line in report.examples)
    maker({"data": np.arange(40, 80)})
    assert maker.local_report.skipped == 2  # each bad pair once, never drawn again


@pytest.mark.parametrize("method", ["center", "random", "hotspot"])
def test_samples_are_deterministic_per_seed_and_index(pair_root, method):
    cfg = data_config(str(pair_root), f"data.boxes={method}")
    a = maker_for(cfg)({"data": np.array([3, 7, 11])})
    b = maker_for(cfg)({"data": np.array([3, 7, 11])})
    s = cfg.data.sampling.output_sz
    assert a["rgb_ref"].shape == (3, s, s, 3) and a["tir_test"].shape == (3, s, s)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    other = maker_for(cfg, stream=1)({"data": np.array([3, 7, 11])})
    assert not np.array_equal(other["ref_box"], a["ref_box"])


def test_side_by_side_mixing_cuts_wide_crops_with_the_same_draws(pair_root):
    """distill.mixing=side_by_side (D3): [RGB|TIR] reference and [TIR|RGB] test crops, one per sample, which the
    step feeds to a network; the pair, the box and the jitter drawn for a sample are those of batch_split."""
    split_cfg = data_config(str(pair_root))
    cfg = data_config(str(pair_root), "distill.mixing=side_by_side")
    indices = {"data": np.array([3, 7, 11])}
    wide, split = maker_for(cfg)(indices), maker_for(split_cfg)(indices)
    s = cfg.data.sampling.output_sz
    assert wide["rgb_tir_ref"].shape == wide["tir_rgb_test"].shape == (3, s, s, 3)
    assert not {"rgb_ref", "tir_ref", "rgb_test", "tir_test"} & set(wide)
    for key in ("ref_box", "test_box", "test_label", "test_proposals", "proposal_iou"):
        np.testing.assert_array_equal(wide[key], split[key])
    with pytest.raises(ValueError, match="unknown mixing"):
        SampleMaker(list_pairs(cfg), cfg.data, 0, 0, None, None, mixing="checkerboard")

    batch = {key: torch.from_numpy(value) for key, value in wide.items()}
    out = distill_step(build_dimpnet("tiny", optim_iter=1).eval(), batch, "D3", 1.0, mixing="side_by_side")
    assert torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="rgb_ref"):  # samples cut for another mixing are named, not misread
        distill_step(build_dimpnet("tiny", optim_iter=1).eval(), batch, "D3", 1.0)


def test_random_regions_are_fixed_per_pair_and_resized_to_the_patch(pair_root):
    cfg = data_config(str(pair_root), "data.boxes=random", "data.random_boxes_per_pair=3")
    maker = maker_for(cfg)
    rgb, tir = maker.load(0)
    first = maker.boxes(0, rgb, tir)
    again = maker.boxes(0, rgb, tir)
    np.testing.assert_array_equal(first.boxes, again.boxes)
    assert first.boxes.shape == (3, 4) and not first.fallback
    other_rgb, other_tir = maker.load(1)
    assert not np.array_equal(maker.boxes(1, other_rgb, other_tir).boxes, first.boxes)
    np.testing.assert_allclose(first.boxes[:, 2] / 160, first.boxes[:, 3] / 128, rtol=1e-5)  # ~1/6 of each side
    assert np.all(first.boxes[:, 2] / 160 <= 1.25 / 6 + 1e-6) and np.all(first.boxes[:, 2] / 160 >= 0.8 / 6 - 1e-6)


def test_side_by_side_pairs_are_split_and_odd_widths_counted(tmp_path):
    root = tmp_path / "concat"
    root.mkdir()
    for i in range(3):
        rgb, tir = generate_pair(np.random.default_rng(i), 160, 128)
        side = np.concatenate([rgb, np.repeat(tir[..., None], 3, axis=2)], axis=1)
        (root / f"{i:04d}.png").write_bytes(encode_rgb(side, ".png"))
    (root / "odd.png").write_bytes(encode_rgb(np.zeros((64, 161, 3), np.uint8), ".png"))
    cfg = data_config(str(root), "data.layout=concatenated")
    table = list_pairs(cfg)
    assert table.side_by_side and len(table) == 4
    maker = maker_for(cfg, table)
    rgb, tir = maker.load(0)
    assert rgb.shape == (128, 160, 3) and tir.shape == (128, 160)
    maker({"data": np.arange(12)})
    assert maker.local_report.skipped == 1 and "odd.png" in maker.local_report.examples[0]


def test_a_tir_image_resized_to_its_rgb_partner_is_counted_once(tmp_path):
    """A TIR image of the RGB image's aspect but another size is resized (align_pair) and counted, once per pair, in
    the report the job logs to MLflow (``resized_tir_total``); pairs of equal size are not."""
    root = tmp_path / "pairs"
    (root / "rgb").mkdir(parents=True)
    (root / "tir").mkdir()
    for i in range(3):
        rgb, tir = generate_pair(np.random.default_rng(i), 160, 128)
        if i == 1:  # half size, same aspect
            tir = cv2.resize(tir, (80, 64), interpolation=cv2.INTER_AREA)
        (root / "rgb" / f"{i:04d}.png").write_bytes(encode_rgb(rgb, ".png"))
        (root / "tir" / f"{i:04d}.png").write_bytes(encode_tir(tir, ".png"))
    cfg = data_config(str(root))
    maker = maker_for(cfg)
    rgb, tir = maker.load(1)
    assert tir.shape == rgb.shape[:2] == (128, 160)
    maker({"data": np.arange(24)})  # every pair drawn, pair 1 several times
    report = maker.local_report
    assert report.resized_tir == 1 and report.skipped == 0
    assert len(report.resized_examples) == 1
    assert report.resized_examples[0].endswith("0001.png: TIR 80x64 -> 160x128")


def test_manifest_boxes_are_used_instead_of_detecting(pair_root, tmp_path):
    table = list_pairs(data_config(str(pair_root))).take(range(8))  # the good pairs
    boxes = [np.array([[10, 20, 40, 50], [80, 30, 30, 60]], np.float32)] * 7 + [np.zeros((0, 4), np.float32)]
    write_manifest(str(tmp_path / "m.parquet"), table, boxes)
    # torchvision weights that do not exist: any attempt to detect would fail
    cfg = data_config(
        str(pair_root),
        "data.layout=manifest",
        f"data.manifest={tmp_path}/m.parquet",
        "data.boxes=detection",
        "data.detector=torchvision",
        f"data.detector_weights={tmp_path}/missing.pt",
    )
    manifest_table = list_pairs(cfg)
    maker = maker_for(cfg, manifest_table)
    rgb, tir = maker.load(0)
    np.testing.assert_array_equal(maker.boxes(0, rgb, tir).boxes, boxes[0])
    batch = maker({"data": np.arange(24)})
    assert len(batch["ref_box"]) == 24
    report = maker.local_report
    assert report.fallback_boxes == 1 and report.fallback_examples[0].startswith(manifest_table.rgb_uri(7))
    # the same config without boxes in the table has to detect, and the missing weights say so
    with pytest.raises(DetectorWeightsError, match=r"missing\.pt cannot be read"):
        maker_for(cfg, PairTable.from_pairs(manifest_table.to_list()))


@pytest.mark.skipif(not hog_available(), reason=f"OpenCV {cv2.__version__} has no HOGDescriptor")
def test_hog_detection_in_the_maker_counts_each_fallback_once(pair_root):
    cfg = data_config(str(pair_root), "data.boxes=detection", "data.detector=hog", "data.detector_upscale=2")
    maker = maker_for(cfg, list_pairs(cfg).take(range(8)))
    maker({"data": np.arange(16)})
    maker({"data": np.arange(16)})
    report = maker.local_report
    # synthetic 160x128 scenes rarely hold a HOG-sized upright person: most pairs fall back, each counted once
    assert report.skipped == 0 and report.fallback_boxes == len(set(report.fallback_examples)) <= 8


# --------------------------------------------------------------------------- on a local Ray cluster


@pytest.mark.e2e
def test_streams_have_exact_epochs_and_count_skips_in_the_actor(ray_session, pair_root):
    cfg = load_config(
        None,
        [
            f"data.uri={pair_root}",
            "data.num_actors=2",
            "data.cpus_per_actor=0.5",
            "data.object_store_memory_mb=256",
            "distill.samples_per_epoch=12",
            "distill.batch_size=3",
            "distill.epochs=2",
            "distill.val_samples=5",
        ],
    )
    counter = SkipCounter.remote()
    table = list_pairs(cfg)
    train = training_dataset(cfg, table, counter)
    assert train.context.execution_options.resource_limits.object_store_memory == 256 * 2**20
    rows = train.take_all()
    assert len(rows) == 24  # 2 epochs of exactly 12, whatever the 10 pairs
    # the same samples as the maker computes without Ray, whatever the actor order
    local = SampleMaker(table, cfg.data, cfg.distill.seed, TRAIN_STREAM, None, None)({"data": np.arange(24)})
    streamed = sorted(tuple(r["ref_box"]) + tuple(r["test_box"]) for r in rows)
    expected = [tuple(a) + tuple(b) for a, b in zip(local["ref_box"], local["test_box"], strict=True)]
    assert streamed == sorted(expected)
    assert not train.context.execution_options.preserve_order
    report = ray.get(counter.report.remote())
    assert report.skipped == 2 and report.fallback_boxes == 0 and report.unpaired == 0
    counter.record_unpaired.remote(3, ["a", "b", "c"])
    counter.record_fallback.remote("p1")
    counter.record_fallback.remote("p1")
    report = ray.get(counter.report.remote())
    assert report.unpaired == 3 and report.fallback_boxes == 1 and report.fallback_examples == ["p1"]

    # data.preserve_order: the two actors' samples arrive in index order, as the maker computes them
    ordered_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"preserve_order": True})})
    ordered = training_dataset(ordered_cfg, table, SkipCounter.remote())
    assert ordered.context.execution_options.preserve_order
    assert [tuple(r["ref_box"]) + tuple(r["test_box"]) for r in ordered.take_all()] == expected


def test_split_and_pseudo_boxes_do_not_depend_on_where_the_data_set_lies(tmp_path):
    # The same pairs in two folders (two clones of the project, two buckets): the same held-out pairs and the same
    # pseudo boxes, so two runs on copies of the data train on the same samples.
    from cmd_ray.config import SynthConfig
    from cmd_ray.data.synthetic import write_synthetic_dataset

    tables, boxes = [], []
    for place in ("one", "another/deeper"):
        summary = write_synthetic_dataset(
            str(tmp_path / place),
            SynthConfig(num_pairs=24, num_rgb_sequences=0, num_tir_sequences=0),
            progress=False,
        )
        cfg = load_config(None, [f"data.uri={summary.pairs_uri}", "data.boxes=random"])
        table = list_pairs(cfg)
        train, val = split_pairs(table, 0.25)
        tables.append((train.rgb.to_pylist(), val.rgb.to_pylist()))
        maker = SampleMaker(table, cfg.data, seed=0, stream=0, endpoint_url=None)
        rgb, tir = maker.load(3)
        boxes.append(maker.boxes(3, rgb, tir).boxes)
    assert tables[0] == tables[1] and tables[0][1]  # a validation pair was held out
    np.testing.assert_array_equal(boxes[0], boxes[1])
    moved = [(r.replace("s3://b/", "/data/clone-2/"), t.replace("s3://b/", "/data/clone-2/")) for r, t in pairs(40)]
    assert [len(part) for part in split_pairs(moved, 0.25)] == [len(part) for part in split_pairs(pairs(40), 0.25)]
    assert [p[0].split("/")[-1] for p in split_pairs(moved, 0.25)[1]] == [
        p[0].split("/")[-1] for p in split_pairs(pairs(40), 0.25)[1]
    ]
