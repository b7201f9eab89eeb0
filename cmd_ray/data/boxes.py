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
- ``'hotspot'``: a square of the ``'center'`` box's size around the warmest region of the TIR image
  (:func:`hotspot_pair_boxes`; not in the paper).

Every method is an entry of :data:`BOX_METHODS` (a function and its options model); the pipeline and
``cmd-ray boxes`` dispatch through it. README.md, "Extending cmd-ray", shows how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

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


# --------------------------------------------------------------------------- the box-method registry


@dataclass(frozen=True)
class AlignedPair:
    """What a pseudo-box method may look at: one pixel-aligned pair.

    Attributes:
        rgb: ``uint8 [H, W, 3]``.
        tir: ``[H, W]`` (uint8 or uint16), the same ``H, W``.
        rng: randomness fixed per pair (the pipeline seeds it by the pair's path under the data root), or ``None``.
        detector: the configured detector (``data.boxes=detection``), or ``None``.
    """

    rgb: np.ndarray
    tir: np.ndarray
    rng: np.random.Generator | None = None
    detector: PairDetector | None = None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


class BoxOptions(BaseModel):
    """Options of a pseudo-box method, named as the ``data.*`` config keys they come from.

    Every method gets ``center_box_fraction`` (a method that may find nothing falls back to that centre box).
    A method that needs more subclasses this; its fields are read off ``cfg.data`` by name (:func:`box_options`).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    center_box_fraction: float = Field(0.3, gt=0.0, le=1.0, description="box side / min(H, W)")


class RandomBoxOptions(BoxOptions):
    random_boxes_per_pair: int = Field(4, ge=1)
    random_box_fraction: float = Field(1 / 6, gt=0.0, le=1.0)
    random_box_scale_range: tuple[float, float] = (0.8, 1.25)


class DetectionBoxOptions(BoxOptions):
    min_box_size: float = Field(1.0, ge=0.0, description="boxes narrower or lower (pixels, after clipping) go")


BoxFinder = Callable[[AlignedPair, Any], np.ndarray]
"""``find(pair, options) -> float32 [K, 4]``: the pseudo boxes of one aligned pair (``K`` may be 0)."""


@dataclass(frozen=True)
class BoxMethod:
    """One entry of :data:`BOX_METHODS`.

    Attributes:
        find: the method (:data:`BoxFinder`).
        options: its options model (:class:`BoxOptions` or a subclass).
        may_find_nothing: True: a pair without boxes falls back to the centre box (counted by the pipeline);
            False: finding no box is an error.
    """

    find: BoxFinder
    options: type[BoxOptions] = BoxOptions
    may_find_nothing: bool = False


def center_pair_boxes(pair: AlignedPair, options: BoxOptions) -> np.ndarray:
    """'center': the centred square (:func:`center_box`)."""
    return center_box(pair.height, pair.width, options.center_box_fraction)[None, :]


def random_pair_boxes(pair: AlignedPair, options: RandomBoxOptions) -> np.ndarray:
    """'random': regions of about 1/6 of the image (:func:`random_boxes`), drawn with the pair's ``rng``."""
    if pair.rng is None:
        raise ValueError("pseudo-box method 'random' needs a random generator")
    return random_boxes(
        pair.height,
        pair.width,
        pair.rng,
        options.random_boxes_per_pair,
        options.random_box_fraction,
        options.random_box_scale_range,
    )


def detection_pair_boxes(pair: AlignedPair, options: DetectionBoxOptions) -> np.ndarray:
    """'detection': the detector's boxes, clipped to the image, without those under ``min_box_size``."""
    if pair.detector is None:
        raise ValueError("pseudo-box method 'detection' needs a detector (see cmd_ray.data.detect.build_detector)")
    return usable_boxes(pair.detector(pair.rgb, pair.tir), pair.height, pair.width, options.min_box_size)


