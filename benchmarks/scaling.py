"""What scales: the distillation on one vs two data nodes and on one vs two train nodes, side by side in one run.

One multi-node Ray cluster on this machine (:mod:`cmd_ray.local_cluster`: a head with no workload, 2 data nodes,
2 train nodes, ``--cpus-per-node`` CPUs each) runs the same tiny distillation in four layouts, one after the other:

| layout | Ray Data (``SampleMaker`` actors)       | DDP (training workers)              |
|--------|-----------------------------------------|-------------------------------------|
| d1·t1  | 1 actor on 1 data node                  | 1 worker on 1 train node            |
| d2·t1  | 2 actors, one per data node             | 1 worker                            |
| d1·t2  | 1 actor                                 | 2 workers, one per train node       |
| d2·t2  | 2 actors                                | 2 workers                           |

Each layout trains ``--epochs`` epochs of ``--samples`` samples from local synthetic pairs; the first epoch is not
timed (actor start-up, first decode, DDP set-up). For the timed epochs the table gives:

- training samples/s: the loop's own figure (``samples_per_s``, median over epochs) and the wall-clock rate between
  the first and the last checkpoint (it includes checkpointing and the report);
- CPU-seconds per sample of every process of the cluster (every process of every node, sampled every 0.25 s so a
  worker that exits keeps what it used, and this driver), and split by role: data nodes, train nodes, head +
  driver. CPU per sample is what carries over to a real cluster, where every node has cores of its own;
- ``data_wait_fraction``: the share of a training step spent waiting for the next batch.

On a machine with fewer cores than the layout's nodes ask for, the nodes share the cores and the wall-clock gain
of a second node is capped by them: read the ratios next to the load average printed with them.

Run from the repository root::

    .venv/bin/python benchmarks/scaling.py --samples 160 --epochs 3 --repeats 3

The table gives medians over the rounds (``--repeats``; the layouts take turns within each round, so a change in
the machine's load hits them alike); the last lines give each layout against d1·t1, median (min–max) over rounds.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cmd_ray.config import Config, SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.local_cluster import ROLE_LABEL, TRAIN_RESOURCE, LocalCluster, Periodically, local_cluster, process_tree

LAYOUTS: tuple[tuple[int, int], ...] = ((1, 1), (2, 1), (1, 2), (2, 2))
"""(data nodes, train nodes) of each layout, in the order they run."""
POLL_S = 0.25
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` itself; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is the state (field 3 of proc(5)): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class CpuLedger:
    """The CPU seconds of every process of the cluster and of this driver, by role, sampled while it runs.

    Each process is counted by its own CPU time as last seen, so a worker that exits between two marks keeps
    what it used until its last sample (a node's total over its process tree would drop when a worker that its
    raylet never reaps goes away).
    """

    cluster: LocalCluster
    last: dict[int, tuple[str, float]] = field(default_factory=dict)

    def sample(self) -> None:
        for node in self.cluster.nodes:
            if node.alive:
                for pid in process_tree(node.process.pid):
                    self.last[pid] = (node.role, process_cpu_seconds(pid))
        self.last[os.getpid()] = ("driver", process_cpu_seconds(os.getpid()))

    def mark(self) -> dict[int, tuple[str, float]]:
        self.sample()
        return dict(self.last)

    @staticmethod
    def used_between(start: dict[int, tuple[str, float]], end: dict[int, tuple[str, float]]) -> dict[str, float]:
        """CPU seconds per role (``head``, ``data``, ``train``, ``driver``) from mark ``start`` to mark ``end``."""
        by_role = dict.fromkeys(("head", "data", "train", "driver"), 0.0)
        for pid, (role, cpu) in end.items():
            by_role[role] += cpu - start.get(pid, (role, 0.0))[1]
        return by_role


@dataclass
class EpochClock:
    """Wall time and a CPU mark at the moment each epoch's checkpoint folder appears (see :meth:`poll`)."""

    ledger: CpuLedger
    run_folder: Path
    epochs: int
    marks: dict[int, tuple[float, dict[int, tuple[str, float]]]] = field(default_factory=dict)

    def poll(self) -> None:
        """Samples the CPU ledger; marks every epoch whose checkpoint folder is new (run every ``POLL_S``)."""
        self.ledger.sample()
        for epoch in range(self.epochs):
            if epoch not in self.marks and (self.run_folder / f"epoch_{epoch:04d}").exists():
                self.marks[epoch] = (time.perf_counter(), self.ledger.mark())


