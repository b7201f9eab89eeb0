"""Ray-parallel OPE evaluation: one task per (tracker, sequence), result files, metrics, plots, one MLflow run.

``run_evaluation(cfg)`` is what ``jobs/evaluate.py`` and ``cmd-ray evaluate`` do:

1. read the benchmark's sequences (``evaluation.benchmark``/``root``) and check every tracker's result folder
   (``results_dir/<tracker>/meta.json``: results of another model or benchmark are never mixed in) — all before
   any cluster work;
   A folder without ``meta.json`` that holds result files of these sequences belongs to another tool: the job refuses
   it (:func:`~cmd_ray.evaluation.results.check_not_foreign`), ``evaluation.overwrite`` or not, before writing
   anything;
2. plan: a (tracker, sequence) whose result files are complete (one line per frame) is skipped, unless
   ``evaluation.overwrite`` or the folder's results were tracked under other settings (``meta.json`` records
   ``tracker.*`` and the weights file's stamp; :func:`~cmd_ray.evaluation.results.prepare_tracker_dir` removes
   such results, saying why); only trackers with work left load their network (once, on the driver) and ``ray.put``
   its state dict;
3. run the tasks with ``evaluation.cpus_per_task`` CPUs (and ``gpus_per_task`` GPUs with ``use_gpu``) each, at
   most ``evaluation.num_workers`` in flight (``ray.wait``), a progress bar on the driver; each task writes its
   sequence's files atomically, so a killed job loses only the sequences in flight;
4. score every tracker from its files (:func:`results.score_trackers`, by the protocol's rule), print/write the
   tables, draw the plots, and log params, metrics (``<tracker>/success``, ``/precision``, ``/norm_precision``,
   ``/fps``), the plots, the tables and the result files to one MLflow run (one artifact upload of one folder:
   ``ope_tables.txt``, ``per_sequence.*``, ``plots/``, ``results/<tracker>/``);
5. tag each registry version it scored (a tracker whose model is ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``)
   with ``eval.<benchmark>.<protocol>.*`` (:func:`model_version_tags`), so the scores are seen on the version itself.

``evaluation.root`` and ``evaluation.results_dir`` are local folders or ``s3://`` prefixes (``storage.s3_endpoint_url``
or ``AWS_ENDPOINT_URL`` name the endpoint). With ``s3://`` nothing needs a shared disk: the driver lists the benchmark
and the result folders in S3, each task reads its frames from S3 and writes its two result files there (each one
atomic upload), and the tables and plots are drawn into a local temporary folder and uploaded to ``results_dir``.
Local folders work as before; on a multi-node cluster they must be mounted by every node at the same path.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from cmd_ray import mlflow_runs, registry, storage
from cmd_ray.config import Config, EvaluatedTracker
from cmd_ray.evaluation.benchmarks import Sequence, benchmark_options, read_benchmark
from cmd_ray.evaluation.gap import GAP_METRICS, ModalityGap, modality_gap
from cmd_ray.evaluation.loading import LoadedNetwork, load_network, registry_version, run_sequence
from cmd_ray.evaluation.metrics import DatasetScores
from cmd_ray.evaluation.plots import write_plots
from cmd_ray.evaluation.results import (
    S3_READ_THREADS,
    ResultMeta,
    atomic_write_text,
    check_not_foreign,
    complete_sequences,
    frames_per_second,
    list_files,
    location,
    prepare_tracker_dir,
    read_and_score,
    sequence_frame_rates,
    tracking_settings,
    write_per_sequence,
)
from cmd_ray.evaluation.tables import (
    format_attribute_table,
    format_closed_over_seeds,
    format_comparison,
    format_gap_table,
    format_table1,
    summarise_rows,
)
from cmd_ray.models.loading import weights_stamp
from cmd_ray.vocabulary import SequenceModality

logger = logging.getLogger(__name__)

PLOTS_DIR = "plots"
RGB_TWINS_DIR = "rgb_twins"
"""``results_dir/rgb_twins/<tracker>/``: the results on the RGB twins of the sequences (``evaluation.rgb_root``)."""
TABLES_FILE = "ope_tables.txt"


class EvaluationError(ValueError):
    """The evaluation cannot start or some sequences failed; the message names them."""


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """What an evaluation job produced.

    Attributes:
        results_dir / tracker_dirs: where the results are (absolute local paths or ``s3://`` URIs).
        plots: where the plots were written (local paths or ``s3://`` URIs).
        scores: tracker name → dataset scores, in the config's order (the first is the comparison's reference).
        fps: tracker name → frames per second over all its sequences (from the time files).
        tracked / skipped: (tracker, sequence) tasks run now / skipped because their results were complete (both
            passes counted when RGB twins are configured).
        tracking_wall_s: wall time of the Ray tasks (0 when everything was skipped).
        rgb_scores / gap / gap_table: with ``evaluation.rgb_root``: every tracker's scores on the RGB twins, the
            modality gap of ``evaluation.gap_reference`` (:mod:`cmd_ray.evaluation.gap`) and its tables.
        paired_table: every tracker and seed group against ``evaluation.gap_reference``, paired per sequence (None
            when that reference is not evaluated).
    """

    run_id: str
    run_location: str
    results_dir: str
    tracker_dirs: dict[str, str]
    num_sequences: int
    scores: dict[str, DatasetScores]
    fps: dict[str, float]
    table: str
    attribute_tables: str
    plots: list[str]
    tracked: int
    skipped: int
    tracking_wall_s: float
    wall_s: float
    rgb_scores: dict[str, DatasetScores] | None = None
    gap: ModalityGap | None = None
    gap_table: str | None = None
    paired_table: str | None = None


def load_sequences(cfg: Config, modality: SequenceModality = "tir") -> list[Sequence]:
    """The sequences ``cfg.evaluation`` names (``rgb``: their RGB twins under ``evaluation.rgb_root``); a missing
    folder or malformed file raises :class:`EvaluationError`, naming the setting."""
    ev = cfg.evaluation
    key, root_setting = ("root", ev.root) if modality == "tir" else ("rgb_root", ev.rgb_root)
    if root_setting is None:
        raise EvaluationError(f"evaluation.{key} is not set")
    try:
        # An absolute root gives the tasks absolute frame paths, whatever their working directory.
        root = location(root_setting)
        options = benchmark_options(ev.benchmark, {"subset": ev.lsotb_subset})
        sequences = read_benchmark(
            ev.benchmark, root, ev.sequences, endpoint_url=cfg.storage.s3_endpoint_url, options=options
        )
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"evaluation.{key}={root_setting!r} ({ev.benchmark}): {exc}") from exc
    if not sequences:
        raise EvaluationError(f"evaluation.{key}={root_setting!r} holds no {ev.benchmark} sequences")
    return sequences


def check_twins(tir: list[Sequence], rgb: list[Sequence], rgb_root: str) -> None:
    """The RGB twins must be the TIR sequences' own: the same names, frame counts and first-frame boxes.

    Raises:
        EvaluationError: naming ``rgb_root`` and the first sequences that differ.
    """
    tir_by_name, rgb_by_name = {s.name: s for s in tir}, {s.name: s for s in rgb}
    missing = sorted(set(tir_by_name) - set(rgb_by_name))
    if missing:
        raise EvaluationError(f"evaluation.rgb_root={rgb_root!r} lacks the RGB twins of {missing[:10]}")
    differ = [
        name
        for name, t in tir_by_name.items()
        if len(t) != len(rgb_by_name[name])
        or not np.allclose(t.ground_truth[0], rgb_by_name[name].ground_truth[0], atol=0.5, equal_nan=True)
    ]
    if differ:
        raise EvaluationError(
            f"evaluation.rgb_root={rgb_root!r}: these sequences differ from their TIR twins in frame count or "
            f"first box, so they are not pixel-aligned twins: {differ[:10]}"
        )


@dataclass(frozen=True)
class _Pass:
    """One set of sequences every tracker runs on: the TIR benchmark, or its RGB twins (``results_dir/rgb_twins``)."""

    modality: SequenceModality
    root: str
    sequences: list[Sequence]
    results_dir: str
    tracker_dirs: dict[str, str]


def _passes(cfg: Config, results_dir: str) -> list[_Pass]:
    ev = cfg.evaluation
    tir = load_sequences(cfg)
    names = [t.name for t in ev.trackers]
    passes = [_Pass("tir", location(ev.root), tir, results_dir, {n: storage.join(results_dir, n) for n in names})]
    if ev.rgb_root is not None:
        rgb = load_sequences(cfg, "rgb")
        check_twins(tir, rgb, ev.rgb_root)
        order = [s.name for s in tir]
        rgb = sorted(rgb, key=lambda s: order.index(s.name))  # the TIR pass's order
        rgb_dir = storage.join(results_dir, RGB_TWINS_DIR)
        dirs = {n: storage.join(rgb_dir, n) for n in names}
        passes.append(_Pass("rgb", location(ev.rgb_root), rgb, rgb_dir, dirs))
    return passes


def tracker_meta(
    cfg: Config, tracker: EvaluatedTracker, index: int, sequences: list[Sequence], root: str | None = None
) -> ResultMeta:
    """What this evaluation writes into the tracker's ``meta.json``: its identity and its tracking settings
    (``cfg.tracker`` and, for a weights file, the file's stamp; :func:`.results.tracking_settings`), for the
    sequences under ``root`` (default: ``evaluation.root``)."""
    ev = cfg.evaluation
    registered = bool(tracker.model and tracker.model.startswith("models:/"))
    version = registry_version(tracker.model, cfg) if registered and tracker.model else None
    stamp = (
        weights_stamp(tracker.model, cfg.storage.s3_endpoint_url)
        if tracker.kind == "dimp" and tracker.model and not registered
        else None
    )
    return ResultMeta(
        tracker=tracker.name,
        kind=tracker.kind,
        model=tracker.model,
        model_version=version,
        benchmark=ev.benchmark,
        root=root if root is not None else location(ev.root),
        lsotb_subset=ev.lsotb_subset if ev.benchmark == "lsotb" else None,
        protocol=ev.protocol,
        sequences=tuple(s.name for s in sequences),
        index=index,
        settings=tracking_settings(tracker.kind, cfg.tracker.model_dump(mode="json"), stamp),
    )


def plan(
    cfg: Config, sequences: list[Sequence], tracker_dirs: dict[str, Path | str]
) -> tuple[list[tuple[EvaluatedTracker, Sequence]], int]:
    """``(tasks to run, number skipped)``: a (tracker, sequence) with complete results is skipped unless overwrite.

    One listing per tracker folder (local or S3, :func:`~cmd_ray.evaluation.results.complete_sequences`), then the
    line counts of the result pairs it shows.
    """
    todo, skipped = [], 0
    counts = {s.name: len(s) for s in sequences}
    for tracker in cfg.evaluation.trackers:
        done: set[str] = set()
        if not cfg.evaluation.overwrite:
            done = complete_sequences(tracker_dirs[tracker.name], counts, cfg.storage.s3_endpoint_url)
        for seq in sequences:
            if seq.name in done:
                skipped += 1
            else:
                todo.append((tracker, seq))
    return todo, skipped


# The task is run_sequence itself, pickled by reference to cmd_ray.evaluation.loading: a worker imports that module
# (torch, the network, the tracker) but not this one (MLflow, tqdm), which keeps a cold worker's start short.
_sequence_task = ray.remote(run_sequence)


def _check_resources(cfg: Config) -> None:
    ev = cfg.evaluation
    available = ray.cluster_resources()
    if available.get("CPU", 0) < ev.cpus_per_task:
        logger.warning(
            "evaluation.cpus_per_task=%s but the cluster has %s CPUs: tasks wait until a node fits them",
            ev.cpus_per_task,
            available.get("CPU", 0),
        )
    if ev.use_gpu and available.get("GPU", 0) < ev.gpus_per_task:
        logger.warning("evaluation.use_gpu but the cluster has %s GPUs: tasks wait for one", available.get("GPU", 0))


def _task_kwargs(
    cfg: Config,
    tracker: EvaluatedTracker,
    seq: Sequence,
    net: LoadedNetwork | None,
    out_dir: str,
    modality: SequenceModality = "tir",
) -> dict[str, Any]:
    """Arguments of :func:`run_sequence` for one (tracker, sequence), the state dict aside."""
    ev = cfg.evaluation
    return {
        "tracker_name": tracker.name,
        "kind": tracker.kind,
        "sequence": seq.name,
        "frames": list(seq.frames),
        "init_box": [float(v) for v in seq.ground_truth[0]],
        "out_dir": str(out_dir),
        "model_config": net.model_config.model_dump(mode="json") if net else None,
        "tracker_params": cfg.tracker.model_dump(mode="json"),
        "device": "cuda" if ev.use_gpu else "cpu",
        "num_threads": max(1, int(ev.cpus_per_task)),
        "endpoint_url": cfg.storage.s3_endpoint_url,
        "modality": modality,
    }


def _failure_line(label: str, exc: Exception) -> str:
    text = str(exc).strip()
    return f"{label}: {text.splitlines()[-1] if text else repr(exc)}"  # a task error's last line is its cause


_Task = tuple[EvaluatedTracker, Sequence, _Pass]


def _run_tasks(
    cfg: Config, todo: list[_Task], networks: dict[str, LoadedNetwork], progress: bool
) -> tuple[int, list[str]]:
    """Run the (tracker, sequence, pass) tasks, at most ``num_workers`` in flight; returns (finished, failures)."""
    ev = cfg.evaluation
    _check_resources(cfg)
    weight_refs = {name: ray.put(net.state_dict) for name, net in networks.items()}
    options: dict[str, Any] = {"num_cpus": ev.cpus_per_task, "num_gpus": ev.gpus_per_task if ev.use_gpu else 0}
    queue = deque(todo)
    in_flight: dict[ray.ObjectRef, str] = {}
    finished, failures = 0, []
    with tqdm(total=len(todo), desc="evaluate", unit="seq", disable=not progress) as bar:
        try:
            while queue or in_flight:
                while queue and len(in_flight) < ev.num_workers:
                    tracker, seq, where = queue.popleft()
                    out_dir = where.tracker_dirs[tracker.name]
                    net = networks.get(tracker.name)
                    kwargs = _task_kwargs(cfg, tracker, seq, net, out_dir, where.modality)
                    # A top-level ObjectRef argument reaches the task as its value: the state dict is stored once.
                    ref = _sequence_task.options(**options).remote(**kwargs, state_dict=weight_refs.get(tracker.name))
                    in_flight[ref] = f"{tracker.name}/{seq.name}" + (" (RGB twin)" if where.modality == "rgb" else "")
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    label = in_flight.pop(ref)
                    try:
                        ray.get(ref)
                        finished += 1
                    except Exception as exc:  # a failed sequence must not stop the others; reported at the end
                        logger.error("sequence %s failed: %s", label, exc)
                        failures.append(_failure_line(label, exc))
                    bar.update(1)
        finally:
            for ref in in_flight:  # interrupted: stop what still runs (files already written are complete)
                ray.cancel(ref)
    return finished, failures


def _stage_results(cfg: Config, tracker_dirs: dict[str, str], staging: Path) -> dict[str, list[Path]]:
    """Local files of each tracker's results, for MLflow: the folder's own files on local disk, copies of the
    objects (read concurrently) under ``staging/results/<tracker>/`` on S3."""
    staged: dict[str, list[Path]] = {}
    endpoint = cfg.storage.s3_endpoint_url
    for name, d in tracker_dirs.items():
        files = sorted(f for f in list_files(d, endpoint) if "/" not in f)
        if not storage.is_s3(d):
            staged[name] = [Path(d) / f for f in files]
            continue
        local = staging / "results" / name
        local.mkdir(parents=True, exist_ok=True)

        def fetch(f: str, d: str = d, local: Path = local) -> Path:
            (local / f).write_bytes(storage.read_bytes(storage.join(d, f), endpoint))
            return local / f

        with ThreadPoolExecutor(max_workers=S3_READ_THREADS) as pool:
            staged[name] = list(pool.map(fetch, files))
    return staged


def model_version_tags(meta: ResultMeta, scores: DatasetScores, fps: float, run_id: str) -> dict[str, str | float]:
    """Tags that put one tracker's scores on the registry version it ran (``meta.model_version``).

    Keys are ``eval.<benchmark>.<protocol>.<what>``: ``success``, ``precision``, ``norm_precision`` (OPE scores in
    [0, 1]), ``fps`` (frames per second, when measured), ``sequences`` (number averaged), ``tracker`` (its name in
    the evaluation), ``root`` (the benchmark's location), ``lsotb_subset`` (LSOTB-TIR only) and ``run_id`` (the
    evaluation's MLflow run). A later evaluation on the same benchmark and protocol replaces them.
    """
    prefix = f"eval.{meta.benchmark}.{meta.protocol}"
    tags: dict[str, str | float] = {
        f"{prefix}.success": round(scores.success, 6),
        f"{prefix}.precision": round(scores.precision, 6),
        f"{prefix}.norm_precision": round(scores.norm_precision, 6),
        f"{prefix}.sequences": scores.num_sequences_averaged,
        f"{prefix}.tracker": meta.tracker,
        f"{prefix}.root": meta.root,
        f"{prefix}.run_id": run_id,
    }
    if fps == fps:  # NaN when no time was measured
        tags[f"{prefix}.fps"] = round(fps, 3)
    if meta.lsotb_subset:
        tags[f"{prefix}.lsotb_subset"] = meta.lsotb_subset
    return tags


def _artifact_tree(
    root: Path, tables_paths: list[Path], plots: list[Path], result_files: dict[str, list[Path]]
) -> Path:
    """Copy what the run logs into ``root`` in its artifact layout (``ope_tables.txt``, ``per_sequence.*``,
    ``plots/``, ``results/<tracker>/``), for one ``log_artifacts`` call; returns ``root``."""
    placed = [(root, tables_paths), (root / PLOTS_DIR, plots)]
    placed += [(root / "results" / name, files) for name, files in result_files.items()]
    for folder, files in placed:
        folder.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, folder / f.name)
    return root


def _log_to_mlflow(
    cfg: Config,
    run_id: str,
    result_files: dict[str, list[Path]],
    scores: dict[str, DatasetScores],
    fps: dict[str, float],
    counts: dict[str, float],
    tables_paths: list[Path],
    plots: list[Path],
    staging: Path,
    metas: dict[str, ResultMeta],
) -> None:
    metrics: dict[str, float] = dict(counts)
    for name, s in scores.items():
        metrics[f"{name}/success"] = s.success
        metrics[f"{name}/precision"] = s.precision
        metrics[f"{name}/norm_precision"] = s.norm_precision
        metrics[f"{name}/sequences_averaged"] = s.num_sequences_averaged
        if fps[name] == fps[name]:  # NaN when no time was measured
            metrics[f"{name}/fps"] = fps[name]
    mlflow_runs.log_metrics(cfg, run_id, metrics, step=0)
    client = mlflow_runs.client(cfg)
    tree = _artifact_tree(staging / "mlflow-artifacts", tables_paths, plots, result_files)
    client.log_artifacts(run_id, str(tree))
    uri = mlflow_runs.tracking_uri(cfg)
    for name, meta in metas.items():
        if not (meta.model and meta.model.startswith("models:/") and meta.model_version and name in scores):
            continue
        tags = model_version_tags(meta, scores[name], fps[name], run_id)
        try:
            registry.tag_model_version(meta.model, meta.model_version, tags, uri)
        except MlflowException as exc:  # e.g. the version was deleted meanwhile: the run keeps the scores
            logger.warning("cannot tag %s version %s with its scores: %s", meta.model, meta.model_version, exc)


def _write_outputs(
    cfg: Config,
    results_dir: str,
    staging: Path,
    tables: str,
    scores: dict[str, DatasetScores],
    show_np: bool,
    sequence_fps: dict[str, dict[str, float]],
) -> tuple[list[Path], list[Path], list[str]]:
    """Write the tables, the per-sequence results (CSV and JSON) and the plots into ``results_dir``: directly on
    local disk; on S3 drawn into ``staging`` and uploaded, one write per file.

    Returns ``(local tables and per-sequence files, local plot files, plot locations in results_dir)``."""
    ev = cfg.evaluation
    remote = storage.is_s3(results_dir)
    local_dir = staging if remote else Path(results_dir)
    tables_path = local_dir / TABLES_FILE
    atomic_write_text(tables_path, tables)
    per_sequence = [Path(p) for p in write_per_sequence(local_dir, scores, sequence_fps, ev.benchmark)]
    plots = (
        [Path(p) for p in write_plots(scores, local_dir / PLOTS_DIR, ev.benchmark, norm_precision=show_np)]
        if ev.plots
        else []
    )
    if not remote:
        return [tables_path, *per_sequence], plots, [str(p) for p in plots]
    endpoint = cfg.storage.s3_endpoint_url
    for f in [tables_path, *per_sequence]:
        storage.write_bytes(storage.join(results_dir, f.name), f.read_bytes(), endpoint)
    uris = []
    for p in plots:
        uri = storage.join(results_dir, PLOTS_DIR, p.name)
        storage.write_bytes(uri, p.read_bytes(), endpoint)
        uris.append(uri)
    return [tables_path, *per_sequence], plots, uris


def run_evaluation(cfg: Config, progress: bool = True, parent_run_id: str | None = None) -> EvaluationResult:
    """The whole evaluate job on the cluster ``RAY_ADDRESS`` names (a local one when unset); its MLflow run is nested
    under ``parent_run_id`` when given.

    Raises:
        EvaluationError: before any cluster work for bad input; after the run (marked FAILED in MLflow, results of
            finished sequences kept for a rerun) when some sequences failed.
        cmd_ray.evaluation.results.ResultsError: a result folder holds results of another model or benchmark.
        cmd_ray.evaluation.loading.ModelLoadError: a model cannot be loaded or does not fit its network.
    """
    started = time.perf_counter()
    ev = cfg.evaluation
    endpoint = cfg.storage.s3_endpoint_url
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    results_dir = location(ev.results_dir)
    passes = _passes(cfg, results_dir)
    tir_pass = passes[0]
    tracker_dirs = tir_pass.tracker_dirs
    metas = {}
    todo: list[_Task] = []
    skipped = 0
    planned = [
        (where, tracker, tracker_meta(cfg, tracker, i, where.sequences, where.root))
        for where in passes
        for i, tracker in enumerate(ev.trackers)
    ]
    for where, tracker, meta in planned:  # another tool's results anywhere: refused before any folder is written
        check_not_foreign(where.tracker_dirs[tracker.name], meta.sequences, endpoint)
    for where in passes:
        for tracker, meta in [(t, m) for w, t, m in planned if w is where]:
            meta = prepare_tracker_dir(where.tracker_dirs[tracker.name], meta, ev.overwrite, endpoint)
            if where is tir_pass:
                metas[tracker.name] = meta
        pass_todo, pass_skipped = plan(cfg, where.sequences, dict(where.tracker_dirs))
        todo += [(tracker, seq, where) for tracker, seq in pass_todo]
        skipped += pass_skipped
    pending = {t.name for t, _, _ in todo}
    networks = {
        t.name: load_network(t.model, cfg) for t in ev.trackers if t.kind == "dimp" and t.name in pending and t.model
    }
    sequences = tir_pass.sequences
    logger.info(
        "%d sequence(s)%s x %d tracker(s): %d to track, %d skipped (complete results)",
        len(sequences),
        " and their RGB twins" if len(passes) > 1 else "",
        len(ev.trackers),
        len(todo),
        skipped,
    )

    run_id = mlflow_runs.start_run(
        cfg,
        f"evaluate-{ev.benchmark}",
        tags={"cmd_ray.job": "evaluate", "cmd_ray.benchmark": ev.benchmark, "cmd_ray.results_dir": results_dir},
        parent_run_id=parent_run_id,
    )
    with mlflow_runs.terminated(cfg, run_id), tempfile.TemporaryDirectory(prefix="cmd-ray-evaluate-") as tmp:
        tracking_wall = 0.0
        tracked, failures = 0, []
        if todo:
            if not ray.is_initialized():
                ray.init()
            t0 = time.perf_counter()
            tracked, failures = _run_tasks(cfg, todo, networks, progress)
            tracking_wall = time.perf_counter() - t0
        if failures:
            raise EvaluationError(
                f"{len(failures)} of {len(todo)} sequence task(s) failed (finished ones are kept; rerun to retry "
                "only the rest):\n  " + "\n  ".join(failures[:20])
            )
        scored = read_and_score(dict(tracker_dirs), sequences, ev.protocol, endpoint)
        scores = scored.scores
        fps = {t.name: frames_per_second(scored.times[t.name], scored.times[t.name], t.kind) for t in ev.trackers}
        sequence_fps = {t.name: sequence_frame_rates(scored.times[t.name], t.kind) for t in ev.trackers}
        show_np = ev.benchmark != "ptb"  # PTB-TIR's toolkit reports no normalised precision
        table = format_comparison(scores, dataset=ev.benchmark, show_norm_precision=show_np, fps=fps)
        attribute_tables = "\n\n".join(format_attribute_table(scores, m) for m in ("success", "precision"))
        full = format_comparison(
            scores, dataset=ev.benchmark, show_norm_precision=show_np, deltas=False, per_attribute=True
        )
        twins = _score_twins(cfg, passes, scores, show_np)
        paired, paired_metrics = _paired_table(cfg, scores, twins.gap if twins else None, show_np)
        staging = Path(tmp)
        tables = "\n\n".join(
            [table, *([paired] if paired else []), *([twins.tables] if twins else []), attribute_tables, full]
        )
        tables += "\n"
        tables_paths, local_plots, plots = _write_outputs(
            cfg, results_dir, staging, tables, scores, show_np, sequence_fps
        )
        counts = {
            "sequences": len(sequences),
            "sequences_tracked": tracked,
            "sequences_skipped": skipped,
            "tracking_wall_s": tracking_wall,
        }
        staged_dirs = dict(tracker_dirs)
        if twins:
            staged_dirs.update({f"{RGB_TWINS_DIR}/{n}": d for n, d in passes[1].tracker_dirs.items()})
        result_files = _stage_results(cfg, staged_dirs, staging)
        if twins:
            counts.update(twins.metrics)
        counts.update(paired_metrics)
        _log_to_mlflow(cfg, run_id, result_files, scores, fps, counts, tables_paths, local_plots, staging, metas)
    return EvaluationResult(
        run_id=run_id,
        run_location=mlflow_runs.run_url(cfg, run_id),
        results_dir=results_dir,
        tracker_dirs=tracker_dirs,
        num_sequences=len(sequences),
        scores=scores,
        fps=fps,
        table=table,
        attribute_tables=attribute_tables,
        plots=plots,
        tracked=tracked,
        skipped=skipped,
        tracking_wall_s=tracking_wall,
        wall_s=time.perf_counter() - started,
        rgb_scores=twins.scores if twins else None,
        gap=twins.gap if twins else None,
        gap_table=twins.tables if twins else None,
        paired_table=paired,
    )


def _paired_table(
    cfg: Config, scores: dict[str, DatasetScores], gap: ModalityGap | None, show_np: bool
) -> tuple[str | None, dict[str, float]]:
    """Every other tracker, and every group of ``evaluation.seed_groups`` over its seeds, against
    ``evaluation.gap_reference``: mean ± std and the paired difference over seeds × sequences with its bootstrap
    interval (:func:`~cmd_ray.evaluation.tables.summarise_rows`); the table (None when the reference is not one of
    the trackers or is the only one) and its MLflow metrics."""
    ev = cfg.evaluation
    reference = ev.gap_reference
    if reference not in scores or len(scores) < 2:
        return None, {}
    grouped = {m for members in ev.seed_groups.values() for m in members}
    rows: dict[str, list[DatasetScores]] = {reference: [scores[reference]]}
    rows.update({n: [s] for n, s in scores.items() if n != reference and n not in grouped})
    rows.update({g: [scores[m] for m in members] for g, members in ev.seed_groups.items()})
    summaries = summarise_rows(rows, reference)
    text = format_table1(
        summaries,
        protocol=ev.protocol,
        dataset=ev.benchmark,
        show_norm_precision=show_np,
        title="Paired comparison",
    )
    if gap is not None and ev.seed_groups:
        text += "\n\n" + format_closed_over_seeds(gap, ev.seed_groups)
    metrics = {}
    for summary in summaries:
        for metric, p in summary.paired.items():
            metrics.update(
                {
                    f"paired/{summary.row}/{metric}_delta": p.mean,
                    f"paired/{summary.row}/{metric}_low": p.low,
                    f"paired/{summary.row}/{metric}_high": p.high,
                }
            )
    return text, metrics


@dataclass(frozen=True)
class _TwinScores:
    """The RGB-twin pass scored: its scores, the modality gap, their tables and their MLflow metrics."""

    scores: dict[str, DatasetScores]
    gap: ModalityGap
    tables: str
    metrics: dict[str, float]


def _score_twins(
    cfg: Config, passes: list[_Pass], tir_scores: dict[str, DatasetScores], show_np: bool
) -> _TwinScores | None:
    """Score the RGB-twin pass, if any, and measure the gap of ``evaluation.gap_reference`` (None without twins)."""
    if len(passes) < 2:
        return None
    ev = cfg.evaluation
    rgb = passes[1]
    scored = read_and_score(dict(rgb.tracker_dirs), rgb.sequences, ev.protocol, cfg.storage.s3_endpoint_url)
    gap = modality_gap(tir_scores, scored.scores, ev.gap_reference)
    twin_table = format_comparison(
        scored.scores, dataset=f"{ev.benchmark} (RGB twins)", show_norm_precision=show_np, deltas=False
    )
    metrics_shown = GAP_METRICS if show_np else ("success", "precision")
    tables = f"{format_gap_table(gap, metrics_shown)}\n\n{twin_table}"
    metrics: dict[str, float] = {}
    for m in metrics_shown:
        metrics[f"gap/{m}"] = gap.gap[m]
        for row in gap.rows:
            metrics[f"rgb_twins/{row.tracker}/{m}"] = row.rgb[m]
            if row.closed[m] == row.closed[m]:  # NaN when there is no gap to close
                metrics[f"{row.tracker}/gap_closed_{m}"] = row.closed[m]
    return _TwinScores(scored.scores, gap, tables, metrics)
