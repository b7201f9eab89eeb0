import numpy as np
import pytest

from cmd_ray.config import SamplingConfig
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
    normalize_tir,
    sample_crop,
    sample_proposals,
)

CFG = SamplingConfig()  # output 128, stride 16, filter 4: label 9x9
ODD = SamplingConfig(output_sz=96, feature_stride=8, filter_size=3)  # label 12x12
DIMP50 = SamplingConfig(output_sz=288, feature_stride=16, filter_size=4, search_area_factor=5.0)


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


def test_jitter_follows_pytracking_bounds():
    box = np.array([50, 60, 40, 20], np.float64)
    rng = np.random.default_rng(0)
    centre = box[:2] + box[2:] / 2
    draws = np.array([jittered_box(box, CFG, rng) for _ in range(500)])
    sizes = draws[:, 2:]
    offsets = np.abs(draws[:, :2] + sizes / 2 - centre)
    assert np.all(offsets <= 0.5 * np.sqrt(sizes.prod(axis=1, keepdims=True)) * CFG.center_jitter_factor + 1e-9)
    log_scale = np.log(sizes / box[2:])
    assert abs(log_scale.std() - CFG.scale_jitter_factor) < 0.03
    still = SamplingConfig(center_jitter_factor=0.0, scale_jitter_factor=0.0)
    np.testing.assert_allclose(jittered_box(box, still, rng), box)
    assert crop_geometry(box, CFG) == jittered_crop_geometry(box, still, rng)


# --------------------------------------------------------------------------- labels and proposals


@pytest.mark.parametrize("cfg", [CFG, ODD, DIMP50], ids=["even-filter", "odd-filter", "dimp50"])
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


def test_make_sample_crops_show_the_target_in_both_modalities():
    rgb, tir, box = _painted_pair()
    for seed in range(3):
        sample = make_sample(rgb, tir, box, CFG, np.random.default_rng(seed))
        assert not np.array_equal(sample["ref_box"], sample["test_box"])  # independent jitter
        for frame in ("ref", "test"):
            for modality in ("rgb", "tir"):
                _assert_square_at(sample[f"{modality}_{frame}"], sample[f"{frame}_box"], bright=200, dark=60)


def test_make_sample_requires_an_aligned_pair():
    rgb, tir, box = _painted_pair()
    with pytest.raises(ValueError, match="align_pair"):
        make_sample(rgb, tir[:60, :80], box, CFG, np.random.default_rng(0))
