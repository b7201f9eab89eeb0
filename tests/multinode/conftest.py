"""The shared multi-node cluster of the ``multinode`` tests: real raylets on this machine, S3 and MLflow over HTTP.

Shape (:mod:`cmd_ray.local_cluster`): a head with no workload, 2 data nodes (1 CPU each, label
``cmd-ray.role=data``), 3 train nodes (1 CPU and one ``train_slot`` each, label ``cmd-ray.role=train``; two host
the DDP workers, one is the spare a lost node's worker moves to), an ``mlflow server`` as the clusters run it: its
backend store a PostgreSQL server started here (:mod:`cmd_ray.local_postgres`), artifacts in moto S3, basic
authentication (the nodes log as user ``cmd-ray``). A test that loses a node adds a new one of the same role
before it ends, as an autoscaler would.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cmd_ray.local_cluster import ROLE_LABEL, TRAIN_RESOURCE, LocalCluster, Periodically
from cmd_ray.local_postgres import LocalPostgres

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "multinode"
DATA_NODES, TRAIN_NODES = 2, 3


def _title(pid: int) -> str:
    """A worker's process title up to its first space or dot (``ray::IDLE``, ``ray::RayTrainWorker``)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "(gone)"
    return title.split(" ")[0].split(".")[0] if title.startswith("ray::") else "default_worker (starting)"


@dataclass
class PeakSampler:
    """The peak of ``cluster.worker_process_count()`` while running, sampled every 0.25 s in a thread."""

    cluster: LocalCluster
    peak: int = 0
    at_peak: dict[str, int] = field(default_factory=dict)
    """What the worker processes were at the peak: count per process title (``ray::SampleMaker…``, ``ray::IDLE``)."""

    def sample(self) -> None:
        titles = [_title(pid) for node in self.cluster.nodes if node.alive for pid in node.worker_pids()]
        if len(titles) > self.peak:
            self.peak, self.at_peak = len(titles), dict(Counter(titles))


@dataclass
class MultiNode:
    """The running cluster, its S3 pair set and the config overrides that place work by role."""

    cluster: LocalCluster
    pairs_uri: str
    endpoint_url: str
    postgres: LocalPostgres
    """The MLflow server's backend store (database ``mlflow``)."""
    bucket: str = BUCKET

    def overrides(self, run_name: str) -> list[str]:
        """A tiny distillation placed by role: 2 data actors on the data nodes, 2 DDP workers on train nodes."""
        return [
            "model.preset=tiny",
            "model.init_checkpoint=null",
            "distill.samples_per_epoch=96",
            "distill.batch_size=4",
            "distill.val_samples=8",
            "distill.lr_tcl=1e-5",
            "distill.lr_bbe=1e-3",
            "distill.select_by=last",  # placement is under test here, not the epoch kept
            "data.num_actors=2",
            "data.cpus_per_actor=0.5",
            "data.progress=false",
            # index order whichever actor finishes first: epoch e holds samples e·P … (e+1)·P - 1, as the tests check
            "data.preserve_order=true",
            f"data.label_selector={{{ROLE_LABEL}: data}}",
            "scaling.num_workers=2",
            "scaling.cpus_per_worker=0.5",
            f"scaling.label_selector={{{ROLE_LABEL}: train}}",
            f"scaling.resources_per_worker={{{TRAIN_RESOURCE}: 1}}",
            f"data.uri={self.pairs_uri}",
            f"storage.storage_path=s3://{BUCKET}/checkpoints",
            f"storage.s3_endpoint_url={self.endpoint_url}",
            f"storage.run_name={run_name}",
            "storage.checkpoints_to_keep=10",
            f"mlflow.tracking_uri={self.cluster.mlflow_uri}",
            f"mlflow.registered_model_name={run_name}-tracker",
        ]

    def submit_job(self, entrypoint: list[str], timeout_s: float = 900) -> str:
        """``ray job submit --working-dir <repo> -- ENTRYPOINT`` against the cluster's job API; returns its output.

        The dashboard answers before its job agent has registered, and Ray then refuses with "No available agent
        … try again later": that exact answer is retried within a deadline.
        """
        command = [
            str(Path(sys.executable).parent / "ray"),
            "job",
            "submit",
            "--address",
            self.cluster.dashboard_url,
            "--working-dir",
            str(ROOT),
            "--",
            *entrypoint,
        ]
        deadline = time.monotonic() + 120
        while True:
            done = subprocess.run(
                command, env=self.cluster.client_env(), capture_output=True, text=True, timeout=timeout_s
            )
            output = done.stdout + done.stderr
            if "No available agent to submit job" not in output or time.monotonic() > deadline:
                break
            time.sleep(1.0)  # polling a readiness condition with a deadline
        assert done.returncode == 0, output[-4000:]
        return output


@pytest.fixture(scope="session")
def multinode(s3_server, local_pairs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    """The session's multi-node cluster, the driver (this process) connected to its head.

    The ``multinode`` tests run last (tests/conftest.py orders them), so the single-node ``ray_session`` of the
    other tests is shut down first: a process is the driver of one cluster at a time.
    """
    import ray

    from cmd_ray.storage import join, write_bytes

    s3_server.make_bucket(BUCKET)
    pairs_uri = f"s3://{BUCKET}/pairs"
    for path in sorted(Path(local_pairs).rglob("*.jpg")):
        write_bytes(join(pairs_uri, path.relative_to(local_pairs).as_posix()), path.read_bytes())

    ray.shutdown()
    workdir = tmp_path_factory.mktemp("multinode")
    cluster = LocalCluster(workdir, env=dict(os.environ))
    postgres = LocalPostgres()
    patch = pytest.MonkeyPatch()
    try:
        # the server first: with auth the nodes take its user's credentials from their environment at start
        backend = postgres.start().create_database("mlflow")
        cluster.start_mlflow(f"s3://{BUCKET}/mlartifacts", backend_store_uri=backend, auth=True)
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # this process reads runs back
            patch.setenv(name, cluster.env[name])
        cluster.start_head()
        cluster.add_nodes(DATA_NODES, TRAIN_NODES)
        # the session's token (tests/conftest.py): this process is already in token mode with that file
        assert cluster.token_path == Path(os.environ["RAY_AUTH_TOKEN_PATH"])
        ray.init(address=cluster.address)
        yield MultiNode(cluster, pairs_uri, s3_server.endpoint_url, postgres)
    finally:
        ray.shutdown()
        cluster.stop()
        postgres.stop()
        patch.undo()


@pytest.fixture
def peak_workers(multinode: MultiNode) -> Iterator[PeakSampler]:
    """Samples the cluster's Ray worker processes during the test (``.peak``)."""
    sampler = PeakSampler(multinode.cluster)
    with Periodically(0.25, sampler.sample):
        yield sampler
