"""Credentials inside URIs (``https://user:pw@host``, ``postgresql://user:pw@…``, ``s3://key:secret@…``) never reach
a log line, a printed line, an MLflow param or tag, or an error message: one helper masks them
(:func:`cmd_ray.storage.mask_credentials`) and every outlet goes through it."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from cmd_ray import mlflow_runs, registry
from cmd_ray.cli import main
from cmd_ray.config import load_config
from cmd_ray.local_cluster import free_port, mlflow_server_healthy, wait_until
from cmd_ray.mlflow_server import server_command, server_env
from cmd_ray.storage import has_credentials, mask_credentials

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://user:pw@mlflow.example.com:5000", "https://user:***@mlflow.example.com:5000"),
        (
            "postgresql://mlflow:pw@db:5432/mlflow?sslmode=require",
            "postgresql://mlflow:***@db:5432/mlflow?sslmode=require",
        ),
        ("s3://AKIA:secret@bucket/key", "s3://AKIA:***@bucket/key"),
        ("https://ghp_token@host/x", "https://***@host/x"),
        ("https://user:p@ss@host/x", "https://user:***@host/x"),  # an unescaped @ in the password
        ("store http://u:pw@h:1 and https://v:pw2@g/p", "store http://u:***@h:1 and https://v:***@g/p"),
        ("https://host/api?token=abc&x=1", "https://host/api?token=***&x=1"),
        ("postgresql://db/mlflow?user=m&password=pw", "postgresql://db/mlflow?user=m&password=***"),
    ],
)
def test_credentials_in_uris_are_masked(text, masked):
    assert mask_credentials(text) == masked
    assert has_credentials(text)


@pytest.mark.parametrize(
    "text",
    [
        "models:/teacher@candidate",  # a registry alias is not a user
        "sqlite:////tmp/a@b/mlflow.db",  # an @ in a path
        "s3://bucket/key@v2/x.jpg",
        "https://mlflow.example.com:5000/#/experiments/1",
        "mail me at someone@example.com",
    ],
)
def test_text_without_credentials_is_left_alone(text):
    assert mask_credentials(text) == text
    assert not has_credentials(text)


def test_params_and_tags_hold_no_uri_credentials(tmp_path):
    cfg = load_config(
        None,
        [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"data.uri=https://reader:{SECRET}@data.example.com/p"],
    )
    run_id = mlflow_runs.start_run(cfg, "masked", tags={"cmd_ray.source": f"postgresql://u:{SECRET}@db/x"})
    run = mlflow_runs.store_client(cfg.mlflow.tracking_uri).get_run(run_id)
    assert run.data.params["data.uri"] == "https://reader:***@data.example.com/p"
    assert run.data.tags["cmd_ray.source"] == "postgresql://u:***@db/x"
    assert all(SECRET not in value for value in [*run.data.params.values(), *run.data.tags.values()])


def test_the_cli_masks_its_printed_config_its_logs_and_its_errors(tmp_path, capsys, caplog, monkeypatch):
    uri = f"https://alice:{SECRET}@mlflow.example.com"
    assert main(["config", f"mlflow.tracking_uri={uri}"]) == 0
    out = capsys.readouterr().out
    assert "tracking_uri: https://alice:***@mlflow.example.com" in out and SECRET not in out

    # the handler filter main() installs masks any module's records
    logging.getLogger("cmd_ray.anything").warning("store %s unreachable", uri)
    assert "https://alice:***@mlflow.example.com unreachable" in caplog.text and SECRET not in caplog.text

    monkeypatch.chdir(tmp_path)
    rc = main(["registry", "pull", "models:/x@y", "--out", "o", "--tracking-uri", f"postgresql://m:{SECRET}@db/x"])
    err = capsys.readouterr().err
    assert rc == 2 and SECRET not in err and "postgresql://m:***@db/x" in err


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite store); its URI, without credentials."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = server_command(port, folder / "artifacts")
    env = server_env(dict(os.environ), f"sqlite:///{folder / 'mlflow.db'}")
    with open(folder / "server.log", "ab") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited; see {folder / 'server.log'}")
        return mlflow_server_healthy(port)

    try:
        wait_until(healthy, "mlflow server", timeout_s=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.e2e
def test_a_password_in_the_tracking_uri_is_never_printed_or_logged(mlflow_server, capfd, caplog):
    """Against a server (where MLflow itself prints the run's URL when it ends): start, log, end a run, name its
    location, and look up a missing model; the password appears nowhere, and the run is stored."""
    uri = mlflow_server.replace("http://", f"http://alice:{SECRET}@")
    cfg = load_config(None, [f"mlflow.tracking_uri={uri}", "mlflow.experiment=masked"])
    with caplog.at_level(logging.DEBUG):
        run_id = mlflow_runs.start_run(cfg, "masked-run")
        mlflow_runs.log_metrics(cfg, run_id, {"loss": 1.0}, step=0)
        mlflow_runs.end_run(cfg, run_id)
        location = mlflow_runs.run_url(cfg, run_id)
        with pytest.raises(registry.RegistryError) as missing:
            registry.model_version("models:/nonexistent@alias", uri)
    assert location.startswith(f"http://alice:***@127.0.0.1:{mlflow_server.rsplit(':', 1)[1]}/#/experiments/")
    assert "http://alice:***@127.0.0.1" in str(missing.value)
    run = mlflow_runs.store_client(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["mlflow.tracking_uri"] == mlflow_runs.redact(uri)
    captured = capfd.readouterr()
    for text in (captured.out, captured.err, caplog.text, location, str(missing.value), *run.data.params.values()):
        assert SECRET not in text
    assert os.environ.get(mlflow_runs.SUPPRESS_URL_PRINT) is None  # MLflow's own switch is restored
