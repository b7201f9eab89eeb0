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


@pytest.mark.e2e
def test_boxes_command_fails_instead_of_writing_null_boxes_while_s3_is_down(ray_session, s3_server, tmp_path, capsys):
    """A pair the store cannot serve within storage.read_timeout_s is no unreadable pair: no manifest is written."""
    from s3_faults import FaultyS3Proxy

    from cmd_ray.config import SynthConfig
    from cmd_ray.data.synthetic import write_synthetic_dataset

    bucket = s3_server.make_bucket("boxes-outage")
    write_synthetic_dataset(f"s3://{bucket}/synth", SynthConfig(num_pairs=3, num_rgb_sequences=0, num_tir_sequences=0))
    out = tmp_path / "boxes.parquet"
    with FaultyS3Proxy(s3_server.endpoint_url, outage_mode="unavailable") as proxy:
        overrides = [
            f"data.uri=s3://{bucket}/synth/pairs",
            "data.progress=false",
            f"storage.s3_endpoint_url={proxy.endpoint_url}",
            "storage.read_timeout_s=1",
            "storage.retry_max_delay_s=0.2",
        ]
        proxy.outage_after(requests=2, seconds=3600)  # the listing (1 request) passes; every image read fails
        assert cli.main(["boxes", "--out", str(out), *overrides]) == 2
        assert proxy.outage_started.is_set() and proxy.counts["outage"] > 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cmd-ray:")]
    assert len(errors) == 1, errors  # one line, naming the pair, the store's answer and the setting
    assert "ServiceUnavailable" in errors[0] and "storage.read_timeout_s=1" in errors[0], errors
    assert f"no manifest was written to {out}" in errors[0]
    assert not out.exists()
