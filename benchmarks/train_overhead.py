"""Ray Train overhead: one distillation step in a plain PyTorch loop vs. inside a TorchTrainer with 1 and 2 workers.

Runs, in one process and one go, the same training step (``distill_step`` forward + Eq. 1 loss, backward, Adam step
of the variant's parameter groups) on the same fixed synthetic batch:

* ``p``  — a plain PyTorch loop in this (driver) process;
* ``r1`` — the same loop inside a Ray Train (V2) ``TorchTrainer`` with 1 worker (no DDP wrapper: world size 1);
* ``r2`` — the same loop with 2 workers (DDP over gloo), every worker stepping on the same per-worker batch,
  so the global batch is twice as large;

and prints one side-by-side table with the ratios r1/p and r2/p of the step time, the global throughput scaling
of r2, and the fixed start-up cost of ``fit()``. Target: Ray Train overhead ≤ 5 % (r1 step time ≤ 1.05 × p).

Fairness:

* Threads: Ray sets ``OMP_NUM_THREADS`` of a worker to its CPU count; here every process (the driver for ``p``,
  each worker) calls ``torch.set_num_threads`` explicitly. ``p`` and ``r1`` use ``--threads``; each ``r2`` worker
  gets ``min(--threads, num_cpus // 2)`` threads, and when that differs from ``--threads`` a second plain baseline
  with that thread count is measured, so ``r2`` is always compared with a plain loop of the same per-process threads.
* Only steady-state steps are timed (``--warmup`` steps first, untimed), inside the loop with ``perf_counter``; the
  workers hand their median, mean and min step time and median CPU time per step to the driver through
  ``ray.train.report`` metrics (the slowest worker's figures when there are two; DDP keeps them in lock-step anyway).
  CPU time per step (``process_time``, all threads of the stepping process) does not grow while a process waits for
  a core, so on a loaded machine it is the steadier figure; it does not see work done in other processes.
* Ray starts its workers at niceness 15 (``worker_niceness``); the driver runs at its own. The printout names both.
* The plain baselines run before *and* after the Ray runs (``p`` and ``p'``); the baseline step time is the median of
  both runs' steps, and the gap between them shows how much the machine's load drifted during the benchmark.

Start-up cost of ``fit()``: wall clock from calling ``fit()`` until every worker has entered its training function
(actor start, process group), plus the worker-side setup (model build, ``prepare_model``), plus the teardown from
the last step until ``fit()`` returns. Step times are in seconds per optimizer step; throughput in samples/s
(one sample = one reference + one test crop pair).

Run: ``.venv/bin/python benchmarks/train_overhead.py [--config configs/demo.yaml] [--preset tiny|dimp18] ...``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from cmd_ray.config import Config, load_config
from cmd_ray.data.boxes import center_box
from cmd_ray.data.processing import make_sample
from cmd_ray.data.synthetic import generate_pair
from cmd_ray.distill.step import distill_step, loss_options
from cmd_ray.models.backbone import freeze_batchnorm_stats
from cmd_ray.models.dimpnet import apply_variant_trainability, build_model
from cmd_ray.train.loop import build_optimizer

TARGET_OVERHEAD = 0.05
"""Ray Train overhead target: r1 step time at most 5 % above the plain loop's."""

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------------------
# the workload: one fixed batch, one training step


