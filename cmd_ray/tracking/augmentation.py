"""First-frame data augmentation: the initial training samples of the target classifier.

Every sample is the first frame's search crop seen through one transform: the plain crop (always first),
shifts, a horizontal flip, Gaussian blurs, zooms and rotations (DiMP's set; ``TrackerConfig.Augmentation``).
A transform is an affine map of the crop plane (``[2, 3]``, continuous crop pixels, about the crop centre),
optionally followed by a blur. It is composed with the crop's image -> crop map and applied to the frame in one
``cv2.warpAffine``, so shifted and rotated samples show real image content, not padding. Flip, blur, zoom and
rotation samples are also shifted at random by up to ``random_shift_factor`` of the crop side, so the target is
not always at the centre. Feature dropout (the last augmentation) acts on classifier features, in the tracker.

The target box of a sample is the transformed box: centre mapped by the transform, size scaled by its zoom
(a rotated box keeps its width and height, as in DiMP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from cmd_ray.config import TrackerConfig
from cmd_ray.data.processing import CropGeometry
from cmd_ray.tracking.geometry import warp_patch


@dataclass(frozen=True)
class InitTransform:
    """One augmentation: ``matrix`` ``float64 [2, 3]`` maps the plain crop to the sample (continuous crop px).

    ``blur_sigma``: ``(sigma_x, sigma_y)`` of a Gaussian blur applied after the warp, or None.
    """

    name: str
    matrix: np.ndarray = field(repr=False)
    blur_sigma: tuple[float, float] | None = None

    @property
    def zoom(self) -> float:
        """Linear scale of the transform (1 for shifts, flips and rotations)."""
        return math.sqrt(abs(float(np.linalg.det(self.matrix[:, :2]))))


def _shifted(linear_about_center: np.ndarray, center: float, shift: tuple[float, float]) -> np.ndarray:
    """``[2, 3]``: ``linear`` about the crop centre ``(center, center)``, then a shift ``(dx, dy)``."""
    c = np.array([center, center])
    return np.concatenate([linear_about_center, (c - linear_about_center @ c + np.asarray(shift))[:, None]], axis=1)


def init_transforms(
    cfg: TrackerConfig.Augmentation | None,
    output_sz: int,
    random_shift_factor: float,
    rng: np.random.Generator,
) -> list[InitTransform]:
    """The first-frame transforms, the plain crop first; ``cfg=None`` gives the plain crop only.

    Order (DiMP's): identity, ``shift``, ``relativeshift``, ``fliplr``, ``blur``, ``scale``, ``rotate``. Flip,
    blur, zoom and rotation samples get a random shift uniform in ``±random_shift_factor/2`` crop sides.
    """
    center = output_sz / 2.0
    eye = np.eye(2)

    def random_shift() -> tuple[float, float]:
        if random_shift_factor <= 0:
            return (0.0, 0.0)
        dx, dy = (rng.random(2) - 0.5) * output_sz * random_shift_factor
        return (float(dx), float(dy))

    out = [InitTransform("identity", _shifted(eye, center, (0.0, 0.0)))]
    if cfg is None:
        return out
    for dx, dy in cfg.shift:
        out.append(InitTransform(f"shift({dx:g},{dy:g})", _shifted(eye, center, (dx, dy))))
    for rx, ry in cfg.relativeshift:
        shift = (rx * output_sz / 2.0, ry * output_sz / 2.0)
        out.append(InitTransform(f"relativeshift({rx:g},{ry:g})", _shifted(eye, center, shift)))
    if cfg.fliplr:
        out.append(InitTransform("fliplr", _shifted(np.diag([-1.0, 1.0]), center, random_shift())))
    for sx, sy in cfg.blur:
        out.append(InitTransform(f"blur({sx:g},{sy:g})", _shifted(eye, center, random_shift()), (sx, sy)))
    for factor in cfg.scale:
        out.append(InitTransform(f"scale({factor:g})", _shifted(eye / factor, center, random_shift())))
    for angle in cfg.rotate:
        # cv2's rotation about the crop centre; angle in degrees, counter-clockwise on screen
        linear = cv2.getRotationMatrix2D((0.0, 0.0), float(angle), 1.0)[:, :2]
        out.append(InitTransform(f"rotate({angle:g})", _shifted(linear, center, random_shift())))
    return out


def _compose(transform: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``transform ∘ base`` for ``[2, 3]`` affine maps."""
    return transform[:, :2] @ base + np.concatenate([np.zeros((2, 2)), transform[:, 2:]], axis=1)


def augmented_patches(image: np.ndarray, geometry: CropGeometry, transforms: list[InitTransform]) -> np.ndarray:
    """The samples of ``image`` (``[H, W]`` or ``[H, W, 3]``): ``[N, S, S]`` or ``[N, S, S, 3]``, image dtype.

    Sample ``n`` is the crop ``geometry`` seen through ``transforms[n]`` (one warp from the frame, then the blur,
    borders replicated).
    """
    base = geometry.matrix()
    size = geometry.output_sz
    patches = []
    for t in transforms:
        patch = warp_patch(image, _compose(t.matrix, base), size)
        if t.blur_sigma is not None:
            sx, sy = t.blur_sigma
            ksize = (2 * math.ceil(2 * sx) + 1, 2 * math.ceil(2 * sy) + 1)
            patch = cv2.GaussianBlur(patch, ksize, sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REPLICATE)
        patches.append(patch)
    return np.stack(patches)


def augmented_boxes(box_in_crop: np.ndarray, transforms: list[InitTransform]) -> np.ndarray:
    """The target box in every sample: ``float64 [N, 4]`` ``x, y, w, h`` crop pixels.

    Centre mapped by the transform, width and height multiplied by its zoom.
    """
    box = np.asarray(box_in_crop, dtype=np.float64).reshape(4)
    center = box[:2] + box[2:] / 2
    out = np.empty((len(transforms), 4))
    for n, t in enumerate(transforms):
        c = t.matrix[:, :2] @ center + t.matrix[:, 2]
        size = box[2:] * t.zoom
        out[n] = (*(c - size / 2), *size)
    return out
