"""Patch throughput: decode + DiMP sampling of 640x512 JPEG pairs three ways, side by side.

(a) the Ray Data pipeline (``cmd_ray.data.distill_stream.training_dataset`` on ``data.num_actors = N`` actors of one
    CPU, on a local Ray cluster of N CPUs, consumed with ``iter_batches``);
(b) a ``torch.utils.data.DataLoader`` with N worker processes whose dataset calls the same per-batch work
    (``SampleMaker``, without Ray);
(c) one plain process calling ``SampleMaker`` in a loop.

All three cut the same samples (sample ``i`` is drawn from ``(seed, i)``; checked by per-sample checksums over the
boxes, labels, proposals and a subsample of every crop). The first ``--warmup-batches`` batches per worker are not
timed (worker/actor start-up, imports, first decode); the table also gives the wall time from start to the first
warm-up batch (start-up) and the end-to-end rate. Ray's own cluster start (``ray.init``) is listed separately.

Run from the repository root (2 workers, DiMP-50 geometry: 288-pixel crops)::

    .venv/bin/python benchmarks/patch_throughput.py --workers 2 --samples 240

Target: (a)/(b) >= 1.0 at equal CPU count. The machine's load average is printed before and after each mode:
on a shared machine, compare ratios of runs made at similar load, or use ``--repeats``.

S3 (``--source s3``): the same pairs are uploaded to a local S3 server (moto in server mode on 127.0.0.1, in a
process of its own) and the Ray Data pipeline (a) runs on the local files and on S3 with the same workers, side by
side: samples/s, CPU-seconds per sample of the Ray worker processes (every ``ray::`` process, steady state), of the
driver, and of the S3 server, with the server's share of the machine. The last line reads
``s3/local samples/s: R`` (median over rounds; target R >= 0.85). ``--source both`` runs ``--modes`` on the local
files as usual and adds the S3 pipeline::

    .venv/bin/python benchmarks/patch_throughput.py --source s3 --workers 2 --samples 600 --repeats 3

The S3 server is moto's WSGI application under gunicorn (one worker, HTTP keep-alive as on S3; moto's own werkzeug
server opens a new connection per request) with one change that leaves moto's behaviour alone: moto lists its own
package folder (about 180 ``stat`` calls) on every request to find the service, and the server here caches that
list, which cuts its CPU per request about threefold. A real S3 costs this machine no CPU at all.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmd_ray import storage
from cmd_ray.config import SAMPLING_PRESETS, Config, SynthConfig
from cmd_ray.data.distill_stream import SampleMaker
from cmd_ray.data.pairs import list_two_folder_pairs
from cmd_ray.data.streams import TRAIN_STREAM
from cmd_ray.data.synthetic import write_synthetic_dataset

IMAGE_WIDTH, IMAGE_HEIGHT = 640, 512
SEED = 0
BURST_S = 0.05
"""Samples arriving within this many seconds of the warm-up end count as one burst (see ``Result.burst_share``)."""
BURST_WARNING = 0.25
S3_BUCKET = "patch-throughput"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class Result:
    """One mode's measurement.

    Attributes:
        name: table column.
        timed_samples: samples received after the warm-up.
        timed_s: wall seconds for them (steady state).
        startup_s: wall seconds from the start of the mode to the end of its warm-up batches.
        total_s: wall seconds from the start of the mode to its last batch (start-up included).
        total_samples: warm-up + timed samples.
        cluster_s: ``ray.init`` seconds (Ray only; not in ``total_s``).
        checksums: multiset of per-sample checksums (every sample, warm-up included).
        load: 1-minute load average before and after.
        burst_share: share of the timed samples that had arrived within ``BURST_S`` of the warm-up end; near 1
            means the output came in one burst, so the steady-state rate measures unpacking, not production.
        worker_cpu_s: CPU seconds of the Ray worker processes (``ray::…``) during the timed samples (Ray only).
        driver_cpu_s: CPU seconds of this process during the timed samples (Ray only).
        server_cpu_s: CPU seconds of the S3 server process during the timed samples (S3 only).
    """

    name: str
    timed_samples: int = 0
    timed_s: float = 0.0
    startup_s: float = 0.0
    total_s: float = 0.0
    total_samples: int = 0
    cluster_s: float | None = None
    checksums: Counter = field(default_factory=Counter)
    load: tuple[float, float] = (0.0, 0.0)
    burst_share: float = 0.0
    worker_cpu_s: float | None = None
    driver_cpu_s: float | None = None
    server_cpu_s: float | None = None

    def per_sample(self, cpu_s: float | None) -> float | None:
        """``cpu_s`` per timed sample in milliseconds (None when not measured)."""
        return None if cpu_s is None or not self.timed_samples else 1000 * cpu_s / self.timed_samples

    @property
    def rate(self) -> float:
        """Steady-state samples per second."""
        return self.timed_samples / self.timed_s if self.timed_s > 0 else float("nan")

    @property
    def end_to_end_rate(self) -> float:
        """Samples per second including start-up (without ``ray.init``)."""
        return self.total_samples / self.total_s if self.total_s > 0 else float("nan")


def _as_numpy(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def sample_checksums(batch: dict[str, Any]) -> Iterator[str]:
    """One checksum per row of a batch: every small array in full, crops subsampled every 16th pixel."""
    arrays = {key: _as_numpy(value) for key, value in batch.items()}
    rows = len(next(iter(arrays.values())))
    for row in range(rows):
        digest = hashlib.blake2b(digest_size=12)
        for key in sorted(arrays):
            value = arrays[key][row]
            if value.ndim >= 2 and value.shape[0] > 64:  # a crop: [S, S] or [S, S, 3]
                value = value[::16, ::16]
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        yield digest.hexdigest()


class Consumer:
    """Receives batches, times the steady state after ``warmup_samples`` and records checksums.

    ``probe`` (optional) is called when the timing starts and when it ends (CPU snapshots).
    """

    def __init__(self, result: Result, warmup_samples: int, start: float, probe: Any = None) -> None:
        self.result = result
        self._probe = probe
        self._warmup = warmup_samples
        self._start = start
        self._received = 0
        self._timer: float | None = None
        self._timed_from = 0
        self._arrivals: list[tuple[float, int]] = []  # (time, samples received so far) per batch

    def take(self, batch: dict[str, Any]) -> None:
        for checksum in sample_checksums(batch):
            self.result.checksums[checksum] += 1
            self._received += 1
        now = time.perf_counter()
        if self._timer is None:
            if self._received >= self._warmup:
                self._timer = now
                self.result.startup_s = now - self._start
                self._timed_from = self._received
                if self._probe is not None:
                    self._probe.start()
        else:
            self._arrivals.append((now, self._received))

    def finish(self) -> Result:
        end = time.perf_counter()
        if self._probe is not None and self._timer is not None:
            self._probe.stop(self.result)
        if self._timer is None:
            raise RuntimeError(f"{self.result.name}: only {self._received} samples, fewer than the warm-up")
        self.result.timed_samples = self._received - self._timed_from
        self.result.timed_s = end - self._timer
        self.result.total_samples = self._received
        self.result.total_s = end - self._start
        timed = self.result.timed_samples
        early = [count for at, count in self._arrivals if at - self._timer <= BURST_S]
        self.result.burst_share = (max(early) - self._timed_from) / timed if early and timed else 0.0
        return self.result


class CpuProbe:
    """CPU seconds between :meth:`start` and :meth:`stop` of: the Ray worker processes of this cluster (``ray::…``
    processes below its raylet; a worker started meanwhile counts from zero), this process (the driver), and the
    S3 server (its process and children)."""

    def __init__(self, raylet_pid: int | None, server_pid: int | None) -> None:
        import ray  # noqa: F401  (puts Ray's bundled psutil on the path)

        self._psutil = importlib.import_module("psutil")
        self._raylet = self._psutil.Process(raylet_pid) if raylet_pid else None
        self._server = self._psutil.Process(server_pid) if server_pid else None
        self._workers: dict[int, float] = {}
        self._driver = 0.0
        self._server_cpu = 0.0

    @staticmethod
    def _cpu(process: Any) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def _tree(self, root: Any) -> dict[int, float]:
        found: dict[int, float] = {}
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(self._psutil.Error):
                found[process.pid] = self._cpu(process)
        return found

    def _ray_workers(self) -> dict[int, float]:
        found: dict[int, float] = {}
        candidates = self._raylet.children(recursive=True) if self._raylet else self._psutil.process_iter()
        for process in candidates:
            with contextlib.suppress(self._psutil.Error):
                if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::"):
                    found[process.pid] = self._cpu(process)
        return found

    def start(self) -> None:
        self._workers = self._ray_workers()
        self._driver = self._cpu(self._psutil.Process())
        self._server_cpu = sum(self._tree(self._server).values()) if self._server else 0.0

    def stop(self, result: Result) -> None:
        now = self._ray_workers()
        result.worker_cpu_s = sum(cpu - self._workers.get(pid, 0.0) for pid, cpu in now.items())
        result.driver_cpu_s = self._cpu(self._psutil.Process()) - self._driver
        if self._server is not None:
            result.server_cpu_s = sum(self._tree(self._server).values()) - self._server_cpu


def _raylet_pid() -> int | None:
    """The process id of this driver's local raylet (None if Ray does not say)."""
    import ray

    try:
        return ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    except (AttributeError, KeyError, IndexError):
        return None


