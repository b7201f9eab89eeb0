"""End to end: rerunning a finished distillation with the same run name and storage path.

One tiny 1-epoch run, then three reruns of it: with another learning rate (a ``ConfigError`` naming
``distill.lr_tcl``, before any training), unchanged through the CLI ("nothing to train", no new model version),
and with ``distill.epochs=2`` (resumes at epoch 1, in the same MLflow run, and registers version 2). Only the
first and the last invocation run Ray Train. Checkpoints in moto-S3, as on a cluster without a shared folder (a
worker lost mid-run, restarted from the checkpoint before: tests/multinode/test_cluster_e2e.py).
"""

import pytest

from cmd_ray.cli import main
from cmd_ray.config import ConfigError, load_config
from cmd_ray.mlflow_runs import store_client
from cmd_ray.train import trainer
from cmd_ray.train.trainer import latest_checkpoint_epoch, run_distillation

pytestmark = pytest.mark.e2e

RUN = "resume-e2e"
MODEL = "resume-tracker"


def test_rerun_checks_config_trains_nothing_when_done_and_resumes_more_epochs(
    s3_server, ray_session, tmp_path, tiny_overrides, local_pairs, monkeypatch, capsys
):
    bucket = s3_server.make_bucket("resume-e2e")
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        *tiny_overrides,
        "distill.val_samples=4",
        f"data.uri={local_pairs}",
        f"storage.storage_path=s3://{bucket}/checkpoints",
        f"storage.s3_endpoint_url={s3_server.endpoint_url}",
        f"storage.run_name={RUN}",
        f"mlflow.tracking_uri={tracking_uri}",
        f"mlflow.registered_model_name={MODEL}",
    ]
    client = store_client(tracking_uri)

    def versions() -> list[str]:
        return sorted(str(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))

    assert latest_checkpoint_epoch(load_config(None, overrides), RUN) is None  # no run folder yet
    first = run_distillation(load_config(None, [*overrides, "distill.epochs=1"]))
    assert first.registered is not None and first.registered.version == "1"
    assert not first.nothing_to_train and first.resumed_from_epoch is None
    assert latest_checkpoint_epoch(load_config(None, overrides), RUN) == 0

    # The two reruns below must not reach the cluster: any of these would be training.
    def no_cluster_work(*args, **kwargs):
        raise AssertionError("a rerun that trains nothing reached the cluster")

    with monkeypatch.context() as patch:
        for name in ("open_run", "_fit", "resolve_teacher", "resolve_start"):
            patch.setattr(trainer, name, no_cluster_work)
        patch.setattr(trainer.ray, "init", no_cluster_work)

        with pytest.raises(ConfigError) as err:
            run_distillation(load_config(None, [*overrides, "distill.epochs=1", "distill.lr_tcl=5e-3"]))
        message = str(err.value)
        # the one differing key, alone (distill.epochs and the rest are equal)
        assert [line for line in message.splitlines() if line.startswith("  ")] == ["  distill.lr_tcl: 1e-05 → 0.005"]
        assert "storage.run_name=<new name>" in message

        # unchanged (an operational knob aside), through the CLI as a user would: says so, registers nothing
        assert main(["distill", *overrides, "distill.epochs=1", "data.progress=false"]) == 0
        out = capsys.readouterr().out
        assert "nothing to train" in out and "already holds 1 epoch(s)" in out, out
        assert "(version 1; nothing new)" in out, out
        assert "distillation finished" not in out
        assert versions() == ["1"]

    second = run_distillation(load_config(None, [*overrides, "distill.epochs=2", "data.num_actors=2"]))
    assert second.resumed_from_epoch == 1
    assert second.run_id == first.run_id
    assert [row["epoch"] for row in second.history] == [0, 1]
    assert second.registered is not None and second.registered.version == "2"
    assert versions() == ["1", "2"]
    assert latest_checkpoint_epoch(load_config(None, overrides), RUN) == 1

    # the API form of "nothing to train"
    done = run_distillation(load_config(None, [*overrides, "distill.epochs=2"]))
    assert done.nothing_to_train and done.registered is not None and done.registered.version == "2"
    assert done.run_id == first.run_id and [row["epoch"] for row in done.history] == [0, 1]
    assert done.checkpoint_path.endswith("epoch_0001")
    assert versions() == ["1", "2"]
