"""A real multi-node Ray cluster on one machine: separate raylets for a head, data nodes and train nodes.

Every node is its own ``ray start --block`` process group, so a node can be lost the way a machine is lost:
:meth:`LocalCluster.kill_node` SIGKILLs its raylet, its agents and every worker process it started. The shape
is the one of the shipped cluster configs (``cluster/kuberay``, ``cluster/aws``):

- head: no workload (0 CPUs): GCS, dashboard and job API (token authentication on), job drivers;
- data nodes (label ``cmd-ray.role=data``): CPUs only, for Ray Data's decode-and-crop actors;
- train nodes (label ``cmd-ray.role=train``): CPUs plus one ``train_slot``, the custom resource that stands in
  for a GPU: a training worker that asks for one lands only there, one per node;
- optionally an ``mlflow server`` that every node reaches over HTTP: artifacts proxied to ``--mlflow-artifacts``
  (e.g. S3), the backend store a sqlite file or, as on the clusters, a PostgreSQL server this module starts
  (``--mlflow-postgres``, :mod:`cmd_ray.local_postgres`), optionally behind basic authentication (``--mlflow-auth``).

Used by ``cluster/local/start-multinode.sh`` (``python -m cmd_ray.local_cluster``) and by the multi-node tests.
It starts processes only; it does not import Ray.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from cmd_ray.local_postgres import LocalPostgres
from cmd_ray.mlflow_server import create_user, probe, server_command, server_env, write_auth_config

ROLE_LABEL = "cmd-ray.role"
TRAIN_RESOURCE = "train_slot"
START_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0
NODES_STARTED_TOGETHER = 2


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = START_TIMEOUT_S) -> object:
    """Poll ``condition()`` every 0.2 s until it is truthy (returned); ``TimeoutError`` naming ``what`` after that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)  # polling a readiness condition with a deadline
    raise TimeoutError(f"{what} not ready within {timeout_s:.0f} s")