def index_batches(total: int, batch_size: int) -> list[np.ndarray]:
    """Sample indices ``0 … total-1`` in batches of ``batch_size`` (the last may be shorter)."""
    indices = np.arange(total, dtype=np.int64)
    return [indices[i : i + batch_size] for i in range(0, total, batch_size)]


# --------------------------------------------------------------------------- the three modes


def run_single(pairs: list[tuple[str, str]], data: dict[str, Any], total: int, batch_size: int, warmup: int) -> Result:
    """(c) one process: ``SampleMaker`` called batch after batch."""
    result = Result("(c) 1 process")
    start = time.perf_counter()
    maker = SampleMaker(pairs, data, SEED, TRAIN_STREAM, None, skip_counter=None)
    consumer = Consumer(result, warmup, start)
    for indices in index_batches(total, batch_size):
        consumer.take(maker({"data": indices}))
    return consumer.finish()


class IndexBatchDataset(torch.utils.data.Dataset):
    """Item ``k`` = the ``k``-th batch of samples, cut by ``SampleMaker`` (built lazily in each worker)."""

    def __init__(self, pairs: list[tuple[str, str]], data: dict[str, Any], batches: list[np.ndarray]) -> None:
        self._pairs, self._data, self._batches = pairs, data, batches
        self._maker: SampleMaker | None = None

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        if self._maker is None:
            self._maker = SampleMaker(self._pairs, self._data, SEED, TRAIN_STREAM, None, skip_counter=None)
        return self._maker({"data": self._batches[k]})


