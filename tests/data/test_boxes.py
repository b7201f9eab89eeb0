import numpy as np
import pytest

from cmd_ray.data.boxes import box_iou, center_box, clip_box, pseudo_boxes
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
    boxes = pseudo_boxes("center", rgb, tir, np.random.default_rng(0), center_fraction=0.25)
    assert boxes.shape == (1, 4) and boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes[0], center_box(*rgb.shape[:2], 0.25))
    np.testing.assert_array_equal(boxes[0], center_box(*tir.shape, 0.25))
    for image in (rgb, tir):
        x, y, w, h = boxes[0]
        assert x >= 0 and y >= 0 and x + w <= image.shape[1] and y + h <= image.shape[0]


def test_pseudo_boxes_need_an_aligned_pair():
    with pytest.raises(ValueError, match="align_pair"):
        pseudo_boxes("center", np.zeros((10, 20, 3), np.uint8), np.zeros((10, 10), np.uint8), None)


def test_pseudo_boxes_unknown_and_planned_methods_are_clear_errors():
    rgb, tir = np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match=r"unknown pseudo-box method 'yolo'.*center"):
        pseudo_boxes("yolo", rgb, tir, None)
    for method in ("random", "detection"):
        with pytest.raises(ValueError, match=rf"{method!r} is not supported yet"):
            pseudo_boxes(method, rgb, tir, None)


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
