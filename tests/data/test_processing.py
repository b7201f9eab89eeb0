import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from cmd_ray.config import SAMPLING_PRESETS, SamplingConfig, load_config
from cmd_ray.data.boxes import box_iou, center_box
from cmd_ray.data.processing import (
    CropGeometry,
    PairMismatchError,
    align_pair,
    apply_crop,
    crop_geometry,
    gaussian_label,
    jittered_box,
    jittered_crop_geometry,
    label_sigma,
    make_sample,
    make_side_by_side_sample,
    normalize_tir,
    sample_crop,
    sample_proposals,
    split_side_by_side,
)

CFG = SamplingConfig()  # output 128, stride 16, filter 4: label 9x9
ODD = SamplingConfig(output_sz=96, feature_stride=8, filter_size=3)  # label 12x12
DIMP50 = SamplingConfig(output_sz=288, feature_stride=16, filter_size=4, search_area_factor=5.0)
DIMP50_PRESET = SamplingConfig(preset="dimp50")  # 288 / 18 cells, test jitter 4.5 / 0.5
SUPERDIMP = SamplingConfig(preset="superdimp")  # 352 / 22 cells, inside_major, 128 GMM proposals
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# --------------------------------------------------------------------------- TIR depth and alignment


def test_uint8_tir_passes_through():
    tir = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    assert normalize_tir(tir) is tir


def test_uint16_tir_is_stretched_between_percentiles():
    tir = np.linspace(1000, 31000, 100 * 100).reshape(100, 100).astype(np.uint16)
    out = normalize_tir(tir)
    assert out.dtype == np.uint8 and out.shape == tir.shape
    low, high = np.percentile(tir, [1, 99])
    assert np.all(out[tir <= low] == 0) and np.all(out[tir >= high] == 255)
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone
    mid = tir == tir.flat[5000]
    assert abs(int(out[mid][0]) - 127.5) <= 1.5
    assert not normalize_tir(np.full((4, 4), 7000, np.uint16)).any()  # a flat image is zeros


def test_uint16_tir_matches_the_percentile_formula():
    rng = np.random.default_rng(0)
    tir = (rng.gamma(2.0, 3000.0, (64, 80)) + 500).clip(0, 65535).astype(np.uint16)
    low, high = np.percentile(tir, [1, 99])
    expected = np.clip(np.rint((tir.astype(np.float64) - low) * (255.0 / (high - low))), 0, 255)
    np.testing.assert_array_equal(normalize_tir(tir), expected.astype(np.uint8))
    # 99% of the pixels at one level: the min/max range is used instead
    mostly_flat = np.full((10, 100), 5000, np.uint16)
    mostly_flat[0, :5], mostly_flat[0, 5:10] = 1000, 9000
    out = normalize_tir(mostly_flat)
    assert out[0, 0] == 0 and out[0, 9] == 255 and out[5, 5] == 128


