"""The resume checks of the training jobs without a Ray cluster: committed checkpoints read through
``ray.train.Result.from_path``, and a pretraining run with nothing left to train (no Ray started)."""

import pytest

from cmd_ray.config import load_config
from cmd_ray.schedule import schedule_for
from cmd_ray.train import trainer
from cmd_ray.train.trainer import PreviousRun, committed_result, latest_checkpoint_epoch, run_pretraining


def test_no_run_folder_and_a_folder_without_committed_checkpoint_are_fresh_runs(tmp_path):
    cfg = load_config(None, [f"storage.storage_path={tmp_path}", "storage.run_name=fresh"])
    assert committed_result(cfg, "fresh") is None
    assert latest_checkpoint_epoch(cfg, "fresh") is None
    (tmp_path / "fresh" / "epoch_0000").mkdir(parents=True)  # written by a worker, never committed
    assert latest_checkpoint_epoch(cfg, "fresh") is None
    assert trainer.previous_run(cfg, schedule_for(cfg, "distill")) is None


def test_pretraining_with_nothing_left_says_so_and_starts_nothing(tmp_path, monkeypatch):
    cfg = load_config(None, [f"storage.storage_path={tmp_path}", "pretrain.epochs=3", "pretrain.run_name=teach"])
    previous = PreviousRun(
        last_epoch=2,
        checkpoint_path=f"{tmp_path}/teach/epoch_0002",
        metrics={"epoch": 2, "loss": 1.0},
        config=cfg.model_dump(mode="json"),
        job="pretrain",
        mlflow_run_id=None,
    )
    monkeypatch.setattr(trainer, "previous_run", lambda cfg, schedule: previous)

    def no_cluster_work(*args, **kwargs):
        raise AssertionError("reached the cluster")

    for name in ("open_run", "_fit", "resolve_teacher", "list_pretraining_sequences"):
        monkeypatch.setattr(trainer, name, no_cluster_work)
    monkeypatch.setattr(trainer.ray, "init", no_cluster_work)

    result = run_pretraining(cfg)

    assert result.nothing_to_train and result.registered is None
    assert result.checkpoint_path.endswith("epoch_0002") and result.metrics["loss"] == 1.0
    assert "already holds 3 epoch(s) and pretrain.epochs is 3" in result.note
    assert "pretrain.run_name=<new name>" in result.note


def test_pretraining_rerun_with_another_setting_is_refused(tmp_path, monkeypatch):
    cfg = load_config(None, [f"storage.storage_path={tmp_path}", "pretrain.epochs=5"])
    stored = load_config(None, ["pretrain.lr_bbe=0.5"]).model_dump(mode="json")
    previous = PreviousRun(2, f"{tmp_path}/cmd-pretrain/epoch_0002", {}, stored, "pretrain", None)
    monkeypatch.setattr(trainer, "previous_run", lambda cfg, schedule: previous)
    with pytest.raises(trainer.ConfigError, match=r"pretrain\.lr_bbe: 0\.5 → 0\.001"):
        run_pretraining(cfg)


def test_a_run_at_other_rates_than_its_rows_carries_them_as_a_tag(caplog):
    from cmd_ray.train.trainer import RATE_OVERRIDES_TAG, rate_override_tags

    assert rate_override_tags(load_config(None, ["distill.variant=B2"])) == {}
    with caplog.at_level("WARNING"):
        tags = rate_override_tags(load_config(None, ["distill.variant=B2", "distill.lr_bbe=4e-6"]))
    assert tags == {RATE_OVERRIDES_TAG: "lr_bbe=4e-06 (row B2: 1e-06)"}
    assert "rates other than the paper's for row B2" in caplog.text


def test_a_finished_run_whose_store_lost_its_version_is_registered_again(tmp_path, monkeypatch):
    """Run state and store state agree after a rerun: the store that has the run gets its model version back."""
    import torch

    from cmd_ray import mlflow_runs, registry
    from cmd_ray.models.dimpnet import build_model
    from cmd_ray.models.training_state import save_training_state

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = ["pretrain.epochs=1", "pretrain.run_name=teach", "model.preset=tiny"]
    settings += [f"mlflow.tracking_uri={db}", "pretrain.registered_model_name=lost-teacher"]
    cfg = load_config(None, [f"storage.storage_path={tmp_path}", *settings])
    folder = tmp_path / "teach" / "epoch_0000"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    net = build_model(cfg)
    save_training_state(folder, {"model": net.state_dict(), "config": cfg.model_dump(mode="json")})
    run_id = mlflow_runs.start_run(mlflow_runs.pin_tracking_uri(cfg), "teach", tags={})
    mlflow_runs.client(cfg).set_terminated(run_id)
    previous = PreviousRun(0, str(folder), {"epoch": 0}, cfg.model_dump(mode="json"), "pretrain", run_id)
    monkeypatch.setattr(trainer, "previous_run", lambda cfg, schedule: previous)
    monkeypatch.setattr(trainer.ray, "init", lambda *a, **k: pytest.fail("reached the cluster"))

    first = run_pretraining(cfg)
    assert first.nothing_to_train and first.registered is not None and first.registered.version == "1"
    pulled, _ = registry.load_model("models:/lost-teacher@candidate", cfg)
    for key, value in net.state_dict().items():
        assert torch.equal(pulled.state_dict()[key], value), key
    again = run_pretraining(cfg)  # registered now: found, not registered twice
    assert again.registered is not None and again.registered.version == "1"
    assert len(mlflow_runs.client(cfg).search_model_versions("name = 'lost-teacher'")) == 1


def test_a_scaled_run_is_no_override_but_an_explicit_rate_beside_the_scale_is(caplog):
    from cmd_ray.train.trainer import RATE_OVERRIDES_TAG, rate_override_tags

    assert rate_override_tags(load_config(None, ["distill.variant=B2", "distill.lr_scale=4"])) == {}
    with caplog.at_level("WARNING"):
        tags = rate_override_tags(
            load_config(None, ["distill.variant=D2", "distill.lr_scale=100", "distill.lr_tcl=1e-3"])
        )
    assert tags == {RATE_OVERRIDES_TAG: "lr_tcl=0.001 (row D2: 2e-06 = 2e-08 x lr_scale 100)"}
