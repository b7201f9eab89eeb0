"""The paper's Table 1 as one job: every row trained in dependency order, evaluated, tabulated, the best registered.

``run_table1(cfg)`` is what ``jobs/table1.py`` and ``cmd-ray table1`` do:

1. before any cluster work: the rows (``table1.rows`` plus what they depend on, :func:`cmd_ray.vocabulary.table1_rows`),
   every row's config (:func:`row_config`), the teacher, the pairs and the evaluation sequences are checked;
2. one parent MLflow run (tag ``cmd_ray.table1``; a rerun reopens it) with a child run per row and seed;
3. for each seed ``k`` (``distill.seed + k``), in dependency order: A1 is the teacher (``model.init_checkpoint``) as
   is; B1, B2 and C1 train from the teacher; B3 is B1 with B2's IoU-Net test branch
   (:func:`cmd_ray.distill.merge.merge_modules`); the D rows train from B3 with C1's classifier (§4.3), given to
   them as ``distill.start.b3`` / ``distill.start.c1``, the path ``jobs/distill.py`` takes
   (:func:`cmd_ray.train.teacher.resolve_start`). Each row trains at its own paper rates times ``distill.lr_scale``
   unless the config sets ``distill.lr_tcl`` / ``lr_bbe`` itself (then every row trains at those, logged as
   overrides), on its own pseudo boxes, under the run name ``<table1.run_name>-<row>-s<k>``;
4. every row and seed is tracked on the configured TIR benchmark (one evaluation job, results under
   ``evaluation.results_dir/<table1.run_name>``), then Table 1 (mean ± std over seeds, delta to A1) is printed and
   logged to the parent run as a table (``table1/table1.json``), text and a plot, and each child run gets its scores;
5. the row with the best mean Success (A1 aside) has its best seed's model registered with ``mlflow.alias``.

A rerun skips what is done: a row whose training run holds every epoch is not trained again (an interrupted one
resumes, :mod:`cmd_ray.train.trainer`), merged weights are kept while their sources are the same (each merged file
records them beside it, :func:`merge_into`; a changed source rebuilds it), complete tracking results are reused while
the tracker settings and the weights file are the same (:func:`cmd_ray.evaluation.results.prepare_tracker_dir`), and
a model registered from the same run is not registered again.

Table 1's Δ of each row is its paired difference to A1 over seeds × sequences, with a bootstrap interval and a mark
where it excludes 0 (:mod:`cmd_ray.evaluation.paired`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cmd_ray import mlflow_runs, registry, storage
from cmd_ray.config import Config, ConfigError
from cmd_ray.data.distill_stream import list_pairs
from cmd_ray.evaluation.metrics import DatasetScores
from cmd_ray.evaluation.plots import table1_plot
from cmd_ray.evaluation.results import atomic_write_text, describe_changes, location
from cmd_ray.evaluation.runner import EvaluationResult, load_sequences, run_evaluation
from cmd_ray.evaluation.tables import TABLE1_METRICS, RowSummary, format_table1, summarise_rows
from cmd_ray.models.loading import weights_stamp
from cmd_ray.train.teacher import merge_uris, resolve_teacher
from cmd_ray.train.trainer import check_trainable, run_distillation, storage_uri
from cmd_ray.vocabulary import START_D, VARIANTS, get_variant, table1_rows

logger = logging.getLogger(__name__)

TABLE_TAG = "cmd_ray.table1"
ROW_TAG = "cmd_ray.table1_row"
SEED_TAG = "cmd_ray.table1_seed"
REFERENCE_ROW = "A1"
MERGED_FILE = "{row}.pt"
MERGED_FROM_SUFFIX = ".merged_from.json"
"""Beside each merged file: the sources it was merged from (:func:`merge_into`)."""
MERGED_FROM_VERSION = 1


@dataclass(frozen=True)
class RowRun:
    """One row trained (or merged) with one seed.

    Attributes:
        row / seed: the Table 1 row and the seed index ``k`` (it trained with ``distill.seed + k``).
        run_id: its MLflow run, a child of the table's.
        weights: where its weights are: a checkpoint folder, a merged state-dict file, or (A1) the teacher's URI.
        start: the weights it started from: the teacher's URI, B1's (B3), or ``START_D`` (the D rows).
        done_before: it was complete before this invocation (nothing trained or merged now).
        d_start: a D row's ``(B3 weights, C1 weights)``, merged when it started (``distill.start.b3`` / ``c1``).
    """

    row: str
    seed: int
    run_id: str
    weights: str
    start: str
    done_before: bool
    d_start: tuple[str, str] | None = None

    @property
    def tracker(self) -> str:
        """Its tracker name in the evaluation (``A1``, ``B1-s0``, …)."""
        return self.row if self.row == REFERENCE_ROW else f"{self.row}-s{self.seed}"


@dataclass(frozen=True, eq=False)
class Table1Result:
    parent_run_id: str
    run_location: str
    rows: tuple[str, ...]
    runs: list[RowRun]
    scores: dict[str, list[DatasetScores]]
    """Each row's scores, one per seed (A1: one)."""
    summaries: list[RowSummary]
    table: str
    best_row: str
    registered: registry.RegisteredModel
    evaluation: EvaluationResult


