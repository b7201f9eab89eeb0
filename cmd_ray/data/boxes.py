"""Pseudo-target boxes for unlabeled, pixel-aligned RGB–TIR pairs, and box helpers.

Boxes are ``float32 [..., 4]`` as ``(x, y, w, h)`` in continuous pixel
coordinates: pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so a box spans
``[x, x+w) x [y, y+h)`` and an image of width ``W`` spans ``[0, W)``.

Because the pairs are pixel-aligned, one box is valid in both modalities:
:func:`pseudo_boxes` takes both images only so that methods which look at the
content (e.g. an RGB detector) can slot in behind the same call.

Methods (paper §3.2, §4.2):

- ``'center'``: a square of side ``fraction * min(H, W)`` at the image centre.
- ``'random'``, ``'detection'``: planned (a later issue); asking for them
  raises a ``ValueError`` that says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

BoxMethod = Callable[..., np.ndarray]
"""``fn(rgb, tir, rng, **params) -> float32 [K, 4]``: pseudo boxes of one aligned pair."""

PLANNED_METHODS = ("random", "detection")


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


def _center_boxes(
    rgb: np.ndarray, tir: np.ndarray, rng: np.random.Generator, *, center_fraction: float = 0.3, **_: Any
) -> np.ndarray:
    height, width = rgb.shape[:2]
    return center_box(height, width, center_fraction)[None, :]


METHODS: dict[str, BoxMethod] = {"center": _center_boxes}


def pseudo_boxes(method: str, rgb: np.ndarray, tir: np.ndarray, rng: np.random.Generator, **params: Any) -> np.ndarray:
    """Pseudo-target boxes of one aligned pair.

    Args:
        method: ``'center'`` (``'random'`` and ``'detection'`` are planned).
        rgb: ``uint8 [H, W, 3]``; tir: ``[H, W]`` — already aligned (same ``H, W``).
        rng: source of randomness for stochastic methods (unused by ``'center'``).
        params: method options, e.g. ``center_fraction`` (box side / ``min(H, W)``);
            options of other methods are ignored.

    Returns:
        ``float32 [K, 4]`` ``(x, y, w, h)`` in pixels, valid in both modalities (``K >= 1``).

    Raises:
        ValueError: unknown or not-yet-supported method, or images of different sizes.
    """
    if rgb.shape[:2] != tir.shape[:2]:
        raise ValueError(
            f"pseudo boxes need an aligned pair: RGB is {rgb.shape[1]}x{rgb.shape[0]}, "
            f"TIR is {tir.shape[1]}x{tir.shape[0]} (align_pair first)"
        )
    fn = METHODS.get(method)
    if fn is None:
        if method in PLANNED_METHODS:
            raise ValueError(
                f"pseudo-box method {method!r} is not supported yet; supported: {', '.join(sorted(METHODS))}"
            )
        raise ValueError(
            f"unknown pseudo-box method {method!r}; supported: {', '.join(sorted(METHODS))} "
            f"(planned: {', '.join(PLANNED_METHODS)})"
        )
    boxes = np.asarray(fn(rgb, tir, rng, **params), dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError(f"pseudo-box method {method!r} found no box")
    return boxes
