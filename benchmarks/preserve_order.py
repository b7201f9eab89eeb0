"""What ``data.preserve_order`` costs: the distillation sample stream with Ray Data's in-order delivery off and on.

With ``preserve_order`` Ray Data hands out the stream's blocks in index order, so epoch ``e`` of a run is exactly
samples ``e·P … (e+1)·P - 1``; without it, whichever block is ready first goes first and samples near an epoch's end
can move to the next epoch. The price is head-of-line blocking: a block that takes longer (a slow read, a busy
node) holds back the blocks behind it. This benchmark measures that price on the real stream (``SampleMaker`` on
``data.num_actors`` Ray Data actors, index blocks as ``training_dataset`` cuts them) in rounds that alternate
off/on, under two kinds of data:

- ``uniform``: every sample costs the same (decode + crop of synthetic JPEG pairs on local disk);
- ``tail``: besides, a fixed, seeded share of the samples (``--tail-share``) waits ``--tail-ms`` first, as a read at
  S3's latency tail or a retried one does (a wait, no CPU), the same samples in both settings.

and two consumers: one that takes batches as fast as they come (the stream's own rate, the worst case for ordering)
and, with ``--step-ms``, one that spends that long on each batch (a training step on a GPU, during which the CPUs
are free). Per run it prints steady-state samples/s, the longest wait for a batch, and whether the indices came in
order; the last lines give ``on/off samples/s`` per condition (median over rounds)::

    .venv/bin/python benchmarks/preserve_order.py --repeats 3
    .venv/bin/python benchmarks/preserve_order.py --workers 2 --samples 800 --tail-share 0.02 --tail-ms 300

Every run cuts the same samples (checked by the set of sample indices per run).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmd_ray.config import Config, SynthConfig
from cmd_ray.data.distill_stream import SampleMaker, list_pairs
from cmd_ray.data.streams import SAMPLE_INDEX, TRAIN_STREAM, configure_dataset, index_blocks, read_policy
from cmd_ray.data.synthetic import write_synthetic_dataset

SEED = 0
TAIL_STREAM = 99
"""Seed stream that picks the slow samples (the same ones in every run)."""


class TailLatencyMaker(SampleMaker):
    """``SampleMaker`` whose sample ``i`` first waits ``tail_s`` when ``(SEED, TAIL_STREAM, i)`` draws below
    ``tail_share``: a read at the latency tail (network wait, no CPU), the same samples in every run."""

    def __init__(self, *args: Any, tail_share: float = 0.0, tail_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tail_share, self._tail_s = tail_share, tail_s

    def sample(self, index: int) -> dict[str, np.ndarray]:
        if self._tail_share and np.random.default_rng([SEED, TAIL_STREAM, index]).random() < self._tail_share:
            time.sleep(self._tail_s)  # the modelled slow read
        return super().sample(index)


@dataclass
class Run:
    preserve_order: bool
    condition: str
    step_ms: float
    samples: int = 0
    timed_s: float = 0.0
    longest_wait_s: float = 0.0
    in_order: bool = False
    indices: frozenset[int] = frozenset()

    @property
    def rate(self) -> float:
        return self.samples / self.timed_s if self.timed_s else float("nan")


def stream(cfg: Config, pairs: Any, tail_share: float, tail_s: float) -> Any:
    """The training stream of ``cfg`` as ``training_dataset`` builds it, cut by :class:`TailLatencyMaker`."""
    import ray

    indices = np.arange(cfg.distill.samples_per_epoch, dtype=np.int64)
    blocks = index_blocks(indices, cfg.distill.batch_size, cfg.data.num_actors)
    rows = configure_dataset(ray.data.from_numpy(blocks), cfg)
    return rows.map_batches(
        TailLatencyMaker,
        fn_constructor_kwargs={
            "pairs": ray.put(pairs),
            "data": cfg.data.model_dump(mode="json"),
            "seed": SEED,
            "stream": TRAIN_STREAM,
            "endpoint_url": None,
            "retry": read_policy(cfg),
            "tail_share": tail_share,
            "tail_s": tail_s,
        },
        batch_size=cfg.distill.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.data.num_actors),
        num_cpus=cfg.data.cpus_per_actor,
    )


def measure(cfg: Config, pairs: Any, run: Run, warmup: int, tail_share: float, tail_s: float) -> Run:
    """Consume one stream: untimed warm-up batches, then the rest timed (samples/s, longest wait for a batch)."""
    dataset = stream(cfg, pairs, tail_share if run.condition == "tail" else 0.0, tail_s)
    seen: list[int] = []
    waits: list[float] = []
    started = None
    timed = 0
    last = time.perf_counter()
    for count, batch in enumerate(
        dataset.iter_batches(batch_size=cfg.distill.batch_size, batch_format="numpy", prefetch_batches=1)
    ):
        now = time.perf_counter()
        seen.extend(int(i) for i in batch[SAMPLE_INDEX])
        if count == warmup:
            started = now
        elif started is not None:
            waits.append(now - last)
            timed += len(batch[SAMPLE_INDEX])
        if run.step_ms:
            time.sleep(run.step_ms / 1000)  # the modelled training step (GPU busy, CPUs free)
        last = time.perf_counter()
    if started is None:
        raise SystemExit(f"--samples too small: no batch after the {warmup} warm-up batches")
    run.samples, run.timed_s = timed, last - started
    run.longest_wait_s = max(waits, default=0.0)
    run.in_order = seen == sorted(seen)
    run.indices = frozenset(seen)
    return run


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="Ray Data actors = Ray CPUs (data.num_actors)")
    parser.add_argument("--samples", type=int, default=800, help="samples per run (one epoch)")
    parser.add_argument("--batch-size", type=int, default=5, help="distill.batch_size")
    parser.add_argument("--warmup-batches", type=int, default=8, help="untimed batches per run")
    parser.add_argument("--preset", default="dimp50", help="data.sampling.preset (DiMP-50: 288-pixel crops)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(640, 512), metavar=("W", "H"))
    parser.add_argument("--pairs", type=int, default=32, help="synthetic pairs")
    parser.add_argument("--tail-share", type=float, default=0.02, help="'tail': share of slow samples")
    parser.add_argument("--tail-ms", type=float, default=300.0, help="'tail': how long a slow sample waits")
    parser.add_argument("--step-ms", type=float, default=0.0, help="also run a consumer spending this per batch")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each alternates off/on per condition")
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    import ray

    args = parse_args(argv)
    folder = tempfile.mkdtemp(prefix="preserve-order-")
    width, height = args.image_size
    synth = SynthConfig(
        num_pairs=args.pairs, image_width=width, image_height=height, num_rgb_sequences=0, num_tir_sequences=0
    )
    pairs_uri = write_synthetic_dataset(folder, synth, progress=False).pairs_uri
    base = Config.model_validate(
        {
            "data": {
                "uri": pairs_uri,
                "sampling": {"preset": args.preset},
                "num_actors": args.workers,
                "cpus_per_actor": 1.0,
                "progress": False,
            },
            "distill": {"batch_size": args.batch_size, "epochs": 1, "samples_per_epoch": args.samples},
        }
    )
    pairs = list_pairs(base)
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    steps = [0.0] + ([args.step_ms] if args.step_ms else [])
    runs: list[Run] = []
    print(f"load before: {os.getloadavg()[0]:.2f}")
    try:
        measure(base, pairs, Run(False, "uniform", 0.0), args.warmup_batches, 0.0, 0.0)  # untimed: first start-up
        for round_ in range(args.repeats):
            for condition in ("uniform", "tail"):
                for step_ms in steps:
                    order = (False, True) if round_ % 2 == 0 else (True, False)
                    for preserve in order:
                        cfg = base.model_copy(
                            update={"data": base.data.model_copy(update={"preserve_order": preserve})}
                        )
                        run = Run(preserve, condition, step_ms)
                        measure(cfg, pairs, run, args.warmup_batches, args.tail_share, args.tail_ms / 1000)
                        runs.append(run)
                        print(
                            f"round {round_} {condition:7s} step {step_ms:5.0f} ms  preserve_order={preserve!s:5s}"
                            f"  {run.rate:7.1f} samples/s  longest wait {run.longest_wait_s * 1000:6.0f} ms"
                            f"  in order: {run.in_order}  load {os.getloadavg()[0]:.2f}",
                            flush=True,
                        )
    finally:
        ray.shutdown()
    expected = frozenset(range(args.samples))
    if any(run.indices != expected for run in runs):
        raise SystemExit("a run lost or repeated samples")
    print(
        f"\n{args.workers} actors, {args.samples} samples of {width}x{height} pairs ({args.preset} crops), batch "
        f"{args.batch_size}; 'tail': {args.tail_share:.0%} of samples wait {args.tail_ms:.0f} ms; "
        f"median of {args.repeats} rounds"
    )
    print(f"{'condition':22s} {'off samples/s':>14s} {'on samples/s':>13s} {'off wait ms':>12s} {'on wait ms':>11s}")
    for condition in ("uniform", "tail"):
        for step_ms in steps:
            pick = [r for r in runs if r.condition == condition and r.step_ms == step_ms]
            off = [r for r in pick if not r.preserve_order]
            on = [r for r in pick if r.preserve_order]
            off_rate = statistics.median(r.rate for r in off)
            on_rate = statistics.median(r.rate for r in on)
            name = f"{condition}, step {step_ms:.0f} ms"
            print(
                f"{name:22s} {off_rate:14.1f} {on_rate:13.1f} "
                f"{statistics.median(r.longest_wait_s for r in off) * 1000:12.0f} "
                f"{statistics.median(r.longest_wait_s for r in on) * 1000:11.0f}"
            )
            ratios = [b.rate / a.rate for a, b in zip(off, on, strict=True)]
            print(
                f"  on/off samples/s ({name}): {on_rate / off_rate:.3f} "
                f"(per round: {' / '.join(f'{r:.2f}' for r in ratios)})"
            )
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
