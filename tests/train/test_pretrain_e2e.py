"""End to end: pretrain the RGB teacher on labeled sequences ─▶ registry ─▶ distill from ``models:/teacher@alias``.

Checks the lineage the two runs leave in MLflow, that distillation lowers the TIR validation loss below the
teacher's own, and that a secret in the environment never reaches a param, a tag or a logged file.
"""

from pathlib import Path

import pytest

from cmd_ray.config import SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.mlflow_runs import store_client
from cmd_ray.train.teacher import TEACHER_RUN_TAG, TEACHER_SOURCE_TAG
from cmd_ray.train.trainer import run_distillation, run_pretraining

pytestmark = pytest.mark.e2e

SECRET = "wJalrXUtnFEMI-K7MDENG-cmdray-e2e-secret"


def test_pretrained_teacher_is_distilled_with_full_lineage_and_no_secret_logged(
    ray_session, tmp_path, tiny_overrides, monkeypatch
):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    summary = write_synthetic_dataset(
        str(tmp_path / "synth"),
        SynthConfig(num_pairs=24, num_rgb_sequences=4, num_tir_sequences=0, sequence_length=16),
        progress=False,
    )
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [
        *tiny_overrides,
        f"storage.storage_path={tmp_path / 'checkpoints'}",
        f"mlflow.tracking_uri={tracking_uri}",
        f"pretrain.sequences_uri={summary.rgb_sequences_uri}",
        "pretrain.epochs=2",
        "pretrain.samples_per_epoch=64",
        "pretrain.batch_size=8",
        "pretrain.val_samples=16",
        "pretrain.val_fraction=0.25",
        "pretrain.max_gap=5",
        "pretrain.lr_tcl=1e-3",
        "pretrain.lr_bbe=1e-3",
        "pretrain.lr_backbone=1e-3",
        "pretrain.trainable_backbone_layers=[conv1, layer1, layer2, layer3]",
        "pretrain.registered_model_name=e2e-teacher",
        "mlflow.registered_model_name=e2e-student",
        f"data.uri={summary.pairs_uri}",
    ]
    teacher_cfg = load_config(None, common)
    teacher = run_pretraining(teacher_cfg)
    assert [row["epoch"] for row in teacher.history] == [0, 1]
    assert teacher.registered is not None and teacher.registered.uri == "models:/e2e-teacher@candidate"

    # 16 steps of batch 4 are all the student gets: at the tiny runs' lr_bbe of 1e-3 the IoU-Net's TIR loss
    # can rise by more than the classifier's falls (seen once in CI: 7.195 -> 7.413); 1e-4 keeps its steps small.
    student_cfg = load_config(
        None,
        [
            *common,
            "model.init_checkpoint=models:/e2e-teacher@candidate",
            "distill.lr_bbe=1e-4",
            # the secret inside a config value (a field the distillation does not use to reach anything)
            f"pretrain.sequences_uri=s3://{SECRET}@bucket/sequences",
        ],
    )
    student = run_distillation(student_cfg)

    client = store_client(tracking_uri)
    tags = client.get_run(student.run_id).data.tags
    assert tags[TEACHER_SOURCE_TAG] == "models:/e2e-teacher@candidate"
    assert tags[TEACHER_RUN_TAG] == teacher.run_id
    assert client.get_run(teacher.run_id).data.tags[TEACHER_SOURCE_TAG] == "random-init"
    assert student.teacher is not None and student.teacher.run_id == teacher.run_id

    teacher_loss = student.history[0]["teacher_val_loss"]
    final = student.history[-1]["val_loss"]
    assert final < teacher_loss, f"distillation did not lower the TIR validation loss {teacher_loss} -> {final}"

    metrics = client.get_run(student.run_id).data.metrics
    for key in ("loss", "loss_tcl", "loss_bbe", "val_loss", "lr_tcl", "lr_bbe", "samples_per_s", "data_wait_s"):
        assert key in metrics, key
    assert metrics["lr_tcl"] == pytest.approx(student_cfg.distill.lr_tcl)
    assert metrics["lr_bbe"] == pytest.approx(student_cfg.distill.lr_bbe)

    # no secret (environment or config value) in any param, tag or logged file of either run
    assert client.get_run(student.run_id).data.params["pretrain.sequences_uri"] == "s3://***@bucket/sequences"
    for run_id in (teacher.run_id, student.run_id):
        run = client.get_run(run_id)
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert SECRET not in value, key
    artifacts = Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
    files = [p for p in artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