def run_dataloader(
    pairs: list[tuple[str, str]],
    data: dict[str, Any],
    total: int,
    batch_size: int,
    warmup: int,
    workers: int,
    prefetch_factor: int,
) -> Result:
    """(b) ``DataLoader(num_workers=workers)``: each item is one batch, converted to tensors in the worker."""
    result = Result(f"(b) DataLoader x{workers}")
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        IndexBatchDataset(pairs, data, index_batches(total, batch_size)),
        batch_size=None,  # items are batches already; numpy arrays become tensors (default_convert)
        shuffle=False,
        num_workers=workers,
        prefetch_factor=prefetch_factor,
        # forkserver: workers fork from a clean server process, safe also after Ray ran in this process
        multiprocessing_context="forkserver",
    )
    consumer = Consumer(result, warmup, start)
    for batch in loader:
        consumer.take(batch)
    return consumer.finish()


def run_ray(
    cfg: Config,
    pairs: list[tuple[str, str]],
    warmup: int,
    workers: int,
    prefetch_batches: int,
    env_vars: dict[str, str],
    show_stats: bool,
    source: str = "",
    server_pid: int | None = None,
) -> Result:
    """(a) Ray Data: ``training_dataset`` on ``workers`` actors of one CPU, on a local cluster of ``workers`` CPUs.

    ``source`` names the column ("local", "s3"); ``server_pid`` is the S3 server's process, whose CPU is measured.
    """
    import ray

    from cmd_ray.data.distill_stream import training_dataset
    from cmd_ray.data.skips import SkipCounter

    result = Result(f"(a) Ray Data x{workers}" + (f" {source}" if source else ""))
    cluster_start = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=workers,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": env_vars} if env_vars else None,
    )
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        result.cluster_s = time.perf_counter() - cluster_start
        start = time.perf_counter()
        skip_counter = SkipCounter.remote()
        dataset = training_dataset(cfg, pairs, skip_counter)
        consumer = Consumer(result, warmup, start, CpuProbe(_raylet_pid(), server_pid))
        for batch in dataset.iter_batches(
            batch_size=cfg.distill.batch_size, batch_format="numpy", prefetch_batches=prefetch_batches
        ):
            consumer.take(batch)
        consumer.finish()
        report = ray.get(skip_counter.report.remote())
        if report.skipped:
            raise RuntimeError(f"Ray Data skipped {report.skipped} pairs of the synthetic set")
        if report.retries or report.transient_failures:
            print(
                f"{result.name}: {report.retries} storage retries, {report.transient_failures} transient failures",
                file=sys.stderr,
            )
        if show_stats:
            print(dataset.stats(), file=sys.stderr)
    finally:
        ray.shutdown()
    return result


