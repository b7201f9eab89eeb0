"""MLflow under concurrent writers: an ``mlflow server`` on sqlite against one on PostgreSQL, side by side.

A distributed run has many MLflow clients at once (Ray Train workers, Tune trials, evaluation tasks). This benchmark
starts two servers the same way (``--workers`` uvicorn processes, artifacts in a local folder), one with a sqlite
backend store and one on a PostgreSQL server it starts (:mod:`cmd_ray.local_postgres`), and runs the same load
against each: ``--writers`` processes released together (a barrier), each creating a run, logging ``--steps`` steps
of ``--metrics`` metrics (the even-numbered writers one value per ``log_metric`` call, the odd ones one
``log_batch`` call per step) and registering ``--versions`` versions of one registered model. Then it reads
everything back and prints, per backend: metric values attempted, acknowledged, found, lost (acknowledged, not
found), stored although the client saw an error, duplicates, client errors after MLflow's own retries ("database is
locked" separately), the server log's "database is locked" lines, runs and model versions registered against
expected, and the wall time of the writing phase::

    .venv/bin/python benchmarks/mlflow_load.py
    .venv/bin/python benchmarks/mlflow_load.py --writers 8 --steps 200 --metrics 3 --versions 5 --server-workers 4

The clients keep MLflow's default retries (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, 7, exponential backoff), as jobs
do; ``--client-retries`` changes them, e.g. 0 to see every refused request.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmd_ray.local_cluster import free_port, wait_until
from cmd_ray.local_postgres import LocalPostgres
from cmd_ray.mlflow_server import probe, server_command, server_env

MODEL = "load-model"
EXPERIMENT = "load"
LOCKED = "database is locked"
WRITER_DEADLINE_S = 1800
WORKER_HEALTHCHECK_S = 120


def value_of(writer: int, step: int, metric: int) -> float:
    """The value writer ``writer`` logs for ``m{metric}`` at ``step`` (exact in a float: read-back compares it)."""
    return float(writer * 1_000_000 + step * 10 + metric)


def write(uri: str, writer: int, args: dict[str, Any], experiment_id: str, barrier: Any, results: Any) -> None:
    """One writer process: a run, its metrics, its model versions; puts what it did on ``results``."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    acked: list[tuple[str, int]] = []
    errors: list[str] = []
    calls = versions = 0
    attempted = args["steps"] * args["metrics"]  # all of them count, also after a failed start
    run_id = None
    style = "log_metric" if writer % 2 == 0 else "log_batch"
    barrier.wait()
    try:
        calls += 1
        run_id = client.create_run(experiment_id, run_name=f"writer-{writer}").info.run_id
        for step in range(args["steps"]):
            now = int(time.time() * 1000)
            names = [f"m{k}" for k in range(args["metrics"])]
            if style == "log_metric":
                for k, name in enumerate(names):
                    calls += 1
                    try:
                        client.log_metric(run_id, name, value_of(writer, step, k), timestamp=now, step=step)
                        acked.append((name, step))
                    except Exception as exc:
                        errors.append(str(exc))
            else:
                calls += 1
                try:
                    batch = [Metric(n, value_of(writer, step, k), now, step) for k, n in enumerate(names)]
                    client.log_batch(run_id, metrics=batch)
                    acked.extend((name, step) for name in names)
                except Exception as exc:
                    errors.append(str(exc))
        for _ in range(args["versions"]):
            calls += 1
            try:
                client.create_model_version(MODEL, f"runs:/{run_id}/model", run_id=run_id)
                versions += 1
            except Exception as exc:
                errors.append(str(exc))
        calls += 1
        client.set_terminated(run_id)
    except Exception as exc:  # the run itself failed: counted, and the remaining writes are lost attempts
        errors.append(str(exc))
    results.put(
        {
            "writer": writer,
            "run_id": run_id,
            "calls": calls,
            "attempted": attempted,
            "acked": acked,
            "versions": versions,
            "errors": errors,
        }
    )


@dataclass
class Outcome:
    """What one backend did under the load."""

    backend: str
    wall_s: float = 0.0
    calls: int = 0
    attempted: int = 0
    acked: int = 0
    found: int = 0
    lost: int = 0
    stored_despite_error: int = 0
    duplicates: int = 0
    errors: Counter = field(default_factory=Counter)
    locked_client: int = 0
    locked_server: int = 0
    runs: int = 0
    versions_acked: int = 0
    versions_found: int = 0
    version_numbers: int = 0