def test_normalize_tir_rejects_other_types():
    with pytest.raises(ValueError, match="uint8 or uint16"):
        normalize_tir(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        normalize_tir(np.zeros((4, 4, 3), np.uint8))


def test_align_pair_resizes_tir_of_the_same_aspect():
    rgb = np.zeros((120, 160, 3), np.uint8)
    same = np.zeros((120, 160), np.uint8)
    assert align_pair(rgb, same, "k")[1] is same
    small = np.full((60, 80), 40000, np.uint16)
    rgb_out, tir_out = align_pair(rgb, small, "k")
    assert rgb_out is rgb and tir_out.shape == (120, 160) and tir_out.dtype == np.uint16
    assert np.all(tir_out == 40000)
    # within 1%: 161/120 vs 160/120
    assert align_pair(rgb, np.zeros((120, 161), np.uint8), "k")[1].shape == (120, 160)


def test_split_side_by_side_gives_the_rgb_and_tir_halves():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    tir = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    left, right = split_side_by_side(np.concatenate([rgb, np.dstack([tir] * 3)], axis=1), "pairs/0001.jpg")
    assert left.shape == (6, 5, 3) and right.shape == (6, 5) and left.dtype == right.dtype == np.uint8
    assert left.flags.c_contiguous and right.flags.c_contiguous
    np.testing.assert_array_equal(left, rgb)
    np.testing.assert_array_equal(right, tir)  # a grey TIR half saved as colour comes back exactly
    # a false-colour TIR half (RGB order, as decode_rgb returns it) becomes its luma
    colour = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    _, luma = split_side_by_side(np.concatenate([rgb, colour], axis=1), "k")
    r, g, b = (colour[..., i].astype(np.float64) for i in range(3))
    assert np.abs(luma - (0.299 * r + 0.587 * g + 0.114 * b)).max() <= 0.51
    # a grey file: the RGB half is replicated to three channels
    grey = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    left, right = split_side_by_side(grey, "k")
    np.testing.assert_array_equal(left, np.dstack([grey[:, :4]] * 3))
    np.testing.assert_array_equal(right, grey[:, 4:])


def test_split_side_by_side_rejects_bad_images_naming_the_key():
    with pytest.raises(ValueError, match=r"pairs/odd\.jpg.*even width.*11"):
        split_side_by_side(np.zeros((4, 11, 3), np.uint8), "pairs/odd.jpg")
    with pytest.raises(ValueError, match=r"pairs/deep\.png.*uint8.*uint16"):
        split_side_by_side(np.zeros((4, 10, 3), np.uint16), "pairs/deep.png")
    with pytest.raises(ValueError, match=r"pairs/alpha\.png.*\[H, 2W, 3\]"):
        split_side_by_side(np.zeros((4, 10, 4), np.uint8), "pairs/alpha.png")


def test_align_pair_mismatched_aspect_names_key_and_sizes():
    rgb = np.zeros((512, 640, 3), np.uint8)
    with pytest.raises(PairMismatchError, match=r"set/0042\.jpg.*640x512.*640x480"):
        align_pair(rgb, np.zeros((480, 640), np.uint8), key="set/0042.jpg")


# --------------------------------------------------------------------------- crops


def _painted_pair(height=120, width=160, box=(60, 40, 30, 24)):
    """Dark RGB and 16-bit TIR backgrounds with a bright rectangle at ``box`` in both."""
    x, y, w, h = box
    rgb = np.full((height, width, 3), 20, np.uint8)
    rgb[y : y + h, x : x + w] = (250, 240, 230)
    tir = np.full((height, width), 3000, np.uint16)
    tir[y : y + h, x : x + w] = 60000
    return rgb, tir, np.array(box, np.float32)


def _assert_square_at(crop, box_in_crop, bright, dark, margin=1.5):
    """Pixels well inside ``box_in_crop`` are bright; pixels well outside are dark."""
    size = crop.shape[0]
    centres = np.arange(size) + 0.5
    x, y, w, h = box_in_crop
    inside_x = (centres > x + margin) & (centres < x + w - margin)
    inside_y = (centres > y + margin) & (centres < y + h - margin)
    outside_x = (centres < x - margin) | (centres > x + w + margin)
    outside_y = (centres < y - margin) | (centres > y + h + margin)
    gray = crop if crop.ndim == 2 else crop.mean(axis=2)
    assert inside_x.any() and inside_y.any()
    assert gray[np.ix_(inside_y, inside_x)].min() >= bright
    outside = outside_y[:, None] | outside_x[None, :]
    assert gray[outside].max() <= dark


@pytest.mark.parametrize("seed", range(5))
def test_rgb_and_tir_crops_are_aligned(seed):
    rgb, tir, box = _painted_pair()
    tir8 = normalize_tir(tir)
    rng = np.random.default_rng(seed)
    geometry = jittered_crop_geometry(box, CFG, rng)
    box_in_crop = geometry.box_to_crop(box)
    rgb_crop, tir_crop = apply_crop(rgb, geometry), apply_crop(tir8, geometry)
    assert rgb_crop.shape == (128, 128, 3) and rgb_crop.dtype == np.uint8
    assert tir_crop.shape == (128, 128) and tir_crop.dtype == np.uint8
    _assert_square_at(rgb_crop, box_in_crop, bright=200, dark=60)
    _assert_square_at(tir_crop, box_in_crop, bright=200, dark=60)


def test_sample_crop_maps_the_unjittered_box_and_handles_both_layouts():
    rgb, tir, box = _painted_pair()
    for image in (rgb, normalize_tir(tir)):
        rng = np.random.default_rng(3)
        state = rng.bit_generator.state
        crop, box_in_crop, geometry = sample_crop(image, box, CFG, rng, jitter=False)
        assert rng.bit_generator.state == state  # no jitter, no randomness
        assert crop.shape[:2] == (128, 128) and crop.ndim == image.ndim
        assert geometry.side == int(np.ceil(np.sqrt(30 * 24) * CFG.search_area_factor))
        # centred within half an image pixel, scaled exactly
        np.testing.assert_allclose(box_in_crop[:2] + box_in_crop[2:] / 2, 64, atol=0.5 * geometry.scale)
        np.testing.assert_allclose(box_in_crop[2:], box[2:] * geometry.scale, rtol=1e-6)
        _assert_square_at(crop, box_in_crop, bright=200, dark=60)

        crop_j, box_j, geometry_j = sample_crop(image, box, CFG, np.random.default_rng(7), jitter=True)
        np.testing.assert_allclose(box_j, geometry_j.box_to_crop(box))
        np.testing.assert_allclose(geometry_j.box_to_image(box_j), box, atol=1e-4)
        _assert_square_at(crop_j, box_j, bright=200, dark=60)


def test_crop_outside_the_image_replicates_the_border():
    image = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40)
    crop = apply_crop(image, CropGeometry(x0=-5, y0=-3, side=20, output_sz=20))  # no resize: exact pixels
    np.testing.assert_array_equal(crop[3:, 5:], image[:17, :15])
    np.testing.assert_array_equal(crop[:3, 5:], np.broadcast_to(image[0, :15], (3, 15)))
    np.testing.assert_array_equal(crop[3:, :5], np.broadcast_to(image[:17, :1], (17, 5)))
    assert np.all(crop[:3, :5] == image[0, 0])
    far = apply_crop(image, CropGeometry(x0=100, y0=-50, side=10, output_sz=10))  # misses the image
    assert np.all(far == image[0, -1])
    rgb = np.dstack([image.astype(np.uint8)] * 3)
    assert apply_crop(rgb, CropGeometry(x0=30, y0=25, side=20, output_sz=40)).shape == (40, 40, 3)


