"""Search-region geometry of the online tracker: frames in, square crops out, boxes mapped both ways.

Coordinates are continuous, as in :mod:`cmd_ray.data.processing` (what the networks were trained on): pixel
``(i, j)`` covers ``[j, j+1) x [i, i+1)``, boxes are ``(x, y, w, h)`` with centre ``(x + w/2, y + h/2)``.
A search region is a :class:`~cmd_ray.data.processing.CropGeometry` (the training crops' geometry): a square of
``side`` image pixels with top-left ``(x0, y0)`` (floats here; it may reach beyond the image) resampled to
``output_sz x output_sz``; it maps an image point ``u`` to the crop point ``(u - (x0, y0)) * output_sz / side``.
Crops are cut with ``cv2.warpAffine`` (bilinear, border pixels replicated), which samples each crop pixel centre
exactly where this map sends it, like the ``cv2.resize`` of the training crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from cmd_ray.data.processing import CropGeometry, normalize_tir

BORDER_MODES = ("replicate", "inside", "inside_major")


def search_geometry(
    center: Sequence[float],
    side: float,
    image_size: Sequence[int],
    output_sz: int,
    border_mode: str = "replicate",
    max_scale_change: float | None = None,
) -> CropGeometry:
    """The crop of ``side`` image pixels centred on ``center`` ``(x, y)``, for an image ``(width, height)``.

    ``border_mode="replicate"`` keeps the crop as asked (beyond the image, border pixels are replicated).
    ``"inside"`` / ``"inside_major"`` first shrink the crop by ``side / image extent`` (the larger / smaller of
    the two ratios), clamped to ``[1, max_scale_change]``, then shift it into the image along every axis it fits
    in (an axis it does not fit in is centred on the image): the crop then holds more image than padding
    (SuperDiMP's setting).
    """
    if border_mode not in BORDER_MODES:
        raise ValueError(f"unknown border_mode {border_mode!r}; allowed: {', '.join(BORDER_MODES)}")
    if not (side > 0 and math.isfinite(side)):
        raise ValueError(f"crop side must be a positive number, got {side}")
    cx, cy = float(center[0]), float(center[1])
    width, height = float(image_size[0]), float(image_size[1])
    if border_mode == "replicate":
        return CropGeometry(cx - side / 2, cy - side / 2, float(side), int(output_sz))
    ratios = (side / width, side / height)
    shrink = max(ratios) if border_mode == "inside" else min(ratios)
    shrink = max(shrink, 1.0)
    if max_scale_change is not None:
        shrink = min(shrink, max_scale_change)
    side = side / shrink
    corner = []
    for c, extent in ((cx, width), (cy, height)):
        start = c - side / 2
        corner.append(min(max(start, 0.0), extent - side) if side <= extent else (extent - side) / 2)
    return CropGeometry(corner[0], corner[1], float(side), int(output_sz))


def cv2_affine(matrix: np.ndarray) -> np.ndarray:
    """A continuous-coordinate affine map ``[2, 3]`` -> the same map on pixel indices (what OpenCV takes).

    Pixel index ``k`` is the continuous coordinate ``k + 0.5``, so ``A u + t`` becomes
    ``A k + (t + A·(0.5, 0.5) − (0.5, 0.5))``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    linear = matrix[:, :2]
    return np.concatenate([linear, (matrix[:, 2] + linear @ np.array([0.5, 0.5]) - 0.5)[:, None]], axis=1)


def warp_patch(image: np.ndarray, matrix: np.ndarray, output_sz: int) -> np.ndarray:
    """Resample ``image`` (``[H, W]`` or ``[H, W, 3]``) under the image -> crop map ``matrix`` (``[2, 3]``, continuous).

    Returns ``[S, S]`` or ``[S, S, 3]`` of the image's dtype, ``S = output_sz``; bilinear, border replicated.
    """
    return cv2.warpAffine(
        image,
        cv2_affine(matrix),
        (int(output_sz), int(output_sz)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def sample_patch(image: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """Cut ``geometry`` out of ``image``: ``[S, S]`` or ``[S, S, 3]`` of the image's dtype."""
    return warp_patch(image, geometry.matrix(), geometry.output_sz)


def prepare_frame(image: np.ndarray) -> np.ndarray:
    """A decoded frame -> what the crops are cut from: ``uint8 [H, W]`` (TIR) or ``uint8 [H, W, 3]`` (RGB).

    TIR ``[H, W]`` uint16 is stretched to uint8 by :func:`cmd_ray.data.processing.normalize_tir` (the one place
    TIR depth is normalised); ``[H, W, 1]`` counts as ``[H, W]``. A 3-channel frame (RGB, or TIR saved as a
    3-channel jpg) must be uint8. Anything else raises ``ValueError`` naming the shape and dtype.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        if image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"a TIR frame [H, W] must be uint8 or uint16, got {image.dtype}")
        image = normalize_tir(image)
    elif image.ndim == 3 and image.shape[2] == 3:
        if image.dtype != np.uint8:
            raise ValueError(f"a 3-channel frame [H, W, 3] must be uint8, got {image.dtype}")
    else:
        raise ValueError(f"expected a frame [H, W] (TIR) or [H, W, 3] (RGB), got shape {image.shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"empty frame of shape {image.shape}")
    return np.ascontiguousarray(image)


def check_box(box: Sequence[float]) -> np.ndarray:
    """``(x, y, w, h)`` -> ``float64 [4]``; raises ``ValueError`` unless finite with ``w, h > 0``."""
    arr = np.asarray(box, dtype=np.float64).reshape(-1)
    if arr.shape != (4,) or not np.all(np.isfinite(arr)) or arr[2] <= 0 or arr[3] <= 0:
        raise ValueError(f"box must be a finite (x, y, w, h) with w, h > 0, got {np.asarray(box).tolist()}")
    return arr
