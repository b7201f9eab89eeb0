"""DiMP training samples from one aligned RGB–TIR pair: search-area crops, Gaussian labels, IoU proposals.

Coordinates. Boxes are ``(x, y, w, h)`` in *continuous* pixel coordinates:
pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)`` and its centre is
``(j + 0.5, i + 0.5)``. A crop of side ``side`` image pixels with top-left
``(x0, y0)``, resized to ``S x S``, maps an image point ``u`` to crop point
``(u - (x0, y0)) * S / side`` exactly (``cv2.resize`` samples at pixel centres),
so a box in the crop needs no half-pixel correction.

Crops follow pytracking's DiMP processing (``_get_jittered_box`` then
``jittered_center_crop``): jitter the box (the reference and the test frame by
their own factors, :meth:`SamplingConfig.jitter`), cut a square of side
``ceil(sqrt(w*h) * search_area_factor)`` around the jittered centre (integer
top-left, so the crop is a slice), pad by replicating the border, resize to
``output_sz`` with bilinear interpolation (what the released DiMP weights saw).
``crop_mode`` ``inside`` / ``inside_major`` (SuperDiMP) first shrink the square
(by at most ``max_scale_change``) and shift it to lie inside the image, on both
axes or on the longer one (:func:`crop_geometry`). The crop geometry is computed
once (:func:`jittered_crop_geometry`) and applied to each modality
(:func:`apply_crop`), so RGB and TIR of a pair are cut identically.

With ``distill.mixing=side_by_side`` (mix rows) a sample is cut instead from the pair's two images put side
by side, ``[RGB | TIR]`` for the reference and ``[TIR | RGB]`` for the test frame
(:func:`make_side_by_side_sample`).

Labels and proposals follow pytracking's ``gaussian_label_function`` and
ATOM's ``perturb_box`` (see :func:`gaussian_label`, :func:`sample_proposals`); with
``proposal_method="gmm"`` the proposals are SuperDiMP's Gaussian-mixture samples with their
densities (``sample_box_gmm``, see :func:`sample_gmm_proposals`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from cmd_ray.config import SamplingConfig
from cmd_ray.data.boxes import box_iou
from cmd_ray.data.images import tir_to_gray

INTERPOLATION = cv2.INTER_LINEAR
"""Crop resampling: bilinear, as pytracking's training crops (``cv2.resize`` default)."""

MAX_PROPOSAL_TRIES = 100
"""Rejection rounds per proposal; each failed round shrinks its sigma by 0.9 (as ATOM's ``perturb_box``)."""


Frame = Literal["reference", "test"]
"""Role of a crop in a DiMP sample: the reference (train) frame or the test frame."""


class PairMismatchError(ValueError):
    """An RGB–TIR pair cannot be aligned (aspect ratios differ); the message names the key and both sizes."""


# --------------------------------------------------------------------------- TIR depth and alignment


def normalize_tir(tir: np.ndarray) -> np.ndarray:
    """The one place TIR depth is normalised: ``[H, W]`` uint8 or uint16 ─▶ ``uint8 [H, W]``.

    uint8 passes through unchanged. uint16 is stretched linearly so that its 1st
    percentile maps to 0 and its 99th to 255 (clipped outside); a flat image
    (99th == 1st percentile) falls back to its min/max range, and an image of
    one value becomes all zeros.
    """
    if tir.ndim != 2:
        raise ValueError(f"TIR image must be [H, W], got shape {tir.shape}")
    if tir.dtype == np.uint8:
        return tir
    if tir.dtype != np.uint16:
        raise ValueError(f"TIR image must be uint8 or uint16, got {tir.dtype}")
    # A histogram gives the order statistics in one pass (4x faster than np.percentile on
    # 640x512), with np.percentile's default linear interpolation, and a lookup table maps.
    cumulative = np.bincount(tir.ravel(), minlength=1 << 16).cumsum()
    last = tir.size - 1
    positions = np.array([0.01, 0.99]) * last
    below = np.floor(positions).astype(np.int64)
    # the k-th smallest value (0-based) is the first level whose cumulative count exceeds k
    lower, upper = np.searchsorted(cumulative, np.stack([below, np.minimum(below + 1, last)]) + 1)
    low, high = lower + (positions - below) * (upper - lower)
    if high <= low:
        low, high = float(np.searchsorted(cumulative, 1)), float(np.searchsorted(cumulative, tir.size))
    if high <= low:
        return np.zeros(tir.shape, dtype=np.uint8)
    levels = (np.arange(1 << 16, dtype=np.float64) - low) * (255.0 / (high - low))
    lut = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    return lut[tir]


