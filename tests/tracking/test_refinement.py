"""IoU-Net box refinement: gradient ascent raises the predicted IoU; jitter and selection behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert, box_iou

from cmd_ray.data.synthetic import generate_sequence, item_rng
from cmd_ray.distill.step import to_network_input
from cmd_ray.models.dimpnet import build_dimpnet
from cmd_ray.tracking.geometry import sample_patch, search_geometry
from cmd_ray.tracking.refinement import jittered_boxes, optimize_boxes, select_box

TARGET = torch.tensor([[40.0, 50.0, 30.0, 20.0]])


def _true_iou(boxes: torch.Tensor) -> torch.Tensor:
    """Exact IoU with TARGET, differentiable in the boxes (a stand-in with a known optimum)."""
    return box_iou(box_convert(boxes, "xywh", "xyxy"), box_convert(TARGET, "xywh", "xyxy"))[:, 0]


@pytest.mark.parametrize(("space", "step"), [("default", 1.0), ("relative", 0.05), ("default", (1.0, 0.5))])
def test_ascent_approaches_the_optimum(space: str, step: float | tuple[float, float]) -> None:
    start = jittered_boxes(TARGET[0], 12, 0.3, 0.5, torch.Generator().manual_seed(0))
    before = _true_iou(start)
    boxes, ious = optimize_boxes(_true_iou, start, 20, step, 1.0, space)
    assert boxes.shape == start.shape and not boxes.requires_grad
    torch.testing.assert_close(ious, _true_iou(boxes))  # the IoU returned is that of the returned boxes
    assert bool((ious >= before - 1e-6).all())
    assert float(ious.mean()) > float(before.mean()) + 0.1
    assert float(ious.mean()) > 0.75


def test_refinement_raises_the_iounet_prediction() -> None:
    """With a (random) tiny IoU-Net, every jittered box climbs its predicted IoU."""
    torch.manual_seed(0)
    net = build_dimpnet("tiny").eval()
    frames, gt, _ = generate_sequence(item_rng(0, "tir_sequence", 0), 160, 128, 2, "tir")
    box = gt[0].astype(np.float64)
    geometry = search_geometry(box[:2] + box[2:] / 2, 5 * np.sqrt(box[2] * box[3]), (160, 128), 128)
    crops = to_network_input(torch.from_numpy(np.stack([sample_patch(f, geometry) for f in frames])))
    with torch.no_grad():
        feat = net.get_backbone_bbreg_feat(net.extract_backbone_features(crops))
        reference = torch.tensor(geometry.box_to_crop(box), dtype=torch.float32)[None]
        modulation = net.bb_regressor.get_modulation([f[:1] for f in feat], reference)
        iou_feat = [f[1:] for f in net.bb_regressor.get_iou_feat(feat)]

    def predict(boxes: torch.Tensor) -> torch.Tensor:
        return net.bb_regressor.predict_iou(modulation, iou_feat, boxes[None]).reshape(-1)

    start = jittered_boxes(torch.tensor(geometry.box_to_crop(gt[1]), dtype=torch.float32), 9, 0.1, 0.5)
    with torch.no_grad():
        before = predict(start)
    for space, step in (("default", 1.0), ("relative", 0.05)):
        _, after = optimize_boxes(predict, start, 5, step, 1.0, space)
        assert bool((after > before).all()), space


def test_jittered_boxes() -> None:
    box = torch.tensor([10.0, 20.0, 30.0, 12.0])
    boxes = jittered_boxes(box, 50, 0.1, 0.5, torch.Generator().manual_seed(1))
    assert boxes.shape == (51, 4)
    torch.testing.assert_close(boxes[0], box)
    side = float(torch.sqrt(box[2] * box[3]))
    centers = boxes[1:, :2] + boxes[1:, 2:] / 2
    assert float((centers - (box[:2] + box[2:] / 2)).abs().max()) <= 0.05 * side + 1e-5
    assert float(boxes[1:, 2:].min()) >= 12.0 / 3 - 1e-6
    assert jittered_boxes(box, 0, 0.1, 0.5).shape == (1, 4)


def test_select_box_drops_extreme_aspect_ratios_and_averages_the_top_k() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [2.0, 0, 10, 10], [0.0, 0, 100, 5], [4.0, 0, 10, 10]])
    ious = torch.tensor([0.5, 0.7, 0.99, 0.1])
    box, iou = select_box(boxes, ious, 2, 6.0)
    torch.testing.assert_close(box, torch.tensor([1.0, 0, 10, 10]))
    assert iou == pytest.approx(0.6)
    assert select_box(boxes[2:3], ious[2:3], 3, 6.0) is None
