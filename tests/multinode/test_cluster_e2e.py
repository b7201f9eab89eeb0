"""A multi-node Ray cluster on this machine: placement by role, ``ray job submit``, a lost train node, a lost
data node (see ``conftest.py`` for the cluster's shape)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from cmd_ray.config import load_config
from cmd_ray.mlflow_runs import store_client
from cmd_ray.mlflow_server import probe
from cmd_ray.train.loop import sample_digest

pytestmark = [pytest.mark.e2e, pytest.mark.multinode]


def actor_nodes(address: str) -> dict[str, set[str]]:
    """Node ids of every actor the cluster at ``address`` has run (alive or dead), keyed 'SampleMaker' /
    'RayTrainWorker'. The address is explicit: other Ray instances may run on this machine."""
    from ray.util.state import list_actors

    placed: dict[str, set[str]] = {"SampleMaker": set(), "RayTrainWorker": set()}
    for actor in list_actors(address=address, limit=10_000, detail=True, raise_on_missing_output=False):
        name = f"{actor.class_name} {actor.repr_name or ''}"
        for key, nodes in placed.items():
            if key in name and actor.node_id:
                nodes.add(actor.node_id)
    return placed


def all_nodes_by_role() -> dict[str, set[str]]:
    """Node ids per role label, lost nodes included (an actor may have run on one)."""
    import ray

    from cmd_ray.local_cluster import ROLE_LABEL

    roles: dict[str, set[str]] = {}
    for node in ray.nodes():
        roles.setdefault(node.get("Labels", {}).get(ROLE_LABEL, ""), set()).add(node["NodeID"])
    return roles


def assert_placed_by_role(address: str) -> None:
    placed, roles = actor_nodes(address), all_nodes_by_role()
    assert placed["SampleMaker"], "no Ray Data SampleMaker actor found in the cluster's actor table"
    assert placed["SampleMaker"] <= roles["data"], "a Ray Data actor ran outside the data nodes"
    assert placed["RayTrainWorker"] <= roles["train"], "a training worker ran outside the train nodes"


def test_job_api_refuses_a_client_without_the_token(multinode) -> None:
    env = {k: v for k, v in multinode.cluster.client_env().items() if not k.startswith("RAY_AUTH")}
    ray_bin = Path(sys.executable).parent / "ray"
    refused = subprocess.run(
        [str(ray_bin), "job", "list", "--address", multinode.cluster.dashboard_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "Unauthorized" in output or "token" in output, output


def test_job_submit_places_data_and_training_by_role(multinode, peak_workers) -> None:
    run = "mn-submit"
    cfg = load_config("configs/demo.yaml", [*multinode.overrides(run), "distill.epochs=2"])
    output = multinode.submit_job(
        ["python", "jobs/distill.py", "--config", "configs/demo.yaml", *multinode.overrides(run), "distill.epochs=2"],
    )
    assert re.search(r"Job 'raysubmit_\w+' succeeded", output), output[-4000:]
    assert f"registered:    models:/{run}-tracker@candidate" in output

    assert_placed_by_role(multinode.cluster.address)
    train_nodes = actor_nodes(multinode.cluster.address)["RayTrainWorker"]
    assert len(train_nodes) == 2, "the two DDP workers should run on two train nodes (one train_slot each)"

    client = store_client(multinode.cluster.mlflow_uri)  # over HTTP: the workers logged through the server
    version = client.get_model_version_by_alias(f"{run}-tracker", "candidate")
    epochs = [m.step for m in client.get_metric_history(version.run_id, "loss")]
    assert epochs == [0, 1]
    per_epoch = cfg.steps_per_epoch() * cfg.distill.batch_size * cfg.scaling.num_workers
    digests = {m.step: m.value for m in client.get_metric_history(version.run_id, "epoch_sample_digest")}
    assert digests == {e: sample_digest(np.arange(e * per_epoch, (e + 1) * per_epoch)) for e in (0, 1)}
    # as on the clusters: the server keeps them in PostgreSQL, the nodes log as their own user, anonymous is refused
    connection = multinode.postgres.connect("mlflow")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'loss'", (version.run_id,))
        assert cursor.fetchone() == (len(epochs),)
        cursor.execute("SELECT count(*) FROM model_versions WHERE name = %s", (f"{run}-tracker",))
        assert cursor.fetchone() == (1,)
        cursor.execute("SELECT username FROM users WHERE NOT is_admin")
        assert cursor.fetchall() == [("cmd-ray",)]
    connection.close()
    refused = probe(multinode.cluster.mlflow_uri, credentials=("anonymous", "not-a-user-password"))
    assert refused is not None and "answered 401" in refused, refused

    # Bounded by the config. Busy workers: the data actors (a training and a validation pool), the DDP workers,
    # the one index-filter task, cmd-ray's two bookkeeping actors and the helper actors Ray's job, Train and Data
    # machinery starts (RAY_HELPER_ACTORS). Idle pooled workers: Ray keeps about one per CPU of a node (at least
    # one per node); the 0-CPU task storm this bound was written for left 16 idle workers for the demo's 38 index
    # blocks. Workers still starting (no title yet) become one of the two and are reported, not bounded.
    at_peak = peak_workers.at_peak
    idle, starting = at_peak.get("ray::IDLE", 0), at_peak.get("default_worker (starting)", 0)
    busy = peak_workers.peak - idle - starting
    busy_bound = 2 * cfg.data.num_actors + cfg.scaling.num_workers + 1 + 2 + len(RAY_HELPER_ACTORS)
    idle_bound = sum(max(1, int(node.num_cpus)) for node in multinode.cluster.nodes if node.alive)
    print(
        f"peak Ray worker processes during the submitted job: {peak_workers.peak}: {busy} busy (bound {busy_bound}), "
        f"{idle} idle (bound {idle_bound}), {starting} starting"
    )
    print(f"  at the peak: {sorted(at_peak.items(), key=lambda kv: -kv[1])}")
    assert busy <= busy_bound and idle <= idle_bound


RAY_HELPER_ACTORS = (
    "JobSupervisor",  # ray job submit
    "TrainController",
    "SynchronizationActor",
    "PreemptionWatcher",
    "PlacementGroupCleaner",
    "DatasetManager",
    "SplitCoordinator",  # one per dataset: train and validation
    "SplitCoordinator",
    "_StatsActor",
    "ActorLocationTracker",
    "_AutoscalingCoordinatorActor",
)
"""Ray's own actors during a submitted distillation (job, Ray Train V2, Ray Data), as seen in the process titles."""