@dataclass
class LayoutResult:
    data_nodes: int
    train_nodes: int
    loop_samples_per_s: float
    wall_samples_per_s: float
    cpu_per_sample: dict[str, float]
    data_wait_fraction: float

    @property
    def name(self) -> str:
        return f"d{self.data_nodes}·t{self.train_nodes}"

    @property
    def total_cpu_per_sample(self) -> float:
        return sum(self.cpu_per_sample.values())


def layout_config(
    base: Config, args: argparse.Namespace, workdir: Path, data_nodes: int, train_nodes: int, round_: int
) -> Config:
    """The benchmark's distillation placed by role: ``data_nodes`` actors, one training worker per train node."""
    run = f"scaling-d{data_nodes}-t{train_nodes}-r{round_}"
    return load_config(
        None,
        [
            f"data.uri={workdir / 'synthetic' / 'pairs'}",
            f"data.sampling.output_sz={base.data.sampling.output_sz}",
            f"data.num_actors={data_nodes}",
            f"data.cpus_per_actor={args.cpus_per_node:g}",
            "data.progress=false",
            f"data.label_selector={{{ROLE_LABEL}: data}}",
            f"model.preset={args.preset}",
            "model.init_checkpoint=null",
            f"distill.samples_per_epoch={args.samples}",
            f"distill.epochs={args.epochs}",
            f"distill.batch_size={args.batch_size}",
            "distill.val_samples=0",  # no validation stream: it would take the data nodes' CPUs between epochs
            "tune.metric=loss",  # (val_loss, the default, asks for a validation split even outside a sweep)
            f"scaling.num_workers={train_nodes}",
            f"scaling.cpus_per_worker={args.cpus_per_node:g}",
            f"scaling.label_selector={{{ROLE_LABEL}: train}}",
            f"scaling.resources_per_worker={{{TRAIN_RESOURCE}: 1}}",
            f"storage.storage_path={workdir / 'checkpoints'}",
            f"storage.run_name={run}",
            f"mlflow.tracking_uri=sqlite:///{workdir / 'mlflow.db'}",
            f"mlflow.registered_model_name={run}",
        ],
    )


def run_layout(cluster: LocalCluster, cfg: Config, data_nodes: int, train_nodes: int) -> LayoutResult:
    from cmd_ray.train.trainer import run_distillation

    epochs, per_epoch = cfg.distill.epochs, cfg.distill.samples_per_epoch
    run_folder = Path(cfg.storage.storage_path) / cfg.storage.run_name
    clock = EpochClock(CpuLedger(cluster), run_folder, epochs)
    with Periodically(POLL_S, clock.poll):
        result = run_distillation(cfg)
    (start, cpu_start), (end, cpu_end) = clock.marks[0], clock.marks[epochs - 1]
    used = CpuLedger.used_between(cpu_start, cpu_end)
    timed = (epochs - 1) * per_epoch
    return LayoutResult(
        data_nodes,
        train_nodes,
        loop_samples_per_s=statistics.median(timed_epochs(cfg, result.run_id, "samples_per_s")),
        wall_samples_per_s=timed / (end - start),
        cpu_per_sample={role: cpu / timed for role, cpu in used.items()},
        data_wait_fraction=statistics.median(timed_epochs(cfg, result.run_id, "data_wait_fraction")),
    )


def timed_epochs(cfg: Config, run_id: str, key: str) -> list[float]:
    """The values of metric ``key`` the training loop logged for epochs 1, 2, … (MLflow holds them per epoch)."""
    from cmd_ray import mlflow_runs

    history = mlflow_runs.client(cfg).get_metric_history(run_id, key)
    return [metric.value for metric in history if metric.step >= 1]


def _median(rounds: list[list[LayoutResult]], column: int, value: Callable[[LayoutResult], float]) -> float:
    return statistics.median(value(results[column]) for results in rounds)


