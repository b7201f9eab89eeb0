import numpy as np
import pytest

from cmd_ray.config import DataConfig
from cmd_ray.data.boxes import (
    BOX_METHODS,
    BoxMethod,
    BoxOptions,
    PseudoBoxes,
    box_iou,
    box_options,
    center_box,
    clip_box,
    pseudo_boxes,
    pseudo_boxes_with_fallback,
    random_boxes,
    resize_to_patch,
    usable_boxes,
)
from cmd_ray.data.processing import align_pair


@pytest.mark.parametrize(("height", "width", "fraction"), [(128, 160, 0.3), (512, 640, 0.5), (33, 200, 1.0)])
def test_center_box_is_a_centred_square_inside_the_image(height, width, fraction):
    box = center_box(height, width, fraction)
    assert box.dtype == np.float32 and box.shape == (4,)
    x, y, w, h = box.tolist()
    assert w == h == pytest.approx(fraction * min(height, width))
    assert x + w / 2 == pytest.approx(width / 2) and y + h / 2 == pytest.approx(height / 2)
    assert x >= 0 and y >= 0 and x + w <= width and y + h <= height


def test_center_box_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fraction"):
        center_box(100, 100, 0.0)
    with pytest.raises(ValueError, match="positive"):
        center_box(0, 100, 0.5)


def test_center_pseudo_box_is_the_same_for_both_modalities():
    rgb = np.zeros((120, 160, 3), np.uint8)
    tir_small = np.zeros((60, 80), np.uint16)  # same aspect, half resolution
    rgb, tir = align_pair(rgb, tir_small, key="pair-0")
    boxes = pseudo_boxes("center", rgb, tir, np.random.default_rng(0), center_box_fraction=0.25)
    assert boxes.shape == (1, 4) and boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes[0], center_box(*rgb.shape[:2], 0.25))
    np.testing.assert_array_equal(boxes[0], center_box(*tir.shape, 0.25))
    for image in (rgb, tir):
        x, y, w, h = boxes[0]
        assert x >= 0 and y >= 0 and x + w <= image.shape[1] and y + h <= image.shape[0]


def test_pseudo_boxes_need_an_aligned_pair():
    with pytest.raises(ValueError, match="align_pair"):
        pseudo_boxes("center", np.zeros((10, 20, 3), np.uint8), np.zeros((10, 10), np.uint8), None)


def test_pseudo_boxes_unknown_method_is_a_clear_error():
    rgb, tir = np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match=r"unknown pseudo-box method 'yolo'.*center, random, detection, hotspot"):
        pseudo_boxes("yolo", rgb, tir, None)
    with pytest.raises(ValueError, match="needs a detector"):
        pseudo_boxes("detection", rgb, tir, None)


# --------------------------------------------------------------------------- random regions (§4.2)


@pytest.mark.parametrize(("height", "width"), [(128, 160), (512, 640), (60, 300)])
def test_random_boxes_are_about_a_sixth_of_the_image_and_inside_it(height, width):
    rng = np.random.default_rng(3)
    boxes = random_boxes(height, width, rng, count=200, fraction=1 / 6, scale_range=(0.8, 1.25))
    assert boxes.shape == (200, 4) and boxes.dtype == np.float32
    x, y, w, h = boxes.T.astype(np.float64)
    assert np.all(x >= 0) and np.all(y >= 0) and np.all(x + w <= width + 1e-4) and np.all(y + h <= height + 1e-4)
    np.testing.assert_allclose(w / width, h / height, rtol=1e-5)  # the image's aspect ratio
    scale = w / (width / 6)
    assert scale.min() >= 0.8 - 1e-5 and scale.max() <= 1.25 + 1e-5
    assert scale.min() < 0.85 and scale.max() > 1.2  # the whole range is used
    # spread over the image, not stuck in one place
    assert np.ptp(x + w / 2) > 0.5 * width and np.ptp(y + h / 2) > 0.5 * height


def test_random_boxes_are_reproducible_per_generator_and_validate_arguments():
    a = random_boxes(100, 100, np.random.default_rng(7), count=4)
    b = random_boxes(100, 100, np.random.default_rng(7), count=4)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="count"):
        random_boxes(100, 100, np.random.default_rng(0), count=0)
    with pytest.raises(ValueError, match="scale_range"):
        random_boxes(100, 100, np.random.default_rng(0), scale_range=(1.2, 0.8))