def _s3_keys(s3_server, prefix: str) -> list[str]:
    return s3_server.list_keys("multinode", prefix)


def test_lost_train_node_resumes_with_the_same_samples(multinode, s3_server) -> None:
    from cmd_ray.local_cluster import wait_until
    from cmd_ray.train.trainer import latest_checkpoint_epoch, run_distillation

    run = "mn-train-loss"
    # 2 epochs: the node is lost during the second, after the first one's checkpoint
    overrides = [*multinode.overrides(run), "distill.epochs=2", "storage.max_failures=1"]
    cfg = load_config("configs/demo.yaml", overrides)
    prefix = f"checkpoints/{run}/"

    def checkpoint_written(epoch: int) -> bool:
        return any(k.endswith(f"epoch_{epoch:04d}/training_state.pt") for k in _s3_keys(s3_server, prefix))

    outcome: dict = {}

    def invoke() -> None:
        try:
            outcome["result"] = run_distillation(cfg)
        except BaseException as exc:  # surfaced by the assertion below
            outcome["error"] = exc

    runner = threading.Thread(target=invoke)
    runner.start()
    # committed, not only written: a checkpoint counts once Ray Train's controller has registered it (the worker
    # uploads it first); a node lost in between restarts from the checkpoint before
    wait_until(
        lambda: latest_checkpoint_epoch(cfg, run) == 0 or "error" in outcome, "the epoch-0 checkpoint committed", 600
    )
    assert "error" not in outcome, outcome.get("error")
    assert not checkpoint_written(1), "epoch 1 ended before the node could be lost; lengthen samples_per_epoch"
    cluster = multinode.cluster
    victim = wait_until(
        lambda: next(
            (
                node
                for node in cluster.nodes
                if node.alive
                and node.role == "train"
                and any(
                    b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes()
                    for pid in node.worker_pids()
                    if Path(f"/proc/{pid}/cmdline").exists()
                )
            ),
            None,
        ),
        "a train node running a training worker",
    )
    cluster.kill_node(victim)
    runner.join(timeout=900)
    assert not runner.is_alive()
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    cluster.add_train_node(victim.num_cpus)  # the replacement an autoscaler would bring

    client = store_client(cluster.mlflow_uri)
    assert [row["epoch"] for row in result.history] == [0, 1]
    assert client.get_metric_history(result.run_id, "resumed_at_epoch"), "the worker group never restarted"
    per_epoch = cfg.steps_per_epoch() * cfg.distill.batch_size * cfg.scaling.num_workers
    last = {m.step: m for m in client.get_metric_history(result.run_id, "epoch_sample_digest")}
    samples = {m.step: m.value for m in client.get_metric_history(result.run_id, "epoch_unique_samples")}
    for epoch in range(2):
        # the set of samples each epoch trained on is the one of a run without the failure
        expected = sample_digest(np.arange(epoch * per_epoch, (epoch + 1) * per_epoch))
        assert last[epoch].value == expected, f"epoch {epoch} trained on other samples than a run without loss"
        assert samples[epoch] == per_epoch
    for epoch in range(2):
        assert checkpoint_written(epoch), f"the epoch-{epoch} checkpoint is gone from S3"
    assert_placed_by_role(multinode.cluster.address)