def run_name(cfg: Config, row: str, seed: int) -> str:
    """The training run name of ``row`` with seed index ``seed``: ``<table1.run_name>-<row>-s<seed>``."""
    return f"{cfg.table1.run_name}-{row}-s{seed}"


def row_config(base: Config, row: str, seed: int, d_start: tuple[str, str] | None = None) -> Config:
    """The config row ``row`` trains with at seed index ``seed``.

    The row starts from the teacher (``base``'s ``model.init_checkpoint``), or, given ``d_start = (B3 weights, C1
    weights)`` (a D row), from their merge (``distill.start.b3`` / ``distill.start.c1``). The row's own paper rates
    times ``distill.lr_scale`` unless ``base`` sets a rate itself (:meth:`DistillConfig.explicit_rates`), the row's
    pseudo-box method, ``distill.seed + seed``, ``table1.epochs`` / ``samples_per_epoch`` when set, and its own run
    name; everything else as in ``base``.
    """
    tree = base.model_dump(mode="json")
    explicit = base.distill.explicit_rates()
    tree["distill"].update(
        variant=row,
        seed=base.distill.seed + seed,
        lr_tcl=explicit.get("lr_tcl"),  # None: the row's paper rate x lr_scale
        lr_bbe=explicit.get("lr_bbe"),
        start={"b3": d_start[0], "c1": d_start[1]} if d_start else {},
    )
    for key in ("epochs", "samples_per_epoch"):
        if getattr(base.table1, key) is not None:
            tree["distill"][key] = getattr(base.table1, key)
    tree["data"]["boxes"] = get_variant(row).box_method
    tree["storage"]["run_name"] = run_name(base, row, seed)
    try:
        return Config.model_validate(tree)
    except ValueError as exc:
        raise ConfigError(f"table1 row {row}: {exc}") from None


def _merged_root(cfg: Config) -> str:
    return storage.join(location(cfg.storage.storage_path), cfg.table1.run_name)


def merged_uri(cfg: Config, name: str, seed: int) -> str:
    """Where the merge ``name`` (``B3``) of seed index ``seed`` is kept."""
    return storage.join(_merged_root(cfg), f"s{seed}", MERGED_FILE.format(row=name))


def check_table(cfg: Config) -> tuple[str, ...]:
    """The rows to produce, after checking every row's config; fails before any cluster work."""
    if not cfg.model.init_checkpoint:
        raise ConfigError("table1 needs model.init_checkpoint: row A1 is that teacher, and every row starts from it")
    if cfg.distill.start.given:
        named = ", ".join(cfg.distill.start.named())
        raise ConfigError(f"table1 merges each seed's B3 and C1 into the D rows' start itself: unset {named}")
    try:
        rows = table1_rows(cfg.table1.rows, cfg.model.architecture)
    except ValueError as exc:
        raise ConfigError(f"table1.rows: {exc}") from None
    for row in rows:
        variant = get_variant(row)
        if variant.trains_anything:
            # a D row's config as it will train: B3's and C1's weights are known once they are made
            d_start = (merged_uri(cfg, "B3", 0), "C1") if variant.init_from else None
            check_trainable(row_config(cfg, row, 0, d_start))
    return rows


def _evaluation_config(cfg: Config, runs: list[RowRun]) -> Config:
    tree = cfg.model_dump(mode="json")
    tree["evaluation"]["trackers"] = [{"name": r.tracker, "kind": "dimp", "model": r.weights} for r in runs]
    tree["evaluation"]["results_dir"] = storage.join(location(cfg.evaluation.results_dir), cfg.table1.run_name)
    return Config.model_validate(tree)


