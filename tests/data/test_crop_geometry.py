"""One crop geometry for training and tracking: the same CropGeometry maps boxes and cuts pixels identically."""

from __future__ import annotations

import numpy as np
import pytest

from cmd_ray.config import SamplingConfig
from cmd_ray.data.processing import CropGeometry, apply_crop, crop_geometry
from cmd_ray.tracking.geometry import sample_patch, search_geometry


def smooth_image(height: int = 128, width: int = 160) -> np.ndarray:
    # gradients under 15 levels/px: warpAffine rounds sample positions to 1/32 px, cv2.resize does not
    rows, cols = np.mgrid[0:height, 0:width]
    return np.rint(127 + 100 * np.sin(cols / 7.0) * np.cos(rows / 9.0)).astype(np.uint8)


def assert_same_crop(geometry: CropGeometry, image: np.ndarray) -> None:
    training = apply_crop(image, geometry).astype(np.int16)
    tracking = sample_patch(image, geometry).astype(np.int16)
    assert training.shape == tracking.shape
    # the last row/column may differ where cv2.resize clamps to the cut-out and warpAffine reads the next pixel
    assert np.abs(training - tracking)[:-1, :-1].max() <= 2
    assert np.abs(training - tracking).mean() < 0.5


@pytest.mark.parametrize(
    ("box", "factor", "output_sz"),
    [
        ([50.0, 30.0, 20.0, 30.0], 5.0, 128),  # upsampled, reaches beyond the image (replicated border)
        ([60.0, 40.0, 40.0, 36.0], 2.0, 64),  # downsampled, inside the image
    ],
)
def test_a_training_crop_cut_by_the_tracker_gives_the_same_pixels_and_boxes(box, factor, output_sz):
    image = smooth_image()
    geometry = crop_geometry(np.array(box), SamplingConfig(search_area_factor=factor, output_sz=output_sz))
    assert isinstance(geometry, CropGeometry) and geometry.is_whole_pixel
    assert_same_crop(geometry, image)
    assert_same_crop(geometry, np.stack([image, 255 - image, image // 2], axis=-1))  # RGB
    # boxes and points go through the one map, whose affine matrix is what the tracker warps with
    boxes = np.array([box, [0.0, 0.0, 10.0, 5.0]])
    in_crop = geometry.box_to_crop(boxes)
    np.testing.assert_allclose(geometry.box_to_image(in_crop), boxes, atol=1e-9)
    corners = np.concatenate([boxes[:, :2], np.ones((2, 1))], axis=1) @ geometry.matrix().T
    np.testing.assert_allclose(corners, in_crop[:, :2], atol=1e-9)


def test_a_tracker_search_region_on_whole_pixels_is_a_training_crop():
    image = smooth_image()
    geometry = search_geometry((70.0, 50.0), 100.0, (160, 128), 128)
    assert geometry == CropGeometry(20, 0, 100, 128) and geometry.is_whole_pixel
    assert_same_crop(geometry, image)


def test_apply_crop_refuses_sub_pixel_regions():
    geometry = search_geometry((70.3, 50.0), 100.0, (160, 128), 128)
    assert not geometry.is_whole_pixel
    with pytest.raises(ValueError, match="whole-pixel"):
        apply_crop(smooth_image(), geometry)
    assert sample_patch(smooth_image(), geometry).shape == (128, 128)