@pytest.mark.parametrize("frame", ["reference", "test"])
def test_jitter_follows_pytracking_bounds_per_frame(frame):
    cfg = DIMP50_PRESET  # reference 3 / 0.25, test 4.5 / 0.5
    center_factor, scale_factor = {"reference": (3.0, 0.25), "test": (4.5, 0.5)}[frame]
    assert cfg.jitter(frame) == (center_factor, scale_factor)
    box = np.array([50, 60, 40, 20], np.float64)
    rng = np.random.default_rng(0)
    centre = box[:2] + box[2:] / 2
    draws = np.array([jittered_box(box, cfg, rng, frame) for _ in range(1000)])
    sizes = draws[:, 2:]
    offsets = np.abs(draws[:, :2] + sizes / 2 - centre)
    bound = 0.5 * np.sqrt(sizes.prod(axis=1, keepdims=True)) * center_factor
    assert np.all(offsets <= bound + 1e-9)
    assert np.mean(offsets > 0.8 * bound) > 0.1  # uniform over the whole range, not a smaller one
    log_scale = np.log(sizes / box[2:])
    assert abs(log_scale.std() - scale_factor) < 0.04
    still = SamplingConfig(reference_center_jitter_factor=0.0, test_center_jitter_factor=0.0, scale_jitter_factor=0.0)
    np.testing.assert_allclose(jittered_box(box, still, rng, frame), box)
    assert crop_geometry(box, CFG) == jittered_crop_geometry(box, still, rng, frame)


@pytest.mark.parametrize("mode", ["replicate", "inside", "inside_major"])
@pytest.mark.parametrize("max_scale_change", [None, 1.05])
def test_every_crop_mode_maps_the_box_exactly(mode, max_scale_change):
    """The painted box lands where box_to_crop predicts, wherever the crop was moved or shrunk to."""
    cfg = SamplingConfig(crop_mode=mode, max_scale_change=max_scale_change, test_center_jitter_factor=4.5)
    for box in [(5, 8, 30, 24), (120, 90, 30, 24), (60, 40, 30, 24), (2, 2, 12, 40)]:
        rgb, tir, box = _painted_pair(box=box)
        tir8 = normalize_tir(tir)
        for seed in range(4):
            geometry = jittered_crop_geometry(box, cfg, np.random.default_rng(seed), "test", rgb.shape[:2])
            box_in_crop = geometry.box_to_crop(box)
            _assert_square_at(apply_crop(rgb, geometry), box_in_crop, bright=200, dark=60)
            _assert_square_at(apply_crop(tir8, geometry), box_in_crop, bright=200, dark=60)
            np.testing.assert_allclose(geometry.box_to_image(box_in_crop), box, atol=1e-4)


def test_inside_modes_fit_the_crop_into_the_image():
    height, width = 120, 160
    box = np.array([5, 8, 30, 24], np.float64)  # in the top-left corner; crop side ceil(sqrt(720) * 5) = 135
    replicate = crop_geometry(box, CFG)
    assert replicate.side == 135 and replicate.x0 < 0 and replicate.y0 < 0

    inside = crop_geometry(box, SamplingConfig(crop_mode="inside"), (height, width))
    assert inside.side == 120  # shrunk to the shorter side, then moved inside: no padding at all
    assert (inside.x0, inside.y0) == (0, 0)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        apply_crop(image, inside), cv2.resize(image[:120, :120], (128, 128), interpolation=cv2.INTER_LINEAR)
    )

    major = crop_geometry(box, SamplingConfig(crop_mode="inside_major"), (height, width))
    assert major.side == 135  # fits the longer side (160) already: not shrunk
    assert major.x0 == 0  # moved inside along x
    assert major.y0 == -7  # longer than the image along y: centred on it, (135 - 120) // 2 rows above

    limited = crop_geometry(box, SamplingConfig(crop_mode="inside", max_scale_change=1.05), (height, width))
    assert limited.side == 128  # floor(135 / 1.05): shrinks no further than max_scale_change
    assert limited.x0 == 0 and limited.y0 == -4

    # a small crop in the middle of the image is the same in every mode
    middle = np.array([70, 50, 10, 10], np.float64)
    for mode in ("inside", "inside_major"):
        assert crop_geometry(middle, SamplingConfig(crop_mode=mode), (height, width)) == crop_geometry(middle, CFG)