def make_batch(cfg: Config, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed training batch of the pipeline's schema from real synthetic pairs.

    Each sample: one procedural aligned RGB/TIR pair (``cfg.synth`` image size), its 'center' pseudo box
    (``cfg.data.center_box_fraction``) and DiMP crops of ``cfg.data.sampling`` (``S = output_sz``):
    ``rgb_ref``/``rgb_test`` uint8 ``[B, S, S, 3]``, ``tir_ref``/``tir_test`` uint8 ``[B, S, S]``, boxes
    float32 ``[B, 4]`` (``x, y, w, h`` crop pixels), ``test_label`` ``[B, L, L]``, ``test_proposals``
    ``[B, P, 4]``, ``proposal_iou`` ``[B, P]`` (plus the GMM densities with ``proposal_method=gmm``).
    """
    rng = np.random.default_rng(seed)
    width, height = cfg.synth.image_width, cfg.synth.image_height
    samples = []
    for _ in range(batch_size):
        rgb, tir = generate_pair(rng, width, height)
        box = center_box(height, width, cfg.data.center_box_fraction)
        samples.append(make_sample(rgb, tir, box, cfg.data.sampling, rng))
    return {key: torch.from_numpy(np.stack([s[key] for s in samples])) for key in samples[0]}


def build_training(cfg: Config, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The variant's network (random init, frozen parts frozen) and its Adam parameter groups."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    apply_variant_trainability(model, cfg.distill.variant, cfg.model.trainable_backbone_layers)
    optimizer, _ = build_optimizer(model, cfg)
    return model, optimizer


def timed_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    cfg: Config,
    steps: int,
    warmup: int,
) -> tuple[list[float], list[float]]:
    """Run ``warmup`` untimed then ``steps`` timed training steps.

    Returns:
        Per timed step: wall-clock seconds, and CPU seconds of this process (all its threads; load-robust: CPU
        time does not grow while the process waits for a core, only with extra work done in the process).

    ``model`` may be DDP-wrapped (the gradient all-reduce then happens inside ``backward`` and is timed).
    The loss is read back every step (``float``), as the training loop does for its epoch means.
    """
    core = getattr(model, "module", model)
    model.train()
    freeze_batchnorm_stats(core)  # what train/loop.py does after every model.train()
    options = loss_options(cfg.distill)
    times: list[float] = []
    cpu_times: list[float] = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        cpu_started = time.process_time()
        losses = distill_step(model, batch, cfg.distill.variant, cfg.distill.loss_weight_bbe, **options)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        loss = float(losses["loss"].detach())
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {i}: the benchmark would time garbage")
        if i >= warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
    return times, cpu_times


# --------------------------------------------------------------------------------------------------------------------
# the three setups


@dataclass
class Measurement:
    """One setup's figures; times in seconds."""

    name: str
    workers: int
    threads: int
    batch_size: int  # per process
    step_times: list[float]  # timed steps (for Ray: rank 0's; median_s / mean_s / min_s are the slowest worker's)
    median_s: float
    mean_s: float
    min_s: float
    cpu_s: float  # median CPU seconds per step of one process (the slowest worker's for Ray)
    setup_s: float  # model build (+ prepare_model on a worker)
    fit_s: float | None = None  # TorchTrainer.fit() wall clock
    startup_s: float | None = None  # fit() called -> training function entered on every worker
    teardown_s: float | None = None  # last step done on every worker -> fit() returned
    nice: int = 0  # scheduling niceness of the process(es) that ran the steps

    @property
    def samples_per_s(self) -> float:
        """Global throughput: every worker steps on its own ``batch_size`` samples."""
        return self.workers * self.batch_size / self.median_s

    @property
    def fixed_s(self) -> float | None:
        """Fixed start-up + teardown cost of fit(): everything that is not a warm-up or timed step."""
        if self.startup_s is None or self.teardown_s is None:
            return None
        return self.startup_s + self.setup_s + self.teardown_s


def plain_run(
    cfg: Config, batch: dict[str, torch.Tensor], steps: int, warmup: int, threads: int, name: str
) -> Measurement:
    """The loop in this process with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model, optimizer = build_training(cfg, cfg.distill.seed)
    setup = time.perf_counter() - started
    times, cpu_times = timed_steps(model, optimizer, batch, cfg, steps, warmup)
    return Measurement(
        name,
        1,
        threads,
        len(batch["rgb_ref"]),
        times,
        statistics.median(times),
        statistics.mean(times),
        min(times),
        statistics.median(cpu_times),
        setup,
    )


def _worker_loop(loop_config: dict[str, Any]) -> None:
    """Ray Train training function: the same loop as :func:`plain_run`, stats reported through ``ray.train.report``."""
    entered = time.time()
    torch.set_num_threads(loop_config["threads"])  # Ray set OMP_NUM_THREADS = CPUs of the worker; make it explicit
    cfg = Config.model_validate(loop_config["config"])
    started = time.perf_counter()
    model, optimizer = build_training(cfg, cfg.distill.seed)  # same init on every rank (DDP broadcasts rank 0's anyway)
    model = ray.train.torch.prepare_model(model)  # DDP when world size > 1, as train/loop.py does
    setup = time.perf_counter() - started
    times, cpu_times = timed_steps(
        model, optimizer, loop_config["batch"], cfg, loop_config["steps"], loop_config["warmup"]
    )
    finished = time.time()
    # Slowest worker's figures (MAX over ranks); absolute wall-clock times are comparable: one machine.
    stats = torch.tensor(
        [
            statistics.median(times),
            statistics.mean(times),
            min(times),
            statistics.median(cpu_times),
            setup,
            entered,
            finished,
            float(torch.get_num_threads()),
            float(os.nice(0)),  # Ray starts workers at worker_niceness (15): lower CPU priority than the driver
        ],
        dtype=torch.float64,
    )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    keys = ("median_s", "mean_s", "min_s", "cpu_s", "setup_s", "entered_at", "finished_at", "threads", "nice")
    metrics: dict[str, Any] = dict(zip(keys, stats.tolist(), strict=True))
    metrics["rank0_step_times"] = times
    # Ray Train V2 keeps in Result.metrics only what was reported with a checkpoint: rank 0 attaches a tiny one
    # (after the timed steps, so its upload counts as teardown).
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            Path(directory, "stats.json").write_text(json.dumps(metrics))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)


def ray_run(
    cfg: Config,
    batch: dict[str, torch.Tensor],
    steps: int,
    warmup: int,
    threads: int,
    workers: int,
    storage: str,
    name: str,
) -> Measurement:
    """The loop in a TorchTrainer (Ray Train V2, gloo) with ``workers`` workers of ``threads`` CPUs/threads each."""
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "batch": batch,
            "steps": steps,
            "warmup": warmup,
            "threads": threads,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False, resources_per_worker={"CPU": threads}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=f"train-overhead-{name}", storage_path=storage),
    )
    called = time.time()
    result = trainer.fit()
    returned = time.time()
    if result.error is not None:
        raise RuntimeError(f"{name}: Ray Train run failed: {result.error}")
    m = result.metrics
    if int(m["threads"]) != threads:
        raise RuntimeError(f"{name}: a worker ran with {int(m['threads'])} torch threads instead of {threads}")
    return Measurement(
        name,
        workers,
        threads,
        len(batch["rgb_ref"]),
        list(m["rank0_step_times"]),
        m["median_s"],
        m["mean_s"],
        m["min_s"],
        m["cpu_s"],
        m["setup_s"],
        fit_s=returned - called,
        startup_s=m["entered_at"] - called,
        teardown_s=returned - m["finished_at"],
        nice=int(m["nice"]),
    )


def pooled(first: Measurement, again: Measurement) -> Measurement:
    """One baseline from the plain runs before and after the Ray runs (median over all their steps)."""
    times = first.step_times + again.step_times
    return Measurement(
        f"{first.name} pool",
        1,
        first.threads,
        first.batch_size,
        times,
        statistics.median(times),
        statistics.mean(times),
        min(times),
        (first.cpu_s + again.cpu_s) / 2,
        (first.setup_s + again.setup_s) / 2,
    )


# --------------------------------------------------------------------------------------------------------------------
# report


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: Sequence[Measurement]) -> str:
    """Side-by-side table: per-step median/mean/min (ms), global samples/s (at the median), fit() costs (s)."""
    header = (
        f"{'setup':<11}{'workers':>8}{'threads':>8}{'batch/w':>8}{'steps':>6}"
        f"{'median ms':>11}{'mean ms':>9}{'min ms':>8}{'cpu ms':>8}{'samples/s':>11}"
        f"{'fit s':>8}{'start s':>9}{'setup s':>9}{'teardown s':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.name:<11}{r.workers:>8}{r.threads:>8}{r.batch_size:>8}{len(r.step_times):>6}"
            f"{r.median_s * 1e3:>11.1f}{r.mean_s * 1e3:>9.1f}{r.min_s * 1e3:>8.1f}{r.cpu_s * 1e3:>8.1f}"
            f"{r.samples_per_s:>11.2f}"
            f"{_opt(r.fit_s, '.1f'):>8}{_opt(r.startup_s, '.1f'):>9}{r.setup_s:>9.2f}{_opt(r.teardown_s, '.1f'):>11}"
        )
    return "\n".join(lines)


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"), help="YAML config (default: demo)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config override, repeatable (e.g. distill.variant=C1)",
    )
    parser.add_argument("--preset", default="tiny", help="model.preset: tiny (default) or dimp18, ...")
    parser.add_argument("--batch-size", type=int, default=None, help="per-process batch (default: distill.batch_size)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per setup (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps before them (default 5)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (= Ray CPUs) of the plain loop and of the 1-worker run (default 1)",
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    args = parser.parse_args(argv)
    for flag in ("steps", "threads", "num_cpus"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_cpus < 2:
        parser.error(f"--num-cpus must be >= 2 for the 2-worker run, got {args.num_cpus}")
    if args.threads > args.num_cpus:
        parser.error(f"--threads {args.threads} exceeds --num-cpus {args.num_cpus}: the 1-worker run would not fit")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = [*args.overrides, f"model.preset={args.preset}"]
    if args.batch_size is not None:
        overrides.append(f"distill.batch_size={args.batch_size}")
    cfg = load_config(args.config, overrides)  # validated before Ray starts
    batch = make_batch(cfg, cfg.distill.batch_size, cfg.distill.seed)
    threads_r2 = min(args.threads, args.num_cpus // 2)
    s = cfg.data.sampling

    print("== Ray Train overhead benchmark (benchmarks/train_overhead.py)")
    print(f"config {args.config} + {overrides}")
    print(
        f"model {cfg.model.architecture}/{cfg.model.preset}, variant {cfg.distill.variant}, per-process batch "
        f"{cfg.distill.batch_size} synthetic pairs, crops {s.output_sz}px, {s.num_proposals} proposals; "
        f"{args.warmup} warm-up + {args.steps} timed steps per setup"
    )
    print(
        f"threads: plain p and r1 use {args.threads}; each r2 worker uses {threads_r2} "
        f"({args.num_cpus} Ray CPUs / 2 workers), set with torch.set_num_threads in every process "
        "(Ray's OMP_NUM_THREADS default is overridden explicitly)"
    )
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} cores")
    print(f"load before: {_uptime()}")
    sys.stdout.flush()

    logging.getLogger("ray").setLevel(logging.WARNING)
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="cmd-ray-train-overhead-") as storage:
            baselines = [args.threads] + ([threads_r2] if threads_r2 != args.threads else [])
            first = {t: plain_run(cfg, batch, args.steps, args.warmup, t, f"p{t}t") for t in baselines}
            r1 = ray_run(cfg, batch, args.steps, args.warmup, args.threads, 1, storage, "r1")
            r2 = ray_run(cfg, batch, args.steps, args.warmup, threads_r2, 2, storage, "r2")
            again = {t: plain_run(cfg, batch, args.steps, args.warmup, t, f"p{t}t'") for t in baselines}
    finally:
        ray.shutdown()
    print(f"load after:  {_uptime()}")

    base = {t: pooled(first[t], again[t]) for t in baselines}
    rows = [m for t in baselines for m in (first[t], again[t], base[t])] + [r1, r2]
    print()
    print(format_table(rows))
    print()
    drifts = {t: again[t].median_s / first[t].median_s - 1 for t in baselines}
    for t, drift in drifts.items():
        print(f"load drift p{t}t -> p{t}t' (plain before vs after the Ray runs): {drift:+.1%} median step time")
    p1, p2 = base[args.threads], base[threads_r2]
    overhead = r1.median_s / p1.median_s - 1
    print("baseline p = the pooled plain runs before and after (p.. pool rows)")
    print(
        f"r1/p  step time (1 worker vs plain, {args.threads} thread(s) each): {r1.median_s / p1.median_s:.3f} "
        f"(median), {r1.mean_s / p1.mean_s:.3f} (mean), {r1.min_s / p1.min_s:.3f} (min), "
        f"{r1.cpu_s / p1.cpu_s:.3f} (CPU time)"
    )
    print(
        f"r2/p  step time (2 DDP workers vs plain, {threads_r2} thread(s) per process): "
        f"{r2.median_s / p2.median_s:.3f} (median), {r2.mean_s / p2.mean_s:.3f} (mean), "
        f"{r2.min_s / p2.min_s:.3f} (min), {r2.cpu_s / p2.cpu_s:.3f} (CPU time)"
    )
    print(
        f"throughput scaling r2 / p: {r2.samples_per_s / p2.samples_per_s:.2f}x global samples/s "
        f"(ideal 2.00x; r2/r1: {r2.samples_per_s / r1.samples_per_s:.2f}x)"
    )
    print(
        f"niceness: plain loop {os.nice(0)}, Ray Train workers {r1.nice} (r1) / {r2.nice} (r2); a higher value loses "
        "CPU to other processes of the same session under contention"
    )
    print(
        f"fixed cost of fit(): r1 {r1.fixed_s:.1f} s, r2 {r2.fixed_s:.1f} s "
        "(start-up until every worker runs + worker setup + teardown; not in the step times)"
    )
    verdict = "MET" if overhead <= TARGET_OVERHEAD else "NOT MET"
    if abs(drifts[args.threads]) > TARGET_OVERHEAD:
        verdict += " (inconclusive: the plain loop's own time drifted by more than the target during the run)"
    print(
        f"target: Ray Train step-time overhead r1 vs p <= {TARGET_OVERHEAD:.0%}: measured {overhead:+.1%} -> {verdict}"
    )
    cpu_overhead = r1.cpu_s / p1.cpu_s - 1
    print(
        f"load-robust check: CPU time per step r1 vs p {cpu_overhead:+.1%} "
        f"({'within' if cpu_overhead <= TARGET_OVERHEAD else 'above'} the {TARGET_OVERHEAD:.0%} target; counts only "
        "work in the stepping process, not Ray's other processes)"
    )
    if threads_r2 == args.threads:
        print(
            f"note: r2's 2 workers x {threads_r2} thread(s) fill {2 * threads_r2} of {os.cpu_count()} cores; the "
            "plain baseline runs the same per-process threads, so r2/p is the cost of DDP (gradient all-reduce "
            "over gloo, two processes sharing the machine) per step at equal per-process compute"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
