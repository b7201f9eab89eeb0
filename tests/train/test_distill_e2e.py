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
    # One corrupt pair among the good ones (1 of 13, 7.7%): counted and skipped, never a crashed job, under a
    # data.max_skipped_fraction that allows that share (the 1% default fails such a run: test_skip_limit.py).
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
            "data.max_skipped_fraction=0.1",
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


def test_a_run_that_never_beats_its_teacher_on_the_validation_sequences_registers_the_teacher(
    ray_session, local_pairs, tmp_path, tiny_overrides
):
    """Do no harm: distill.select_by=val_success tracks the labeled TIR validation sequences with the teacher (epoch
    -1) and after each epoch, and registers the best, the teacher on ties. B1 trains only the IoU-Net's reference
    branch and the tracker here uses the classifier alone, so every epoch tracks exactly as the teacher does: the
    registered version must hold the teacher's weights, though the run trained and its checkpoints differ."""
    from cmd_ray.config import Config
    from cmd_ray.evaluation.validation import tracking_validator
    from cmd_ray.models.dimpnet import build_model

    synth = SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=2, sequence_length=6, seed=1)
    val_root = write_synthetic_dataset(str(tmp_path / "val"), synth, progress=False).tir_sequences_uri
    torch.manual_seed(5)
    torch.save(build_model(Config()).state_dict(), tmp_path / "teacher.pt")
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        None,
        [
            *tiny_overrides,
            "distill.variant=B1",
            "distill.val_samples=8",
            "tracker.preset=tiny",
            "tracker.use_iou_net=false",
            f"model.init_checkpoint={tmp_path}/teacher.pt",
            f"data.uri={local_pairs}",
            f"storage.storage_path={tmp_path}/ray_results",
            "storage.run_name=noharm",
            "storage.checkpoints_to_keep=1",
            f"mlflow.tracking_uri={tracking_uri}",
            "mlflow.registered_model_name=noharm-tracker",
            "distill.select_by=val_success",
            f"tune.eval_root={val_root}",
        ],
    )

    result = run_distillation(cfg, tracking_validator=tracking_validator(cfg))

    client = store_client(tracking_uri)
    scores = {m.step: m.value for m in client.get_metric_history(result.run_id, "val_success")}
    (teacher_score,) = [m.value for m in client.get_metric_history(result.run_id, "teacher_val_success")]
    assert scores == {0: teacher_score, 1: teacher_score}, "the classifier was not trained: every epoch ties"
    assert [m.value for m in client.get_metric_history(result.run_id, "best_epoch")] == [-1.0, -1.0]
    assert result.selection is not None and result.selection.best.epoch == -1
    assert not result.selection.best.beat_teacher and result.selection.checkpoint_path == ""
    run = client.get_run(result.run_id)
    assert run.data.tags["cmd_ray.selected_epoch"] == "-1" and run.data.tags["cmd_ray.beat_teacher"] == "false"

    version = client.get_model_version_by_alias("noharm-tracker", "candidate")
    assert version.run_id == result.run_id and str(version.version) == result.registered.version
    assert "weights: the teacher's (epoch -1): no epoch of 2 beat its val_success" in version.description
    assert version.tags["cmd_ray.beat_teacher"] == "false"
    pulled, _ = registry.pull("models:/noharm-tracker@candidate", tracking_uri=tracking_uri)
    teacher = torch.load(tmp_path / "teacher.pt", weights_only=True)
    for name, tensor in pulled.state_dict().items():
        assert torch.equal(tensor, teacher[name]), name
    final = load_training_state(result.checkpoint_path)["model"]
    trained = [name for name in teacher if not torch.equal(final[name], teacher[name])]
    assert trained and all(name.startswith("bb_regressor.") for name in trained), trained
