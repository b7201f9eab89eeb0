"""Patch throughput: decode + DiMP sampling of 640x512 JPEG pairs three ways, side by side.

(a) the Ray Data pipeline (``cmd_ray.data.pipeline.training_dataset`` on ``data.num_actors = N`` actors of one CPU,
    on a local Ray cluster of N CPUs, consumed with ``iter_batches``);
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
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmd_ray.config import SAMPLING_PRESETS, Config, SynthConfig
from cmd_ray.data.pairs import list_two_folder_pairs
from cmd_ray.data.pipeline import TRAIN_STREAM, SampleMaker
from cmd_ray.data.synthetic import write_synthetic_dataset

IMAGE_WIDTH, IMAGE_HEIGHT = 640, 512
SEED = 0
BURST_S = 0.05
"""Samples arriving within this many seconds of the warm-up end count as one burst (see ``Result.burst_share``)."""
BURST_WARNING = 0.25


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
    """Receives batches, times the steady state after ``warmup_samples`` and records checksums."""

    def __init__(self, result: Result, warmup_samples: int, start: float) -> None:
        self.result = result
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
        else:
            self._arrivals.append((now, self._received))

    def finish(self) -> Result:
        end = time.perf_counter()
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
) -> Result:
    """(a) Ray Data: ``training_dataset`` on ``workers`` actors of one CPU, on a local cluster of ``workers`` CPUs."""
    import ray

    from cmd_ray.data.pipeline import SkipCounter, training_dataset

    result = Result(f"(a) Ray Data x{workers}")
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
        consumer = Consumer(result, warmup, start)
        for batch in dataset.iter_batches(
            batch_size=cfg.distill.batch_size, batch_format="numpy", prefetch_batches=prefetch_batches
        ):
            consumer.take(batch)
        consumer.finish()
        skipped = ray.get(skip_counter.report.remote()).skipped
        if skipped:
            raise RuntimeError(f"Ray Data skipped {skipped} pairs of the synthetic set")
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


def build_config(pairs_uri: str, preset: str, workers: int, batch_size: int, total: int) -> Config:
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
    by_name = {r.name[:3]: i for i, r in enumerate(rounds[0])}
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
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.workers < 1 or args.samples < 1 or args.batch_size < 1 or args.warmup_batches < 0:
        parser.error("--workers, --samples and --batch-size must be >= 1, --warmup-batches >= 0")
    if set(args.modes) - set("abc") or not args.modes:
        parser.error(f"--modes takes letters of 'abc', got {args.modes!r}")
    return args


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
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
        runs = {
            "a": lambda: run_ray(cfg, pairs, warmup, args.workers, args.ray_prefetch, env_vars, args.ray_stats),
            "b": lambda: run_dataloader(pairs, data, total, args.batch_size, warmup, args.workers, args.prefetch),
            "c": lambda: run_single(pairs, data, total, args.batch_size, warmup),
        }
        rounds: list[list[Result]] = []
        for round_index in range(args.repeats):
            results = []
            for mode in args.modes:
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
        return 0 if same else 1
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
