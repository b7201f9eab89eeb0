"""Pseudo-target boxes for unlabeled, pixel-aligned RGB–TIR pairs, and box helpers.

Boxes are ``float32 [..., 4]`` as ``(x, y, w, h)`` in continuous pixel
coordinates: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so a box spans
``[x, x+w) x [y, y+h)`` and an image of width ``W`` spans ``[0, W)``.

Because the pairs are pixel-aligned, one box is valid in both modalities.

Methods (paper §3.2, §4.2):

- ``'center'``: a square of side ``fraction * min(H, W)`` at the image centre.
- ``'random'``: ``k`` regions of about 1/6 of the image: each side is ``fraction`` (1/6) of the image's side
  times a factor drawn from ``scale_range`` ("approximately"), placed uniformly inside the image
  (:func:`random_boxes`). "Resized to 100×100" (§4.2) is read as: the region is the pseudo target and
  the pair is resampled, both modalities alike, so that the region becomes a ``patch × patch`` square
  (:func:`resize_to_patch`); the DiMP search-area crops are then cut around that square as around any
  target. The square normalises the region's aspect ratio (a 1/6 region has the image's aspect) and its
  resolution; the crop geometry (search area, jitter, output size) stays that of ``data.sampling``.
- ``'detection'``: boxes of a detector (:mod:`cmd_ray.data.detect`) run on the RGB image (optionally
  merged with TIR detections); a pair where nothing is found falls back to the ``'center'`` box, and
  :class:`PseudoBoxes` says so (the pipeline counts it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

BoxMethod = Callable[..., np.ndarray]
"""``fn(rgb, tir, rng, **params) -> float32 [K, 4]``: pseudo boxes of one aligned pair (K may be 0)."""

PairDetector = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``fn(rgb uint8 [H, W, 3], tir [H, W]) -> float32 [K, 4]`` boxes in pixels (K >= 0), e.g. a closure over
:func:`cmd_ray.data.detect.detect_pair` or precomputed boxes of a manifest."""

MAX_PATCH_IMAGE_SIDE = 8192
"""Largest image side :func:`resize_to_patch` may produce (guards a tiny region against a huge resample)."""


def center_box(height: int, width: int, fraction: float) -> np.ndarray:
    """The 'center area' pseudo target: a centred square.

    Args:
        height, width: image size in pixels.
        fraction: square side / ``min(height, width)``, in ``(0, 1]``.

    Returns:
        ``float32 [4]`` ``(x, y, w, h)`` in pixels, inside ``[0, width) x [0, height)``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"center box fraction must be in (0, 1], got {fraction}")
    side = fraction * min(height, width)
    return np.array([(width - side) / 2.0, (height - side) / 2.0, side, side], dtype=np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of ``(x, y, w, h)`` boxes, element-wise.

    Args:
        a, b: ``[N, 4]`` (or broadcastable, e.g. ``[N, 4]`` and ``[4]``); ``x2 = x + w``.

    Returns:
        ``float32 [N]`` IoU in ``[0, 1]``; 0 where the union is empty.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    tl = np.maximum(a[..., :2], b[..., :2])
    br = np.minimum(a[..., :2] + a[..., 2:], b[..., :2] + b[..., 2:])
    inter = np.prod(np.clip(br - tl, 0.0, None), axis=-1)
    area_a = np.prod(np.clip(a[..., 2:], 0.0, None), axis=-1)
    area_b = np.prod(np.clip(b[..., 2:], 0.0, None), axis=-1)
    union = area_a + area_b - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou.astype(np.float32)


def clip_box(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip ``(x, y, w, h)`` boxes ``[..., 4]`` to the image ``[0, width) x [0, height)``.

    A box entirely outside the image comes back with zero width and/or height
    on the nearest border. Returns ``float32 [..., 4]``.
    """
    box = np.asarray(box, dtype=np.float64)
    x1 = np.clip(box[..., 0], 0.0, width)
    y1 = np.clip(box[..., 1], 0.0, height)
    x2 = np.clip(box[..., 0] + box[..., 2], 0.0, width)
    y2 = np.clip(box[..., 1] + box[..., 3], 0.0, height)
    out = np.stack([x1, y1, np.maximum(x2 - x1, 0.0), np.maximum(y2 - y1, 0.0)], axis=-1)
    return out.astype(np.float32)