def start_server(backend_uri: str, folder: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on a free port of 127.0.0.1 with ``backend_uri``; returns (process, URL) once ready."""
    port = free_port()
    # uvicorn's supervisor restarts a worker that does not answer its health check within 5 s, and on a busy machine
    # a worker importing MLflow takes longer: without this the workers die and restart forever
    healthcheck = f"--uvicorn-opts=--timeout-worker-healthcheck={WORKER_HEALTHCHECK_S}"
    command = server_command(port, folder / "artifacts", workers, healthcheck)
    env = server_env(dict(os.environ), backend_uri)
    with open(folder / "server.log", "ab") as log:  # the server keeps its own descriptor
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server ({backend_uri.split(':')[0]}) exited; see {folder / 'server.log'}")
        return probe(url) is None

    try:
        wait_until(ready, f"mlflow server on {backend_uri.split(':')[0]}", timeout_s=300)
    except BaseException:
        stop_server(process)
        raise
    return process, url


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to whatever of it is left after 30 s or after it ended."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # uvicorn workers that outlived their supervisor
    process.wait(timeout=30)


def run_load(name: str, backend_uri: str, folder: Path, args: argparse.Namespace) -> Outcome:
    """Start a server on ``backend_uri``, run the writers against it, read back, stop it."""
    from mlflow.tracking import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(name)
    process, url = start_server(backend_uri, folder, args.server_workers)
    try:
        client = MlflowClient(tracking_uri=url, registry_uri=url)
        experiment_id = client.create_experiment(EXPERIMENT)
        client.create_registered_model(MODEL)
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(args.writers + 1), context.Queue()
        load = {"steps": args.steps, "metrics": args.metrics, "versions": args.versions}
        writers = [
            context.Process(target=write, args=(url, i, load, experiment_id, barrier, results))
            for i in range(args.writers)
        ]
        for process_ in writers:
            process_.start()
        barrier.wait()  # every writer has imported MLflow: the clock times the writing alone
        start = time.monotonic()
        done = []
        for _ in writers:
            remaining = max(1.0, WRITER_DEADLINE_S - (time.monotonic() - start))
            try:
                done.append(results.get(timeout=remaining))
            except queue.Empty:
                raise TimeoutError(f"{name}: a writer did not finish within {WRITER_DEADLINE_S} s") from None
        outcome.wall_s = time.monotonic() - start
        for process_ in writers:
            process_.join(timeout=60)

        for result in done:
            outcome.calls += result["calls"]
            outcome.attempted += result["attempted"]
            outcome.acked += len(result["acked"])
            outcome.versions_acked += result["versions"]
            for error in result["errors"]:
                outcome.errors[error.splitlines()[0][:120] if error else "?"] += 1
                outcome.locked_client += LOCKED in error
            if result["run_id"] is None:
                continue
            outcome.runs += 1
            found, duplicates = set(), 0
            for k in range(args.metrics):
                history = client.get_metric_history(result["run_id"], f"m{k}")
                expected = {(f"m{k}", m.step) for m in history if m.value == value_of(result["writer"], m.step, k)}
                duplicates += len(history) - len({m.step for m in history})
                found |= expected
            acked = set(result["acked"])
            outcome.found += len(found)
            outcome.lost += len(acked - found)
            outcome.stored_despite_error += len(found - acked)
            outcome.duplicates += duplicates
        versions = client.search_model_versions(f"name = '{MODEL}'")
        outcome.versions_found = len(versions)
        outcome.version_numbers = len({v.version for v in versions})
    finally:
        stop_server(process)
    outcome.locked_server = (folder / "server.log").read_text(errors="replace").count(LOCKED)
    return outcome


def report(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    expected_versions = args.writers * args.versions
    rows: list[tuple[str, Any]] = [
        ("metric values attempted", lambda o: o.attempted),
        ("  acknowledged by the server", lambda o: o.acked),
        ("  found on reading back", lambda o: o.found),
        ("  lost (acknowledged, not found)", lambda o: o.lost),
        ("  stored though the client saw an error", lambda o: o.stored_despite_error),
        ("  duplicate steps", lambda o: o.duplicates),
        ("API calls", lambda o: o.calls),
        ("client errors (after MLflow's retries)", lambda o: sum(o.errors.values())),
        (f"  of which '{LOCKED}'", lambda o: o.locked_client),
        (f"server log: '{LOCKED}'", lambda o: o.locked_server),
        ("runs created / expected", lambda o: f"{o.runs}/{args.writers}"),
        ("model versions acknowledged / expected", lambda o: f"{o.versions_acked}/{expected_versions}"),
        ("  found / distinct numbers", lambda o: f"{o.versions_found}/{o.version_numbers}"),
        ("write phase wall time (s)", lambda o: f"{o.wall_s:.1f}"),
        ("API calls per second", lambda o: f"{o.calls / o.wall_s:.0f}" if o.wall_s else "-"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    print(
        f"\nMLflow load: {args.writers} writers x (1 run, {args.steps} steps x {args.metrics} metrics: even writers "
        f"log_metric, odd log_batch; {args.versions} versions of one model); {args.server_workers} server workers; "
        f"client retries: {os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', 'MLflow default (7)')}"
    )
    print("".ljust(width) + "".join(o.backend.rjust(14) for o in outcomes))
    for label, get in rows:
        print(label.ljust(width) + "".join(str(get(o)).rjust(14) for o in outcomes))
    for outcome in outcomes:
        for message, count in outcome.errors.most_common(5):
            print(f"  {outcome.backend} error x{count}: {message}")
    if len(outcomes) == 2 and outcomes[0].wall_s and outcomes[1].wall_s:
        print(f"wall time {outcomes[1].backend}/{outcomes[0].backend}: {outcomes[1].wall_s / outcomes[0].wall_s:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--metrics", type=int, default=3)
    parser.add_argument("--versions", type=int, default=5, help="model versions each writer registers")
    parser.add_argument("--server-workers", type=int, default=4, help="uvicorn workers (MLflow's default: 4)")
    parser.add_argument("--client-retries", type=int, default=None, help="MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    if args.client_retries is not None:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(args.client_retries)  # the writers inherit it
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    workdir = Path(tempfile.mkdtemp(prefix="mlflow-load-"))
    outcomes = []
    try:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                outcomes.append(
                    run_load("sqlite", f"sqlite:///{workdir / 'sqlite' / 'mlflow.db'}", workdir / "sqlite", args)
                )
            elif backend == "postgresql":
                with LocalPostgres() as postgres:
                    uri = postgres.create_database("mlflow")
                    outcomes.append(run_load("postgresql", uri, workdir / "postgresql", args))
            else:
                parser.error(f"unknown backend {backend!r} (sqlite, postgresql)")
            print(f"{backend}: done, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(outcomes, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