def format_table(rounds: list[list[LayoutResult]]) -> str:
    """Medians over the rounds, one column per layout."""
    names = [r.name for r in rounds[0]]
    rows: list[tuple[str, Callable[[LayoutResult], float], str]] = [
        ("training samples/s (loop)", lambda r: r.loop_samples_per_s, "10.1f"),
        ("training samples/s (wall clock)", lambda r: r.wall_samples_per_s, "10.1f"),
        ("CPU ms/sample, whole cluster", lambda r: 1000 * r.total_cpu_per_sample, "10.1f"),
        ("  data nodes", lambda r: 1000 * r.cpu_per_sample["data"], "10.1f"),
        ("  train nodes", lambda r: 1000 * r.cpu_per_sample["train"], "10.1f"),
        ("  head + driver", lambda r: 1000 * (r.cpu_per_sample["head"] + r.cpu_per_sample["driver"]), "10.1f"),
        ("data_wait_fraction", lambda r: r.data_wait_fraction, "10.2f"),
    ]
    lines = [f"{'median of ' + str(len(rounds)) + ' round(s)':34}" + "".join(f"{n:>10}" for n in names)]
    for label, value, fmt in rows:
        lines.append(f"{label:34}" + "".join(format(_median(rounds, c, value), fmt) for c in range(len(names))))
    return "\n".join(lines)


def format_ratios(rounds: list[list[LayoutResult]]) -> str:
    """Each layout against the first, per round: median (min–max) of samples/s and of CPU-seconds per sample."""

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    lines = []
    for column in range(1, len(rounds[0])):
        name, base = rounds[0][column].name, rounds[0][0].name
        speed = [r[column].loop_samples_per_s / r[0].loop_samples_per_s for r in rounds]
        wall = [r[column].wall_samples_per_s / r[0].wall_samples_per_s for r in rounds]
        cpu = [r[column].total_cpu_per_sample / r[0].total_cpu_per_sample for r in rounds]
        lines.append(
            f"{name}/{base}: samples/s (loop) {spread(speed)}  (wall) {spread(wall)}  CPU-s/sample {spread(cpu)}"
        )
    return "\n".join(lines)


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=160, help="samples per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per layout; the first is not timed")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--preset", default="tiny", help="model.preset")
    parser.add_argument("--pairs", type=int, default=100, help="synthetic pairs to write")
    parser.add_argument("--image-size", default="320x256", help="WIDTHxHEIGHT of the synthetic pairs")
    parser.add_argument("--cpus-per-node", type=float, default=1.0, help="CPUs of each data and train node")
    parser.add_argument("--config", default="configs/demo.yaml", help="its data.sampling geometry is used")
    parser.add_argument("--repeats", type=int, default=1, help="rounds through the four layouts (medians, spread)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is not timed)")
    if args.samples % (2 * args.batch_size):
        parser.error("--samples must be a multiple of 2 x --batch-size (whole steps with one and two workers)")
    return args


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    base = load_config(args.config, [])
    with tempfile.TemporaryDirectory(prefix="cmdray-scaling-") as tmp:
        workdir = Path(tmp)
        synth = SynthConfig(
            num_pairs=args.pairs,
            image_width=width,
            image_height=height,
            num_rgb_sequences=0,
            num_tir_sequences=0,
            seed=0,
        )
        write_synthetic_dataset(str(workdir / "synthetic"), synth, progress=False)
        cpus = args.cpus_per_node
        with local_cluster(workdir / "nodes", data_nodes=2, train_nodes=2, data_cpus=cpus, train_cpus=cpus) as cluster:
            # this driver joins with the cluster's token (set before Ray is imported: it reads them on import)
            os.environ.update({k: v for k, v in cluster.client_env().items() if k.startswith("RAY_AUTH")})
            import ray

            ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
            rounds: list[list[LayoutResult]] = []
            try:
                for round_ in range(args.repeats):
                    rounds.append([])
                    for data_nodes, train_nodes in LAYOUTS:
                        cfg = layout_config(base, args, workdir, data_nodes, train_nodes, round_)
                        load_before = os.getloadavg()[0]
                        rounds[-1].append(run_layout(cluster, cfg, data_nodes, train_nodes))
                        print(
                            f"round {round_ + 1}: {rounds[-1][-1].name} done "
                            f"(load average {load_before:.1f} → {os.getloadavg()[0]:.1f})",
                            flush=True,
                        )
            finally:
                ray.shutdown()  # before the nodes stop: a driver left connected aborts once its GCS is gone
    print(
        f"\n{args.epochs - 1} timed epochs x {args.samples} samples, {width}x{height} pairs, "
        f"model.preset={args.preset}, {args.cpus_per_node:g} CPU(s) per node, {os.cpu_count()} cores on this machine"
    )
    print(format_table(rounds))
    print(format_ratios(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
