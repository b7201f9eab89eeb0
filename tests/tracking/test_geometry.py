"""Crop geometry: box -> crop -> image round trips, border modes, crops sampled where the map says."""

from __future__ import annotations

import numpy as np
import pytest

from cmd_ray.config import SamplingConfig
from cmd_ray.data.processing import CropGeometry, apply_crop, crop_geometry
from cmd_ray.tracking.geometry import prepare_frame, sample_patch, search_geometry


def test_box_round_trip() -> None:
    rng = np.random.default_rng(0)
    geometry = CropGeometry(x0=-12.3, y0=40.7, side=173.9, output_sz=128)
    boxes = np.column_stack([rng.uniform(-50, 300, (20, 2)), rng.uniform(1, 90, (20, 2))])
    np.testing.assert_allclose(geometry.box_to_image(geometry.box_to_crop(boxes)), boxes, atol=1e-9)
    # the crop's own square maps to the full crop
    np.testing.assert_allclose(geometry.box_to_crop([-12.3, 40.7, 173.9, 173.9]), [0, 0, 128, 128], atol=1e-9)
    np.testing.assert_allclose(geometry.center, [-12.3 + 173.9 / 2, 40.7 + 173.9 / 2])


def test_search_geometry_centres_the_target_when_replicating() -> None:
    geometry = search_geometry((30.0, 20.0), 250.0, (160, 128), 128)
    np.testing.assert_allclose(geometry.center, (30.0, 20.0))
    assert geometry.side == 250.0 and geometry.scale == pytest.approx(128 / 250)
    box = np.array([25.0, 10.0, 10.0, 20.0])
    crop_box = geometry.box_to_crop(box)
    np.testing.assert_allclose(crop_box[:2] + crop_box[2:] / 2, (64.0, 64.0))


@pytest.mark.parametrize("mode", ["inside", "inside_major"])
def test_inside_modes_shrink_and_shift_into_the_image(mode: str) -> None:
    width, height = 200, 100
    g = search_geometry((20.0, 50.0), 150.0, (width, height), 64, mode, max_scale_change=None)
    if mode == "inside":  # shrunk by max(150/200, 150/100) = 1.5 to fit both sides
        assert g.side == pytest.approx(100.0)
        assert (g.x0, g.y0) == pytest.approx((0.0, 0.0))
    else:  # shrink by min(0.75, 1.5) clamped to 1: fits horizontally, centred vertically
        assert g.side == pytest.approx(150.0)
        assert g.x0 == pytest.approx(0.0) and g.y0 == pytest.approx((100 - 150) / 2)
    capped = search_geometry((20.0, 50.0), 300.0, (width, height), 64, mode, max_scale_change=1.2)
    assert capped.side == pytest.approx(300.0 / 1.2)  # both modes want to shrink by more than the cap


def test_sampled_crop_matches_the_training_crop() -> None:
    """An integer crop cut with warpAffine equals processing.apply_crop (cv2.resize) up to interpolation rounding."""
    # smooth (gradients < 15 levels/px): warpAffine rounds sample positions to 1/32 px, cv2.resize does not
    rows, cols = np.mgrid[0:128, 0:160]
    image = np.rint(127 + 100 * np.sin(cols / 7.0) * np.cos(rows / 9.0)).astype(np.uint8)
    train = crop_geometry(np.array([50.0, 30.0, 20.0, 30.0]), SamplingConfig(search_area_factor=5.0, output_sz=128))
    ours = CropGeometry(float(train.x0), float(train.y0), float(train.side), train.output_sz)
    a = apply_crop(image, train).astype(np.int16)
    b = sample_patch(image, ours).astype(np.int16)
    assert a.shape == b.shape == (128, 128)
    # the last row/column differ where cv2.resize clamps to the cut-out and warpAffine reads the next image pixel
    assert np.abs(a - b)[:-1, :-1].max() <= 2
    assert np.abs(a - b).mean() < 0.5
    box = np.array([50.0, 30.0, 20.0, 30.0])
    np.testing.assert_allclose(ours.box_to_crop(box), train.box_to_crop(box), atol=1e-4)
    assert isinstance(train, CropGeometry)


def test_crop_samples_where_the_map_points() -> None:
    """A lit pixel of the image appears at its mapped crop position (nearest crop pixel), for RGB and TIR."""
    image = np.zeros((100, 120, 3), np.uint8)
    image[37, 81] = (255, 128, 64)  # pixel (row 37, col 81): centre (81.5, 37.5)
    geometry = CropGeometry(x0=60.0, y0=20.0, side=40.0, output_sz=40)  # scale 1: a plain cut-out
    crop = sample_patch(image, geometry)
    x, y = geometry.points_to_crop(np.array([81.5, 37.5]))
    assert crop[int(y), int(x)].tolist() == [255, 128, 64]
    gray = sample_patch(image[:, :, 0], geometry)
    assert gray.shape == (40, 40) and gray[int(y), int(x)] == 255


def test_prepare_frame() -> None:
    tir16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 7).astype(np.uint16)
    out = prepare_frame(tir16)
    assert out.dtype == np.uint8 and out.shape == (48, 64) and out.min() == 0 and out.max() == 255
    rgb = np.zeros((48, 64, 3), np.uint8)
    assert prepare_frame(rgb).shape == (48, 64, 3)
    assert prepare_frame(np.zeros((48, 64, 1), np.uint8)).shape == (48, 64)
    with pytest.raises(ValueError, match="float32"):
        prepare_frame(np.zeros((48, 64), np.float32))
    with pytest.raises(ValueError, match="uint16"):
        prepare_frame(np.zeros((48, 64, 3), np.uint16))
    with pytest.raises(ValueError, match=r"\(48, 64, 4\)"):
        prepare_frame(np.zeros((48, 64, 4), np.uint8))