def test_random_pseudo_boxes_count_and_identical_in_both_modalities():
    rgb, tir = np.zeros((128, 160, 3), np.uint8), np.zeros((128, 160), np.uint16)
    found = pseudo_boxes_with_fallback(
        "random",
        rgb,
        tir,
        np.random.default_rng(1),
        random_boxes_per_pair=3,
        random_box_fraction=0.25,
        random_box_scale_range=(1, 1),
    )
    assert not found.fallback and found.boxes.shape == (3, 4)
    np.testing.assert_allclose(found.boxes[:, 2:], [[40, 32]] * 3)


def test_resize_to_patch_makes_the_region_a_100px_square_in_both_modalities():
    height, width = 128, 160
    rgb = np.zeros((height, width, 3), np.uint8)
    tir = np.zeros((height, width), np.uint16)
    # a marker block in both modalities at the same place: it must stay aligned after the resample
    rgb[40:60, 70:90] = 255
    tir[40:60, 70:90] = 60000
    box = np.array([60, 30, 40, 40 * height / width], np.float32)  # a 1/4-image region, image aspect
    out_rgb, out_tir, out_box = resize_to_patch(rgb, tir, box, 100)
    assert out_rgb.shape[:2] == out_tir.shape and out_tir.dtype == np.uint16 and out_rgb.dtype == np.uint8
    assert out_rgb.shape[:2] == (round(height * 100 / box[3]), round(width * 100 / box[2]))
    np.testing.assert_allclose(out_box[2:], [100, 100], atol=100 / width)
    x, y, w, h = out_box
    assert x >= 0 and y >= 0 and x + w <= out_rgb.shape[1] and y + h <= out_rgb.shape[0]
    rgb_marker = np.argwhere(out_rgb[..., 0] > 127)
    tir_marker = np.argwhere(out_tir > 30000)
    # the same pixels up to the interpolation's rounding at the marker's edge
    np.testing.assert_allclose(rgb_marker.min(0), tir_marker.min(0), atol=1)
    np.testing.assert_allclose(rgb_marker.max(0), tir_marker.max(0), atol=1)
    # the marker's box maps with the same scale as the region
    sx, sy = out_rgb.shape[1] / width, out_rgb.shape[0] / height
    assert abs(rgb_marker[:, 1].min() - 70 * sx) <= 1.5 and abs(rgb_marker[:, 0].min() - 40 * sy) <= 1.5


def test_resize_to_patch_refuses_huge_resamples():
    rgb, tir = np.zeros((100, 100, 3), np.uint8), np.zeros((100, 100), np.uint8)
    with pytest.raises(ValueError, match="random_box_fraction"):
        resize_to_patch(rgb, tir, np.array([0, 0, 1, 1]), 100)
    with pytest.raises(ValueError, match="w, h > 0"):
        resize_to_patch(rgb, tir, np.array([0, 0, 0, 10]), 100)


# --------------------------------------------------------------------------- detection: usable boxes and fallback


def test_detection_boxes_are_clipped_filtered_and_fall_back_to_the_centre():
    rgb, tir = np.zeros((100, 200, 3), np.uint8), np.zeros((100, 200), np.uint8)
    rng = np.random.default_rng(0)

    def detector(rgb_image, tir_image):
        assert rgb_image.shape[:2] == tir_image.shape
        return np.array([[190, 10, 30, 40], [5, 5, 2, 50], [-10, -10, 40, 40]], np.float32)

    found = pseudo_boxes_with_fallback("detection", rgb, tir, rng, detector=detector, min_box_size=8)
    assert not found.fallback
    np.testing.assert_allclose(found.boxes, [[190, 10, 10, 40], [0, 0, 30, 30]])  # clipped; the 2px one dropped

    nothing = pseudo_boxes_with_fallback(
        "detection", rgb, tir, rng, detector=lambda *_: np.zeros((0, 4)), center_box_fraction=0.5
    )
    assert nothing.fallback
    np.testing.assert_array_equal(nothing.boxes, center_box(100, 200, 0.5)[None])
    assert isinstance(nothing, PseudoBoxes)


