"""MLflow runs and the model registry on a real sqlite backend store (no Ray needed)."""

import pytest
import torch

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import load_config
from cmd_ray.mlflow_runs import store_client
from cmd_ray.models.dimpnet import build_model


@pytest.fixture
def cfg(tmp_path):
    return load_config(
        None,
        [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "mlflow.registered_model_name=unit-tracker"],
    )


def test_register_then_pull_returns_the_same_weights_and_config(cfg, tmp_path):
    torch.manual_seed(3)
    model = build_model(cfg)
    run_id = mlflow_runs.start_run(cfg, "unit")
    registered = registry.log_and_register(cfg, run_id, model)
    mlflow_runs.end_run(cfg, run_id)

    assert registered.uri == "models:/unit-tracker@candidate"
    pulled, pulled_cfg = registry.pull(registered.uri, tmp_path / "out", tracking_uri=cfg.mlflow.tracking_uri)
    assert pulled_cfg == cfg
    assert not pulled.training
    expected = model.state_dict()
    assert set(pulled.state_dict()) == set(expected)
    for name, tensor in pulled.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.yaml", "state_dict.pt"]


def test_pull_rejects_what_is_not_a_registered_model_uri(cfg):
    with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
        registry.pull("runs:/abc/model", tracking_uri=cfg.mlflow.tracking_uri)


def test_params_never_hold_the_secret_key(cfg, monkeypatch):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    leaky = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"run_name": f"run-{secret}"})})
    run_id = mlflow_runs.start_run(leaky, "leaky", tags={"note": f"key={secret}"})
    run = store_client(cfg.mlflow.tracking_uri).get_run(run_id)
    assert run.data.params["storage.run_name"] == "run-***"
    assert all(secret not in str(value) for value in [*run.data.params.values(), *run.data.tags.values()])


def test_relative_sqlite_store_is_pinned_to_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pinned = mlflow_runs.pin_tracking_uri(load_config(None))
    assert pinned.mlflow.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_load_model_reads_every_source_the_same_way(cfg, tmp_path):
    """Registry URI, checkpoint folder, its training_state.pt and a plain state dict give the same network."""
    from cmd_ray.models.checkpoint import save_training_state

    torch.manual_seed(4)
    model = build_model(cfg)
    run_id = mlflow_runs.start_run(cfg, "unit")
    registered = registry.log_and_register(cfg, run_id, model)
    mlflow_runs.end_run(cfg, run_id)
    save_training_state(tmp_path, {"model": model.state_dict(), "config": cfg.model_dump(mode="json"), "epoch": 1})
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    sources = [registered.uri, str(tmp_path), str(tmp_path / "training_state.pt"), str(tmp_path / "weights.pt")]
    for source in sources:
        net, net_cfg = registry.load_model(source, cfg)
        assert net_cfg == cfg and not net.training, source
        assert all(torch.equal(t, model.state_dict()[k]) for k, t in net.state_dict().items()), source
    with pytest.raises(registry.ModelLoadError, match="cannot pull models:/unit-tracker@nobody"):
        registry.load_model("models:/unit-tracker@nobody", cfg)
