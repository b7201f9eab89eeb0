"""The MLflow tracking server as cmd-ray's clusters run it, and the probe that says it is ready.

The shipped deployments (``cluster/kuberay/mlflow.yaml``, the head of ``cluster/aws/cluster.yaml``) and the local
multi-node cluster run ``mlflow server`` with a PostgreSQL backend store, artifacts proxied to S3, an explicit
``--allowed-hosts`` list (MLflow answers any other ``Host`` header with 403) and MLflow's basic authentication
(``--app-name basic-auth``). This module holds the pieces of that set-up that are code rather than configuration:

- :func:`write_auth_config`: the basic-auth app's config file (``MLFLOW_AUTH_CONFIG_PATH``), its user store in the
  backend database. It holds the database password, so it is written at start-up from the environment
  (``python -m cmd_ray.mlflow_server auth-config --out FILE``), never kept in a manifest.
- :func:`probe`: ready means an authenticated API call that reads the backend store, sent with the ``Host`` header
  the Ray pods use, answers 200. ``/health`` is no such check: MLflow exempts it from the host check and from
  authentication, so it stays green when either would refuse every client
  (``python -m cmd_ray.mlflow_server probe --url … --host-header …``; the readiness probe of ``mlflow.yaml``).
- :func:`server_command` / :func:`server_env`: how the local cluster, the tests and the benchmarks start one on
  127.0.0.1 (the backend store through the environment, out of the command line, as the deployments pass it).
- :func:`create_user`: the admin API call that adds the account Ray's jobs log with
  (``python -m cmd_ray.mlflow_server create-user --url …``, names and passwords from the environment).

Only the standard library: the probe runs every few seconds in the server's container.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

AUTHORIZATION_FUNCTION = "mlflow.server.auth:authenticate_request_basic_auth"
DEFAULT_PERMISSION = "READ"
"""What a signed-in user may do with experiments and models of others (their own they manage)."""
PROBE_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"
"""Behind authentication and the host check, and reads the backend store."""
PROBE_TIMEOUT_S = 5.0
USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def server_command(port: int, artifacts_destination: str | Path, workers: int = 1, *extra: str) -> list[str]:
    """``mlflow server`` of this Python environment on ``127.0.0.1:port`` with ``workers`` uvicorn workers, artifacts
    proxied to ``artifacts_destination``, then the ``extra`` options; the backend store comes from
    :func:`server_env`."""
    return [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--workers={workers}",
        f"--artifacts-destination={artifacts_destination}",
        *extra,
    ]


def server_env(base: dict[str, str], backend_store_uri: str) -> dict[str, str]:
    """``base`` with the server's backend store (``MLFLOW_BACKEND_STORE_URI``: a database password stays out of the
    command line, where ``ps`` would show it) and without the server-side job runner (GenAI scoring, trace archival:
    seven huey processes cmd-ray does not use), as the clusters run it."""
    return {**base, "MLFLOW_BACKEND_STORE_URI": backend_store_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def write_auth_config(path: Path, database_uri: str, default_permission: str = DEFAULT_PERMISSION) -> Path:
    """Write the basic-auth config file: users and permissions in ``database_uri``. Readable by its owner only (the
    URI holds the database password). The admin account comes from ``MLFLOW_AUTH_ADMIN_USERNAME`` /
    ``MLFLOW_AUTH_ADMIN_PASSWORD`` when the server first starts on an empty user store."""
    if "\n" in database_uri or "\r" in database_uri:
        raise ValueError("the auth database URI holds a line break")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        # configparser reads '%' as the start of an interpolation: percent-encoded passwords need '%%'
        f"database_uri = {database_uri.replace('%', '%%')}\n"
        f"authorization_function = {AUTHORIZATION_FUNCTION}\n"
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    path.chmod(0o600)  # O_CREAT's mode does not apply to a file that existed
    return path


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def api_request(
    url: str,
    method: str,
    path: str,
    *,
    host_header: str | None = None,
    credentials: tuple[str, str] | None = None,
    body: dict | None = None,
) -> tuple[int, str]:
    """One HTTP request to the server at ``url``: (status, body text). Connection errors raise ``OSError``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=PROBE_TIMEOUT_S)
    headers = {"Host": host_header or parts.netloc}
    if credentials is not None:
        headers["Authorization"] = _basic(*credentials)
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, parts.path.rstrip("/") + path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def probe(url: str, host_header: str | None = None, credentials: tuple[str, str] | None = None) -> str | None:
    """``None`` when the server at ``url`` is ready for clients, else why not.

    Ready: ``GET experiments/search`` (authenticated, host-checked, reads the backend store) answers 200 when sent
    with ``Host: host_header`` (default: the URL's own host:port) and ``credentials`` (default:
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` when set).
    """
    if credentials is None and os.environ.get(USERNAME_ENV):
        credentials = (os.environ[USERNAME_ENV], os.environ.get(PASSWORD_ENV, ""))
    try:
        status, text = api_request(url, "GET", PROBE_PATH, host_header=host_header, credentials=credentials)
    except OSError as exc:
        return f"{url} unreachable: {exc}"
    if status == 200:
        return None
    hint = {
        401: "credentials missing or refused",
        403: f"Host {host_header or urlsplit(url).netloc!r} not in --allowed-hosts, or no permission",
    }.get(status, "server error")
    return f"{url}{PROBE_PATH} answered {status} ({hint}): {text.strip()[:300]}"