def test_inside_modes_need_the_image_size():
    with pytest.raises(ValueError, match="crop_mode='inside_major' needs the image size"):
        crop_geometry(np.array([0, 0, 10, 10]), SUPERDIMP)
    rgb, _, box = _painted_pair()
    crop, box_in_crop, _ = sample_crop(rgb, box, SUPERDIMP, np.random.default_rng(0), frame="test")
    assert crop.shape == (352, 352, 3)
    _assert_square_at(crop, box_in_crop, bright=200, dark=60)


def test_jitter_rejects_an_unknown_frame():
    with pytest.raises(ValueError, match="'reference' or 'test'"):
        jittered_box(np.array([0, 0, 10, 10]), CFG, np.random.default_rng(0), "train")


def test_make_sample_jitters_the_test_frame_more():
    rgb, tir, _ = _painted_pair(height=480, width=640)
    box = np.array([300, 220, 40, 40], np.float32)
    cfg = SamplingConfig(
        output_sz=128,
        reference_center_jitter_factor=0.0,
        reference_scale_jitter_factor=0.0,
        test_center_jitter_factor=4.5,
        test_scale_jitter_factor=0.5,
    )
    refs, tests = [], []
    for seed in range(20):
        sample = make_sample(rgb, tir, box, cfg, np.random.default_rng(seed))
        refs.append(sample["ref_box"])
        tests.append(sample["test_box"])
    assert np.ptp(np.array(refs), axis=0).max() < 0.6  # unjittered: centred to within a pixel of rounding
    assert np.ptp(np.array(tests)[:, 0]) > 20


# --------------------------------------------------------------------------- presets and config


def test_presets_fill_pytrackings_settings():
    d = DIMP50_PRESET
    assert (d.search_area_factor, d.output_sz, d.feature_sz, d.filter_size) == (5.0, 288, 18, 4)
    assert (d.jitter("reference"), d.jitter("test")) == ((3.0, 0.25), (4.5, 0.5))
    assert (d.crop_mode, d.label_sigma_factor, d.num_proposals, d.min_proposal_iou) == ("replicate", 0.25, 8, 0.1)
    assert d.proposal_method == "perturb" and d.proposal_sigma_factors == [0.01, 0.05, 0.1, 0.2, 0.3]
    s = SUPERDIMP
    assert (s.search_area_factor, s.output_sz, s.feature_sz, s.filter_size) == (6.0, 352, 22, 4)
    assert (s.jitter("reference"), s.jitter("test")) == ((3.0, 0.25), (5.5, 0.5))
    assert (s.crop_mode, s.max_scale_change, s.num_proposals, s.proposal_method) == ("inside_major", 1.5, 128, "gmm")
    assert label_sigma(d) == pytest.approx(0.25 * 18 / 5) and label_sigma(s) == pytest.approx(0.25 * 22 / 6)
    # explicit fields win over the preset; a dump validates back to the same config
    mixed = SamplingConfig(preset="superdimp", output_sz=288, test_center_jitter_factor=4.5)
    assert (mixed.output_sz, mixed.test_center_jitter_factor, mixed.search_area_factor) == (288, 4.5, 6.0)
    for cfg in (d, s, mixed):
        assert SamplingConfig.model_validate(cfg.model_dump(mode="json")) == cfg
    assert set(SAMPLING_PRESETS) == {"dimp50", "superdimp"}


def test_old_jitter_keys_set_both_frames_and_cannot_mix_with_the_new_ones():
    old = SamplingConfig.model_validate({"center_jitter_factor": 2.0, "scale_jitter_factor": 0.1})
    assert old.jitter("reference") == old.jitter("test") == (2.0, 0.1)
    # the old key means both frames, so it also replaces a preset's test jitter
    assert SamplingConfig(preset="dimp50", center_jitter_factor=2.0).jitter("test") == (2.0, 0.5)
    with pytest.raises(ValidationError, match=r"center_jitter_factor.*test_center_jitter_factor"):
        SamplingConfig.model_validate({"center_jitter_factor": 2.0, "test_center_jitter_factor": 4.5})
    with pytest.raises(ValidationError, match="preset"):
        SamplingConfig(preset="dimp18")


@pytest.mark.parametrize("count", [7, 129])
def test_proposal_count_is_bounded(count):
    with pytest.raises(ValidationError, match="num_proposals"):
        SamplingConfig(num_proposals=count)


def test_config_files_sample_as_pytracking_did():
    demo = load_config(CONFIGS / "demo.yaml").data.sampling
    assert (demo.output_sz, demo.feature_sz, demo.crop_mode, demo.preset) == (128, 8, "replicate", "custom")
    dimp50 = load_config(CONFIGS / "dimp50.yaml").data.sampling
    superdimp = load_config(CONFIGS / "superdimp.yaml").data.sampling
    assert dimp50 == DIMP50_PRESET
    assert superdimp == SUPERDIMP


