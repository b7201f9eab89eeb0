"""End to end: `ray start --head` with token authentication, `ray job submit` of jobs/distill.py, SUCCEEDED, stop."""

import http.client
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(port: int, head: subprocess.Popen, deadline_s: float = 120.0) -> None:
    """Block until the dashboard answers HTTP (any status), or fail if the head died or the deadline passed."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {head.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/version")
            conn.getresponse()
            return
        except OSError:
            time.sleep(0.5)  # polling a readiness condition with a deadline, not synchronising on time
    raise TimeoutError(f"dashboard on port {port} did not answer within {deadline_s} s")


def test_ray_job_submit_with_token_auth(tmp_path, local_pairs, tiny_overrides):
    token_file = tmp_path / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    # Its own temp dir (short: Ray puts unix sockets there) keeps the head's address file out of /tmp/ray, where a
    # later plain ray.init() would find it and try to join this head after it is gone.
    ray_temp = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    dashboard = free_port()
    address = f"http://127.0.0.1:{dashboard}"
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            # ports of its own: a Ray cluster of the test session (ray_session) may hold the default agent ports,
            # and then this head's job agent never comes up ("No available agent to submit job")
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=4",
            "--disable-usage-stats",
            f"--temp-dir={ray_temp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(dashboard, head)
        unauthenticated = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        refused = subprocess.run(
            [str(BIN / "ray"), "job", "list", "--address", address],
            env=unauthenticated,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0
        assert "Unauthorized" in refused.stdout + refused.stderr or "token" in refused.stdout + refused.stderr

        overrides = [
            *tiny_overrides,
            f"data.uri={local_pairs}",
            f"storage.storage_path={tmp_path}/ray_results",
            "storage.run_name=submitted",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "mlflow.registered_model_name=submitted-tracker",
            "model.init_checkpoint=null",  # the demo's teacher comes from jobs/pretrain.py, not run here
        ]
        submit = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "jobs/distill.py",
            "--config",
            "configs/demo.yaml",
            *overrides,
        ]
        # The dashboard answers before its job agent has registered; Ray then refuses the submission with
        # "No available agent ... try again later". Retry on exactly that, within a deadline.
        deadline = time.monotonic() + 120
        while True:
            submitted = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            output = submitted.stdout + submitted.stderr
            if "No available agent to submit job" not in output or time.monotonic() > deadline:
                break
            time.sleep(1.0)  # polling a readiness condition with a deadline
        assert submitted.returncode == 0, output[-4000:]
        assert re.search(r"Job 'raysubmit_\w+' succeeded", output), output[-4000:]
        assert "registered:    models:/submitted-tracker@candidate" in output
    finally:
        head.terminate()
        head.wait(timeout=120)
        shutil.rmtree(ray_temp, ignore_errors=True)
