"""Detectors for the 'detection' pseudo boxes: OpenCV's HOG people detector, or a torchvision model from a local file.

Every detector implements :class:`Detector`: ``detect(image) -> (boxes float32 [N, 4], scores float32 [N])``
with boxes ``(x, y, w, h)`` in pixels of the given image, which is ``uint8 [H, W, 3]`` (RGB order) or
``uint8 [H, W]`` (grey, e.g. a normalised TIR image). :func:`detect_pair` runs one on the RGB image, optionally
also on the TIR image, merges both sets with non-maximum suppression (``torchvision.ops.nms``) and keeps at most
``max_boxes`` boxes of at least ``min_box_size`` pixels per side, clipped to the image. Nothing is downloaded:

- ``hog``: ``cv2.HOGDescriptor`` with OpenCV's default people SVM (it ships inside OpenCV 4; OpenCV 5 removed
  the HOG detector, and :func:`build_detector` then says so). Scores are the SVM margins. Its window is
  64x128 pixels, so people shorter than about 128 pixels are found only with ``upscale > 1``.
- ``torchvision``: a ``torchvision.models.detection`` architecture built without weights and loaded from a
  state-dict file (local or ``s3://``), read with ``torch.load(weights_only=True)`` (no code runs). Scores are
  class probabilities; only the configured class ids are kept (COCO person: 1).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from cmd_ray.config import DataConfig
from cmd_ray.data.boxes import usable_boxes
from cmd_ray.data.processing import normalize_tir
from cmd_ray.storage import StorageError, read_bytes


class DetectorUnavailableError(RuntimeError):
    """The configured detector cannot be built here (e.g. OpenCV without HOG); the message says what to change."""


class DetectorWeightsError(ValueError):
    """A detector weights file cannot be used; the message names the file and the mismatch."""


class Detector(Protocol):
    """``detect(image uint8 [H, W, 3] RGB or [H, W] grey) -> (boxes float32 [N, 4], scores float32 [N])``.

    Boxes are ``(x, y, w, h)`` in pixels of the given image.
    """

    name: str

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return normalize_tir(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return image
    raise ValueError(f"detectors take uint8 [H, W, 3] or [H, W] images, got {image.dtype} {image.shape}")


def hog_available() -> bool:
    """Whether this OpenCV has ``HOGDescriptor`` (OpenCV 4.x does; OpenCV 5 removed it)."""
    return hasattr(cv2, "HOGDescriptor")


class HogPeopleDetector:
    """OpenCV's HOG + linear-SVM people detector (Dalal–Triggs), with the default people model of OpenCV.

    Args:
        score_threshold: minimum SVM margin of a kept detection.
        upscale: the image is enlarged by this factor before detecting (finds people shorter than 128 px);
            boxes come back in the original pixels.
        win_stride: window step in pixels; scale: pyramid step (1.05 as OpenCV's examples).
    """

    name = "hog"

    def __init__(
        self, score_threshold: float = 0.5, upscale: float = 1.0, win_stride: int = 8, scale: float = 1.05
    ) -> None:
        if not hog_available():
            raise DetectorUnavailableError(
                f"data.detector=hog needs cv2.HOGDescriptor, which OpenCV {cv2.__version__} does not have (OpenCV 5 "
                "removed it): install opencv-python-headless<5, or use data.detector=torchvision with local weights"
            )
        if upscale < 1.0:
            raise ValueError(f"upscale must be >= 1, got {upscale}")
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.score_threshold = score_threshold
        self.upscale = upscale
        self.win_stride = win_stride
        self.scale = scale

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = _as_uint8(image)
        if self.upscale > 1.0:
            image = cv2.resize(image, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        height, width = image.shape[:2]
        if height < 128 or width < 64:  # smaller than one detection window: nothing can be found
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        stride = (self.win_stride, self.win_stride)
        rects, weights = self._hog.detectMultiScale(
            image, hitThreshold=self.score_threshold, winStride=stride, padding=(8, 8), scale=self.scale
        )
        boxes = np.asarray(rects, dtype=np.float32).reshape(-1, 4) / self.upscale
        scores = np.asarray(weights, dtype=np.float32).reshape(-1)
        keep = scores >= self.score_threshold
        return boxes[keep], scores[keep]


def load_state_dict(uri: str, endpoint_url: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a weights file (a state dict, or a dict holding one under ``model``/``state_dict``).

    Read with ``torch.load(weights_only=True)``: a file that would run code is refused.

    Raises:
        DetectorWeightsError: unreadable, or not a loadable state dict (naming ``uri``).
    """
    try:
        data = read_bytes(uri, endpoint_url)
    except StorageError as exc:  # a missing weights file is a config error, never a skipped pair
        raise DetectorWeightsError(f"detector weights {uri} cannot be read: {exc}") from exc
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types (UnpicklingError, RuntimeError, EOFError)
        raise DetectorWeightsError(f"detector weights {uri}: not a loadable state dict ({exc})") from exc
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise DetectorWeightsError(f"detector weights {uri}: expected a dict of tensors, got {type(loaded).__name__}")
    return loaded


class TorchvisionDetector:
    """A ``torchvision.models.detection`` model (built without weights) loaded from a state-dict file.

    Args:
        weights_uri: the state-dict file (local or ``s3://``).
        arch: builder name, e.g. ``"fasterrcnn_mobilenet_v3_large_320_fpn"``, ``"ssdlite320_mobilenet_v3_large"``.
        num_classes: classes of the weights, background included (COCO: 91).
        labels: class ids kept (empty: every class).
        score_threshold: minimum class probability of a kept detection.
    """

    name = "torchvision"

    def __init__(
        self,
        weights_uri: str,
        arch: str = "fasterrcnn_mobilenet_v3_large_320_fpn",
        num_classes: int = 91,
        labels: Sequence[int] = (1,),
        score_threshold: float = 0.5,
        endpoint_url: str | None = None,
    ) -> None:
        from torchvision.models import detection, get_model, list_models

        if arch not in list_models(module=detection):
            raise DetectorUnavailableError(
                f"unknown torchvision detector {arch!r}; one of {', '.join(list_models(module=detection))}"
            )
        # weights=None and weights_backbone=None: nothing is downloaded, the file provides every tensor
        model = get_model(arch, weights=None, weights_backbone=None, num_classes=num_classes)
        state = load_state_dict(weights_uri, endpoint_url)
        missing, unexpected = _key_mismatch(model.state_dict(), state)
        if missing or unexpected:
            raise DetectorWeightsError(
                f"detector weights {weights_uri} do not fit {arch} with {num_classes} classes: "
                f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # shape mismatches
            raise DetectorWeightsError(
                f"detector weights {weights_uri} do not fit {arch} with {num_classes} classes: {exc}"
            ) from exc
        self.model = model.eval()
        self.labels = frozenset(int(label) for label in labels)
        self.score_threshold = score_threshold
        self.weights_uri = weights_uri

    @torch.no_grad()
    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = _as_uint8(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        output = self.model([tensor])[0]
        keep = output["scores"] >= self.score_threshold
        if self.labels:
            keep &= torch.isin(output["labels"], torch.tensor(sorted(self.labels)))
        xyxy = output["boxes"][keep].numpy().astype(np.float32)
        boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1) if len(xyxy) else xyxy.reshape(0, 4)
        return boxes, output["scores"][keep].numpy().astype(np.float32)


def _key_mismatch(expected: dict[str, Any], given: dict[str, Any]) -> tuple[list[str], list[str]]:
    # BatchNorm's num_batches_tracked is bookkeeping, not a weight: tolerate its absence
    missing = sorted(k for k in expected.keys() - given.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(given.keys() - expected.keys())
    return missing, unexpected


def build_detector(data: DataConfig, endpoint_url: str | None = None) -> Detector:
    """The detector ``data.detector`` names, with its options from ``data``.

    Raises:
        DetectorUnavailableError: HOG on an OpenCV without it; an unknown torchvision architecture.
        DetectorWeightsError: torchvision weights missing, unreadable or not fitting the architecture.
    """
    if data.detector == "hog":
        return HogPeopleDetector(score_threshold=data.detector_score_threshold, upscale=data.detector_upscale)
    if not data.detector_weights:
        raise DetectorWeightsError("data.detector=torchvision needs data.detector_weights (a state-dict file)")
    return TorchvisionDetector(
        data.detector_weights,
        arch=data.detector_arch,
        num_classes=data.detector_num_classes,
        labels=data.detector_labels,
        score_threshold=data.detector_score_threshold,
        endpoint_url=endpoint_url,
    )


def merge_detections(
    detections: Sequence[tuple[np.ndarray, np.ndarray]], iou_threshold: float = 0.8, max_boxes: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Merge detection sets (e.g. RGB and TIR of one aligned pair) with NMS; keep the best ``max_boxes``.

    Args:
        detections: ``(boxes float32 [N_i, 4] x, y, w, h px, scores float32 [N_i])`` per set.
        iou_threshold: boxes overlapping a better one by more than this IoU are dropped.

    Returns:
        ``(boxes float32 [K, 4], scores float32 [K])``, by decreasing score, ``K <= max_boxes``.
    """
    from torchvision.ops import nms

    boxes = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b, _ in detections] or [np.zeros((0, 4))])
    scores = np.concatenate([np.asarray(s, np.float32).reshape(-1) for _, s in detections] or [np.zeros(0)])
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    xyxy = torch.from_numpy(np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)).float()
    keep = nms(xyxy, torch.from_numpy(scores).float(), iou_threshold)[:max_boxes].numpy()
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32)


def detect_pair(
    detector: Detector,
    rgb: np.ndarray,
    tir: np.ndarray,
    *,
    detect_on_tir: bool = False,
    nms_iou: float = 0.8,
    max_boxes: int = 5,
    min_box_size: float = 8.0,
) -> np.ndarray:
    """Pseudo boxes of one aligned pair from a detector: RGB detections, optionally merged with TIR ones.

    Args:
        rgb: ``uint8 [H, W, 3]``; tir: ``[H, W]`` uint8/uint16, aligned with ``rgb``.
        detect_on_tir: also run the detector on the (normalised) TIR image and merge with NMS.
        nms_iou, max_boxes: see :func:`merge_detections` (NMS runs on RGB-only sets too, so overlapping
            detections of one person collapse).
        min_box_size: boxes narrower or lower than this many pixels (after clipping) are dropped.

    Returns:
        ``float32 [K, 4]`` ``(x, y, w, h)`` pixels inside the image, ``0 <= K <= max_boxes``, best first.
    """
    if rgb.shape[:2] != tir.shape[:2]:
        raise ValueError(f"detect_pair needs an aligned pair, got RGB {rgb.shape} and TIR {tir.shape}")
    height, width = rgb.shape[:2]
    sets = [detector.detect(rgb)]
    if detect_on_tir:
        sets.append(detector.detect(tir))
    clipped = []
    for boxes, scores in sets:
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        inside = usable_boxes(boxes, height, width, 0.0)  # same rows as boxes: min size 0 keeps them all
        keep = (inside[:, 2] >= min_box_size) & (inside[:, 3] >= min_box_size)
        clipped.append((inside[keep], scores[keep]))
    boxes, _ = merge_detections(clipped, nms_iou, max_boxes)
    return boxes