class Periodically:
    """Calls ``action()`` every ``period_s`` seconds in a daemon thread while the ``with`` block runs (and once
    more as it ends): the sampling cadence of a measurement (worker counts, CPU times), not synchronisation."""

    def __init__(self, period_s: float, action: Callable[[], object]) -> None:
        self.period_s, self.action = period_s, action
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.action()

    def __enter__(self) -> Periodically:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.action()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, read from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended while we looked
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def is_ray_worker(pid_or_title: int | bytes) -> bool:
    """A Ray worker process (a task or actor process, busy or idle), not the raylet or one of its agents.

    Takes a pid, or the process's ``/proc/PID/cmdline`` bytes.
    """
    title = _cmdline(pid_or_title) if isinstance(pid_or_title, int) else pid_or_title
    if b"default_worker.py" in title:
        return True
    return title.startswith(b"ray::") and not title.startswith((b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"))


@dataclass
class LocalNode:
    """One ``ray start --block`` process group: a head, data or train node."""

    role: str
    num_cpus: float
    resources: dict[str, float]
    process: subprocess.Popen
    log_path: Path
    node_manager_port: int

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def worker_pids(self) -> list[int]:
        """The Ray worker processes this node runs now."""
        return [pid for pid in process_tree(self.process.pid) if is_ray_worker(pid)]


@dataclass
class LocalCluster:
    """Start, grow, lose and stop a multi-node Ray cluster on this machine (see the module docstring).

    Args:
        workdir: folder for node logs, MLflow's store and the auth token (unless ``RAY_AUTH_TOKEN_PATH`` in ``env``
            names one: clients on this machine that already use a token file keep it).
        env: environment of every node (``AWS_*`` for S3, …); ``RAY_AUTH_*`` are added.
        object_store_mb: object-store size of each node (several nodes share this machine's memory).
        ray_bin: the ``ray`` executable (default: the one next to this Python).
    """

    workdir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    object_store_mb: int = 200
    ray_bin: str = ""
    nodes: list[LocalNode] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0
    mlflow_uri: str | None = None
    _mlflow: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ray_bin = self.ray_bin or str(Path(sys.executable).parent / "ray")
        # Ray puts unix sockets below its temp dirs: keep their paths short (sockets allow ~107 characters).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="cmdray", dir="/tmp"))
        token = Path(self.env.get("RAY_AUTH_TOKEN_PATH") or self.workdir / "auth_token")
        if not token.exists():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        self.token_path = token
        # job entrypoints (`python jobs/…`) run with the nodes' PATH: make it this Python's environment
        path = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])
        self.env = {**self.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "PATH": path}
        self.env.pop("RAY_ADDRESS", None)

    # ------------------------------------------------------------------ addresses

    @property
    def address(self) -> str:
        """The GCS address a driver joins (``ray.init(address=…)`` / ``RAY_ADDRESS``)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def mlflow_credentials_path(self) -> Path:
        """With MLflow auth: the ``cmd-ray`` user's ``MLFLOW_TRACKING_USERNAME=…`` / ``…_PASSWORD=…`` lines."""
        return self.workdir / "mlflow-credentials.env"

    @property
    def dashboard_url(self) -> str:
        """The job API (``ray job submit --address …``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a client on this machine needs: the token settings (and the nodes' other variables)."""
        return dict(self.env)

    # ------------------------------------------------------------------ nodes

    def _start(self, role: str, args: list[str], num_cpus: float, resources: dict[str, float]) -> LocalNode:
        node_manager_port = free_port()
        number = len(self.nodes)
        log_path = self.workdir / f"node-{number:02d}-{role}.log"
        # A temp dir per node, as on separate machines: a node's runtime-env agent garbage-collects the job
        # packages (working_dir) below it, and one shared by all nodes deleted a running job's working dir.
        temp_dir = self.temp_dir / f"n{number}"
        command = [
            self.ray_bin,
            "start",
            "--block",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={num_cpus:g}",
            "--num-gpus=0",
            f"--labels={ROLE_LABEL}={role}",
            f"--object-store-memory={self.object_store_mb * 2**20}",
            f"--node-manager-port={node_manager_port}",
            f"--object-manager-port={free_port()}",
            # ports of its own: several raylets share this machine's defaults otherwise
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            *args,
        ]
        if resources:
            command.append(f"--resources={json.dumps(resources)}")
        with open(log_path, "ab") as log:
            # a process group of its own: kill_node takes down the raylet and everything it started
            process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = LocalNode(role, num_cpus, resources, process, log_path, node_manager_port)
        self.nodes.append(node)
        return node

    @staticmethod
    def _started(node: LocalNode) -> bool:
        if not node.alive:
            raise RuntimeError(f"{node.role} node exited with {node.process.returncode}; see {node.log_path}")
        return b"Ray runtime started" in node.log_path.read_bytes()

    def wait_for(self, *nodes: LocalNode) -> list[LocalNode]:
        """Block until every one of ``nodes`` has joined (its ``ray start`` said so); returns the joined nodes.

        A node whose ``ray start`` gave up (Ray allows a raylet 30 s to register, which a loaded machine can
        exceed) is started again, once; a second failure raises, naming its log.
        """
        joined = []
        for node in nodes:
            try:
                wait_until(lambda node=node: self._started(node), f"{node.role} node ({node.log_path})")
            except RuntimeError:
                if node.role == "head":
                    raise
                self.nodes.remove(node)
                node = self._start(node.role, [f"--address={self.address}"], node.num_cpus, node.resources)
                wait_until(lambda node=node: self._started(node), f"{node.role} node ({node.log_path})")
            joined.append(node)
        return joined

    def start_head(self) -> LocalNode:
        """The head: 0 CPUs (no workload), dashboard and job API on 127.0.0.1 with token authentication."""
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        head = self._start(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}",
            ],
            0,
            {},
        )
        self.wait_for(head)
        wait_until(self._dashboard_answers, "the dashboard / job API")
        return head

    def _dashboard_answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.dashboard_port, timeout=2)
            conn.request("GET", "/api/version")
            return conn.getresponse().status < 500
        except OSError:
            return False

    def add_data_node(self, num_cpus: float = 1, wait: bool = True) -> LocalNode:
        """A CPU-only node for Ray Data (label ``cmd-ray.role=data``); ``wait=False``: see :meth:`wait_for`."""
        node = self._start("data", [f"--address={self.address}"], num_cpus, {})
        return self.wait_for(node)[0] if wait else node

    def add_train_node(self, num_cpus: float = 1, wait: bool = True) -> LocalNode:
        """A node for one training worker (label ``cmd-ray.role=train``, one ``train_slot``)."""
        node = self._start("train", [f"--address={self.address}"], num_cpus, {TRAIN_RESOURCE: 1})
        return self.wait_for(node)[0] if wait else node

    def add_nodes(self, data_nodes: int, train_nodes: int, data_cpus: float = 1, train_cpus: float = 1) -> None:
        """Data and train nodes, started two at a time (each ``ray start`` costs ~10 s of start-up, mostly CPU)."""
        roles = ["data"] * data_nodes + ["train"] * train_nodes
        for first in range(0, len(roles), NODES_STARTED_TOGETHER):
            batch = [
                self.add_data_node(data_cpus, wait=False)
                if role == "data"
                else self.add_train_node(train_cpus, wait=False)
                for role in roles[first : first + NODES_STARTED_TOGETHER]
            ]
            self.wait_for(*batch)

    def kill_node(self, node: LocalNode) -> None:
        """Lose ``node`` as a machine is lost: SIGKILL to its raylet, agents and workers, no goodbye to the GCS."""
        if node.role == "head":
            raise ValueError("losing the head ends the cluster; kill a data or train node")
        pids = process_tree(node.process.pid)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.process.wait(timeout=60)

    def node_of_pid(self, pid: int) -> LocalNode | None:
        """The node whose process tree holds ``pid`` (None: none of this cluster's)."""
        for node in self.nodes:
            if node.alive and pid in process_tree(node.process.pid):
                return node
        return None

    def worker_process_count(self) -> int:
        """Ray worker processes (tasks, actors, idle pooled workers) on all live nodes right now."""
        return sum(len(node.worker_pids()) for node in self.nodes if node.alive)

    # ------------------------------------------------------------------ MLflow

    def start_mlflow(self, artifacts_destination: str, backend_store_uri: str | None = None, auth: bool = False) -> str:
        """An ``mlflow server`` on 127.0.0.1, artifacts proxied to the destination, its own address the only
        ``Host`` it accepts (``--allowed-hosts``), as the shipped deployments run it.

        Args:
            artifacts_destination: where the server puts artifacts (``s3://…`` or a folder). S3 destinations use
                the nodes' ``AWS_*`` variables (and ``MLFLOW_S3_ENDPOINT_URL`` from ``AWS_ENDPOINT_URL`` when that is
                set), so clients need no S3 access of their own for artifacts.
            backend_store_uri: the backend store, e.g. a PostgreSQL database (:mod:`cmd_ray.local_postgres`);
                default a sqlite file in ``workdir``.
            auth: MLflow's basic authentication (``--app-name basic-auth``, users in the backend database): a fresh
                admin, and a ``cmd-ray`` user whose credentials every node and :meth:`client_env` get as
                ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``. Call it before starting nodes: a
                node's processes keep the environment it started with.

        Returns its tracking URI, once :func:`cmd_ray.mlflow_server.probe` finds it ready (as ``cmd-ray`` with auth).
        """
        if auth and self.nodes:
            raise ValueError("start the MLflow server with auth before the nodes: they read its credentials at start")
        port = free_port()
        backend = backend_store_uri or f"sqlite:///{self.workdir / 'mlflow.db'}"
        env = server_env(self.env, backend)
        if "AWS_ENDPOINT_URL" in env:
            env.setdefault("MLFLOW_S3_ENDPOINT_URL", env["AWS_ENDPOINT_URL"])
        # one worker process: the nodes share these cores, and uvicorn's supervisor of several workers restarts any
        # that a busy machine keeps from answering its health check within 5 s
        command = server_command(port, artifacts_destination, 1, f"--allowed-hosts=127.0.0.1:{port},localhost:{port}")
        admin = None
        if auth:
            admin = ("admin", secrets.token_hex(16))
            command.append("--app-name=basic-auth")
            auth_config = write_auth_config(self.workdir / "mlflow-auth.ini", backend)
            env.update(
                MLFLOW_AUTH_CONFIG_PATH=str(auth_config),
                MLFLOW_AUTH_ADMIN_USERNAME=admin[0],
                MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
                MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),
            )
        with open(self.workdir / "mlflow-server.log", "ab") as log:
            self._mlflow = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        uri = f"http://127.0.0.1:{port}"
        problems: list[str | None] = []

        def ready(credentials: tuple[str, str] | None) -> bool:
            if self._mlflow is not None and self._mlflow.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {self.workdir / 'mlflow-server.log'}")
            problems.append(probe(uri, credentials=credentials))
            return problems[-1] is None

        try:
            wait_until(lambda: ready(admin), "mlflow server")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {problems[-1] if problems else ''}") from None
        if admin is not None:
            user = ("cmd-ray", secrets.token_hex(16))
            create_user(uri, admin, *user)
            self.env.update(MLFLOW_TRACKING_USERNAME=user[0], MLFLOW_TRACKING_PASSWORD=user[1])
            # for a person's client (the UI, `set -a; . FILE` in a shell); owner-readable only
            descriptor = os.open(self.mlflow_credentials_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(f"MLFLOW_TRACKING_USERNAME={user[0]}\nMLFLOW_TRACKING_PASSWORD={user[1]}\n")
            if not ready(user):
                raise RuntimeError(f"mlflow server refuses its new user cmd-ray: {problems[-1]}")
        self.mlflow_uri = uri
        return uri

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Stop every node and the MLflow server (SIGTERM to each process group, SIGKILL after ``STOP_GRACE_S``)."""
        groups = [node.process for node in self.nodes if node.alive]
        if self._mlflow is not None and self._mlflow.poll() is None:
            groups.append(self._mlflow)
        for process in reversed(groups):  # workers before the head
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + STOP_GRACE_S
        for process in groups:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for pid in process_tree(process.pid):
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.wait(timeout=30)
        # a server process that outlived the server's main process (a uvicorn worker) goes with its group
        if self._mlflow is not None:
            with suppress(ProcessLookupError):
                os.killpg(self._mlflow.pid, signal.SIGKILL)
        # raylet-started workers live in the raylets' groups; anything left over is ended with its group
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextmanager
def local_cluster(
    workdir: Path,
    *,
    data_nodes: int = 2,
    train_nodes: int = 2,
    data_cpus: float = 1,
    train_cpus: float = 1,
    env: dict[str, str] | None = None,
    mlflow_artifacts: str | None = None,
    mlflow_postgres: bool = False,
    mlflow_auth: bool = False,
) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster` (head, data and train nodes; an MLflow server if ``mlflow_artifacts``, on a
    PostgreSQL server of its own with ``mlflow_postgres``, behind basic authentication with ``mlflow_auth``)."""
    cluster = LocalCluster(workdir, env=dict(os.environ) if env is None else env)
    postgres = LocalPostgres() if mlflow_artifacts and mlflow_postgres else None
    try:
        if mlflow_artifacts:
            # before the nodes: with auth they take the server's credentials from their environment
            backend = postgres.start().create_database("mlflow") if postgres else None
            cluster.start_mlflow(mlflow_artifacts, backend_store_uri=backend, auth=mlflow_auth)
        cluster.start_head()
        # the nodes start side by side: each `ray start` takes ~10 s, mostly its own Python start-up
        cluster.add_nodes(data_nodes, train_nodes, data_cpus, train_cpus)
        yield cluster
    finally:
        cluster.stop()
        if postgres is not None:
            postgres.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m cmd_ray.local_cluster``: start a cluster, print how to use it, stop it on Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m cmd_ray.local_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--data-nodes", type=int, default=2)
    parser.add_argument("--train-nodes", type=int, default=2)
    parser.add_argument("--data-cpus", type=float, default=1)
    parser.add_argument("--train-cpus", type=float, default=1)
    parser.add_argument("--workdir", default=".local-cluster", help="logs, auth token, MLflow store")
    parser.add_argument(
        "--mlflow-artifacts",
        default=None,
        help="start an mlflow server whose artifacts go here (e.g. s3://bucket/mlartifacts or a local folder)",
    )
    parser.add_argument(
        "--mlflow-postgres",
        action="store_true",
        help="the MLflow server's backend store on a PostgreSQL server started here (initdb; as on the clusters)",
    )
    parser.add_argument(
        "--mlflow-auth",
        action="store_true",
        help="MLflow basic authentication: the nodes log as user cmd-ray (credentials in the nodes' environment)",
    )
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    with local_cluster(
        workdir,
        data_nodes=args.data_nodes,
        train_nodes=args.train_nodes,
        data_cpus=args.data_cpus,
        train_cpus=args.train_cpus,
        mlflow_artifacts=args.mlflow_artifacts,
        mlflow_postgres=args.mlflow_postgres,
        mlflow_auth=args.mlflow_auth,
    ) as cluster:
        mlflow = f"mlflow.tracking_uri={cluster.mlflow_uri} " if cluster.mlflow_uri else ""
        login = f"  (user and password: {cluster.mlflow_credentials_path})" if args.mlflow_auth else ""
        print(
            f"""
cmd-ray local cluster: head (0 CPUs), {args.data_nodes} data node(s), {args.train_nodes} train node(s)
  GCS:      {cluster.address}        job API: {cluster.dashboard_url}  (token: {cluster.token_path})
  MLflow:   {cluster.mlflow_uri or "(none: pass --mlflow-artifacts)"}{login}
Submit the distillation with Ray Data on the data nodes and one DDP worker per train node:

  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path}
  ray job submit --address {cluster.dashboard_url} --working-dir . -- \\
      python jobs/distill.py --config configs/demo.yaml {mlflow}\\
      'data.label_selector={{{ROLE_LABEL}: data}}' 'scaling.label_selector={{{ROLE_LABEL}: train}}' \\
      'scaling.resources_per_worker={{{TRAIN_RESOURCE}: 1}}' scaling.num_workers={args.train_nodes} \\
      scaling.cpus_per_worker={args.train_cpus / 2:g} data.num_actors={args.data_nodes} data.cpus_per_actor=0.5

Ctrl-C stops the cluster.""",
            flush=True,
        )
        # blocked only now, so that the nodes started above keep their default signal handling
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())


def mlflow_server_healthy(port: int) -> bool:
    """Whether the MLflow server on 127.0.0.1:``port`` answers ``GET /health`` with 200 (False while it cannot)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