def hotspot_pair_boxes(pair: AlignedPair, options: BoxOptions) -> np.ndarray:
    """'hotspot': a square of the centre box's size around the warmest region of the TIR image.

    Warm objects (people, animals, engines) are bright in TIR. The TIR image is averaged over windows of the
    box's side, so the warmest *region* wins, not one hot pixel. An object smaller than the window gives a
    plateau of equally warm windows around it: the box is centred on the middle of the plateau that holds the
    first warmest window, then shifted to lie inside the image.
    """
    side = options.center_box_fraction * min(pair.height, pair.width)
    window = max(1, round(side))
    heat = cv2.blur(pair.tir.astype(np.float32), (window, window), borderType=cv2.BORDER_REPLICATE)
    warmest = np.isclose(heat, heat.max(), rtol=1e-5, atol=0.0).astype(np.uint8)
    _, plateaus = cv2.connectedComponents(warmest)
    first = np.unravel_index(int(np.argmax(heat)), heat.shape)
    rows, cols = np.nonzero(plateaus == plateaus[first])
    # the window at pixel (r, c) covers pixels c - window // 2 ... c - window // 2 + window - 1
    centre_x = cols.mean() - window // 2 + window / 2.0
    centre_y = rows.mean() - window // 2 + window / 2.0
    x = min(max(centre_x - side / 2.0, 0.0), pair.width - side)
    y = min(max(centre_y - side / 2.0, 0.0), pair.height - side)
    return np.array([[x, y, side, side]], dtype=np.float32)


BOX_METHODS: dict[str, BoxMethod] = {
    "center": BoxMethod(center_pair_boxes),
    "random": BoxMethod(random_pair_boxes, RandomBoxOptions),
    "detection": BoxMethod(detection_pair_boxes, DetectionBoxOptions, may_find_nothing=True),
    "hotspot": BoxMethod(hotspot_pair_boxes),
}
"""``data.boxes`` name -> method; the names are :data:`cmd_ray.vocabulary.BOX_METHODS` (a unit test checks)."""


def box_method(method: str) -> BoxMethod:
    """The registered method called ``method``; ``ValueError`` names the supported ones."""
    entry = BOX_METHODS.get(method)
    if entry is None:
        raise ValueError(f"unknown pseudo-box method {method!r}; supported: {', '.join(BOX_METHODS)}")
    return entry


def box_options(method: str, settings: Any = None, **options: Any) -> BoxOptions:
    """The options of ``method``: its fields read off ``settings`` by name (e.g. ``cfg.data``), then ``options``."""
    model = box_method(method).options
    values = {} if settings is None else {k: getattr(settings, k) for k in model.model_fields if hasattr(settings, k)}
    return model.model_validate({**values, **options})


def pseudo_boxes_with_fallback(
    method: str,
    rgb: np.ndarray,
    tir: np.ndarray,
    rng: np.random.Generator | None,
    detector: PairDetector | None = None,
    settings: Any = None,
    **options: Any,
) -> PseudoBoxes:
    """Pseudo-target boxes of one aligned pair, and whether the ``'center'`` fallback was used.

    Args:
        method: a name of :data:`BOX_METHODS` (``'center'``, ``'random'``, ``'detection'``, …).
        rgb: ``uint8 [H, W, 3]``; tir: ``[H, W]`` — already aligned (same ``H, W``).
        rng: the pair's randomness (seed it per pair for regions fixed per pair).
        detector: a :data:`PairDetector`, for ``'detection'``.
        settings: an object whose attributes named like the method's options are used (``cfg.data``).
        options: the method's options by name (see :class:`BoxOptions` and its subclasses), over ``settings``;
            options of other methods are ignored.

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
    entry = box_method(method)
    chosen = box_options(method, settings, **options)
    pair = AlignedPair(rgb, tir, rng, detector)
    boxes = np.asarray(entry.find(pair, chosen), dtype=np.float32).reshape(-1, 4)
    if len(boxes):
        return PseudoBoxes(boxes)
    if not entry.may_find_nothing:
        raise ValueError(f"pseudo-box method {method!r} found no box")
    return PseudoBoxes(center_pair_boxes(pair, chosen), fallback=True)


def pseudo_boxes(
    method: str,
    rgb: np.ndarray,
    tir: np.ndarray,
    rng: np.random.Generator | None,
    detector: PairDetector | None = None,
    settings: Any = None,
    **options: Any,
) -> np.ndarray:
    """The boxes of :func:`pseudo_boxes_with_fallback`: ``float32 [K, 4]``, ``K >= 1``."""
    return pseudo_boxes_with_fallback(method, rgb, tir, rng, detector, settings, **options).boxes
