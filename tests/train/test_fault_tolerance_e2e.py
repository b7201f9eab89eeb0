"""End to end: a training worker killed mid-epoch, then the same run invoked again — checkpoints on moto-S3.

The first invocation loses its only training worker (SIGKILL) during epoch 2 of 3; Ray Train restarts the worker
group from the epoch-1 checkpoint and the run ends with 3 epochs. Invoking it again with the same run name and
``distill.epochs=4`` resumes from the epoch-3 checkpoint and trains one more epoch, in the same MLflow run.
"""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from cmd_ray.config import load_config
from cmd_ray.mlflow_runs import store_client
from cmd_ray.storage import join, write_bytes
from cmd_ray.train.trainer import latest_checkpoint_epoch, run_distillation

pytestmark = pytest.mark.e2e

RUN = "ft-e2e"


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])  # the field after the state, past "(comm)"


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        pid = _parent(pid)
    return False


def train_worker_pids() -> list[int]:
    """Ray Train worker processes of this test session's Ray cluster (their process title names the actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
            if b"RayTrainWorker" in title and _descends_from(int(entry.name), os.getpid()):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue  # the process ended while we looked
    return pids


def wait_for(condition, what: str, timeout: float = 240.0):
    """Poll ``condition()`` until it returns something truthy (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker process through /proc (Linux)")
def test_killed_worker_resumes_and_rerun_continues_the_epoch_counter(s3_server, ray_session, tmp_path, local_pairs):
    bucket = s3_server.make_bucket("fault-tolerance-e2e")
    # the pairs on S3 too: the whole run reads and writes through the moto endpoint
    for path in Path(local_pairs).rglob("*.jpg"):
        write_bytes(join(f"s3://{bucket}/pairs", path.relative_to(local_pairs).as_posix()), path.read_bytes())
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        "model.preset=tiny",
        "distill.samples_per_epoch=96",
        "distill.batch_size=4",
        "distill.val_samples=8",
        "distill.lr_tcl=1e-5",
        "distill.lr_bbe=1e-3",
        "data.cpus_per_actor=0.5",
        "scaling.cpus_per_worker=0.5",
        f"data.uri=s3://{bucket}/pairs",
        f"storage.storage_path=s3://{bucket}/checkpoints",
        f"storage.s3_endpoint_url={s3_server.endpoint_url}",
        f"storage.run_name={RUN}",
        "storage.max_failures=2",
        f"mlflow.tracking_uri={tracking_uri}",
        "mlflow.registered_model_name=ft-tracker",
    ]
    checkpoint_prefix = f"checkpoints/{RUN}/"

    def has_checkpoint(epoch: int) -> bool:
        keys = s3_server.list_keys(bucket, checkpoint_prefix)
        return any(key.endswith(f"epoch_{epoch:04d}/training_state.pt") for key in keys)

    def committed(epoch: int) -> bool:
        """Ray Train's controller has registered the checkpoint (a restart would start after it)."""
        cfg = load_config(None, overrides)
        last = latest_checkpoint_epoch(cfg, RUN)
        return last is not None and last >= epoch

    outcome: dict = {}

    def first_invocation() -> None:
        try:
            outcome["result"] = run_distillation(load_config(None, [*overrides, "distill.epochs=3"]))
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=first_invocation)
    runner.start()
    wait_for(lambda: committed(0), "the epoch-1 checkpoint")
    assert not has_checkpoint(1), "epoch 2 ended before the worker could be killed; lengthen distill.samples_per_epoch"
    victims = wait_for(train_worker_pids, "the training worker process")
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    runner.join(timeout=600)
    assert not runner.is_alive()
    assert "error" not in outcome, outcome.get("error")
    first = outcome["result"]

    client = store_client(tracking_uri)
    assert [row["epoch"] for row in first.history] == [0, 1, 2]
    assert [m.value for m in client.get_metric_history(first.run_id, "resumed_at_epoch")] == [1]
    assert has_checkpoint(2)
    assert first.resumed_from_epoch is None  # a fresh run; the restart happened inside it

    second = run_distillation(load_config(None, [*overrides, "distill.epochs=4"]))
    assert second.resumed_from_epoch == 3
    assert second.run_id == first.run_id  # the same MLflow run continues
    assert [row["epoch"] for row in second.history] == [0, 1, 2, 3]
    assert [m.step for m in client.get_metric_history(second.run_id, "loss")] == [0, 1, 2, 3]
    assert has_checkpoint(3)
    assert client.get_run(second.run_id).info.status == "FINISHED"
