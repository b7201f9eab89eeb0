"""The MLflow server as the clusters run it, for real: a PostgreSQL server started here (``cmd_ray.local_postgres``),
``mlflow server`` started with the command, allowed hosts, auth set-up and readiness probe of
``cluster/kuberay/mlflow.yaml``, artifacts proxied to (moto) S3. Also the pieces alone: the local PostgreSQL, the
auth config file as MLflow reads it, the probe's answers."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cmd_ray.local_cluster import free_port, wait_until
from cmd_ray.local_postgres import LocalPostgres, PostgresNotFoundError, find_bin_dir
from cmd_ray.mlflow_server import api_request, create_user, main, probe, write_auth_config

MANIFEST = Path(__file__).resolve().parents[1] / "cluster" / "kuberay" / "mlflow.yaml"
BUCKET = "mlflow-server"
ADMIN = ("admin", secrets.token_hex(12))


def manifest_server() -> dict[str, Any]:
    """The ``mlflow server`` container of the manifest."""
    for doc in yaml.safe_load_all(MANIFEST.read_text()):
        if doc and doc.get("kind") == "Deployment":
            return next(
                c for c in doc["spec"]["template"]["spec"]["containers"] if c["command"][:2] == ["mlflow", "server"]
            )
    raise AssertionError(f"{MANIFEST} runs no mlflow server")


def manifest_option(argv: list[str], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in argv if a.startswith(flag + "="))


# ---------------------------------------------------------------- the pieces alone


def test_missing_postgres_binaries_are_named(tmp_path: Path) -> None:
    with pytest.raises(PostgresNotFoundError, match=r"initdb.*apt-get install -y postgresql") as caught:
        find_bin_dir([str(tmp_path)])
    assert str(tmp_path) in str(caught.value)


def test_local_postgres_starts_takes_passwords_and_stops() -> None:
    postgres = LocalPostgres().start()
    folder = postgres.folder
    try:
        uri = postgres.create_database("mlflow")
        assert uri == f"postgresql://mlflow:{postgres.password}@127.0.0.1:{postgres.port}/mlflow"
        connection = postgres.connect("mlflow")
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            assert cursor.fetchone() == ("mlflow",)
        connection.close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=postgres.port, user="mlflow", password="wrong", dbname="mlflow")
        with pytest.raises(ValueError, match="letters, digits"):
            postgres.create_database("x; DROP DATABASE mlflow")
    finally:
        postgres.stop()
    assert folder is not None and not folder.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=postgres.port, user="mlflow", password=postgres.password)
    postgres.stop()  # twice is fine


def test_a_database_store_is_checked_with_one_connection_before_mlflow_retries_it() -> None:
    """MLflow retries a database store that does not answer for about 100 s; cmd-ray's look first connects once."""
    from cmd_ray.mlflow_runs import MissingStoreError, check_store_exists

    postgres = LocalPostgres().start()
    try:
        uri = postgres.create_database("mlflow")
        check_store_exists(uri)  # answers: no error
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            refused = uri.replace(f":{postgres.port}/", f":{closed.getsockname()[1]}/")
            masked = r"postgresql://mlflow:\*\*\*@127\.0\.0\.1:\d+/mlflow cannot be reached"
            with pytest.raises(MissingStoreError, match=masked):
                check_store_exists(refused)
        with pytest.raises(MissingStoreError, match="password authentication failed") as caught:
            check_store_exists(uri.replace(postgres.password, "wrong"))
        assert postgres.password not in str(caught.value)
    finally:
        postgres.stop()


def test_a_failed_postgres_start_names_pg_ctl_and_leaves_nothing() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        postgres = LocalPostgres(port=taken.getsockname()[1])
        before = set(Path("/tmp").glob("cmdray-pg-*"))
        with pytest.raises(RuntimeError, match="pg_ctl failed"):
            postgres.start()
    assert postgres.folder is None
    assert set(Path("/tmp").glob("cmdray-pg-*")) <= before