def test_lost_data_node_loses_no_sample(multinode) -> None:
    import ray

    from cmd_ray.data.distill_stream import SampleMaker, list_pairs, training_dataset
    from cmd_ray.data.skips import SkipCounter
    from cmd_ray.data.streams import SAMPLE_INDEX, TRAIN_STREAM, on_driver_node, stack_samples

    cfg = load_config(
        "configs/demo.yaml",
        [
            *multinode.overrides("mn-data-loss"),
            "distill.epochs=1",
            "distill.samples_per_epoch=160",
        ],
    )
    pairs = list_pairs(cfg)
    counter = SkipCounter.options(**on_driver_node()).remote()
    stream = training_dataset(cfg, pairs, counter)
    cluster = multinode.cluster

    def checksum(batch: dict, row: int) -> int:
        return zlib.crc32(
            b"".join(np.ascontiguousarray(batch[k][row]).tobytes() for k in sorted(batch) if k != SAMPLE_INDEX)
        )

    seen: list[tuple[int, int]] = []
    victim = None
    for batch in stream.iter_batches(batch_size=cfg.distill.batch_size, batch_format="numpy"):
        seen += [(int(i), checksum(batch, row)) for row, i in enumerate(batch[SAMPLE_INDEX])]
        if victim is None and len(seen) >= 3 * cfg.distill.batch_size:
            victim = next(
                node
                for node in cluster.nodes
                if node.alive
                and node.role == "data"
                and any(b"SampleMaker" in _title(pid) for pid in node.worker_pids())
            )
            cluster.kill_node(victim)
    assert victim is not None
    cluster.add_data_node(victim.num_cpus)

    total = cfg.distill.epochs * cfg.distill.samples_per_epoch
    assert sorted(i for i, _ in seen) == list(range(total)), "samples lost or delivered twice"
    maker = SampleMaker(pairs, cfg.data, cfg.distill.seed, TRAIN_STREAM, cfg.storage.s3_endpoint_url)
    for index, crc in seen:
        batch = stack_samples([maker.sample(index)], np.array([index]))
        assert crc == checksum(batch, 0), f"sample {index} differs from the one a single process cuts"
    assert ray.get(counter.report.remote()).skipped == 0
    assert_placed_by_role(multinode.cluster.address)


def _title(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_evaluation_reads_and_writes_s3_from_the_worker_nodes(multinode, s3_server, tmp_path) -> None:
    """``jobs/evaluate.py``'s work on the cluster with no shared folder: the benchmark and a checkpoint in S3 only,
    every sequence task on a data or train node (the head runs none), results, tables and plots written to S3."""
    import torch
    from ray.util.state import list_tasks

    from cmd_ray import storage
    from cmd_ray.config import SynthConfig
    from cmd_ray.data.synthetic import write_synthetic_dataset
    from cmd_ray.evaluation.runner import TABLES_FILE, run_evaluation
    from cmd_ray.models.dimpnet import build_model
    from cmd_ray.models.training_state import TRAINING_STATE_FILE, save_training_state

    write_synthetic_dataset(
        str(tmp_path / "data"),
        SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=2, sequence_length=8),
        progress=False,
    )
    root, results, ckpt = (f"s3://{multinode.bucket}/eval/{name}" for name in ("tir_sequences", "results", "ckpt"))
    for path in sorted((tmp_path / "data" / "tir_sequences").rglob("*")):
        if path.is_file():
            relative = path.relative_to(tmp_path / "data" / "tir_sequences").as_posix()
            storage.write_bytes(storage.join(root, relative), path.read_bytes())
    net_cfg = load_config(None, ["model.preset=tiny"])
    torch.manual_seed(0)
    save_training_state(tmp_path, {"model": build_model(net_cfg).state_dict(), "config": net_cfg.model_dump()})
    storage.write_bytes(f"{ckpt}/{TRAINING_STATE_FILE}", (tmp_path / TRAINING_STATE_FILE).read_bytes())

    cfg = load_config(
        None,
        [
            f"evaluation.root={root}",
            f"evaluation.results_dir={results}",
            f"evaluation.trackers=[{{name: static, kind: static}}, {{name: dimp, kind: dimp, model: '{ckpt}'}}]",
            "evaluation.num_workers=2",
            "evaluation.cpus_per_task=0.5",
            "tracker.preset=tiny",
            f"mlflow.tracking_uri={multinode.cluster.mlflow_uri}",
            "mlflow.experiment=multinode-evaluation",
        ],
    )
    outcome = run_evaluation(cfg, progress=False)
    assert (outcome.tracked, outcome.skipped) == (4, 0)
    keys = set(s3_server.list_keys(multinode.bucket, "eval/results/"))
    for tracker in ("static", "dimp"):
        for sequence in ("synth_tir_000", "synth_tir_001"):
            assert f"eval/results/{tracker}/{sequence}.txt" in keys
    assert f"eval/results/{TABLES_FILE}" in keys

    tasks = list_tasks(
        address=multinode.cluster.address,
        filters=[("func_or_class_name", "=", "run_sequence")],
        detail=True,
        raise_on_missing_output=False,
    )
    roles = all_nodes_by_role()
    assert len({task.task_id for task in tasks}) >= 4
    assert {task.node_id for task in tasks} <= roles["data"] | roles["train"], "a sequence task ran on the head"