def random_boxes(
    height: int,
    width: int,
    rng: np.random.Generator,
    count: int = 4,
    fraction: float = 1 / 6,
    scale_range: tuple[float, float] = (0.8, 1.25),
) -> np.ndarray:
    """The 'random' pseudo targets: ``count`` regions of about ``fraction`` of the image per side.

    Each region has width ``fraction * width * s`` and height ``fraction * height * s`` (``s ~ U(scale_range)``,
    sides at most the image's), and lies entirely inside the image at a uniform position.

    Returns:
        ``float32 [count, 4]`` ``(x, y, w, h)`` in pixels.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if count < 1 or not 0.0 < fraction <= 1.0:
        raise ValueError(f"random boxes need count >= 1 and fraction in (0, 1], got {count} and {fraction}")
    low, high = scale_range
    if not 0.0 < low <= high:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    scale = rng.uniform(low, high, size=count)
    w = np.clip(fraction * width * scale, 1.0, width)
    h = np.clip(fraction * height * scale, 1.0, height)
    x = rng.random(count) * (width - w)
    y = rng.random(count) * (height - h)
    return np.stack([x, y, w, h], axis=1).astype(np.float32)


def resize_to_patch(
    rgb: np.ndarray, tir: np.ndarray, box: np.ndarray, patch: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample an aligned pair so that ``box`` becomes a ``patch x patch`` square (§4.2's "resized to 100×100").

    Both images are scaled by ``(patch / w, patch / h)`` (area interpolation when shrinking, bilinear when
    enlarging), so a 1/6 region of any image yields an image of about ``6 * patch`` pixels per side.

    Args:
        rgb: ``uint8 [H, W, 3]``; tir: ``[H, W]`` (uint8 or uint16), aligned.
        box: ``(x, y, w, h)`` in pixels, ``w, h > 0``.
        patch: side of the square in pixels (>= 1).

    Returns:
        ``(rgb [H', W', 3], tir [H', W'], box float32 [4])``; the box is ``patch x patch`` up to the rounding
        of the image size (``|w' - patch| <= patch / W``).

    Raises:
        ValueError: a degenerate box, or an output side above :data:`MAX_PATCH_IMAGE_SIDE`.
    """
    box = np.asarray(box, dtype=np.float64).reshape(4)
    if patch < 1 or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"resize_to_patch needs patch >= 1 and a box with w, h > 0, got {patch} and {box.tolist()}")
    height, width = rgb.shape[:2]
    new_w = max(1, round(width * patch / box[2]))
    new_h = max(1, round(height * patch / box[3]))
    if max(new_w, new_h) > MAX_PATCH_IMAGE_SIDE:
        raise ValueError(
            f"a {box[2]:.1f}x{box[3]:.1f} region of a {width}x{height} image resized to {patch}x{patch} needs a "
            f"{new_w}x{new_h} image (limit {MAX_PATCH_IMAGE_SIDE}); raise data.random_box_fraction or lower the patch"
        )
    sx, sy = new_w / width, new_h / height

    def resize(image: np.ndarray, scale: float) -> np.ndarray:
        interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        return cv2.resize(image, (new_w, new_h), interpolation=interpolation)

    out = np.array([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], dtype=np.float32)
    return resize(rgb, min(sx, sy)), resize(tir, min(sx, sy)), out


def usable_boxes(boxes: np.ndarray, height: int, width: int, min_size: float = 1.0) -> np.ndarray:
    """Clip ``[K, 4]`` boxes to the image and drop those narrower or lower than ``min_size`` pixels.

    Returns ``float32 [K', 4]``, ``K' <= K`` (order kept).
    """
    boxes = clip_box(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), height, width)
    keep = (boxes[:, 2] >= min_size) & (boxes[:, 3] >= min_size)
    return boxes[keep]