# --------------------------------------------------------------------------- labels and proposals


@pytest.mark.parametrize(
    "cfg",
    [CFG, ODD, DIMP50, DIMP50_PRESET, SUPERDIMP, SamplingConfig(output_sz=96, feature_stride=16, filter_size=5)],
    ids=["even-filter", "odd-filter", "dimp50", "dimp50-preset", "superdimp-preset", "odd-filter-6-cells"],
)
def test_label_peak_is_within_half_a_cell_of_the_box_centre(cfg):
    rng = np.random.default_rng(0)
    stride, size = cfg.feature_stride, cfg.output_sz
    offset = 0.5 * (cfg.filter_size % 2)
    for _ in range(50):
        wh = rng.uniform(8, size / 3, 2)
        # centres anywhere the label grid reaches
        centre = rng.uniform(offset * stride, size - offset * stride, 2)
        box = np.concatenate([centre - wh / 2, wh]).astype(np.float32)
        label = gaussian_label(box, cfg)
        assert label.shape == (cfg.label_sz, cfg.label_sz) and label.dtype == np.float32
        row, col = np.unravel_index(np.argmax(label), label.shape)
        peak = (np.array([col, row]) + offset) * stride  # (x, y) of the peak cell in crop pixels
        assert np.all(np.abs(peak - centre) <= stride / 2 + 1e-4)
        assert label.min() >= 0 and label.max() <= 1


def test_label_sizes_and_sigma():
    assert gaussian_label(np.array([0, 0, 10, 10]), CFG).shape == (9, 9)  # 8 cells + 1 for the even filter
    assert gaussian_label(np.array([0, 0, 10, 10]), ODD).shape == (12, 12)
    assert label_sigma(DIMP50) == pytest.approx(0.25 * 18 / 5)  # pytracking DiMP-50: 0.9 cells
    # a box centred on a cell gives 1 there and exp(-1/(2 sigma^2)) one cell away
    label = gaussian_label(np.array([64 - 8, 64 - 8, 16, 16]), CFG)  # centre 64 px = cell 4 (even filter)
    assert label[4, 4] == pytest.approx(1.0)
    assert label[4, 5] == pytest.approx(np.exp(-0.5 / label_sigma(CFG) ** 2), rel=1e-5)


@pytest.mark.parametrize("min_iou", [0.1, 0.5, 0.9])
def test_proposal_iou_targets_are_recomputed_ious_above_the_minimum(min_iou):
    cfg = SamplingConfig(num_proposals=64, min_proposal_iou=min_iou)
    box = np.array([40.5, 50.25, 30.0, 18.0], np.float32)
    proposals, iou = sample_proposals(box, cfg, np.random.default_rng(1))
    assert proposals.shape == (64, 4) and proposals.dtype == np.float32
    assert iou.shape == (64,) and iou.dtype == np.float32
    np.testing.assert_array_equal(iou, box_iou(proposals, np.broadcast_to(box, (64, 4))))
    assert np.all(iou >= min_iou) and np.all(iou <= 1)
    assert np.all(proposals[:, 2:] > 1)
    assert len(np.unique(iou)) > 32  # actually perturbed, not copies of the box
    again, _ = sample_proposals(box, cfg, np.random.default_rng(1))
    np.testing.assert_array_equal(proposals, again)


# --------------------------------------------------------------------------- samples


@pytest.mark.parametrize("cfg", [CFG, ODD], ids=["default", "odd-filter"])
def test_make_sample_schema(cfg):
    rgb, tir, _ = _painted_pair()
    box = center_box(*rgb.shape[:2], 0.3)
    sample = make_sample(rgb, tir, box, cfg, np.random.default_rng(0))
    s, lab, p = cfg.output_sz, cfg.label_sz, cfg.num_proposals
    expected = {
        "rgb_ref": (np.uint8, (s, s, 3)),
        "tir_ref": (np.uint8, (s, s)),
        "rgb_test": (np.uint8, (s, s, 3)),
        "tir_test": (np.uint8, (s, s)),
        "ref_box": (np.float32, (4,)),
        "test_box": (np.float32, (4,)),
        "test_label": (np.float32, (lab, lab)),
        "test_proposals": (np.float32, (p, 4)),
        "proposal_iou": (np.float32, (p,)),
    }
    assert set(sample) == set(expected)
    for key, (dtype, shape) in expected.items():
        assert sample[key].dtype == dtype and sample[key].shape == shape, key
    np.testing.assert_array_equal(sample["test_label"], gaussian_label(sample["test_box"], cfg))
    np.testing.assert_array_equal(sample["proposal_iou"], box_iou(sample["test_proposals"], sample["test_box"]))
    again = make_sample(rgb, tir, box, cfg, np.random.default_rng(0))
    for key in expected:
        np.testing.assert_array_equal(sample[key], again[key])