def test_auth_config_reads_back_in_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A percent-encoded password survives configparser; the file is its owner's only; line breaks are refused."""
    from mlflow.server.auth.config import read_auth_config

    uri = "postgresql://mlflow:p%40ss%25word@db.example:5432/mlflow?sslmode=require"
    path = write_auth_config(tmp_path / "auth" / "basic_auth.ini", uri)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    config = read_auth_config()
    assert (config.database_uri, config.default_permission) == (uri, "READ")
    assert config.authorization_function == "mlflow.server.auth:authenticate_request_basic_auth"
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="line break"):
        write_auth_config(path, uri + "\n[other]")


def test_auth_config_command_needs_the_backend_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    assert main(["auth-config", "--out", str(tmp_path / "a.ini")]) == 2
    assert "MLFLOW_BACKEND_STORE_URI is not set" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://m:$x@h/d")
    assert main(["auth-config", "--out", str(tmp_path / "a.ini")]) == 0
    assert "database_uri = postgresql://m:$x@h/d" in (tmp_path / "a.ini").read_text()


def test_probe_names_an_unreachable_server() -> None:
    problem = probe(f"http://127.0.0.1:{free_port()}")
    assert problem is not None and "unreachable" in problem


# ---------------------------------------------------------------- the server as the manifest runs it


@dataclass
class Server:
    url: str
    port: int
    postgres: LocalPostgres
    ray_host: str
    """The Host header the Ray pods send (the manifest probe's --host-header)."""
    allowed: list[str]


@pytest.fixture(scope="module")
def server(s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """PostgreSQL, then ``mlflow server`` as the manifest's Deployment runs it: the backend store from
    MLFLOW_BACKEND_STORE_URI, the auth config written by the init container's command, the admin from the
    environment, the manifest's --allowed-hosts (plus this server's own 127.0.0.1 address, for MLflow's client)."""
    s3_server.make_bucket(BUCKET)
    folder = tmp_path_factory.mktemp("mlflow-auth-server")
    container = manifest_server()
    probe_command = container["readinessProbe"]["exec"]["command"]
    ray_host = manifest_option(probe_command, "--host-header")
    port = free_port()
    allowed = [*manifest_option(container["command"], "--allowed-hosts").split(","), f"127.0.0.1:{port}"]
    replaced = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--artifacts-destination": f"s3://{BUCKET}/mlartifacts",
        "--allowed-hosts": ",".join(allowed),
        "--workers": "1",  # two cores
    }
    command = [str(Path(sys.executable).parent / "mlflow")] + [
        f"{a.split('=')[0]}={replaced[a.split('=')[0]]}" if a.split("=")[0] in replaced else a
        for a in container["command"][1:]
    ]
    # the init container's command
    deployment = next(d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "Deployment")
    init_command = [
        sys.executable if a == "python" else a
        for a in deployment["spec"]["template"]["spec"]["initContainers"][0]["command"]
    ]
    init_command[init_command.index("--out") + 1] = str(folder / "basic_auth.ini")
    url = f"http://127.0.0.1:{port}"
    postgres = LocalPostgres()
    process = None
    try:
        postgres.start()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")},
            "MLFLOW_BACKEND_STORE_URI": postgres.create_database("mlflow"),
            "MLFLOW_AUTH_CONFIG_PATH": str(folder / "basic_auth.ini"),
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint_url,
            **{e["name"]: e["value"] for e in container["env"] if e["name"] == "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"},
        }
        subprocess.run(init_command, env=env, check=True)
        with open(folder / "server.log", "ab") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {folder / 'server.log'}")
            return probe(url, host_header=ray_host, credentials=ADMIN) is None

        wait_until(ready, "mlflow server on PostgreSQL with basic auth", timeout_s=180)
        yield Server(url, port, postgres, ray_host, allowed)
    finally:
        if process is not None:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything of the server that outlived its main process
            process.wait(timeout=30)
        postgres.stop()


def _admin_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1]}


