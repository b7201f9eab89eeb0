"""End to end: synthetic pairs in moto-S3 ─▶ Ray Data ─▶ Ray Train (2 DDP workers) ─▶ checkpoints on S3 ─▶ registry."""

import signal

import boto3
import pytest
import ray.train
import torch

from cmd_ray import registry
from cmd_ray.config import SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.mlflow_runs import store_client
from cmd_ray.models.training_state import load_training_state
from cmd_ray.storage import resolve, write_bytes
from cmd_ray.train.trainer import run_distillation

pytestmark = pytest.mark.e2e


def test_distill_job_reads_and_checkpoints_on_s3(s3_server, ray_session, tmp_path, tiny_overrides):
    bucket = s3_server.make_bucket("distill-e2e")
    write_synthetic_dataset(
        f"s3://{bucket}/synth",
        SynthConfig(num_pairs=12, num_rgb_sequences=0, num_tir_sequences=0),
        progress=False,
    )
    # One corrupt pair among the good ones: counted and skipped, never a crashed job.
    write_bytes(f"s3://{bucket}/synth/pairs/rgb/999999.jpg", b"not a jpeg")
    write_bytes(f"s3://{bucket}/synth/pairs/tir/999999.jpg", b"not a jpeg either")
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            f"data.uri=s3://{bucket}/synth/pairs",
            f"storage.storage_path=s3://{bucket}/checkpoints",
            "storage.run_name=e2e-s3",
            f"storage.s3_endpoint_url={s3_server.endpoint_url}",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.registered_model_name=e2e-tracker",
            "scaling.num_workers=2",
            "distill.epochs=3",
        ],
    )

    interrupt_handler = signal.getsignal(signal.SIGINT)
    result = run_distillation(cfg)

    # Ray Train's own SIGINT handler (it holds the finished run's controller and its data actors) is gone again
    assert signal.getsignal(signal.SIGINT) is interrupt_handler
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    teacher = result.history[0]["teacher_val_loss"]
    val_losses = [row["val_loss"] for row in result.history]
    assert val_losses[-1] < teacher, f"validation loss did not decrease from the teacher's {teacher}: {val_losses}"
    assert result.skipped_pairs == 1

    client = store_client(tracking_uri)
    version = client.get_model_version_by_alias("e2e-tracker", "candidate")
    assert version.run_id == result.run_id
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["distill.variant"] == "D3"
    assert [m.step for m in client.get_metric_history(result.run_id, "loss")] == [0, 1, 2]

    keys = [
        obj["Key"]
        for obj in boto3.client("s3", endpoint_url=s3_server.endpoint_url).list_objects_v2(
            Bucket=bucket, Prefix="checkpoints/e2e-s3/"
        )["Contents"]
    ]
    assert any(key.endswith("epoch_0002/training_state.pt") for key in keys), keys

    pulled, pulled_cfg = registry.pull("models:/e2e-tracker@candidate", tmp_path / "pulled", tracking_uri)
    assert pulled_cfg == cfg
    assert (tmp_path / "pulled" / "state_dict.pt").is_file()
    state = final_state(result, s3_server.endpoint_url)
    for name, tensor in pulled.state_dict().items():
        assert torch.equal(tensor, state["model"][name]), name


def final_state(result, endpoint_url):
    """The final training checkpoint of a run, downloaded from S3."""
    fs, _ = resolve(f"s3://{result.checkpoint_path}", endpoint_url)
    with ray.train.Checkpoint(result.checkpoint_path, filesystem=fs).as_directory() as directory:
        return load_training_state(directory)