def test_superdimp_sample_near_the_image_border():
    rgb, tir, box = _painted_pair(height=512, width=640, box=(600, 10, 36, 30))
    sample = make_sample(rgb, tir, box, SUPERDIMP, np.random.default_rng(3))
    assert sample["rgb_test"].shape == (352, 352, 3) and sample["test_label"].shape == (23, 23)
    assert sample["test_proposals"].shape == (128, 4) and sample["proposal_density"].shape == (128,)
    np.testing.assert_array_equal(sample["proposal_iou"], box_iou(sample["test_proposals"], sample["test_box"]))
    np.testing.assert_array_equal(sample["test_label"], gaussian_label(sample["test_box"], SUPERDIMP))
    for frame in ("ref", "test"):
        for modality in ("rgb", "tir"):
            _assert_square_at(sample[f"{modality}_{frame}"], sample[f"{frame}_box"], bright=200, dark=60)


def test_make_sample_crops_show_the_target_in_both_modalities():
    rgb, tir, box = _painted_pair()
    for seed in range(3):
        sample = make_sample(rgb, tir, box, CFG, np.random.default_rng(seed))
        assert not np.array_equal(sample["ref_box"], sample["test_box"])  # independent jitter
        for frame in ("ref", "test"):
            for modality in ("rgb", "tir"):
                _assert_square_at(sample[f"{modality}_{frame}"], sample[f"{frame}_box"], bright=200, dark=60)


def test_side_by_side_sample_cuts_rgb_tir_for_the_reference_and_tir_rgb_for_the_test_frame():
    """distill.mixing=side_by_side: the pseudo box in the left half, the crop reaching into the right half."""
    height, width = 64, 64
    colour = np.array([200, 40, 120], np.uint8)  # an RGB colour no grey value can be
    rgb = np.broadcast_to(colour, (height, width, 3)).copy()
    tir = np.full((height, width), 90, np.uint8)  # grey 90: no colour of the RGB image
    box = np.array([44.0, 24.0, 12.0, 12.0])  # near the right edge of the left half
    still = SamplingConfig(reference_center_jitter_factor=0.0, test_center_jitter_factor=0.0, scale_jitter_factor=0.0)
    sample = make_side_by_side_sample(rgb, tir, box, still, np.random.default_rng(0))

    s = still.output_sz
    assert {"rgb_tir_ref", "tir_rgb_test"} <= set(sample)
    assert not {"rgb_ref", "tir_ref", "rgb_test", "tir_test"} & set(sample)
    assert sample["rgb_tir_ref"].shape == sample["tir_rgb_test"].shape == (s, s, 3)
    geometry = crop_geometry(box, still, (height, 2 * width))  # no jitter: the crop around the box, as usual
    np.testing.assert_allclose(sample["ref_box"], geometry.box_to_crop(box), rtol=1e-6)
    np.testing.assert_allclose(sample["test_box"], geometry.box_to_crop(box), rtol=1e-6)
    seam = (width - geometry.x0) * geometry.scale  # crop column of the seam between the halves
    assert geometry.x0 < width < geometry.x0 + geometry.side, "the crop must straddle the seam"
    columns = np.arange(s) + 0.5
    left, right = columns < seam - 2, columns > seam + 2  # away from the seam's interpolated columns
    assert left.sum() > 10 and right.sum() > 10

    ref, test = sample["rgb_tir_ref"], sample["tir_rgb_test"]
    assert (ref[:, left] == colour).all()  # reference: the RGB image on the left of the seam …
    assert (ref[:, right] == 90).all()  # … and the TIR image, grey in 3 channels, on the right
    assert (test[:, left] == 90).all()  # test: TIR on the left …
    assert (test[:, right] == colour).all()  # … and RGB on the right


def test_make_sample_requires_an_aligned_pair():
    rgb, tir, box = _painted_pair()
    with pytest.raises(ValueError, match="align_pair"):
        make_sample(rgb, tir[:60, :80], box, CFG, np.random.default_rng(0))


# --------------------------------------------------------------------------- the maths, against its definitions