def create_user(url: str, admin: tuple[str, str], username: str, password: str, host_header: str | None = None) -> None:
    """Add the basic-auth user ``username`` through the admin API (``POST …/mlflow/users/create``); raises
    ``RuntimeError`` with the server's answer when it refuses (e.g. the user exists)."""
    status, text = api_request(
        url,
        "POST",
        "/api/2.0/mlflow/users/create",
        host_header=host_header,
        credentials=admin,
        body={"username": username, "password": password},
    )
    if status != 200:
        raise RuntimeError(f"creating MLflow user {username!r} at {url}: {status} {text.strip()[:300]}")


def main(argv: list[str] | None = None) -> int:
    """``python -m cmd_ray.mlflow_server auth-config --out FILE`` | ``probe --url URL [--host-header HOST]`` |
    ``create-user --url URL``."""
    parser = argparse.ArgumentParser(prog="python -m cmd_ray.mlflow_server", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    auth = commands.add_parser(
        "auth-config", help="write the basic-auth config; its user store is MLFLOW_BACKEND_STORE_URI's database"
    )
    auth.add_argument("--out", required=True, type=Path)
    auth.add_argument("--default-permission", default=DEFAULT_PERMISSION)
    check = commands.add_parser(
        "probe", help="exit 0 when an authenticated API call through the host check answers 200 (readiness)"
    )
    check.add_argument("--url", required=True, help="e.g. http://127.0.0.1:5000")
    check.add_argument("--host-header", default=None, help="the Host clients send, e.g. mlflow.mlflow.svc:5000")
    user = commands.add_parser(
        "create-user",
        help="add the user MLFLOW_TRACKING_USERNAME (password MLFLOW_TRACKING_PASSWORD), signed in as "
        "MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD",
    )
    user.add_argument("--url", required=True, help="e.g. http://127.0.0.1:5000")
    args = parser.parse_args(argv)
    if args.command == "create-user":
        names = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", USERNAME_ENV, PASSWORD_ENV)
        missing = [name for name in names if not os.environ.get(name)]
        if missing:
            print(f"create-user: {', '.join(missing)} not set", file=sys.stderr)
            return 2
        admin = (os.environ[names[0]], os.environ[names[1]])
        try:
            create_user(args.url, admin, os.environ[USERNAME_ENV], os.environ[PASSWORD_ENV])
        except (RuntimeError, OSError) as exc:
            print(f"create-user: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "auth-config":
        database_uri = os.environ.get("MLFLOW_BACKEND_STORE_URI")
        if not database_uri:
            print("auth-config: MLFLOW_BACKEND_STORE_URI is not set (the database of the users)", file=sys.stderr)
            return 2
        write_auth_config(args.out, database_uri, args.default_permission)
        return 0
    problem = probe(args.url, args.host_header)
    if problem:
        print(f"not ready: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
