"""End to end: the distill job with the D4 (random) and D5 (detection) pseudo-box methods on pairs in moto-S3.

The detection run uses a tiny randomly initialised torchvision detector whose weights lie in S3 (nothing is
downloaded), detecting on RGB and TIR and merging with NMS inside the Ray Data actors.
"""

import math

import pytest
import torch
import torchvision

from cmd_ray import storage
from cmd_ray.config import SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.mlflow_runs import store_client
from cmd_ray.train.trainer import run_distillation

pytestmark = pytest.mark.e2e

TINY_ARCH = "ssdlite320_mobilenet_v3_large"


@pytest.fixture(scope="module")
def s3_pairs(s3_server, tmp_path_factory) -> str:
    """Ten synthetic pairs and a tiny detector's weights in moto-S3; returns the bucket."""
    bucket = s3_server.make_bucket("box-methods-e2e")
    write_synthetic_dataset(
        f"s3://{bucket}/synth", SynthConfig(num_pairs=10, num_rgb_sequences=0, num_tir_sequences=0), progress=False
    )
    torch.manual_seed(0)
    model = torchvision.models.get_model(TINY_ARCH, weights=None, weights_backbone=None, num_classes=2)
    local = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), local)
    storage.write_bytes(f"s3://{bucket}/weights/tiny.pt", local.read_bytes())
    return bucket


# D3 (center boxes) on S3 is tests/train/test_distill_e2e.py's run
BOX_METHODS = {
    "D4": ["data.boxes=random", "data.random_boxes_per_pair=2"],
    "D5": [
        "data.boxes=detection",
        "data.detector=torchvision",
        "data.detector_weights=s3://box-methods-e2e/weights/tiny.pt",
        f"data.detector_arch={TINY_ARCH}",
        "data.detector_num_classes=2",
        "data.detector_score_threshold=0.3",
        "data.detect_on_tir=true",
    ],
}


@pytest.mark.parametrize("variant", list(BOX_METHODS))
def test_distill_runs_with_each_box_method(variant, s3_server, ray_session, s3_pairs, tmp_path, tiny_overrides):
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            *BOX_METHODS[variant],
            f"distill.variant={variant}",
            f"data.uri=s3://{s3_pairs}/synth/pairs",
            "data.progress=false",
            f"storage.storage_path={tmp_path}/checkpoints",
            f"storage.run_name=boxes-{variant}",
            f"storage.s3_endpoint_url={s3_server.endpoint_url}",
            f"mlflow.tracking_uri={tracking_uri}",
            f"mlflow.registered_model_name=boxes-{variant}",
            "scaling.num_workers=1",
            "scaling.torch_threads=2",  # more intra-op threads than the worker's 0.5 CPUs (Ray's default gives 1)
            "distill.epochs=1",
            "distill.samples_per_epoch=8",
            "distill.batch_size=4",
            "distill.val_samples=0",  # no validation stream: one dataset per run keeps the three runs short
            "tune.metric=loss",
        ],
    )

    result = run_distillation(cfg)

    assert [row["epoch"] for row in result.history] == [0]
    row = result.history[0]
    assert all(math.isfinite(row[key]) for key in ("loss", "loss_tcl", "loss_bbe")), row
    assert result.skipped_pairs == 0
    run = store_client(tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.boxes"] == cfg.data.boxes and run.data.params["distill.variant"] == variant
    assert result.registered is not None
    assert run.data.metrics["torch_threads"] == 2