@pytest.mark.e2e
def test_the_manifests_readiness_probe_passes_on_a_ready_server(server: Server) -> None:
    command = [sys.executable if a == "python" else a for a in manifest_server()["readinessProbe"]["exec"]["command"]]
    command = [f"--url={server.url}" if a.startswith("--url=") else a for a in command]
    done = subprocess.run(command, env=_admin_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.e2e
def test_every_service_name_the_allow_list_holds_is_served(server: Server) -> None:
    for host in server.allowed:
        assert probe(server.url, host_header=host, credentials=ADMIN) is None, host


@pytest.mark.e2e
def test_the_probe_fails_where_health_stays_green(server: Server) -> None:
    """A foreign Host and missing or wrong credentials: the probe says not ready; /health answers 200 to each."""
    cases = {
        "foreign host": ("mlflow.other.svc:5000", ADMIN, "403"),
        "no credentials": (server.ray_host, None, "401"),
        "wrong password": (server.ray_host, (ADMIN[0], "not-the-password"), "401"),
    }
    env_without_user = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    for case, (host, credentials, status) in cases.items():
        problem = probe(server.url, host_header=host, credentials=credentials)
        assert problem is not None and f"answered {status}" in problem, (case, problem)
        assert api_request(server.url, "GET", "/health", host_header=host, credentials=credentials)[0] == 200, case
    command = [sys.executable, "-m", "cmd_ray.mlflow_server", "probe", f"--url={server.url}"]
    done = subprocess.run(
        [*command, "--host-header=mlflow.other.svc:5000"], env=_admin_env(), capture_output=True, text=True
    )
    assert done.returncode == 1 and "not in --allowed-hosts" in done.stderr, done.stderr
    done = subprocess.run([*command, f"--host-header={server.ray_host}"], env=env_without_user, capture_output=True)
    assert done.returncode == 1


@pytest.mark.e2e
def test_the_jobs_user_logs_and_registers_into_postgresql(
    server: Server, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user created as the manifest's header shows (the admin API) logs a run with metrics and an artifact and
    registers a model version; the rows are in PostgreSQL (users too), the artifact in S3."""
    from mlflow.tracking import MlflowClient

    password = secrets.token_hex(12)
    create_user(server.url, ADMIN, "cmd-ray", password, host_header=server.ray_host)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "cmd-ray")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    experiment = client.create_experiment("postgres-check")
    run = client.create_run(experiment)
    for step in range(3):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    client.log_text(run.info.run_id, "weights", "model/weights.txt")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("postgres-check-model")
    version = client.create_model_version("postgres-check-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("postgres-check-model", "candidate", version.version)

    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert client.get_model_version_by_alias("postgres-check-model", "candidate").run_id == run.info.run_id
    connection = server.postgres.connect("mlflow")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'loss'", (run.info.run_id,))
        assert cursor.fetchone() == (3,)
        cursor.execute("SELECT version FROM model_versions WHERE name = 'postgres-check-model'")
        assert cursor.fetchall() == [(1,)]
        cursor.execute("SELECT username FROM users ORDER BY username")
        assert cursor.fetchall() == [(ADMIN[0],), ("cmd-ray",)]
    connection.close()
    keys = s3_server.list_keys(BUCKET, "mlartifacts/")
    assert any(k.endswith(f"{run.info.run_id}/artifacts/model/weights.txt") for k in keys), keys


@pytest.mark.e2e
def test_create_user_command_reads_the_environment(server: Server) -> None:
    """The AWS head's one-off command: the user from MLFLOW_TRACKING_*, the admin from MLFLOW_AUTH_ADMIN_*."""
    env = {
        **os.environ,
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_TRACKING_USERNAME": "aws-jobs",
        "MLFLOW_TRACKING_PASSWORD": secrets.token_hex(12),
    }
    command = [sys.executable, "-m", "cmd_ray.mlflow_server", "create-user", f"--url={server.url}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert probe(server.url, credentials=(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])) is None
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "aws-jobs" in again.stderr, again.stderr
