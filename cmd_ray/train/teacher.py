"""Where a run's starting weights come from, and the lineage tags that record it.

``model.init_checkpoint`` may be a registered model (``models:/NAME@ALIAS``, e.g. the teacher that
``jobs/pretrain.py`` registered), a cmd-ray checkpoint (folder or ``training_state.pt``), a state-dict file,
or a pytracking checkpoint, local or on S3. The driver reads it once; workers get the bytes from the Ray
object store, so a hundred workers do not each download a 200 MB file.

Every URI is read *and checked* here, before Ray starts (:func:`check_weights`): a file the restricted unpickler
refuses (corrupt, or one whose pickle names code to run), or weights of another network (nothing fits, or tensors
of another shape), fail with a :class:`~cmd_ray.config.ConfigError` naming the setting and the URI, instead of a
worker error that Ray Train retries ``storage.max_failures`` times. The workers load by the same rule
(:func:`load_teacher_weights`).

A D row whose config names its start (``distill.start``: B3, or B1 and B2, and C1, any of the same kinds of URI)
starts instead from B3's IoU-Net with C1's classifier (§4.3), merged here on the driver with
:func:`cmd_ray.distill.merge.merge_modules` (:func:`resolve_start`); ``jobs/table1.py`` merges B3 with the same
functions. Without it, a D row starts from the teacher, and :func:`start_tags` and the log say so.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import Config, ConfigError
from cmd_ray.distill.merge import merge_modules
from cmd_ray.models.checkpoint import LoadReport, load_into, load_state_dict
from cmd_ray.models.dimpnet import build_model
from cmd_ray.models.loading import checkpoint_file
from cmd_ray.models.safe_unpickler import CheckpointError
from cmd_ray.registry import START_TAG, VARIANT_TAG, start_source_tags, start_sources_text
from cmd_ray.storage import StorageError, is_s3, read_bytes
from cmd_ray.vocabulary import START_D, START_TEACHER, paper_start

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
TEACHER_SOURCE_TAG = "cmd_ray.teacher_source"
TEACHER_RUN_TAG = "cmd_ray.teacher_run_id"
TEACHER_VERSION_TAG = "cmd_ray.teacher_model_version"


@dataclass(frozen=True)
class Teacher:
    """The starting weights of a run.

    Attributes:
        source: ``model.init_checkpoint``, ``"random-init"``, or for a merged D start ``START_D``.
        weights: the file's bytes (``None`` for random initialisation).
        run_id: the MLflow run that produced the weights, when known (registered models and cmd-ray checkpoints).
        model_version: the registry version, for ``models:/`` sources.
        merged_from: for a merged D start, ``(config key, URI)`` of each merged checkpoint (``distill.start.b3``
            and ``distill.start.c1``, or ``b1``, ``b2`` and ``c1``); empty otherwise.
    """

    source: str
    weights: bytes | None = None
    run_id: str | None = None
    model_version: str | None = None
    merged_from: tuple[tuple[str, str], ...] = ()

    @property
    def start(self) -> str:
        """:data:`~cmd_ray.vocabulary.START_D` for a merged D start, else ``START_TEACHER``."""
        return START_D if self.merged_from else START_TEACHER

    def describe(self) -> str:
        """One line for logs and the job's summary: the source, and what a merged start is made of."""
        if not self.merged_from:
            return self.source
        return f"{self.source} of {start_sources_text(dict(self.merged_from))}"

    def tags(self) -> dict[str, str]:
        """MLflow tags that link a run to its starting weights: the teacher's source and lineage, or for a merged
        D start the URI of each merged checkpoint (``cmd_ray.start_b3``, ``cmd_ray.start_c1``, …)."""
        if self.merged_from:
            return start_source_tags(dict(self.merged_from))
        tags = {TEACHER_SOURCE_TAG: self.source}
        if self.run_id:
            tags[TEACHER_RUN_TAG] = self.run_id
        if self.model_version:
            tags[TEACHER_VERSION_TAG] = self.model_version
        return tags


def resolve_teacher(cfg: Config, job: str = "distill") -> Teacher:
    """Read the starting weights of ``job`` on the driver.

    ``distill`` starts from ``model.init_checkpoint`` (the teacher); ``pretrain`` from
    ``pretrain.init_checkpoint`` (e.g. ImageNet backbone weights; random when unset).

    Raises:
        ConfigError: the URI cannot be read, or a registered model was built with another network preset.
    """
    key = "pretrain.init_checkpoint" if job == "pretrain" else "model.init_checkpoint"
    uri = cfg.pretrain.init_checkpoint if job == "pretrain" else cfg.model.init_checkpoint
    if not uri:
        return Teacher(RANDOM_INIT)
    return read_weights(cfg, uri, key)


