"""The sweep's tracking objective: a trial's model tracks labeled TIR sequences and is scored by OPE Success/Precision.

A distillation run with ``distill.select_by`` uses the same validator to score its teacher and its epochs
(``cmd-ray distill`` builds it and hands it to :func:`cmd_ray.train.trainer.run_distillation`).

:func:`tracking_validator` reads the sequences of ``tune.eval_root`` once, on the sweep's driver, before any cluster
work (a missing folder or sequence fails there, naming ``tune.eval_root``), and gives a :class:`TrackingValidator`:
a small picklable object (the sequences' frame URIs and ground truth, the network's and the tracker's config) that
travels to each trial's train loop by value. The loop's rank-0 worker calls it with its in-memory model at the epochs
ASHA compares; it returns ``{"val_success", "val_precision", "val_tracking_s"}``.

Where the tracking runs: one Ray task per sequence (:func:`cmd_ray.evaluation.loading.track_frames`, the evaluation's
own per-sequence code, without writing result files), pinned to the rank-0 worker's node and reserving **no** CPU,
at most ``tasks`` in flight. The rank-0 worker waits on them, so they run on the CPUs that worker holds and leaves idle
meanwhile: a trial never asks the cluster for more than it has reserved, and a cluster whose CPUs are all reserved by
trainers (2 trials on 2 cores) cannot deadlock on them, which a task asking for even 0.1 CPU could. The tasks also keep
the tracker's random draws and thread settings out of the training process (whose RNG state the checkpoint holds).
Frames are read where the tasks run: a local ``eval_root`` must be on the rank-0 worker's node (on a multi-node cluster,
a shared mount or ``s3://``). The weights go to the object store once per call (``ray.put``); tracking is on CPU.

Scores are :mod:`cmd_ray.evaluation.metrics`' under ``evaluation.protocol``: per-sequence curves
(:func:`~cmd_ray.evaluation.metrics.sequence_curves`) averaged by :func:`~cmd_ray.evaluation.metrics.aggregate`. Under
``lsotb`` a sequence the tracker loses from the second frame on (all-zero success curve) is left out of the average,
as the toolkit does; when every sequence is left out the scores are NaN and are reported as 0.0, so that ASHA ranks
such a trial last instead of comparing NaN.

Without a Ray session (``ray.is_initialized()`` false: unit tests, a notebook) the sequences are tracked one after
the other in this process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from collections.abc import Sequence as SequenceOf
from dataclasses import dataclass
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import nn

from cmd_ray.config import Config, ConfigError
from cmd_ray.evaluation.benchmarks import Sequence, benchmark_options, read_benchmark
from cmd_ray.evaluation.loading import track_frames
from cmd_ray.evaluation.metrics import aggregate, sequence_curves
from cmd_ray.evaluation.results import location
from cmd_ray.tracking.run import TrackResult

TRACKER_NAME = "tune-validation"
METRICS = ("val_success", "val_precision")
"""What a :class:`TrackingValidator` call returns besides ``val_tracking_s`` (the sweep metrics of the same names)."""

_track_task = ray.remote(track_frames)


@dataclass(frozen=True, eq=False)
class TrackingValidator:
    """Tracks ``sequences`` with a model and scores the result; picklable, built by :func:`tracking_validator`.

    Attributes:
        sequences: the labeled sequences (frame URIs, ground truth), read once on the driver.
        model_config: a :class:`~cmd_ray.config.Config` dump whose ``model`` section builds the network.
        tracker_params: a :class:`~cmd_ray.config.TrackerConfig` dump (the online tracker's parameters).
        protocol: the OPE protocol of the scores (``lsotb`` or ``pytracking``).
        tasks: most sequence tasks in flight at once (each with one torch thread).
        endpoint_url: S3 endpoint of ``s3://`` frames (default: ``AWS_ENDPOINT_URL``).
    """

    sequences: tuple[Sequence, ...]
    model_config: dict[str, Any]
    tracker_params: dict[str, Any]
    protocol: str = "lsotb"
    tasks: int = 1
    endpoint_url: str | None = None

    def __call__(self, model: nn.Module, remote: bool | None = None) -> dict[str, float]:
        """Track every sequence with ``model``'s current weights; ``{"val_success", "val_precision",
        "val_tracking_s"}`` (Success and Precision in [0, 1]; wall seconds of the tracking). ``remote`` as
        :meth:`track`'s."""
        started = time.perf_counter()
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        results = self.track(weights, remote)
        scores = self.score(results)
        return {**scores, "val_tracking_s": time.perf_counter() - started}

    def _kwargs(self, seq: Sequence) -> dict[str, Any]:
        return {
            "tracker_name": f"{TRACKER_NAME}/{seq.name}",
            "kind": "dimp",
            "frames": list(seq.frames),
            "init_box": [float(v) for v in seq.ground_truth[0]],
            "model_config": self.model_config,
            "tracker_params": self.tracker_params,
            "device": "cpu",
            "num_threads": 1,
            "endpoint_url": self.endpoint_url,
        }

    def track(self, weights: Mapping[str, torch.Tensor], remote: bool | None = None) -> dict[str, TrackResult]:
        """Sequence name → the tracker's boxes, from Ray tasks (see the module docstring) or here, one sequence after
        the other (``remote`` False; default: tasks when a Ray session is up)."""
        if remote is None:
            remote = ray.is_initialized()
        if not remote:
            threads = torch.get_num_threads()
            try:
                return {s.name: track_frames(**self._kwargs(s), state_dict=weights) for s in self.sequences}
            finally:
                torch.set_num_threads(threads)
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        task = _track_task.options(num_cpus=0, scheduling_strategy=here)
        weights_ref = ray.put(dict(weights))  # a top-level ObjectRef argument reaches each task as its value
        pending = list(self.sequences)
        in_flight: dict[ray.ObjectRef, str] = {}
        out: dict[str, TrackResult] = {}
        try:
            while pending or in_flight:
                while pending and len(in_flight) < self.tasks:
                    seq = pending.pop(0)
                    in_flight[task.remote(**self._kwargs(seq), state_dict=weights_ref)] = seq.name
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    out[in_flight.pop(ref)] = ray.get(ref)
        finally:
            for ref in in_flight:  # a failed sequence fails the validation: stop the rest
                ray.cancel(ref)
        return out

    def score(self, results: Mapping[str, TrackResult]) -> dict[str, float]:
        """``{"val_success", "val_precision"}`` of the tracked boxes against the ground truth (0.0 for NaN)."""
        curves = {}
        for seq in self.sequences:
            boxes = results[seq.name].boxes
            if len(boxes) != len(seq):
                raise RuntimeError(f"{TRACKER_NAME}/{seq.name}: tracked {len(boxes)} of {len(seq)} frames")
            curves[seq.name] = sequence_curves(boxes, seq.ground_truth, self.protocol)  # type: ignore[arg-type]
        scores = aggregate(curves)
        return {
            "val_success": _finite(scores.success),
            "val_precision": _finite(scores.precision),
        }


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else float(value)