# --------------------------------------------------------------------------- driver


def prepare_pairs(root: Path, count: int) -> list[tuple[str, str]]:
    """Write ``count`` synthetic 640x512 JPEG pairs below ``root`` (kept if already there) and list them."""
    pairs_dir = root / "pairs"
    have = len(list((pairs_dir / "rgb").glob("*.jpg"))) if pairs_dir.exists() else 0
    if have != count:
        shutil.rmtree(root, ignore_errors=True)
        synth = SynthConfig(
            num_pairs=count,
            image_width=IMAGE_WIDTH,
            image_height=IMAGE_HEIGHT,
            num_rgb_sequences=0,
            num_tir_sequences=0,
            seed=SEED,
        )
        write_synthetic_dataset(str(root), synth, progress=False)
    pairs = list_two_folder_pairs(str(pairs_dir)).pairs
    if len(pairs) != count:
        raise RuntimeError(f"expected {count} pairs under {pairs_dir}, found {len(pairs)}")
    return pairs


def moto_app() -> Any:
    """moto's WSGI application (every service, as ``moto_server`` serves it), with its service-module list cached.

    moto re-reads the list of its service modules from disk on every request (about 180 ``stat`` calls) to find the
    service a request is for; here it is read once. moto's behaviour is otherwise unchanged.
    """
    import moto.backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    modules = list(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: iter(modules)
    return DomainDispatcherApplication(create_backend_app)


def serve_s3(port: int) -> None:
    """Run the S3 server in this process until killed: :func:`moto_app` on ``127.0.0.1:port``.

    It runs under gunicorn (one worker process, so one in-memory store; 8 threads; HTTP keep-alive, as S3 keeps
    connections open) when gunicorn is installed, else under moto's own ``ThreadedMotoServer``, whose werkzeug
    server closes the connection after every response (a new TCP connection, and server thread, per request).
    """
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no log line per request
        moto_app()  # installs the module-list cache
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        while True:
            time.sleep(3600)

    class Server(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": 8,
                "keepalive": 60,
                "timeout": 0,
                "loglevel": "warning",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return moto_app()

    Server().run()


def start_s3_server() -> tuple[subprocess.Popen, str]:
    """The S3 server in a process of its own (so that its CPU is measured apart): ``(process, endpoint URL)``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve-s3", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"the S3 server did not start on port {port}") from None
            time.sleep(0.1)


def upload_pairs(root: Path, endpoint_url: str) -> tuple[str, list[tuple[str, str]]]:
    """Upload the pairs below ``root/pairs`` to ``s3://S3_BUCKET/pairs`` (same relative keys); list them there."""
    client = storage.s3_client(endpoint_url)
    client.create_bucket(Bucket=S3_BUCKET)
    files = sorted(p for p in (root / "pairs").rglob("*") if p.is_file())
    uri = f"s3://{S3_BUCKET}/pairs"

    def put(path: Path) -> None:
        storage.write_bytes(f"{uri}/{path.relative_to(root / 'pairs').as_posix()}", path.read_bytes(), endpoint_url)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    return uri, list(list_two_folder_pairs(uri, endpoint_url=endpoint_url).pairs)


def build_config(
    pairs_uri: str, preset: str, workers: int, batch_size: int, total: int, endpoint_url: str | None = None
) -> Config:
    """The distillation config whose data section all three modes use: one epoch of ``total`` samples."""
    return Config.model_validate(
        {
            "data": {
                "uri": pairs_uri,
                "sampling": {"preset": preset},
                "num_actors": workers,
                "cpus_per_actor": 1.0,
            },
            "distill": {"batch_size": batch_size, "epochs": 1, "samples_per_epoch": total},
            "scaling": {"num_workers": 1},
            "storage": {"s3_endpoint_url": endpoint_url},
        }
    )


def _load() -> float:
    return os.getloadavg()[0]


def _timed(run: Any) -> Result:
    before = _load()
    result = run()
    result.load = (before, _load())
    return result


def print_table(rounds: list[list[Result]], args: argparse.Namespace, crop: int) -> None:
    """Side-by-side table (median over rounds) and the ratios a/b and a/c."""
    names = [r.name for r in rounds[0]]

    def median(index: int, attr: str) -> float:
        return statistics.median(getattr(results[index], attr) for results in rounds)

    rows: list[tuple[str, list[str]]] = [
        ("samples/s (steady state)", [f"{median(i, 'rate'):.1f}" for i in range(len(names))]),
        ("samples/s incl. start-up", [f"{median(i, 'end_to_end_rate'):.1f}" for i in range(len(names))]),
        ("start-up to warm-up end [s]", [f"{median(i, 'startup_s'):.2f}" for i in range(len(names))]),
        (
            "ray.init [s]",
            [f"{r.cluster_s:.2f}" if r.cluster_s is not None else "-" for r in rounds[-1]],
        ),
        ("timed samples (last round)", [str(r.timed_samples) for r in rounds[-1]]),
        (f"share in one burst ({BURST_S:g} s, last round)", [f"{r.burst_share:.2f}" for r in rounds[-1]]),
        ("load avg 1 min before/after (last round)", [f"{r.load[0]:.2f}/{r.load[1]:.2f}" for r in rounds[-1]]),
    ]

    def cpu_row(label: str, attr: str) -> tuple[str, list[str]]:
        cells = []
        for i in range(len(names)):
            values = [results[i].per_sample(getattr(results[i], attr)) for results in rounds]
            known = [v for v in values if v is not None]
            cells.append(f"{statistics.median(known):.2f}" if known else "-")
        return label, cells

    if any(r.worker_cpu_s is not None for r in rounds[0]):
        rows.append(cpu_row("CPU ms/sample, Ray workers", "worker_cpu_s"))
        rows.append(cpu_row("CPU ms/sample, driver", "driver_cpu_s"))
    if any(r.server_cpu_s is not None for r in rounds[0]):
        rows.append(cpu_row("CPU ms/sample, S3 server", "server_cpu_s"))
        share = [
            statistics.median(
                (results[i].server_cpu_s or 0.0) / results[i].timed_s / (os.cpu_count() or 1) for results in rounds
            )
            for i in range(len(names))
        ]
        rows.append(("S3 server share of the machine", [f"{x:.0%}" for x in share]))
    width = max(len(label) for label, _ in rows) + 2
    col = max(18, *(len(n) + 2 for n in names))
    print()
    print(
        f"patch throughput: {args.pairs} JPEG pairs {IMAGE_WIDTH}x{IMAGE_HEIGHT}, preset {args.preset} "
        f"({crop}-pixel crops), batch {args.batch_size}, {args.workers} workers, "
        f"{os.cpu_count()} CPUs on this machine, median of {len(rounds)} round(s)"
    )
    print("".ljust(width) + "".join(n.rjust(col) for n in names))
    for label, cells in rows:
        print(label.ljust(width) + "".join(c.rjust(col) for c in cells))
    by_name: dict[str, int] = {}
    for i, r in enumerate(rounds[0]):
        by_name.setdefault(r.name[:3], i)  # "(a)": the local pipeline when S3 runs too
    if "(a)" in by_name:
        a = by_name["(a)"]
        for other in ("(b)", "(c)"):
            if other in by_name:
                o = by_name[other]
                ratios = [results[a].rate / results[o].rate for results in rounds]
                e2e = [results[a].end_to_end_rate / results[o].end_to_end_rate for results in rounds]
                per_round = ", ".join(f"{x:.2f}" for x in ratios)
                print(
                    f"ratio a/{other[1]}: {statistics.median(ratios):.2f} steady state (rounds: {per_round}); "
                    f"{statistics.median(e2e):.2f} incl. start-up"
                )
    for index, name in enumerate(names):
        bursts = [results[index].burst_share for results in rounds]
        if max(bursts) > BURST_WARNING:
            print(
                f"note: {name} delivered up to {max(bursts):.0%} of its timed samples within {BURST_S:g} s of the "
                "warm-up end (large output blocks): its steady-state rate measures unpacking a finished block, "
                "not production; compare the rates incl. start-up, or run more --samples"
            )


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="Ray actors = DataLoader workers = Ray CPUs")
    parser.add_argument("--samples", type=int, default=1200, help="timed samples per mode (after the warm-up)")
    parser.add_argument("--warmup-batches", type=int, default=2, help="untimed batches per worker")
    parser.add_argument("--batch-size", type=int, default=5, help="samples per batch (distill.batch_size)")
    parser.add_argument("--preset", choices=sorted(SAMPLING_PRESETS), default="dimp50")
    parser.add_argument("--pairs", type=int, default=48, help="synthetic pairs to write")
    parser.add_argument("--data", type=Path, default=None, help="folder for the pairs (default: a temp folder)")
    parser.add_argument("--modes", default="cba", help="which of a, b, c to run, in this order")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all modes; the table shows medians")
    parser.add_argument("--prefetch", type=int, default=2, help="DataLoader prefetch_factor (per worker)")
    parser.add_argument("--ray-prefetch", type=int, default=1, help="iter_batches prefetch_batches")
    parser.add_argument(
        "--opencv-threads", type=int, default=None, help="OpenCV threads in every worker (default: OpenCV's own)"
    )
    parser.add_argument("--ray-stats", action="store_true", help="print Ray Data's execution stats (stderr)")
    parser.add_argument(
        "--source",
        choices=("local", "s3", "both"),
        default="local",
        help="local: --modes on local files; s3: the Ray Data pipeline on local files and on a local S3 server, "
        "side by side; both: --modes on local files plus the pipeline on S3",
    )
    parser.add_argument("--serve-s3", type=int, default=None, help=argparse.SUPPRESS)  # internal: the S3 server
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.workers < 1 or args.samples < 1 or args.batch_size < 1 or args.warmup_batches < 0:
        parser.error("--workers, --samples and --batch-size must be >= 1, --warmup-batches >= 0")
    if set(args.modes) - set("abc") or not args.modes:
        parser.error(f"--modes takes letters of 'abc', got {args.modes!r}")
    return args


def s3_ratio(rounds: list[list[Result]]) -> float:
    """Median over rounds of S3 samples/s over local samples/s (steady state, Ray Data pipeline)."""
    ratios = []
    for results in rounds:
        by_source = {r.name.rsplit(" ", 1)[-1]: r for r in results if r.name.startswith("(a)")}
        ratios.append(by_source["s3"].rate / by_source["local"].rate)
    return statistics.median(ratios)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_s3 is not None:
        serve_s3(args.serve_s3)
        return 0
    env_vars: dict[str, str] = {}
    if args.opencv_threads is not None:
        # read by OpenCV when it loads: set before the DataLoader's forkserver and Ray's workers start
        env_vars["OPENCV_FOR_THREADS_NUM"] = str(args.opencv_threads)
        os.environ.update(env_vars)
        import cv2

        cv2.setNumThreads(args.opencv_threads)

    warmup = args.warmup_batches * args.workers * args.batch_size
    timed = -(-args.samples // args.batch_size) * args.batch_size  # whole batches
    total = warmup + timed
    tmp = None
    server: subprocess.Popen | None = None
    root = args.data
    if root is None:
        tmp = tempfile.mkdtemp(prefix="cmd-ray-patch-throughput-")
        root = Path(tmp)
    try:
        prepared = time.perf_counter()
        pairs = prepare_pairs(root, args.pairs)
        print(f"{len(pairs)} pairs ready under {root} ({time.perf_counter() - prepared:.1f} s)", file=sys.stderr)
        cfg = build_config(str(root / "pairs"), args.preset, args.workers, args.batch_size, total)
        data = cfg.data.model_dump(mode="json")
        modes = args.modes
        local_source, server_pid = "", None
        if args.source != "local":
            for name, value in {**S3_CREDENTIALS, "AWS_EC2_METADATA_DISABLED": "true"}.items():
                os.environ.setdefault(name, value)
            os.environ.setdefault("AWS_REGION", "us-east-1")
            env_vars.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
            server, endpoint = start_s3_server()
            server_pid = server.pid
            uploaded = time.perf_counter()
            s3_uri, s3_pairs = upload_pairs(root, endpoint)
            print(
                f"{len(s3_pairs)} pairs uploaded to {s3_uri} at {endpoint} ({time.perf_counter() - uploaded:.1f} s)",
                file=sys.stderr,
            )
            s3_cfg = build_config(s3_uri, args.preset, args.workers, args.batch_size, total, endpoint)
            local_source = "local"
            modes = ("a" if args.source == "s3" else modes.replace("a", "") + "a") + "s"
        runs = {
            "a": lambda: run_ray(
                cfg, pairs, warmup, args.workers, args.ray_prefetch, env_vars, args.ray_stats, local_source, server_pid
            ),
            "s": lambda: run_ray(
                s3_cfg, s3_pairs, warmup, args.workers, args.ray_prefetch, env_vars, args.ray_stats, "s3", server_pid
            ),
            "b": lambda: run_dataloader(pairs, data, total, args.batch_size, warmup, args.workers, args.prefetch),
            "c": lambda: run_single(pairs, data, total, args.batch_size, warmup),
        }
        rounds: list[list[Result]] = []
        for round_index in range(args.repeats):
            results = []
            for mode in modes:
                result = _timed(runs[mode])
                print(
                    f"round {round_index + 1} {result.name}: {result.rate:.1f} samples/s steady, "
                    f"{result.end_to_end_rate:.1f} incl. start-up, load {result.load[0]:.2f}->{result.load[1]:.2f}",
                    file=sys.stderr,
                )
                results.append(result)
            rounds.append(sorted(results, key=lambda r: r.name))
        reference = rounds[0][0].checksums
        same = all(r.checksums == reference for results in rounds for r in results)
        print_table(rounds, args, cfg.data.sampling.output_sz)
        print(f"same {total} samples in every mode (checksums): {'yes' if same else 'NO'}")
        if args.source != "local":
            print(f"s3/local samples/s: {s3_ratio(rounds):.2f}")
        return 0 if same else 1
    finally:
        if server is not None:
            server.kill()
            server.wait()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