def read_weights(cfg: Config, uri: str, key: str) -> Teacher:
    """The weights ``uri`` names, read on the driver, with the MLflow run (and registry version) that made them.

    ``uri`` is ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` (a registered model must be of ``cfg``'s network),
    a cmd-ray checkpoint folder or ``training_state.pt``, a state-dict or pytracking file, local or ``s3://``.

    Raises:
        ConfigError: naming ``key`` (the config key that holds ``uri``), when ``uri`` cannot be read or is a
            registered model of another network preset.
    """
    if uri.startswith("models:/"):
        try:
            files = registry.fetch(uri, mlflow_runs.tracking_uri(cfg))
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        theirs, ours = files.config.model, cfg.model
        if (theirs.architecture, theirs.preset) != (ours.architecture, ours.preset):
            raise ConfigError(
                f"{key} {uri} is a {theirs.architecture}/{theirs.preset} network, but this run "
                f"builds {ours.architecture}/{ours.preset}: set model.architecture and model.preset to match"
            )
        check_weights(cfg, files.weights, key, uri)
        return Teacher(uri, files.weights, files.run_id, files.version)
    try:
        weights = read_bytes(checkpoint_file(uri, cfg.storage.s3_endpoint_url), cfg.storage.s3_endpoint_url)
    except (StorageError, OSError) as exc:
        where = "on S3" if is_s3(uri) else "on this machine"
        raise ConfigError(f"{key} {uri} cannot be read {where}: {exc}") from None
    check_weights(cfg, weights, key, uri)
    return Teacher(uri, weights, run_id=_producing_run(weights))


def parse_weights(weights: bytes, source: str) -> dict[str, torch.Tensor]:
    """The state dict held by ``weights`` (a weights file's bytes), read as
    :func:`~cmd_ray.models.checkpoint.load_state_dict` reads a file: no pickled code runs.

    Raises:
        CheckpointError: naming ``source`` (the URI the bytes came from), not the temporary file they pass through.
    """
    with tempfile.TemporaryDirectory(prefix="cmd-ray-weights-") as tmp:
        path = Path(tmp) / "weights.pt"
        path.write_bytes(weights)
        try:
            return load_state_dict(path)
        except CheckpointError as exc:
            raise CheckpointError(" ".join(str(exc).replace(str(path), source).split())) from None


def fit_problem(report: LoadReport) -> str | None:
    """Why weights loaded with ``report`` (:func:`~cmd_ray.models.checkpoint.load_into`) are not a network of this
    kind: nothing fits, or a tensor has another shape than the network's (a checkpoint of another preset or
    architecture); ``None`` when they are. Missing and extra keys alone are fine (backbone-only weights, a
    pytracking file's extra buffers): they are logged as a partial load."""
    if not report.loaded:
        return "no tensor of it fits this network"
    if report.shape_mismatches:
        key, (theirs, ours) = next(iter(report.shape_mismatches.items()))
        return (
            f"{len(report.shape_mismatches)} tensor(s) have another shape than this network's, e.g. {key}: "
            f"{list(theirs)} in the file, {list(ours)} in the network"
        )
    return None


def check_weights(cfg: Config, weights: bytes, key: str, uri: str) -> LoadReport:
    """Parse ``weights`` (read from ``uri``, the value of setting ``key``) and load them into ``cfg``'s network by
    the rule the training workers use (:func:`load_teacher_weights`), here on the driver before any cluster work.

    Raises:
        ConfigError: naming ``key`` and ``uri``: a file the restricted unpickler refuses or that holds no state dict,
            or weights of another network (:func:`fit_problem`).
    """
    try:
        state = parse_weights(weights, uri)
    except CheckpointError as exc:
        raise ConfigError(f"{key}={uri} is not a usable checkpoint: {exc}") from None
    with torch.random.fork_rng(devices=[]):  # a check: the caller's random stream (its initialisation) stays as it was
        report = load_into(build_model(cfg), state)
    problem = fit_problem(report)
    if problem is not None:
        network = f"{cfg.model.architecture}/{cfg.model.preset}"
        raise ConfigError(
            f"{key}={uri} does not fit the {network} network this run builds: {problem}. Point {key} at weights of "
            "this network, or set model.architecture and model.preset to the file's"
        )
    return report


def merge_weights(base: bytes, names: dict[str, str] | None = None, **parts: bytes) -> bytes:
    """:func:`~cmd_ray.distill.merge.merge_modules` on weights in memory: ``base`` with each part (``tcl``,
    ``bbe_reference``, ``bbe_test``) taken from the weights given for it; returns a plain state dict's bytes.

    Raises:
        CheckpointError: weights that do not merge (key sets or shapes that differ, a part ``base`` lacks); the
            message names each input by ``names`` (``{"base": …, part: …}``, e.g. their URIs), not by the temporary
            files they pass through.
    """
    with tempfile.TemporaryDirectory(prefix="cmd-ray-merge-") as tmp:
        folder = Path(tmp)
        (folder / "base.pt").write_bytes(base)
        for part, weights in parts.items():
            (folder / f"{part}.pt").write_bytes(weights)
        files = {part: folder / f"{part}.pt" for part in parts}
        try:
            return merge_modules(folder / "base.pt", folder / "merged.pt", **files).read_bytes()
        except CheckpointError as exc:
            text = str(exc)
            for name, label in (names or {}).items():
                text = text.replace(str(folder / f"{name}.pt"), label)
            raise CheckpointError(text) from None


