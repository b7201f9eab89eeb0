"""DiMP's online tracker on a :class:`~cmd_ray.models.dimpnet.DiMPNet` (Bhat et al., ICCV 2019).

First frame (:meth:`DiMPTracker.initialize`): cut the search crop (``search_area_scale`` target sizes, resampled
to ``image_sample_size``) and its augmented copies (:mod:`cmd_ray.tracking.augmentation`), extract classifier
features (plus feature-dropout copies), learn the target filter with the network's initializer and
``net_opt_iter`` steps of its filter optimizer, fill the sample memory, and compute the IoU-Net's modulation
vectors from the plain crop.

Every later frame (:meth:`DiMPTracker.track`): cut the crop at the current position and scale, score it with the
filter, localise the peak (:mod:`cmd_ray.tracking.localization`: ``normal`` / ``not_found`` / ``uncertain`` /
``hard_negative``); unless the target is not found, move there (keeping ``target_inside_ratio`` of the target in
the image, also after refinement) and refine the box with the IoU-Net
(:mod:`cmd_ray.tracking.refinement`), which also sets the new scale (not when ``uncertain``, unless
``update_scale_when_uncertain``). On ``normal`` and ``hard_negative`` frames the crop's features and box enter the
memory (:mod:`cmd_ray.tracking.memory`) at ``learning_rate`` (``hard_negative_learning_rate``), and the filter
optimizer runs ``net_opt_hn_iter`` steps after a hard negative, else ``net_opt_update_iter`` steps every
``train_skipping`` frames.

State: target centre ``(x, y)`` and size ``(w, h)`` in image pixels, and ``scale`` = crop side / crop pixels
(image pixels per crop pixel); the crop side is ``scale * image_sample_size``. The scale stays within
``[max(10 px / base size), image size / base size]`` (base size = first target size / first scale), widened to
include the first frame's.

Where this differs from the published tracker's code, and why:

- continuous coordinates throughout (the training crops' convention, :mod:`cmd_ray.data.processing`), so no
  half-pixel ``(sz - 1) / 2`` offsets and no re-centring of the crop for odd filter/feature sizes;
- augmented samples are warped straight from the frame (no 2x expanded intermediate patch), so there is no
  ``augmentation_expansion_factor``; a zoomed sample's box is scaled with it;
- the IoU-Net's scale is clamped to the scale bounds and the refined position kept inside the image like the
  classifier's; the first-frame weight floor of the memory keeps the weights summing to exactly 1;
- the IoU of the refined boxes is predicted once more after the last step (the top-k choice uses their own IoU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmd_ray.config import TrackerConfig
from cmd_ray.data.processing import CropGeometry
from cmd_ray.models.dimpnet import ATOMNet, DiMPNet
from cmd_ray.models.network_input import to_network_input
from cmd_ray.tracking.augmentation import augmented_boxes, augmented_patches, init_transforms
from cmd_ray.tracking.base import Tracker
from cmd_ray.tracking.geometry import check_box, prepare_frame, sample_patch, search_geometry
from cmd_ray.tracking.localization import cell_to_crop, localize_target
from cmd_ray.tracking.memory import SampleMemory
from cmd_ray.tracking.refinement import jittered_boxes, optimize_boxes, select_box

MIN_TARGET_SIDE = 10.0
"""Pixels: the scale never shrinks the target's smaller side below this (DiMP's lower scale bound)."""


class DiMPTracker:
    """The online DiMP tracker (implements :class:`~cmd_ray.tracking.base.Tracker`).

    Args:
        net: the network; it is moved to ``device`` and put in eval mode.
        params: tracker parameters.
        device: where the network runs.

    After :meth:`track`, ``last_flag`` is the frame's localisation flag (``normal``, ``not_found``,
    ``uncertain``, ``hard_negative``) and ``last_max_score`` the score map's maximum.
    """

    def __init__(self, net: DiMPNet, params: TrackerConfig, device: torch.device | str = "cpu") -> None:
        if isinstance(net, ATOMNet):
            raise NotImplementedError(
                "cmd_ray.tracking runs DiMP only: an ATOMNet has no target classifier, and ATOM's online "
                "classifier is not implemented (use model.architecture=dimp)"
            )
        if not isinstance(net, DiMPNet):
            raise TypeError(f"DiMPTracker needs a DiMPNet, got {type(net).__name__}")
        stride = net.classifier.filter_initializer.feature_stride
        if params.image_sample_size % stride:
            raise ValueError(
                f"tracker.image_sample_size ({params.image_sample_size}) must be a multiple of the network's "
                f"feature stride ({stride})"
            )
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.params = params
        self.filter_size = int(net.classifier.filter_size)
        self.last_flag = "normal"
        self.last_max_score = float("nan")
        self.frame_num = 0
        self._initialized = False

    # ------------------------------------------------------------------ public API

    def initialize(self, image: np.ndarray, box: Sequence[float]) -> None:
        """Learn the target in ``box`` (``x, y, w, h`` px) on the first frame ``image`` (``[H, W]``/``[H, W, 3]``)."""
        p = self.params
        frame = prepare_frame(image)
        box_arr = check_box(box)
        self._rng = np.random.default_rng(p.seed)
        self._generator = torch.Generator().manual_seed(p.seed)
        self._image_size = np.array([frame.shape[1], frame.shape[0]], dtype=np.float64)
        self._center = box_arr[:2] + box_arr[2:] / 2
        self._size = box_arr[2:].copy()
        sample_sz = p.image_sample_size
        self._scale = math.sqrt(float(np.prod(self._size))) * p.search_area_scale / sample_sz
        self._base_size = self._size / self._scale
        self._min_scale = min(MIN_TARGET_SIDE / float(self._base_size.min()), self._scale)
        self._max_scale = max(float(np.min(self._image_size / self._base_size)), self._scale)
        self.frame_num = 1

        geometry = self._geometry()
        transforms = init_transforms(
            p.augmentation if p.use_augmentation else None, sample_sz, p.random_shift_factor, self._rng
        )
        patches = augmented_patches(frame, geometry, transforms)
        boxes = torch.from_numpy(augmented_boxes(geometry.box_to_crop(box_arr), transforms)).float()
        with torch.no_grad():
            backbone = self.net.extract_backbone_features(self._network_input(patches))
            feat = self.net.extract_classification_feat(backbone)
            dropout = p.augmentation.dropout if p.use_augmentation else None
            if dropout is not None and dropout[0] > 0:
                feat = torch.cat([feat, self._feature_dropout(feat[:1], *dropout)])
                boxes = torch.cat([boxes, boxes[:1].expand(dropout[0], -1)])
            boxes = boxes.to(self.device)
            self._stride = sample_sz / feat.shape[-1]
            self._filter, _, _ = self.net.classifier.get_filter(
                feat.unsqueeze(1), boxes.unsqueeze(1), num_iter=p.net_opt_iter, compute_losses=False
            )
            self._memory = (
                SampleMemory(feat, boxes, p.sample_memory_size, p.init_samples_minimum_weight)
                if p.update_classifier
                else None
            )
            if p.use_iou_net:
                iou_backbone = [f[:1] for f in self.net.get_backbone_bbreg_feat(backbone)]
                self._modulation = [m.detach() for m in self.net.bb_regressor.get_modulation(iou_backbone, boxes[:1])]
        self.last_flag = "normal"
        self.last_max_score = float("nan")
        self._initialized = True

    def track(self, image: np.ndarray) -> np.ndarray:
        """The target's box on the next frame: ``float64 [4]`` ``x, y, w, h`` in image pixels."""
        if not self._initialized:
            raise RuntimeError("DiMPTracker.track called before initialize")
        p = self.params
        frame = prepare_frame(image)
        self._image_size = np.array([frame.shape[1], frame.shape[0]], dtype=np.float64)
        self.frame_num += 1

        geometry = self._geometry()
        with torch.no_grad():
            backbone = self.net.extract_backbone_features(self._network_input(sample_patch(frame, geometry)[None]))
            test_feat = self.net.extract_classification_feat(backbone)
            scores = self.net.classifier.classify(self._filter, test_feat.unsqueeze(1))[0, 0]
        size_cells = self._size * geometry.scale / self._stride
        loc = localize_target(scores, size_cells, p)
        peak = geometry.points_to_image(np.array(cell_to_crop(loc.peak, self._stride, self.filter_size)))

        if loc.flag != "not_found":
            self._move_to(peak)
            if p.use_iou_net:
                self._refine(backbone, geometry, update_scale=p.update_scale_when_uncertain or loc.flag != "uncertain")
            else:
                self._set_scale(geometry.side / p.image_sample_size)

        if self._memory is not None and loc.flag in ("normal", "hard_negative"):
            self._update_classifier(test_feat[0], geometry, hard_negative=loc.flag == "hard_negative")

        self.last_flag = loc.flag
        self.last_max_score = loc.max_score
        return self.current_box()

    def current_box(self) -> np.ndarray:
        """The current estimate, ``float64 [4]`` ``x, y, w, h`` in image pixels."""
        return np.concatenate([self._center - self._size / 2, self._size]).astype(np.float64)

    # ------------------------------------------------------------------ steps

    def _geometry(self) -> CropGeometry:
        p = self.params
        return search_geometry(
            self._center,
            self._scale * p.image_sample_size,
            self._image_size,
            p.image_sample_size,
            p.border_mode,
            p.patch_max_scale_change,
        )

    def _network_input(self, patches: np.ndarray) -> torch.Tensor:
        return to_network_input(torch.from_numpy(np.ascontiguousarray(patches)).to(self.device))

    def _feature_dropout(self, feat: torch.Tensor, copies: int, probability: float) -> torch.Tensor:
        """``copies`` channel-dropout versions of ``feat`` ``[1, C, H, W]``, seeded by ``params.seed``."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.params.seed)
            return F.dropout2d(feat.expand(copies, -1, -1, -1), p=probability, training=True)

    def _move_to(self, center: np.ndarray) -> None:
        """New centre, kept so that ``target_inside_ratio`` of the target stays in the image."""
        margin = (self.params.target_inside_ratio - 0.5) * self._size
        self._center = np.maximum(np.minimum(center, self._image_size - margin), margin)

    def _set_scale(self, scale: float) -> None:
        """New scale (clamped to the bounds); the target size follows the base size."""
        self._scale = min(max(scale, self._min_scale), self._max_scale)
        self._size = self._base_size * self._scale

    def _refine(self, backbone: dict[str, torch.Tensor], geometry: CropGeometry, update_scale: bool) -> None:
        p = self.params
        init_box = torch.from_numpy(geometry.box_to_crop(self.current_box())).float().to(self.device)
        boxes = jittered_boxes(init_box, p.num_init_random_boxes, p.box_jitter_pos, p.box_jitter_sz, self._generator)
        with torch.no_grad():
            iou_feat = self.net.bb_regressor.get_iou_feat(self.net.get_backbone_bbreg_feat(backbone))

        def predict(bb: torch.Tensor) -> torch.Tensor:
            return self.net.bb_regressor.predict_iou(self._modulation, iou_feat, bb.unsqueeze(0)).reshape(-1)

        boxes, ious = optimize_boxes(
            predict,
            boxes,
            p.box_refinement_iter,
            p.box_refinement_step_length,
            p.box_refinement_step_decay,
            p.box_refinement_space,
        )
        chosen = select_box(boxes, ious, p.iounet_k, p.maximal_aspect_ratio)
        if chosen is None:
            return
        box = geometry.box_to_image(chosen[0].detach().cpu().double().numpy())
        if not np.all(np.isfinite(box)):
            return
        self._size = box[2:]
        self._move_to(box[:2] + box[2:] / 2)
        if update_scale:
            scale = math.sqrt(float(np.prod(self._size) / np.prod(self._base_size)))
            clamped = min(max(scale, self._min_scale), self._max_scale)
            self._size = self._size * (clamped / scale)
            self._scale = clamped

    def _update_classifier(self, feat: torch.Tensor, geometry: CropGeometry, hard_negative: bool) -> None:
        p = self.params
        assert self._memory is not None
        box = torch.from_numpy(geometry.box_to_crop(self.current_box())).float().to(self.device)
        rate = p.hard_negative_learning_rate if hard_negative else p.learning_rate
        self._memory.update(feat, box, rate)
        if hard_negative:
            num_iter = p.net_opt_hn_iter
        elif (self.frame_num - 1) % p.train_skipping == 0:
            num_iter = p.net_opt_update_iter
        else:
            num_iter = 0
        if num_iter > 0:
            with torch.no_grad():
                self._filter, _, _ = self.net.classifier.filter_optimizer(
                    self._filter,
                    self._memory.samples.unsqueeze(1),
                    self._memory.boxes.unsqueeze(1),
                    sample_weight=self._memory.weights.unsqueeze(1),
                    num_iter=num_iter,
                    compute_losses=False,
                )


def build_tracker(net: nn.Module, params: TrackerConfig, device: torch.device | str = "cpu") -> Tracker:
    """The online tracker for ``net``: a :class:`DiMPTracker` for a DiMPNet (DDP wrappers are unwrapped).

    Raises ``NotImplementedError`` for an ATOMNet (no target classifier to track with) and ``TypeError`` for
    any other module.
    """
    return DiMPTracker(getattr(net, "module", net), params, device)  # its constructor checks the network
