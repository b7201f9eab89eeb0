"""First-frame augmentation: sample count and shapes, and boxes that follow the target in every sample."""

from __future__ import annotations

import numpy as np
import pytest

from cmd_ray.config import TrackerConfig
from cmd_ray.tracking.augmentation import augmented_boxes, augmented_patches, init_transforms
from cmd_ray.tracking.geometry import search_geometry


def _scene(rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    """A dark frame with one bright 16 x 24 target; returns (image, box)."""
    image = np.full((128, 160), 20, np.uint8)
    box = np.array([70.0, 50.0, 16.0, 24.0])
    image[50:74, 70:86] = 230
    return (np.repeat(image[:, :, None], 3, axis=2) if rgb else image), box


@pytest.mark.parametrize("rgb", [False, True])
def test_shapes_and_order(rgb: bool) -> None:
    aug = TrackerConfig.Augmentation(scale=[1.5], shift=[(4.0, -2.0)])
    transforms = init_transforms(aug, 64, 1 / 3, np.random.default_rng(0))
    names = [t.name for t in transforms]
    assert names[0] == "identity"
    # dropout acts on features later: everything else is one image sample each
    assert len(transforms) == aug.num_samples() - aug.dropout[0]
    assert names[1].startswith("shift") and names[2].startswith("relativeshift") and "fliplr" in names
    image, box = _scene(rgb)
    geometry = search_geometry(box[:2] + box[2:] / 2, 5 * np.sqrt(box[2] * box[3]), (160, 128), 64)
    patches = augmented_patches(image, geometry, transforms)
    assert patches.shape == ((len(transforms), 64, 64, 3) if rgb else (len(transforms), 64, 64))
    assert patches.dtype == np.uint8
    boxes = augmented_boxes(geometry.box_to_crop(box), transforms)
    assert boxes.shape == (len(transforms), 4)
    np.testing.assert_allclose(boxes[0], geometry.box_to_crop(box))


def test_no_augmentation_is_the_plain_crop() -> None:
    transforms = init_transforms(None, 64, 1 / 3, np.random.default_rng(0))
    assert [t.name for t in transforms] == ["identity"]


def test_boxes_follow_the_target() -> None:
    """In every sample the bright target's centroid lies at the box centre (within a pixel and a half)."""
    image, box = _scene(rgb=False)
    aug = TrackerConfig.Augmentation(scale=[1.25])
    transforms = init_transforms(aug, 128, 1 / 3, np.random.default_rng(3))
    geometry = search_geometry(box[:2] + box[2:] / 2, 5 * np.sqrt(box[2] * box[3]), (160, 128), 128)
    patches = augmented_patches(image, geometry, transforms)
    boxes = augmented_boxes(geometry.box_to_crop(box), transforms)
    plain_area = (patches[0] > 125).sum()
    for t, patch, b in zip(transforms, patches, boxes, strict=True):
        ys, xs = np.nonzero(patch > 125)
        centroid = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
        np.testing.assert_allclose(centroid, b[:2] + b[2:] / 2, atol=1.5, err_msg=t.name)
        if t.name.startswith("scale"):  # zoomed out by 1.25: the area shrinks by 1.25**2
            assert len(xs) == pytest.approx(plain_area / 1.25**2, rel=0.15)
            np.testing.assert_allclose(b[2:], boxes[0, 2:] / 1.25)
        elif not t.name.startswith(("blur", "rotate")):
            assert len(xs) == pytest.approx(plain_area, rel=0.1), t.name


def test_random_shifts_are_seeded() -> None:
    aug = TrackerConfig.Augmentation()
    a = init_transforms(aug, 128, 1 / 3, np.random.default_rng(7))
    b = init_transforms(aug, 128, 1 / 3, np.random.default_rng(7))
    c = init_transforms(aug, 128, 0.0, np.random.default_rng(7))
    for ta, tb in zip(a, b, strict=True):
        np.testing.assert_array_equal(ta.matrix, tb.matrix)
    flip = next(t for t in c if t.name == "fliplr")
    np.testing.assert_allclose(flip.matrix, [[-1, 0, 128], [0, 1, 0]])  # mirror about the crop centre, no shift
    shifted = next(t for t in a if t.name == "fliplr")
    assert np.all(np.abs(shifted.matrix[:, 2] - [128, 0]) <= 128 / 6)
