"""Shared fixtures: a moto S3 server (a real S3 HTTP endpoint on 127.0.0.1) for boto3 and pyarrow."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

# Token authentication for every Ray cluster of the session, as on the clusters we ship. Set before Ray is
# imported: Ray reads RAY_AUTH_MODE into its config once per process, so a driver could not switch later (the
# multi-node cluster of tests/multinode runs with this token too).
_RAY_TOKEN = Path(tempfile.mkdtemp(prefix="cmdray-auth-")) / "auth_token"
_RAY_TOKEN.write_text(secrets.token_hex(32))
atexit.register(shutil.rmtree, _RAY_TOKEN.parent, True)  # one folder per session, gone with the session
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = str(_RAY_TOKEN)

# Set before anything can create a pyarrow S3 filesystem (the AWS SDK reads it once, at initialisation):
# without it a credential/region lookup off EC2 waits on the instance-metadata endpoint.
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# Ray Train's controller looks at its workers every 2 s by default, so each of the suite's ~40 trainings waited up to
# 2 s to notice its end (measured on two distill e2e tests, twice each: 112 -> 99 s and 127 -> 108 s with 0.2 s).
# The clusters the tests start (ray_session, the multi-node nodes, their jobs) inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

FAKE_ACCESS_KEY = "testing"
FAKE_SECRET_KEY = "testing"
REGION = "us-east-1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``multinode`` tests run last: they replace the session's single-node Ray cluster with their own."""
    items.sort(key=lambda item: item.get_closest_marker("multinode") is not None)


@dataclass(frozen=True)
class S3Server:
    """A running moto server; ``AWS_*`` environment variables point boto3, pyarrow and cmd_ray.storage at it."""

    endpoint_url: str
    region: str = REGION

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=FAKE_ACCESS_KEY,
            aws_secret_access_key=FAKE_SECRET_KEY,
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (fine if it exists already) and return its name (use it as ``s3://{name}/…``)."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=name)
        return name

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` below ``prefix``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server in server mode for the whole session, with the standard ``AWS_*`` variables set for it.

    Shared by every test that asks for it: use bucket names of your own (``make_bucket``).
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    patch = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
    }.items():
        patch.setenv(name, value)
    # AWS_ENDPOINT_URL_S3 would take precedence over AWS_ENDPOINT_URL (in boto3 and cmd_ray.storage): drop it
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
        patch.delenv(name, raising=False)
    try:
        yield S3Server(endpoint)
    finally:
        patch.undo()
        server.stop()


# A tiny distillation run: a few steps of the tiny network, enough for end-to-end tests on 2 cores.
TINY_OVERRIDES = (
    "model.preset=tiny",
    "distill.samples_per_epoch=32",
    "distill.batch_size=4",
    "distill.epochs=2",
    "distill.lr_tcl=1e-5",
    "distill.lr_bbe=1e-3",
    "data.cpus_per_actor=0.5",
    "scaling.cpus_per_worker=0.5",
)


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Config overrides for a tiny, fast distillation run."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def local_pairs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic pair set on local disk; returns the pairs URI."""
    from cmd_ray.config import SynthConfig
    from cmd_ray.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    summary = write_synthetic_dataset(
        str(root), SynthConfig(num_pairs=24, num_rgb_sequences=0, num_tir_sequences=0), progress=False
    )
    return summary.pairs_uri


@pytest.fixture(scope="session")
def ray_session(s3_server: S3Server) -> Iterator[None]:
    """One local Ray cluster shared by the end-to-end tests (start-up costs ~10 s; share it).

    It depends on ``s3_server`` so that the ``AWS_*`` variables exist before Ray starts its workers, which
    get them through the runtime environment. ``address="local"`` never joins a cluster started elsewhere.
    """
    import ray

    env_vars = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    ray.init(
        address="local",
        num_cpus=4,  # logical CPUs: trials, train workers and data actors of the tiny runs fit together
        # as on the clusters users run: Ray Train's placement-group cleaner asks the state API (served by the
        # dashboard) whether a run's controller is gone; without it an ASHA-stopped trial's workers keep their CPUs
        include_dashboard=True,
        runtime_env={"env_vars": env_vars},
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _ray_session_gets_its_cpus_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the shared cluster, every CPU must come back within a minute.

    A run that leaves actors holding CPUs (a controller kept alive, a Ray Data actor never released) would stall
    the next test's data pipeline until Ray Data's 30-minute no-progress timeout; fail here, naming the actors.
    """
    yield
    if "ray_session" not in request.fixturenames:
        return
    import ray
    from ray.util.state import list_actors

    from cmd_ray.local_cluster import wait_until

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0.0)
    try:
        wait_until(lambda: ray.available_resources().get("CPU", 0.0) >= total, "every CPU back", timeout_s=60.0)
    except TimeoutError:
        alive = sorted(actor.class_name for actor in list_actors(filters=[("state", "=", "ALIVE")]))
        pytest.fail(f"{request.node.nodeid} left CPUs in use on the shared Ray cluster; alive actors: {alive}")


def make_random_batch(batch_size: int = 4, crop: int = 64, num_proposals: int = 4, seed: int = 0) -> dict:
    """A training batch of the pipeline's schema with random images and one fixed box (feature stride 16)."""
    g = torch.Generator().manual_seed(seed)
    side = crop // 16 + 1
    box = torch.tensor([crop * 0.3, crop * 0.35, crop * 0.4, crop * 0.35])
    cy, cx = (box[1] + box[3] / 2) / 16, (box[0] + box[2] / 2) / 16
    yy, xx = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
    )
    label = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.9**2))
    return {
        "rgb_ref": torch.randint(0, 256, (batch_size, crop, crop, 3), dtype=torch.uint8, generator=g),
        "tir_ref": torch.randint(0, 256, (batch_size, crop, crop), dtype=torch.uint8, generator=g),
        "rgb_test": torch.randint(0, 256, (batch_size, crop, crop, 3), dtype=torch.uint8, generator=g),
        "tir_test": torch.randint(0, 256, (batch_size, crop, crop), dtype=torch.uint8, generator=g),
        "ref_box": box.expand(batch_size, 4).clone(),
        "test_box": box.expand(batch_size, 4).clone(),
        "test_label": label.expand(batch_size, side, side).clone(),
        "test_proposals": box + torch.randn(batch_size, num_proposals, 4, generator=g) * 3.0,
        "proposal_iou": torch.rand(batch_size, num_proposals, generator=g),
    }


@pytest.fixture
def random_batch():
    """Factory of random training batches: ``random_batch(batch_size=…, crop=…, num_proposals=…, seed=…)``."""
    return make_random_batch


@pytest.fixture(scope="module")
def state_a() -> dict[str, torch.Tensor]:
    """A ``tiny`` DiMP state dict (seed 0) for the checkpoint tests (see ``checkpoint_fakes.tiny_state``)."""
    from checkpoint_fakes import tiny_state

    return tiny_state(0)


@pytest.fixture(scope="module")
def state_b() -> dict[str, torch.Tensor]:
    """Another ``tiny`` DiMP state dict (seed 1): every tensor differs from :func:`state_a`'s."""
    from checkpoint_fakes import tiny_state

    return tiny_state(1)