def merge_uris(cfg: Config, base: tuple[str, str], **parts: tuple[str, str]) -> bytes:
    """:func:`merge_weights` of the weights each ``(config key, URI)`` names (:func:`read_weights` reads them).

    Raises:
        ConfigError: a URI that cannot be read, or weights that do not merge (naming the keys).
    """

    def read(key: str, uri: str) -> bytes:
        weights = read_weights(cfg, uri, key).weights
        assert weights is not None  # read_weights reads a file: only random initialisation has no bytes
        return weights

    base_weights = read(*base)
    part_weights = {part: read(*named) for part, named in parts.items()}
    names = {"base": base[1], **{part: uri for part, (_, uri) in parts.items()}}
    try:
        return merge_weights(base_weights, names, **part_weights)
    except (CheckpointError, ValueError) as exc:
        keys = ", ".join([base[0], *(key for key, _ in parts.values())])
        raise ConfigError(f"{keys}: cannot merge: {exc}") from None


def resolve_start(cfg: Config) -> Teacher:
    """The starting weights of a distill run, read (and merged) on the driver.

    A D row whose ``distill.start`` names B3 (or B1 and B2) and C1 starts from B3 (B1 with B2's IoU-Net test
    branch) with C1's classifier, as the paper's D rows do (§4.3); any other run starts from the teacher
    (:func:`resolve_teacher`).

    Raises:
        ConfigError: a start that cannot be read or merged, naming its config key.
    """
    start = cfg.distill.start
    if not start.given:
        return resolve_teacher(cfg)
    named = start.named()
    c1 = ("distill.start.c1", named["distill.start.c1"])
    if start.b3:
        weights = merge_uris(cfg, ("distill.start.b3", start.b3), tcl=c1)
    else:
        assert start.b1 and start.b2  # the config validates b1 and b2 together
        b2 = ("distill.start.b2", start.b2)
        weights = merge_uris(cfg, ("distill.start.b1", start.b1), bbe_test=b2, tcl=c1)
    return Teacher(START_D, weights, merged_from=tuple(named.items()))


def start_tags(cfg: Config) -> dict[str, str]:
    """MLflow tags naming where a distill run starts and what it therefore is: :data:`START_TAG` (the teacher or
    merge(B3,C1)) and :data:`VARIANT_TAG` (``cfg.distill.run_label``: ``D3``, or ``D3 loss from the teacher``)."""
    return {START_TAG: cfg.distill.start_kind, VARIANT_TAG: cfg.distill.run_label}


def log_start(cfg: Config, teacher: Teacher) -> None:
    """Say where the run starts; a D row that starts from the teacher, not from merge(B3, C1), is a warning."""
    row, label = cfg.distill.variant, cfg.distill.run_label
    if cfg.distill.start_kind != paper_start(row):
        logger.warning(
            "distill.variant=%s starts from the teacher (%s), not from merge(B3, C1) as the paper's %s does: this "
            "run is recorded as %r. To start from merge(B3, C1), set distill.start.b3 (or b1 and b2) and "
            "distill.start.c1",
            row,
            teacher.describe(),
            row,
            label,
        )
    else:
        logger.info("distill.variant=%s (%s) starts from %s", row, label, teacher.describe())


def _producing_run(weights: bytes) -> str | None:
    """The MLflow run id a cmd-ray training checkpoint records (``None`` for other files)."""
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception:  # not a cmd-ray file (pytracking checkpoints refuse weights_only): no lineage to read
        return None
    run_id = state.get("mlflow_run_id") if isinstance(state, dict) else None
    return run_id if isinstance(run_id, str) else None


def load_teacher_weights(model: nn.Module, teacher: Teacher) -> LoadReport | None:
    """Load ``teacher``'s weights into ``model``: missing and extra keys are reported, weights of another network
    (:func:`fit_problem`) refused. The driver checks every start by this rule before Ray starts
    (:func:`check_weights`), so a worker meets no bad file.

    Raises:
        CheckpointError: naming the starting weights' source: an unreadable file, or weights of another network.
    """
    if teacher.weights is None:
        return None
    report = load_into(model, parse_weights(teacher.weights, teacher.describe()))
    problem = fit_problem(report)
    if problem is not None:
        raise CheckpointError(f"starting weights {teacher.describe()} do not fit this network: {problem}")
    if not report.ok:
        logger.warning("teacher %s loaded partially:\n%s", teacher.describe(), report)
    return report