def test_usable_boxes_keeps_order_and_drops_small_ones():
    boxes = np.array([[0, 0, 10, 10], [95, 95, 10, 10], [20, 20, 3, 30]], np.float32)
    np.testing.assert_allclose(usable_boxes(boxes, 100, 100, min_size=5), [[0, 0, 10, 10], [95, 95, 5, 5]])
    assert usable_boxes(np.zeros((0, 4)), 10, 10).shape == (0, 4)


def test_box_iou_known_values_vectorised():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 10], [5, 5, 2, 2]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [10, 0, 10, 10], [0, 0, 0, 10], [0, 0, 10, 10]], np.float32)
    iou = box_iou(a, b)
    assert iou.dtype == np.float32 and iou.shape == (5,)
    np.testing.assert_allclose(iou, [1.0, 50 / 150, 0.0, 0.0, 4 / 100], rtol=1e-6)
    np.testing.assert_allclose(box_iou(b, a), iou)
    # broadcasting one box against many
    np.testing.assert_allclose(box_iou(a[:3], np.array([0, 0, 10, 10])), [1.0, 1.0, 1.0])


def test_clip_box():
    boxes = np.array([[-5, -5, 10, 10], [90, 40, 20, 20], [200, 10, 5, 5], [10, 10, 5, 5]], np.float32)
    clipped = clip_box(boxes, height=50, width=100)
    np.testing.assert_allclose(clipped, [[0, 0, 5, 5], [90, 40, 10, 10], [100, 10, 0, 5], [10, 10, 5, 5]])
    assert clipped.dtype == np.float32


# --------------------------------------------------------------------------- the registry


def test_every_method_takes_its_options_from_the_data_config_by_name():
    data = DataConfig(center_box_fraction=0.4, random_boxes_per_pair=2, min_box_size=12)
    for name, method in BOX_METHODS.items():
        assert issubclass(method.options, BoxOptions)
        assert set(method.options.model_fields) <= set(DataConfig.model_fields), name
        options = box_options(name, data)
        for field in method.options.model_fields:
            assert getattr(options, field) == getattr(data, field)


def test_options_given_by_name_override_the_settings_and_bad_ones_fail():
    options = box_options("random", DataConfig(random_boxes_per_pair=2), random_boxes_per_pair=5)
    assert options.random_boxes_per_pair == 5
    with pytest.raises(ValueError, match="center_box_fraction"):
        box_options("center", center_box_fraction=2.0)


def test_a_method_that_may_not_find_nothing_fails_when_it_does(monkeypatch):
    rgb, tir = np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)
    monkeypatch.setitem(BOX_METHODS, "nothing", BoxMethod(lambda pair, options: np.zeros((0, 4))))
    with pytest.raises(ValueError, match="'nothing' found no box"):
        pseudo_boxes("nothing", rgb, tir, None)


# --------------------------------------------------------------------------- 'hotspot' (README: Extending cmd-ray)


def test_hotspot_box_is_centred_on_the_warmest_region_in_both_modalities():
    rgb = np.zeros((128, 160, 3), np.uint8)
    tir = np.full((128, 160), 20000, np.uint16)
    tir[70:90, 100:120] = 40000  # a warm 20 x 20 object centred at (110, 80)
    tir[10, 10] = 65535  # one hot pixel (noise) must not win over the warm region
    found = pseudo_boxes_with_fallback("hotspot", rgb, tir, np.random.default_rng(0), center_box_fraction=0.25)
    assert not found.fallback and found.boxes.shape == (1, 4) and found.boxes.dtype == np.float32
    x, y, w, h = found.boxes[0]
    assert w == h == pytest.approx(0.25 * 128)
    assert x + w / 2 == pytest.approx(110, abs=1) and y + h / 2 == pytest.approx(80, abs=1)
    # one box for both modalities: it lies inside the (aligned) RGB image too
    assert x >= 0 and y >= 0 and x + w <= rgb.shape[1] and y + h <= rgb.shape[0]


def test_hotspot_box_at_the_border_is_shifted_inside_the_image():
    rgb = np.zeros((100, 200, 3), np.uint8)
    tir = np.zeros((100, 200), np.uint8)
    tir[0:6, 194:200] = 255  # warmest in the top-right corner
    box = pseudo_boxes("hotspot", rgb, tir, None, settings=DataConfig(center_box_fraction=0.3))[0]
    np.testing.assert_allclose(box, [170, 0, 30, 30])