@dataclass(frozen=True)
class PseudoBoxes:
    """Pseudo targets of one pair.

    Attributes:
        boxes: ``float32 [K, 4]`` ``(x, y, w, h)`` in pixels, ``K >= 1``, inside the image.
        fallback: True when the method found nothing and the ``'center'`` box stands in.
    """

    boxes: np.ndarray
    fallback: bool = False


def _center_boxes(
    rgb: np.ndarray, tir: np.ndarray, rng: np.random.Generator, *, center_fraction: float = 0.3, **_: Any
) -> np.ndarray:
    height, width = rgb.shape[:2]
    return center_box(height, width, center_fraction)[None, :]


def _random_boxes(
    rgb: np.ndarray,
    tir: np.ndarray,
    rng: np.random.Generator,
    *,
    random_count: int = 4,
    random_fraction: float = 1 / 6,
    random_scale_range: tuple[float, float] = (0.8, 1.25),
    **_: Any,
) -> np.ndarray:
    height, width = rgb.shape[:2]
    return random_boxes(height, width, rng, random_count, random_fraction, random_scale_range)


def _detection_boxes(
    rgb: np.ndarray,
    tir: np.ndarray,
    rng: np.random.Generator,
    *,
    detector: PairDetector | None = None,
    min_box_size: float = 1.0,
    **_: Any,
) -> np.ndarray:
    if detector is None:
        raise ValueError("pseudo-box method 'detection' needs a detector (see cmd_ray.data.detect.build_detector)")
    height, width = rgb.shape[:2]
    return usable_boxes(detector(rgb, tir), height, width, min_box_size)


METHODS: dict[str, BoxMethod] = {"center": _center_boxes, "random": _random_boxes, "detection": _detection_boxes}


def pseudo_boxes_with_fallback(
    method: str, rgb: np.ndarray, tir: np.ndarray, rng: np.random.Generator, **params: Any
) -> PseudoBoxes:
    """Pseudo-target boxes of one aligned pair, and whether the ``'center'`` fallback was used.

    Args:
        method: ``'center'``, ``'random'`` or ``'detection'``.
        rgb: ``uint8 [H, W, 3]``; tir: ``[H, W]`` — already aligned (same ``H, W``).
        rng: randomness of ``'random'`` (seed it per pair for regions fixed per pair).
        params: ``center_fraction`` (box side / ``min(H, W)``, also the fallback's);
            ``random_count``, ``random_fraction``, ``random_scale_range`` (see :func:`random_boxes`);
            ``detector`` (a :data:`PairDetector`) and ``min_box_size`` (pixels) for ``'detection'``.
            Options of other methods are ignored.

    Returns:
        :class:`PseudoBoxes`: ``K >= 1`` boxes valid in both modalities.

    Raises:
        ValueError: unknown method, images of different sizes, or 'detection' without a detector.
    """
    if rgb.shape[:2] != tir.shape[:2]:
        raise ValueError(
            f"pseudo boxes need an aligned pair: RGB is {rgb.shape[1]}x{rgb.shape[0]}, "
            f"TIR is {tir.shape[1]}x{tir.shape[0]} (align_pair first)"
        )
    fn = METHODS.get(method)
    if fn is None:
        raise ValueError(f"unknown pseudo-box method {method!r}; supported: {', '.join(METHODS)}")
    boxes = np.asarray(fn(rgb, tir, rng, **params), dtype=np.float32).reshape(-1, 4)
    if len(boxes):
        return PseudoBoxes(boxes)
    if method != "detection":
        raise ValueError(f"pseudo-box method {method!r} found no box")
    return PseudoBoxes(_center_boxes(rgb, tir, rng, **params), fallback=True)


def pseudo_boxes(method: str, rgb: np.ndarray, tir: np.ndarray, rng: np.random.Generator, **params: Any) -> np.ndarray:
    """The boxes of :func:`pseudo_boxes_with_fallback`: ``float32 [K, 4]``, ``K >= 1``."""
    return pseudo_boxes_with_fallback(method, rgb, tir, rng, **params).boxes