def _parent_run(cfg: Config) -> str:
    """The table's MLflow run: the one an earlier invocation of this table started, else a new one."""
    name = cfg.table1.run_name
    runs = mlflow_runs.find_runs(cfg, f"tags.`{TABLE_TAG}` = '{name}'", max_results=5)
    same = [r for r in runs if r.data.tags.get("cmd_ray.storage_path") == cfg.storage.storage_path]
    if same:
        logger.info("table %s: continuing MLflow run %s", name, same[0].info.run_id)
        return mlflow_runs.reopen_run(cfg, same[0].info.run_id)
    tags = {"cmd_ray.job": "table1", TABLE_TAG: name, "cmd_ray.storage_path": cfg.storage.storage_path}
    return mlflow_runs.start_run(cfg, name, tags=tags)


def _child_run(cfg: Config, parent: str, row: str, seed: int, tags: dict[str, str]) -> str:
    """The MLflow run of a row that is not trained (A1, B3): found under ``parent``, else started."""
    found = mlflow_runs.find_runs(
        cfg,
        f"tags.mlflow.parentRunId = '{parent}' and tags.`{ROW_TAG}` = '{row}' and tags.`{SEED_TAG}` = '{seed}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run_id = mlflow_runs.start_run(
        cfg, run_name(cfg, row, seed), tags={ROW_TAG: row, SEED_TAG: str(seed), **tags}, parent_run_id=parent
    )
    mlflow_runs.end_run(cfg, run_id)
    return run_id


def merged_from_uri(out_uri: str) -> str:
    """The sidecar of a merged weights file (``…/B3.pt`` → ``…/B3.merged_from.json``): what it was merged from."""
    return (out_uri[: -len(".pt")] if out_uri.endswith(".pt") else out_uri) + MERGED_FROM_SUFFIX


def read_merged_from(uri: str, endpoint: str | None = None) -> dict[str, Any] | None:
    """The sources recorded beside the merged file ``uri`` (:func:`merge_into`); None when there is no (readable)
    record: not a merged file, one merged before cmd-ray recorded its sources, or one whose merge was cut short."""
    try:
        tree = json.loads(storage.read_bytes(merged_from_uri(uri), endpoint))
    except (storage.StorageError, ValueError):
        return None
    sources = tree.get("merged_from") if isinstance(tree, dict) else None
    return sources if isinstance(sources, dict) else None


