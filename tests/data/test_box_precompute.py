"""Pseudo boxes computed ahead of training (data/box_precompute.py, ``cmd-ray boxes``) on a local Ray cluster."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from pair_samples import maker_for

from cmd_ray import cli
from cmd_ray.config import load_config
from cmd_ray.data.distill_stream import list_pairs

TINY_ARCH = "ssdlite320_mobilenet_v3_large"


def save_tiny_detector(path: Path) -> Path:
    torch.manual_seed(0)
    model = torchvision.models.get_model(TINY_ARCH, weights=None, weights_backbone=None, num_classes=2)
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.e2e
def test_boxes_command_writes_a_manifest_that_training_reads(ray_session, pair_root, tmp_path, capsys):
    weights = save_tiny_detector(tmp_path / "tiny.pt")
    out = tmp_path / "boxes.parquet"
    overrides = [
        f"data.uri={pair_root}",
        "data.progress=false",
        "data.detector=torchvision",
        f"data.detector_weights={weights}",
        f"data.detector_arch={TINY_ARCH}",
        "data.detector_num_classes=2",
        "data.detector_score_threshold=0.3",
        "data.max_boxes=3",
        "data.detect_on_tir=true",
    ]
    assert cli.main(["boxes", "--out", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "boxes of 10 pairs" in printed and "unreadable:   2" in printed and f"data.manifest={out}" in printed

    manifest = ["data.layout=manifest", f"data.manifest={out}", "data.boxes=detection"]
    manifest_cfg = load_config(None, [*overrides, *manifest])
    table = list_pairs(manifest_cfg)
    assert len(table) == 10 and table.boxes is not None
    found = [table.boxes_of(i) for i in range(len(table))]
    assert sum(b is None for b in found) == 2  # the unreadable pairs: not computed
    assert all(len(b) <= 3 for b in found if b is not None) and any(b is not None and len(b) for b in found)
    for b in found:
        if b is not None and len(b):
            assert np.all(b[:, :2] >= 0) and np.all(b[:, 0] + b[:, 2] <= 160 + 1e-3)
    maker = maker_for(manifest_cfg, table)
    good = next(i for i, b in enumerate(found) if b is not None and len(b))
    rgb, tir = maker.load(good)
    np.testing.assert_array_equal(maker.boxes(good, rgb, tir).boxes, found[good])
    assert cli.main(["boxes", "--out", str(tmp_path / "boxes.json"), *overrides]) == 2
    assert "unknown format" in capsys.readouterr().err
