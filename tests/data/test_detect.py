"""Detectors for 'detection' pseudo boxes: NMS merge, a tiny random torchvision detector from a local file, HOG."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision

from cmd_ray import cli, storage
from cmd_ray.config import ConfigError, load_config
from cmd_ray.data.boxes import center_box, pseudo_boxes_with_fallback
from cmd_ray.data.detect import (
    DetectorUnavailableError,
    DetectorWeightsError,
    HogPeopleDetector,
    TorchvisionDetector,
    build_detector,
    detect_pair,
    hog_available,
    merge_detections,
)

TINY_ARCH = "ssdlite320_mobilenet_v3_large"
needs_hog = pytest.mark.skipif(not hog_available(), reason=f"OpenCV {cv2.__version__} has no HOGDescriptor")


def save_tiny_detector(path: Path, num_classes: int = 2) -> Path:
    """A randomly initialised torchvision detector (2.2 M parameters), saved as a state dict: nothing downloaded."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(TINY_ARCH, weights=None, weights_backbone=None, num_classes=num_classes)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return save_tiny_detector(tmp_path_factory.mktemp("detector") / "tiny_ssdlite.pt")


def tiny_overrides(weights: str) -> list[str]:
    return [
        "data.boxes=detection",
        "data.detector=torchvision",
        f"data.detector_weights={weights}",
        f"data.detector_arch={TINY_ARCH}",
        "data.detector_num_classes=2",
        "data.detector_labels=[1]",
        "data.detector_score_threshold=0.3",
    ]


def person_like_image(height: int = 256, width: int = 320) -> np.ndarray:
    """A light background with a dark head-torso-legs silhouette about 160 px tall (uint8 [H, W, 3] RGB)."""
    image = np.full((height, width, 3), 200, np.uint8)
    cx = width // 2
    cv2.ellipse(image, (cx, 60), (14, 18), 0, 0, 360, (40, 40, 40), -1)
    cv2.rectangle(image, (cx - 22, 78), (cx + 22, 150), (40, 40, 40), -1)
    cv2.rectangle(image, (cx - 20, 150), (cx - 5, 225), (40, 40, 40), -1)
    cv2.rectangle(image, (cx + 5, 150), (cx + 20, 225), (40, 40, 40), -1)
    return image


# --------------------------------------------------------------------------- merging


def test_merge_detections_suppresses_overlaps_above_the_iou_and_keeps_the_best():
    a = (np.array([[0, 0, 100, 100], [2, 2, 100, 100], [10, 10, 100, 100]], np.float32), np.array([0.9, 0.8, 0.7]))
    b = (np.array([[300, 300, 50, 50]], np.float32), np.array([0.95]))
    boxes, scores = merge_detections([a, b], iou_threshold=0.8, max_boxes=5)
    # [2, 2, …] overlaps the 0.9 box by IoU 0.92 > 0.8: dropped; [10, 10, …] by 0.68: kept
    np.testing.assert_array_equal(boxes, [[300, 300, 50, 50], [0, 0, 100, 100], [10, 10, 100, 100]])
    np.testing.assert_allclose(scores, [0.95, 0.9, 0.7])
    top, _ = merge_detections([a, b], iou_threshold=0.8, max_boxes=2)
    assert len(top) == 2
    empty, empty_scores = merge_detections([(np.zeros((0, 4)), np.zeros(0))])
    assert empty.shape == (0, 4) and empty_scores.shape == (0,)


# --------------------------------------------------------------------------- torchvision from a local file


def test_torchvision_detector_from_a_local_weights_file(tiny_weights):
    cfg = load_config(None, tiny_overrides(str(tiny_weights)))
    detector = build_detector(cfg.data)
    assert isinstance(detector, TorchvisionDetector)
    rgb = person_like_image(128, 160)
    boxes, scores = detector.detect(rgb)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and len(boxes) == len(scores)
    assert len(boxes) > 0, "a random SSD scores every anchor near 0.5: the 0.3 threshold keeps some"
    assert np.all(scores >= 0.3)
    tir = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 200  # 16-bit TIR, same geometry
    for on_tir in (False, True):
        pair_boxes = detect_pair(detector, rgb, tir, detect_on_tir=on_tir, nms_iou=0.8, max_boxes=5, min_box_size=4)
        assert 1 <= len(pair_boxes) <= 5
        x, y, w, h = pair_boxes.T
        assert np.all(x >= 0) and np.all(y >= 0) and np.all(x + w <= 160 + 1e-3) and np.all(y + h <= 128 + 1e-3)
        assert np.all(w >= 4) and np.all(h >= 4)