def tracking_validator(cfg: Config, sequences: SequenceOf[Sequence] | None = None) -> TrackingValidator:
    """The validator of ``cfg.tune``: ``eval_root``'s sequences (``eval_benchmark``, default
    ``evaluation.benchmark``; ``eval_sequences`` or all), tracked with ``cfg.tracker`` and scored under
    ``evaluation.protocol``; ``eval_tasks`` tasks at once (default: ``scaling.cpus_per_worker`` rounded down, ≥ 1).

    Raises:
        ConfigError: ``tune.eval_root`` is unset, missing, malformed or holds no sequence (naming it).
    """
    tune = cfg.tune
    benchmark = tune.eval_benchmark or cfg.evaluation.benchmark
    if sequences is None:
        if not tune.eval_root:
            raise ConfigError("tune.eval_root is not set: it names the labeled TIR sequences a trial tracks")
        try:
            root = location(tune.eval_root)  # absolute: the tasks' working directory does not matter
            options = benchmark_options(benchmark, {"subset": cfg.evaluation.lsotb_subset})
            sequences = read_benchmark(
                benchmark, root, tune.eval_sequences, endpoint_url=cfg.storage.s3_endpoint_url, options=options
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"tune.eval_root={tune.eval_root!r} ({benchmark}): {exc}") from exc
        if not sequences:
            raise ConfigError(f"tune.eval_root={tune.eval_root!r} holds no {benchmark} sequences")
    tasks = tune.eval_tasks or max(1, int(cfg.scaling.cpus_per_worker))
    return TrackingValidator(
        sequences=tuple(sequences),
        model_config=cfg.model_dump(mode="json"),
        tracker_params=cfg.tracker.model_dump(mode="json"),
        protocol=cfg.evaluation.protocol,
        tasks=tasks,
        endpoint_url=cfg.storage.s3_endpoint_url,
    )