def split_side_by_side(image: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Split a horizontally concatenated ``[RGB | TIR]`` image (the released CMD code's pair layout).

    Args:
        image: ``uint8 [H, 2W, 3]`` in RGB channel order (as :func:`cmd_ray.data.images.decode_rgb`
            returns it), or ``uint8 [H, 2W]`` for a grey file.
        key: name of the file, for error messages.

    Returns:
        ``(rgb uint8 [H, W, 3], tir uint8 [H, W])``: the left half (a grey left half is replicated
        to three channels) and the right half, made grey by :func:`cmd_ray.data.images.tir_to_gray`
        (exact when its channels are equal). Both are contiguous copies.

    Raises:
        ValueError: not uint8, not ``[H, 2W(, 3)]``, or an odd width (naming ``key``).
    """
    if image.dtype != np.uint8:
        raise ValueError(f"{key}: a side-by-side [RGB | TIR] image must be uint8, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"{key}: a side-by-side [RGB | TIR] image must be [H, 2W, 3] or [H, 2W], got {image.shape}")
    width = image.shape[1]
    if width % 2:
        raise ValueError(
            f"{key}: a side-by-side [RGB | TIR] image needs an even width (two halves of equal size), got {width}"
        )
    half = width // 2
    left, right = image[:, :half], image[:, half:]
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(left[..., None], 3, axis=2)), np.ascontiguousarray(right)
    return np.ascontiguousarray(left), tir_to_gray(right, key, channel_order="rgb")


def align_pair(rgb: np.ndarray, tir: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Bring a TIR image to the RGB image's size.

    Args:
        rgb: ``uint8 [H, W, 3]``; tir: ``[h, w]`` uint8/uint16 (depth kept).
        key: name of the pair, for the error message.

    Returns:
        ``(rgb, tir)`` with ``tir`` of shape ``[H, W]``: unchanged when sizes match,
        else resized (area interpolation when shrinking, bilinear when enlarging).

    Raises:
        PairMismatchError: the aspect ratios ``w/h`` differ by more than 1%.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"{key}: RGB image must be [H, W, 3], got shape {rgb.shape}")
    if tir.ndim != 2:
        raise ValueError(f"{key}: TIR image must be [H, W], got shape {tir.shape}")
    (rh, rw), (th, tw) = rgb.shape[:2], tir.shape
    if (rh, rw) == (th, tw):
        return rgb, tir
    if abs((tw / th) / (rw / rh) - 1.0) > 0.01:
        raise PairMismatchError(
            f"{key}: RGB is {rw}x{rh} (w x h) but TIR is {tw}x{th}; aspect ratios differ by more than 1%, "
            "so the pair is not pixel-aligned"
        )
    interpolation = cv2.INTER_AREA if tw * th > rw * rh else cv2.INTER_LINEAR
    return rgb, cv2.resize(tir, (rw, rh), interpolation=interpolation)


# --------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class CropGeometry:
    """A square image region resampled to ``output_sz x output_sz``: the one crop geometry of training and tracking.

    It maps an image point ``u`` to the crop point ``(u - (x0, y0)) * output_sz / side`` (continuous coordinates,
    see the module docstring). Training crops (:func:`crop_geometry`) have whole-pixel ``x0, y0, side`` (as
    pytracking's ``sample_target``) and are cut by :func:`apply_crop` (a slice and ``cv2.resize``); the tracker's
    search regions (:func:`cmd_ray.tracking.geometry.search_geometry`) are continuous and are cut by
    :func:`cmd_ray.tracking.geometry.sample_patch` (``cv2.warpAffine`` under :meth:`matrix`). Both cutters sample
    each crop pixel centre where this map sends it, so the same geometry gives the same crop either way.

    Attributes:
        x0, y0: top-left corner of the crop in image pixels (may lie outside the image).
        side: crop side in image pixels (> 0).
        output_sz: side of the resampled crop in pixels.
    """

    x0: float
    y0: float
    side: float
    output_sz: int

    @property
    def scale(self) -> float:
        """Crop pixels per image pixel."""
        return self.output_sz / self.side

    @property
    def center(self) -> np.ndarray:
        """``float64 [2]`` centre ``(x, y)`` in image pixels."""
        return np.array([self.x0 + self.side / 2, self.y0 + self.side / 2])

    @property
    def is_whole_pixel(self) -> bool:
        """True when ``x0``, ``y0`` and ``side`` are whole pixels (what :func:`apply_crop` cuts)."""
        return all(float(v).is_integer() for v in (self.x0, self.y0, self.side))

    def points_to_crop(self, points: np.ndarray) -> np.ndarray:
        """Image points ``[..., 2]`` ``(x, y)`` -> crop points ``float64 [..., 2]``."""
        return (np.asarray(points, dtype=np.float64) - (self.x0, self.y0)) * self.scale

    def points_to_image(self, points: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`points_to_crop`."""
        return np.asarray(points, dtype=np.float64) / self.scale + (self.x0, self.y0)

    def box_to_crop(self, box: np.ndarray) -> np.ndarray:
        """``(x, y, w, h)`` image box(es) ``[..., 4]`` ─▶ the same box(es) in crop pixels, ``float64 [..., 4]``."""
        box = np.asarray(box, dtype=np.float64)
        return np.concatenate([self.points_to_crop(box[..., :2]), box[..., 2:] * self.scale], axis=-1)

    def box_to_image(self, box: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`box_to_crop`: crop box(es) ``[..., 4]`` ─▶ image pixels, ``float64 [..., 4]``."""
        box = np.asarray(box, dtype=np.float64)
        return np.concatenate([self.points_to_image(box[..., :2]), box[..., 2:] / self.scale], axis=-1)

    def matrix(self) -> np.ndarray:
        """``float64 [2, 3]`` affine map image -> crop in continuous coordinates."""
        s = self.scale
        return np.array([[s, 0.0, -self.x0 * s], [0.0, s, -self.y0 * s]])


def _check_box(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
        raise ValueError(f"box must be a finite (x, y, w, h) with w, h > 0, got {box.tolist()}")
    return box


def jittered_box(
    box: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator, frame: Frame = "reference"
) -> np.ndarray:
    """pytracking's ``_get_jittered_box``: ``float64 [4]`` ``(x, y, w, h)``.

    With ``(c, s) = cfg.jitter(frame)``: size ``(w, h) * exp(s * N(0, 1))`` per axis; centre moved by
    ``sqrt(w' * h') * c * U(-0.5, 0.5)`` per axis (``w', h'`` the jittered size).
    """
    box = _check_box(box)
    center_factor, scale_factor = cfg.jitter(frame)
    size = box[2:] * np.exp(rng.standard_normal(2) * scale_factor)
    max_offset = math.sqrt(size[0] * size[1]) * center_factor
    center = box[:2] + 0.5 * box[2:] + max_offset * (rng.random(2) - 0.5)
    return np.concatenate([center - 0.5 * size, size])


def _fit_axis(start: int, side: int, extent: int) -> int:
    """Top-left of a ``side``-long crop moved inside ``[0, extent)``; a longer crop is centred on the image."""
    if side <= extent:
        return min(max(start, 0), extent - side)
    return -((side - extent) // 2)


def crop_geometry(box: np.ndarray, cfg: SamplingConfig, image_size: tuple[int, int] | None = None) -> CropGeometry:
    """The search-area crop around ``box`` (no jitter).

    The square's side is ``ceil(sqrt(w*h) * search_area_factor)`` image pixels and its top-left
    corner is rounded to whole pixels (as pytracking's ``sample_target``), so with
    ``crop_mode="replicate"`` the crop centre is within half a pixel of the box centre and the
    image size does not matter.

    ``inside`` / ``inside_major`` (pytracking's ``sample_target_adaptive``): the side is divided by
    ``r = clip(max(side/W, side/H), 1, max_scale_change)`` (``inside``) or with ``min`` in place of
    ``max`` (``inside_major``), rounded down; then on each axis the square is shifted to lie inside the
    image, or centred on the image where it is still longer than the image (the rest is replicated
    border). ``inside_major`` thus fits the image's longer side at most, and keeps the target's scale
    within ``max_scale_change`` of the replicate crop.

    Args:
        box: ``(x, y, w, h)`` in image pixels.
        image_size: ``(H, W)`` of the image; required by the ``inside`` modes.
    """
    box = _check_box(box)
    side = max(1, math.ceil(math.sqrt(box[2] * box[3]) * cfg.search_area_factor))
    cx, cy = box[:2] + 0.5 * box[2:]
    if cfg.crop_mode == "replicate":
        return CropGeometry(x0=round(cx - 0.5 * side), y0=round(cy - 0.5 * side), side=side, output_sz=cfg.output_sz)
    if image_size is None:
        raise ValueError(f"crop_mode={cfg.crop_mode!r} needs the image size (H, W) to fit the crop inside the image")
    height, width = int(image_size[0]), int(image_size[1])
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive (H, W), got {image_size}")
    ratios = (side / width, side / height)
    shrink = max(ratios) if cfg.crop_mode == "inside" else min(ratios)
    shrink = min(max(1.0, shrink), cfg.max_scale_change or math.inf)
    side = max(1, math.floor(side / shrink))
    x0 = _fit_axis(round(cx - 0.5 * side), side, width)
    y0 = _fit_axis(round(cy - 0.5 * side), side, height)
    return CropGeometry(x0=x0, y0=y0, side=side, output_sz=cfg.output_sz)


def jittered_crop_geometry(
    box: np.ndarray,
    cfg: SamplingConfig,
    rng: np.random.Generator,
    frame: Frame = "reference",
    image_size: tuple[int, int] | None = None,
) -> CropGeometry:
    """:func:`crop_geometry` of :func:`jittered_box`: one training crop, to apply to every modality.

    Args:
        frame: whose jitter factors to use (``cfg.jitter(frame)``).
        image_size: ``(H, W)``; required when ``cfg.crop_mode`` is ``inside`` or ``inside_major``.
    """
    return crop_geometry(jittered_box(box, cfg, rng, frame), cfg, image_size)


def apply_crop(image: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """Cut ``geometry`` out of ``image`` and resize it; outside the image the border pixels are replicated.

    Args:
        image: ``[H, W]`` or ``[H, W, C]``, any dtype ``cv2.resize`` takes (uint8, uint16, float32).

    Returns:
        ``[S, S]`` or ``[S, S, C]`` of the image's dtype, ``S = geometry.output_sz``.
    """
    if not geometry.is_whole_pixel:
        raise ValueError(f"apply_crop cuts whole-pixel crops, got {geometry} (sample_patch resamples any crop)")
    height, width = image.shape[:2]
    x0, y0, side = int(geometry.x0), int(geometry.y0), int(geometry.side)
    x1, y1 = x0 + side, y0 + side
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix0 < ix1 and iy0 < iy1:
        patch = image[iy0:iy1, ix0:ix1]
        pads = (iy0 - y0, y1 - iy1, ix0 - x0, x1 - ix1)
        if any(pads):
            patch = cv2.copyMakeBorder(patch, *pads, borderType=cv2.BORDER_REPLICATE)
    else:  # the crop misses the image: replicate padding is nearest-edge clamping
        rows = np.clip(np.arange(y0, y1), 0, height - 1)
        cols = np.clip(np.arange(x0, x1), 0, width - 1)
        patch = image.take(rows, axis=0).take(cols, axis=1)
    size = geometry.output_sz
    if patch.shape[0] == size:
        return np.ascontiguousarray(patch)
    return cv2.resize(patch, (size, size), interpolation=INTERPOLATION)


def sample_crop(
    image: np.ndarray,
    box: np.ndarray,
    cfg: SamplingConfig,
    rng: np.random.Generator,
    jitter: bool = True,
    frame: Frame = "reference",
) -> tuple[np.ndarray, np.ndarray, CropGeometry]:
    """One (optionally jittered) search-area crop of one image.

    For a pair, compute the geometry once with :func:`jittered_crop_geometry` and
    :func:`apply_crop` it to both images instead.

    Args:
        image: ``[H, W, 3]`` or ``[H, W]``.
        box: ``(x, y, w, h)`` target box in image pixels.
        jitter: jitter the box before cropping (no randomness is drawn when False).
        frame: whose jitter factors to use.

    Returns:
        ``(crop [S, S(, 3)], box_in_crop float32 [4], geometry)``; ``box_in_crop`` is the
        original, unjittered box in crop pixels.
    """
    size = image.shape[:2]
    geometry = jittered_crop_geometry(box, cfg, rng, frame, size) if jitter else crop_geometry(box, cfg, size)
    return apply_crop(image, geometry), geometry.box_to_crop(_check_box(box)).astype(np.float32), geometry


# --------------------------------------------------------------------------- labels and proposals


def label_cell_offset(cfg: SamplingConfig) -> float:
    """Crop position of label cell ``i`` is ``(i + offset) * feature_stride`` pixels; this returns ``offset``.

    A feature cell ``i`` covers crop pixels ``[i*stride, (i+1)*stride)``, centre ``(i + 0.5) * stride``.
    An odd filter keeps that grid (``offset = 0.5``, ``L = feature_sz`` cells). An even filter
    yields ``feature_sz + 1`` scores lying between feature cells, half a cell earlier
    (``offset = 0``), so its cells sit at ``0, stride, …, feature_sz * stride``. This is
    pytracking's ``gaussian_label_function`` with ``end_pad_if_even=True`` written in
    continuous crop coordinates.
    """
    return 0.5 * (cfg.filter_size % 2)


def label_sigma(cfg: SamplingConfig) -> float:
    """Gaussian sigma in feature cells: ``label_sigma_factor * feature_sz / search_area_factor``.

    ``feature_sz / search_area_factor`` is the target size in feature cells that the crop
    normalises to (the crop side is ``search_area_factor`` target sizes), so this is
    ``label_sigma_factor`` times the box size in feature cells — pytracking's DiMP setting
    (``sigma_factor = output_sigma_factor / search_area_factor`` times ``feature_sz``),
    the same for every sample.
    """
    return cfg.label_sigma_factor * cfg.feature_sz / cfg.search_area_factor


def gaussian_label(box_in_crop: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """The classifier's target score map: a Gaussian at the box centre on the label grid.

    Args:
        box_in_crop: ``(x, y, w, h)`` in crop pixels.

    Returns:
        ``float32 [L, L]`` (``L = cfg.label_sz``), values in ``[0, 1]``; row = y, column = x.
        The peak is 1 at the box centre, ``(cx / stride - offset, cy / stride - offset)`` in
        cells (see :func:`label_cell_offset`), so the argmax cell lies within half a cell of
        the box centre whenever the centre is on the grid. Sigma: :func:`label_sigma`.
    """
    box = np.asarray(box_in_crop, dtype=np.float64).reshape(4)
    center = (box[:2] + 0.5 * box[2:]) / cfg.feature_stride - label_cell_offset(cfg)
    cells = np.arange(cfg.label_sz, dtype=np.float64)
    sigma = label_sigma(cfg)
    gx = np.exp(-0.5 * ((cells - center[0]) / sigma) ** 2)
    gy = np.exp(-0.5 * ((cells - center[1]) / sigma) ** 2)
    return np.outer(gy, gx).astype(np.float32)


def sample_proposals(box: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """IoU-Net training proposals around ``box`` (ATOM's ``perturb_box``, vectorised).

    Each proposal picks a sigma factor ``f`` from ``cfg.proposal_sigma_factors``; centre,
    width and height are drawn from normals around the box's with standard deviation
    ``f * sqrt(w * h)``. A draw with IoU below ``cfg.min_proposal_iou`` (or a side <= 1 px)
    is redrawn with ``f`` shrunk by 0.9, up to :data:`MAX_PROPOSAL_TRIES` times; a proposal
    still failing then becomes the box itself (IoU 1), so every proposal meets the minimum.
    Proposals are continuous (not rounded to whole pixels).

    Args:
        box: ``(x, y, w, h)`` (crop pixels in a training sample).

    Returns:
        ``(proposals float32 [P, 4], iou float32 [P])`` with ``P = cfg.num_proposals`` and
        ``iou == box_iou(proposals, box)``.
    """
    box = _check_box(box)
    box32 = box.astype(np.float32)
    count = cfg.num_proposals
    factors = np.asarray(cfg.proposal_sigma_factors, dtype=np.float64)
    sigma = factors[rng.integers(len(factors), size=count)] * math.sqrt(box[2] * box[3])
    center = box[:2] + 0.5 * box[2:]
    proposals = np.tile(box32, (count, 1))
    pending = np.arange(count)
    for _ in range(MAX_PROPOSAL_TRIES):
        noise = rng.standard_normal((len(pending), 4)) * sigma[pending, None]
        size = box[2:] + noise[:, 2:]
        drawn = np.concatenate([center + noise[:, :2] - 0.5 * size, size], axis=1).astype(np.float32)
        # judged in float32, exactly as the returned IoU is computed
        ok = np.all(size > 1.0, axis=1) & (box_iou(drawn, box32) >= cfg.min_proposal_iou)
        proposals[pending[ok]] = drawn[ok]
        pending = pending[~ok]
        if not len(pending):
            break
        sigma[pending] *= 0.9
    return proposals, box_iou(proposals, box32)


def _gauss_density(x: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Density of ``N(0, std**2)`` at ``x`` (element-wise)."""
    return np.exp(-0.5 * (x / std) ** 2) / (math.sqrt(2.0 * math.pi) * std)


def sample_gmm_proposals(
    box: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """KL box-regression proposals around ``box`` (pytracking's ``sample_box_gmm``, SuperDiMP's setting).

    The box is written in relative coordinates ``r = (cx / w, cy / h, log w, log h)`` (``w, h`` of
    ``box``). Each of ``cfg.num_proposals`` samples picks a mixture component ``k`` uniformly and
    draws ``d ~ N(0, diag(s_c, s_c, s_s, s_s)**2)`` with ``(s_c, s_s) = cfg.gmm_proposal_sigma[k]``;
    the proposal is ``r + d`` mapped back to ``(x, y, w, h)``. Densities are those of ``d`` in the
    relative coordinates:

    - ``proposal_density = mean_k prod_i N(d_i; 0, std_k,i)`` (the mixture the sample came from);
    - ``gt_density = prod_i N(d_i; 0, g_i)`` with ``(g_c, g_s) = cfg.gmm_gt_sigma``.

    Args:
        box: ``(x, y, w, h)`` (crop pixels in a training sample).

    Returns:
        ``(proposals float32 [P, 4], proposal_density float32 [P], gt_density float32 [P],
        iou float32 [P])``; ``iou == box_iou(proposals, box)``.
    """
    box = _check_box(box)
    size = box[2:]
    rel_mean = np.concatenate([(box[:2] + 0.5 * size) / size, np.log(size)])
    sigma = np.asarray(cfg.gmm_proposal_sigma, dtype=np.float64)  # [K, 2]: (centre, size)
    std = sigma[:, [0, 0, 1, 1]]  # [K, 4]
    count = cfg.num_proposals
    component = rng.integers(len(std), size=count)
    offset = std[component] * rng.standard_normal((count, 4))  # [P, 4]
    proposal_density = np.prod(_gauss_density(offset[:, None, :], std[None]), axis=-1).mean(axis=1)
    gt_std = np.asarray(cfg.gmm_gt_sigma, dtype=np.float64)[[0, 0, 1, 1]]
    gt_density = np.prod(_gauss_density(offset, gt_std), axis=-1)
    rel = rel_mean + offset
    new_size = np.exp(rel[:, 2:])
    proposals = np.concatenate([rel[:, :2] * size - 0.5 * new_size, new_size], axis=1).astype(np.float32)
    return (
        proposals,
        proposal_density.astype(np.float32),
        gt_density.astype(np.float32),
        box_iou(proposals, box.astype(np.float32)),
    )


# --------------------------------------------------------------------------- one training sample


def make_sample(
    rgb: np.ndarray, tir: np.ndarray, box: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One DiMP training sample from one aligned pair and its pseudo box.

    The reference and test frames are two independently jittered crops of the same
    pair, each with its own jitter factors (``cfg.jitter("reference")``, ``cfg.jitter("test")``);
    within each, RGB and TIR share one crop geometry. TIR is normalised to uint8
    (:func:`normalize_tir`) before cropping. Which modality feeds which branch is decided
    later (per variant), so both are returned for both frames.

    Args:
        rgb: ``uint8 [H, W, 3]``; tir: ``[H, W]`` uint8/uint16, aligned (:func:`align_pair`).
        box: pseudo target ``(x, y, w, h)`` in image pixels.

    Returns:
        With ``S = output_sz``, ``L = label_sz``, ``P = num_proposals``:
        ``rgb_ref`` uint8 [S, S, 3], ``tir_ref`` uint8 [S, S], ``rgb_test`` uint8 [S, S, 3],
        ``tir_test`` uint8 [S, S], ``ref_box`` float32 [4], ``test_box`` float32 [4]
        (``x, y, w, h`` in crop pixels), ``test_label`` float32 [L, L],
        ``test_proposals`` float32 [P, 4] (crop pixels), ``proposal_iou`` float32 [P].
        With ``cfg.proposal_method == "gmm"`` the proposals come from :func:`sample_gmm_proposals`
        and two more keys are added: ``proposal_density`` and ``gt_density``, float32 [P].
    """
    _check_pair(rgb, tir)
    tir = normalize_tir(tir)
    box = _check_box(box)

    size = rgb.shape[:2]
    ref = jittered_crop_geometry(box, cfg, rng, "reference", size)
    test = jittered_crop_geometry(box, cfg, rng, "test", size)
    return {
        "rgb_ref": apply_crop(rgb, ref),
        "tir_ref": apply_crop(tir, ref),
        "rgb_test": apply_crop(rgb, test),
        "tir_test": apply_crop(tir, test),
        "ref_box": ref.box_to_crop(box).astype(np.float32),
        **search_targets(test.box_to_crop(box).astype(np.float32), cfg, rng),
    }


def _check_pair(rgb: np.ndarray, tir: np.ndarray) -> None:
    """An aligned pair: RGB ``uint8 [H, W, 3]`` and TIR ``[H, W]`` (``ValueError`` naming what is off)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"RGB image must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
    if tir.shape != rgb.shape[:2]:
        raise ValueError(f"TIR {tir.shape} and RGB {rgb.shape[:2]} differ in size: align_pair first")


def side_by_side_images(rgb: np.ndarray, tir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The wide images of ``distill.mixing=side_by_side``: ``([RGB | TIR], [TIR | RGB])``, each ``uint8 [H, 2W, 3]``.

    A composite image is network input of its own, not a TIR image: its TIR half (uint8 ``[H, W]``, see
    :func:`normalize_tir`) is replicated to three channels here, the one place besides
    :func:`cmd_ray.models.network_input.to_network_input` that expands TIR.
    """
    if tir.dtype != np.uint8 or tir.shape != rgb.shape[:2]:
        raise ValueError(
            f"side-by-side images need a uint8 TIR image of the RGB's size {rgb.shape[:2]}, got {tir.dtype} {tir.shape}"
        )
    tir3 = np.repeat(tir[..., None], 3, axis=2)
    return np.concatenate([rgb, tir3], axis=1), np.concatenate([tir3, rgb], axis=1)


def make_side_by_side_sample(
    rgb: np.ndarray, tir: np.ndarray, box: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """One mix-row training sample with ``distill.mixing=side_by_side`` (the authors' released code).

    The pair's two images are put side by side (:func:`side_by_side_images`): the reference crop is cut from
    ``[RGB | TIR]``, the test crop from ``[TIR | RGB]``, both around the pseudo box at its place in the left half
    (so the search area may reach into the right half), with the jitter and crop rules of :func:`make_sample`
    on the ``H x 2W`` image. Every sample thus feeds RGB to the reference and TIR to the test branch around the
    target, instead of half of the batch each way (``batch_split``).

    Args:
        rgb, tir, box, cfg, rng: as :func:`make_sample`.

    Returns:
        ``rgb_tir_ref`` uint8 [S, S, 3] (reference crop of ``[RGB | TIR]``), ``tir_rgb_test`` uint8 [S, S, 3]
        (test crop of ``[TIR | RGB]``), ``ref_box`` float32 [4] and the test targets of :func:`search_targets`;
        the keys name the per-sample modalities ``rgb_tir`` / ``tir_rgb`` of
        :meth:`cmd_ray.vocabulary.Variant.sample_modalities`.
    """
    _check_pair(rgb, tir)
    reference_image, test_image = side_by_side_images(rgb, normalize_tir(tir))
    box = _check_box(box)
    size = reference_image.shape[:2]
    ref = jittered_crop_geometry(box, cfg, rng, "reference", size)
    test = jittered_crop_geometry(box, cfg, rng, "test", size)
    return {
        "rgb_tir_ref": apply_crop(reference_image, ref),
        "tir_rgb_test": apply_crop(test_image, test),
        "ref_box": ref.box_to_crop(box).astype(np.float32),
        **search_targets(test.box_to_crop(box).astype(np.float32), cfg, rng),
    }


def search_targets(test_box: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The test frame's training targets for its box in crop pixels ``x, y, w, h``.

    Returns ``test_box`` float32 [4], ``test_label`` float32 [L, L], ``test_proposals`` float32 [P, 4] and
    ``proposal_iou`` float32 [P]; with ``cfg.proposal_method == "gmm"`` also ``proposal_density`` and
    ``gt_density`` float32 [P].
    """
    extra: dict[str, np.ndarray] = {}
    if cfg.proposal_method == "gmm":
        proposals, extra["proposal_density"], extra["gt_density"], iou = sample_gmm_proposals(test_box, cfg, rng)
    else:
        proposals, iou = sample_proposals(test_box, cfg, rng)
    return {
        "test_box": test_box,
        "test_label": gaussian_label(test_box, cfg),
        "test_proposals": proposals,
        "proposal_iou": iou,
        **extra,
    }