def test_torchvision_weights_on_s3(s3_server, tiny_weights):
    bucket = s3_server.make_bucket("detector-weights")
    storage.write_bytes(f"s3://{bucket}/w/tiny.pt", tiny_weights.read_bytes())
    detector = TorchvisionDetector(
        f"s3://{bucket}/w/tiny.pt", arch=TINY_ARCH, num_classes=2, labels=[1], score_threshold=0.3
    )
    assert detector.detect(person_like_image(128, 160))[0].shape[1] == 4


def test_torchvision_weights_that_do_not_fit_name_the_file(tmp_path, tiny_weights):
    with pytest.raises(DetectorWeightsError, match=rf"{tiny_weights}.*{TINY_ARCH} with 3 classes"):
        TorchvisionDetector(str(tiny_weights), arch=TINY_ARCH, num_classes=3)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorWeightsError, match=r"garbage\.pt"):
        TorchvisionDetector(str(garbage), arch=TINY_ARCH, num_classes=2)
    code = tmp_path / "code.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": print}, code)  # a callable would need unpickling code
    with pytest.raises(DetectorWeightsError, match=r"code\.pt"):
        TorchvisionDetector(str(code), arch=TINY_ARCH, num_classes=2)


def test_torchvision_config_cross_checks():
    with pytest.raises(ConfigError, match=r"data.detector=torchvision needs data.detector_weights"):
        load_config(None, ["data.detector=torchvision"])
    with pytest.raises(ConfigError, match=r"detector_arch 'yolo11'.*ssdlite320_mobilenet_v3_large"):
        load_config(None, ["data.detector=torchvision", "data.detector_weights=w.pt", "data.detector_arch=yolo11"])


# --------------------------------------------------------------------------- OpenCV HOG


@needs_hog
def test_hog_on_a_person_like_shape_finds_people_or_falls_back_to_the_centre():
    rgb = person_like_image()
    tir = cv2.cvtColor(255 - rgb, cv2.COLOR_RGB2GRAY)  # a warm body on a cold background
    detector = HogPeopleDetector(score_threshold=0.0, upscale=1.0)
    boxes, scores = detector.detect(rgb)
    assert boxes.shape == (len(scores), 4) and boxes.dtype == np.float32
    pair_boxes = detect_pair(detector, rgb, tir, detect_on_tir=True, max_boxes=5, min_box_size=8)
    found = pseudo_boxes_with_fallback("detection", rgb, tir, None, detector=lambda *_: pair_boxes)
    if len(pair_boxes):  # HOG may find the silhouette …
        assert not found.fallback and len(found.boxes) <= 5
    else:  # … or nothing, and then the centre box stands in, flagged for counting
        assert found.fallback
        np.testing.assert_array_equal(found.boxes, center_box(256, 320, 0.3)[None])


@needs_hog
def test_hog_upscale_maps_boxes_back_and_tiny_images_find_nothing():
    detector = HogPeopleDetector(score_threshold=-10.0, upscale=2.0)  # every window counts: boxes exist
    boxes, _ = detector.detect(person_like_image(128, 160))
    assert len(boxes) and np.all(boxes[:, 0] + boxes[:, 2] <= 160 + 8) and np.all(boxes[:, 3] >= 64 - 1e-3)
    small, _ = HogPeopleDetector().detect(np.zeros((100, 60, 3), np.uint8))
    assert small.shape == (0, 4)


@pytest.fixture
def without_hog(monkeypatch):
    """This process's OpenCV without ``HOGDescriptor``, as OpenCV 5 is (the attribute is put back afterwards)."""
    monkeypatch.delattr(cv2, "HOGDescriptor", raising=False)
    assert not hog_available()


def test_missing_hog_is_a_clear_error_before_any_work(without_hog, tmp_path, capsys):
    with pytest.raises(DetectorUnavailableError, match=r"opencv-python-headless<5.*data.detector=torchvision"):
        HogPeopleDetector()
    with pytest.raises(ConfigError, match=r"data.detector=hog needs cv2.HOGDescriptor"):
        load_config(None, ["data.boxes=detection"])
    # `cmd-ray boxes` (HOG by default) stops before listing or starting Ray
    assert cli.main(["boxes", "--out", str(tmp_path / "m.parquet"), f"data.uri={tmp_path}/nothing"]) == 2
    assert "cv2.HOGDescriptor" in capsys.readouterr().err