def source_identity(uri: str, endpoint: str | None = None, about: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a merge input is: its URI, ``about`` it (the row, seed and MLflow run it came from), its file's stamp
    (:func:`~cmd_ray.models.loading.weights_stamp`: size and modification time) and, for a merged file, what that
    was merged from in turn; through JSON, as read back from a sidecar."""
    tree: dict[str, Any] = {"uri": uri, **dict(about or {}), "file": weights_stamp(uri, endpoint)}
    upstream = read_merged_from(uri, endpoint)
    if upstream is not None:
        tree["merged_from"] = upstream
    return json.loads(json.dumps(tree))


def merge_into(
    cfg: Config, out_uri: str, base: str, *, about: Mapping[str, Mapping[str, Any]] | None = None, **parts: str
) -> bool:
    """Write ``merge_modules(base, **parts)`` to ``out_uri`` (local or S3), and beside it what it was merged from
    (:func:`merged_from_uri`: each input's :func:`source_identity`, ``about[part]`` naming its row, seed and run,
    the base under ``"base"``).

    A file that exists is kept (False: nothing merged) when its record names the same sources; it is rebuilt
    (True), saying why in the log, when a source changed (another run, checkpoint or file) or no record exists.
    The record is removed before the weights are written and written after them, so a merge cut short leaves no
    record and is rebuilt by the next run.
    """
    endpoint = cfg.storage.s3_endpoint_url
    about = about or {}
    sources = {"base": source_identity(base, endpoint, about.get("base"))}
    sources.update({part: source_identity(uri, endpoint, about.get(part)) for part, uri in parts.items()})
    filesystem, path = storage.resolve(out_uri, endpoint)
    if filesystem.get_file_info(path).is_file:
        recorded = read_merged_from(out_uri, endpoint)
        if recorded == sources:
            return False
        why = (
            "it records no sources (merged before cmd-ray recorded them, or cut short)"
            if recorded is None
            else f"its sources changed ({describe_changes(recorded, sources)})"
        )
        logger.info("rebuilding merged weights %s: %s", out_uri, why)
    record = merged_from_uri(out_uri)
    storage.delete_file(record, endpoint)
    # read and merged as a distill run's distill.start is (cmd_ray.train.teacher.merge_uris)
    named = {part: (f"merge {part} of {out_uri}", uri) for part, uri in parts.items()}
    merged = merge_uris(cfg, (f"merge base of {out_uri}", base), **named)
    storage.write_bytes(out_uri, merged, endpoint)
    tree = {"version": MERGED_FROM_VERSION, "weights": out_uri, "merged_from": sources}
    atomic_write_text(record, json.dumps(tree, indent=1) + "\n", endpoint)
    return True


def _about(run: RowRun) -> dict[str, Any]:
    """A merge input's row, seed index and MLflow run (the checkpoint folder, and so the epoch, is in its URI)."""
    return {"row": run.row, "seed": run.seed, "run_id": run.run_id}


def _merge_row(cfg: Config, parent: str, seed: int, runs: dict[tuple[str, int], RowRun]) -> RowRun:
    """B3 for seed index ``seed``: B1's weights with B2's IoU-Net test branch."""
    b1, b2 = runs[("B1", seed)], runs[("B2", seed)]
    out = merged_uri(cfg, "B3", seed)
    made = merge_into(cfg, out, b1.weights, about={"base": _about(b1), "bbe_test": _about(b2)}, bbe_test=b2.weights)
    run_id = _child_run(
        cfg, parent, "B3", seed, {"cmd_ray.merge_base": b1.weights, "cmd_ray.merge_bbe_test": b2.weights}
    )
    return RowRun("B3", seed, run_id, out, b1.weights, done_before=not made)


def _train_row(
    cfg: Config, row: str, seed: int, d_start: tuple[str, str] | None, parent: str, pairs: list[Any]
) -> RowRun:
    """Train ``row`` at seed index ``seed`` from the teacher, or (``d_start``: B3's and C1's weights) their merge."""
    row_cfg = row_config(cfg, row, seed, d_start)
    result = run_distillation(
        row_cfg, pairs, parent_run_id=parent, tags={ROW_TAG: row, SEED_TAG: str(seed)}, register=False
    )
    if result.nothing_to_train:
        logger.info("table1 row %s seed %d: already trained (%s)", row, seed, result.checkpoint_path)
    start = START_D if d_start else (cfg.model.init_checkpoint or "")
    weights = storage_uri(row_cfg, result.checkpoint_path)
    return RowRun(row, seed, result.run_id, weights, start, result.nothing_to_train, d_start)


def _paired_columns(summary: RowSummary) -> dict[str, Any]:
    """The table JSON's paired-comparison columns of one row (None for the reference row): per metric the paired
    mean difference, the interval, whether it excludes 0 and the Wilcoxon p; then the pairs and the bootstrap."""
    cols: dict[str, Any] = {}
    for m in TABLE1_METRICS:
        p = summary.paired.get(m)
        d = p.to_dict() if p else {}
        cols.update(
            {
                f"{m}_paired_diff": d.get("mean"),
                f"{m}_ci_low": d.get("low"),
                f"{m}_ci_high": d.get("high"),
                f"{m}_ci_excludes_zero": d.get("excludes_zero"),
                f"{m}_wilcoxon_p": d.get("p_value"),
            }
        )
    first = next(iter(summary.paired.values()), None)
    cols.update(
        {
            "paired_sequences": first.num_sequences if first else None,
            "ci_confidence": first.confidence if first else None,
            "bootstrap_resamples": first.resamples if first else None,
            "bootstrap_seed": first.seed if first else None,
        }
    )
    return cols


def _log_table(cfg: Config, parent: str, summaries: list[RowSummary], table: str, plot: Path) -> None:
    client = mlflow_runs.client(cfg)
    frame = pd.DataFrame(
        [
            {
                "row": s.row,
                "seeds": s.seeds,
                **{f"{m}_mean": s.mean[m] for m in TABLE1_METRICS},
                **{f"{m}_std": s.std[m] for m in TABLE1_METRICS},
                **{f"{m}_delta": s.delta[m] for m in TABLE1_METRICS},
                **_paired_columns(s),
            }
            for s in summaries
        ]
    )
    client.log_table(parent, data=frame, artifact_file="table1/table1.json")
    client.log_text(parent, table + "\n", "table1/table1.txt")
    client.log_artifact(parent, str(plot), "table1")
    metrics = {f"{s.row}/{m}_mean": s.mean[m] for s in summaries for m in TABLE1_METRICS}
    metrics.update({f"{s.row}/{m}_std": s.std[m] for s in summaries for m in TABLE1_METRICS if s.seeds > 1})
    for s in summaries:
        for m, p in s.paired.items():
            metrics.update(
                {f"{s.row}/{m}_paired_diff": p.mean, f"{s.row}/{m}_ci_low": p.low, f"{s.row}/{m}_ci_high": p.high}
            )
    mlflow_runs.log_metrics(cfg, parent, metrics, step=0)


def _register_best(
    cfg: Config, summaries: list[RowSummary], runs: list[RowRun], scores: dict[str, list[DatasetScores]]
) -> tuple[str, registry.RegisteredModel]:
    """Register the best seed of the row with the best mean Success (A1, the teacher, aside)."""
    candidates = [s for s in summaries if s.row != REFERENCE_ROW]
    best = max(candidates, key=lambda s: s.mean["success"])
    row_runs = sorted((r for r in runs if r.row == best.row), key=lambda r: r.seed)
    seed_scores = [s.success for s in scores[best.row]]
    chosen = row_runs[max(range(len(row_runs)), key=lambda i: seed_scores[i])]
    row_cfg = row_config(cfg, chosen.row, chosen.seed, chosen.d_start)
    earlier = registry.version_from_run(row_cfg, chosen.run_id)
    if earlier is not None:
        return best.row, earlier
    model, _ = registry.load_model(chosen.weights, row_cfg)
    registered = registry.log_and_register(row_cfg, chosen.run_id, model)
    mlflow_runs.end_run(cfg, chosen.run_id)  # logging the model reopened it
    return best.row, registered


def run_table1(cfg: Config, pairs: list[Any] | None = None) -> Table1Result:
    """Produce Table 1 for ``cfg`` on the cluster ``RAY_ADDRESS`` names (a local one when unset); see the module
    docstring for the steps. Bad input raises ``ConfigError`` (or ``EvaluationError``) before any cluster work."""
    rows = check_table(cfg)
    teacher = cfg.model.init_checkpoint
    assert teacher is not None
    resolve_teacher(cfg)  # an unreadable teacher fails here
    if pairs is None:
        pairs = list_pairs(cfg)
    load_sequences(cfg)  # a missing benchmark fails here
    cfg = mlflow_runs.pin_tracking_uri(cfg)
    parent = _parent_run(cfg)
    with mlflow_runs.terminated(cfg, parent):
        runs: dict[tuple[str, int], RowRun] = {
            (REFERENCE_ROW, 0): RowRun(
                REFERENCE_ROW, 0, _child_run(cfg, parent, REFERENCE_ROW, 0, {}), teacher, teacher, True
            )
        }
        for seed in range(cfg.table1.seeds):
            for row in rows[1:]:
                variant = get_variant(row)
                if variant.is_merge:
                    runs[(row, seed)] = _merge_row(cfg, parent, seed, runs)
                    continue
                # the D rows start from this seed's B3 with its C1's classifier (§4.3)
                d_start = (runs[("B3", seed)].weights, runs[("C1", seed)].weights) if variant.init_from else None
                runs[(row, seed)] = _train_row(cfg, row, seed, d_start, parent, pairs)
        ordered = [runs[key] for key in sorted(runs, key=lambda k: (rows.index(k[0]), k[1]))]
        evaluation = run_evaluation(
            _evaluation_config(cfg, ordered), progress=cfg.data.show_progress, parent_run_id=parent
        )
        scores: dict[str, list[DatasetScores]] = {row: [] for row in rows}
        for r in ordered:
            s = evaluation.scores[r.tracker]
            scores[r.row].append(s)
            metrics = {m: float(getattr(s, m)) for m in TABLE1_METRICS}
            mlflow_runs.log_metrics(cfg, r.run_id, {f"tir/{m}": v for m, v in metrics.items()}, step=0)
        summaries = summarise_rows(scores, REFERENCE_ROW)
        protocol, benchmark = cfg.evaluation.protocol, cfg.evaluation.benchmark
        show_np = benchmark != "ptb"
        table = format_table1(summaries, protocol=protocol, dataset=benchmark, show_norm_precision=show_np)
        with tempfile.TemporaryDirectory(prefix="cmd-ray-table1-") as tmp:
            plot = table1_plot(summaries, Path(tmp, "table1.png"), protocol=protocol, dataset=benchmark)
            _log_table(cfg, parent, summaries, table, plot)
        best_row, registered = _register_best(cfg, summaries, ordered, scores)
        mlflow_runs.set_tags(cfg, parent, {"cmd_ray.best_row": best_row, "cmd_ray.registered": registered.uri})
    return Table1Result(
        parent_run_id=parent,
        run_location=mlflow_runs.run_url(cfg, parent),
        rows=rows,
        runs=ordered,
        scores=scores,
        summaries=summaries,
        table=table,
        best_row=best_row,
        registered=registered,
        evaluation=evaluation,
    )


ROW_MEANINGS = {name: variant.meaning for name, variant in VARIANTS.items()}
"""One line per row, for the printed table's legend."""