def test_gaussian_label_is_the_two_dimensional_gaussian_at_the_box_centre():
    box = np.array([20.0, 52.0, 30.0, 10.0])  # centre (35, 57) crop px: different cells in x and y
    for cfg in (CFG, ODD):
        sigma = cfg.label_sigma_factor * cfg.feature_sz / cfg.search_area_factor
        offset = 0.5 * (cfg.filter_size % 2)
        cx, cy = 35.0 / cfg.feature_stride - offset, 57.0 / cfg.feature_stride - offset
        rows, cols = np.mgrid[0 : cfg.label_sz, 0 : cfg.label_sz].astype(np.float64)
        expected = np.exp(-((cols - cx) ** 2 + (rows - cy) ** 2) / (2 * sigma**2))
        np.testing.assert_allclose(gaussian_label(box, cfg), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("frame", ["reference", "test"])
def test_jittered_box_replays_pytrackings_draws(frame):
    """Size ``(w, h) * exp(s * z)`` with ``z ~ N(0, 1)`` per axis, then the centre moved by
    ``sqrt(w' h') * c * (u - 0.5)`` with ``u ~ U(0, 1)`` per axis, in that order of draws."""
    cfg = SamplingConfig(test_center_jitter_factor=4.5, test_scale_jitter_factor=0.5)
    c, s = (3.0, 0.25) if frame == "reference" else (4.5, 0.5)
    box = np.array([40.0, 30.0, 24.0, 12.0])
    got = jittered_box(box, cfg, np.random.default_rng(11), frame)
    replay = np.random.default_rng(11)
    size = box[2:] * np.exp(s * replay.standard_normal(2))
    centre = box[:2] + box[2:] / 2 + math.sqrt(size[0] * size[1]) * c * (replay.random(2) - 0.5)
    np.testing.assert_allclose(got, np.concatenate([centre - size / 2, size]), rtol=1e-12)
    # the default frame is the reference one
    np.testing.assert_array_equal(
        jittered_box(box, cfg, np.random.default_rng(3)), jittered_box(box, cfg, np.random.default_rng(3), "reference")
    )


def test_proposal_noise_is_sigma_factor_times_the_box_side_on_each_coordinate():
    box = np.array([100.0, 100.0, 40.0, 10.0])  # sqrt(w h) = 20: unlike w, h, w/h, h*h
    cfg = SamplingConfig(num_proposals=128, proposal_sigma_factors=[0.1], min_proposal_iou=0.0)
    proposals = np.concatenate(
        [sample_proposals(box, cfg, np.random.default_rng(seed))[0] for seed in range(40)]
    ).astype(np.float64)
    centre_noise = proposals[:, :2] + proposals[:, 2:] / 2 - (box[:2] + box[2:] / 2)
    size_noise = proposals[:, 2:] - box[2:]
    noise = np.concatenate([centre_noise, size_noise], axis=1)  # 5120 draws per coordinate, std 2 px
    np.testing.assert_allclose(noise.std(axis=0), 2.0, rtol=0.06)
    np.testing.assert_allclose(noise.mean(axis=0), 0.0, atol=0.15)
    corr = np.corrcoef(noise.T)
    assert np.all(np.abs(corr[np.triu_indices(4, 1)]) < 0.08)  # four independent draws


def test_proposals_below_the_minimum_iou_are_redrawn_narrower_until_they_pass():
    box = np.array([10.0, 10.0, 30.0, 30.0])
    cfg = SamplingConfig(num_proposals=64, proposal_sigma_factors=[0.5], min_proposal_iou=0.7)
    proposals, iou = sample_proposals(box, cfg, np.random.default_rng(2))
    assert np.all(iou >= 0.7) and np.all(proposals[:, 2:] > 1.0)
    np.testing.assert_allclose(iou, box_iou(proposals, box.astype(np.float32)), rtol=1e-6)
    assert not np.all(iou == 1.0)  # the narrower redraws found proposals other than the box itself


def test_gmm_densities_are_those_of_the_relative_offsets():
    from cmd_ray.data.processing import sample_gmm_proposals

    cfg = SamplingConfig(
        proposal_method="gmm", num_proposals=64, gmm_proposal_sigma=[(0.05, 0.3), (0.4, 0.1)], gmm_gt_sigma=(0.1, 0.2)
    )
    box = np.array([30.0, 20.0, 40.0, 16.0])
    proposals, density, gt_density, iou = sample_gmm_proposals(box, cfg, np.random.default_rng(4))
    p = proposals.astype(np.float64)
    # offsets in (cx / w, cy / h, log w, log h) of the box
    d = np.concatenate(
        [(p[:, :2] + p[:, 2:] / 2 - (box[:2] + box[2:] / 2)) / box[2:], np.log(p[:, 2:] / box[2:])], axis=1
    )

    def normal(x, std):
        return np.exp(-0.5 * (x / std) ** 2) / (math.sqrt(2 * math.pi) * std)

    components = [np.prod(normal(d, np.array([c, c, s, s])), axis=1) for c, s in cfg.gmm_proposal_sigma]
    np.testing.assert_allclose(density, np.mean(components, axis=0), rtol=1e-3)
    np.testing.assert_allclose(gt_density, np.prod(normal(d, np.array([0.1, 0.1, 0.2, 0.2])), axis=1), rtol=1e-3)
    np.testing.assert_allclose(iou, box_iou(proposals, box.astype(np.float32)), rtol=1e-6)
    assert iou.dtype == np.float32


def _replicated(image, x0, y0, side):
    """The crop with every outside pixel taken from the nearest image pixel (before resizing)."""
    rows = np.clip(np.arange(y0, y0 + side), 0, image.shape[0] - 1)
    cols = np.clip(np.arange(x0, x0 + side), 0, image.shape[1] - 1)
    return image[rows][:, cols]


@pytest.mark.parametrize("channels", [None, 3])
@pytest.mark.parametrize(
    ("x0", "y0"),
    [
        (-40, 5),  # left of the image, rows overlapping
        (-32, 5),  # the crop's right edge touches the image's left edge
        (5, -32),  # the crop's bottom edge touches the image's top edge
        (40, 30),  # beyond the right and bottom edges
        (-50, -50),  # beyond the top-left corner
        (10, 4),  # inside
    ],
)
def test_apply_crop_replicates_the_nearest_border_pixel(channels, x0, y0):
    rng = np.random.default_rng(0)
    shape = (24, 36) if channels is None else (24, 36, channels)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    geometry = CropGeometry(x0=x0, y0=y0, side=32, output_sz=32)  # no resize: pixel for pixel
    np.testing.assert_array_equal(apply_crop(image, geometry), _replicated(image, x0, y0, 32))
    resized = apply_crop(image, CropGeometry(x0=x0, y0=y0, side=32, output_sz=64))
    expected = cv2.resize(_replicated(image, x0, y0, 32), (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resized, expected)


def test_crop_geometry_edge_cases():
    tiny = crop_geometry(np.array([5.0, 5.0, 0.1, 0.1]), CFG)  # sqrt(0.01) * 5 = 0.5 px: one pixel
    assert tiny.side == 1
    inside = SamplingConfig(crop_mode="inside")
    assert crop_geometry(np.array([0.0, 0.0, 0.1, 0.1]), inside, (1, 1)).side == 1  # a 1x1 image is fine
    for bad in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match=r"^image size must be positive \(H, W\), got"):
            crop_geometry(np.array([1.0, 1.0, 2.0, 2.0]), inside, bad)
    # a box at the right/bottom edge: the crop is pulled back inside the image
    g = crop_geometry(np.array([180.0, 90.0, 16.0, 8.0]), inside, (100, 200))  # side ceil(11.3 * 5) = 57
    assert g.side == 57 and (g.x0, g.y0) == (200 - 57, 100 - 57)


def test_box_maps_work_on_batches_and_return_float64():
    g = CropGeometry(x0=-10, y0=20, side=64, output_sz=128)
    boxes = np.array([[0, 20, 8, 4], [-10, 52, 64, 2]])  # integers, two boxes
    crop = g.box_to_crop(boxes)
    np.testing.assert_allclose(crop, [[20.0, 0.0, 16.0, 8.0], [0.0, 64.0, 128.0, 4.0]])
    assert crop.dtype == np.float64 and crop.shape == (2, 4)
    back = g.box_to_image(np.array([[20, 0, 16, 8], [1, 1, 3, 3]]))
    np.testing.assert_allclose(back, [[0.0, 20.0, 8.0, 4.0], [-9.5, 20.5, 1.5, 1.5]])
    assert back.dtype == np.float64 and back.shape == (2, 4)


def test_a_uint16_image_of_one_value_becomes_uint8_zeros():
    out = normalize_tir(np.full((6, 5), 4000, dtype=np.uint16))
    assert out.dtype == np.uint8 and out.shape == (6, 5) and not out.any()
    # two values: the 1st and 99th percentiles coincide, so the min/max range stretches them to 0 and 255
    two = np.full((10, 10), 1000, dtype=np.uint16)
    two[0, 0] = 3000
    np.testing.assert_array_equal(np.unique(normalize_tir(two)), [0, 255])


def test_a_flat_uint16_image_with_single_outliers_stretches_between_its_min_and_max():
    tir = np.full((10, 20), 1000, dtype=np.uint16)  # the 1st and 99th percentiles are both 1000
    tir[0, 0], tir[9, 19] = 500, 3000  # the minimum and the maximum occur once each
    out = normalize_tir(tir)
    assert (out[0, 0], out[9, 19], out[5, 5]) == (0, 255, round((1000 - 500) * 255 / 2500))


def test_gmm_proposals_draw_their_own_offset_per_coordinate():
    from cmd_ray.data.processing import sample_gmm_proposals

    cfg = SamplingConfig(proposal_method="gmm", num_proposals=64, gmm_proposal_sigma=[(0.1, 0.1)])
    box = np.array([30.0, 20.0, 40.0, 40.0])
    proposals = sample_gmm_proposals(box, cfg, np.random.default_rng(5))[0].astype(np.float64)
    d = np.concatenate([(proposals[:, :2] + proposals[:, 2:] / 2 - 50.0) / 40.0, np.log(proposals[:, 2:] / 40.0)], 1)
    assert len(np.unique(np.round(d, 6))) == d.size  # no offset shared between proposals or coordinates
    np.testing.assert_allclose(d.std(axis=0), 0.1, rtol=0.3)
