"""Where a run's starting weights come from, and the lineage tags that record it.

``model.init_checkpoint`` may be a registered model (``models:/NAME@ALIAS``, e.g. the teacher that
``jobs/pretrain.py`` registered), a cmd-ray checkpoint (folder or ``training_state.pt``), a state-dict file,
or a pytracking checkpoint, local or on S3. The driver reads it once; workers get the bytes from the Ray
object store, so a hundred workers do not each download a 200 MB file.
"""

from __future__ import annotations

import io
import logging
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import Config, ConfigError
from cmd_ray.models.checkpoint import LoadReport, load_into, load_state_dict
from cmd_ray.models.loading import checkpoint_file
from cmd_ray.models.safe_unpickler import CheckpointError
from cmd_ray.storage import StorageError, is_s3, read_bytes

logger = logging.getLogger(__name__)

RANDOM_INIT = "random-init"
TEACHER_SOURCE_TAG = "cmd_ray.teacher_source"
TEACHER_RUN_TAG = "cmd_ray.teacher_run_id"
TEACHER_VERSION_TAG = "cmd_ray.teacher_model_version"


@dataclass(frozen=True)
class Teacher:
    """The starting weights of a run.

    Attributes:
        source: ``model.init_checkpoint``, or ``"random-init"``.
        weights: the file's bytes (``None`` for random initialisation).
        run_id: the MLflow run that produced the weights, when known (registered models and cmd-ray checkpoints).
        model_version: the registry version, for ``models:/`` sources.
    """

    source: str
    weights: bytes | None = None
    run_id: str | None = None
    model_version: str | None = None

    def tags(self) -> dict[str, str]:
        """MLflow tags that link a run to its teacher."""
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
        return Teacher(uri, files.weights, files.run_id, files.version)
    try:
        weights = read_bytes(checkpoint_file(uri, cfg.storage.s3_endpoint_url), cfg.storage.s3_endpoint_url)
    except (StorageError, OSError) as exc:
        where = "on S3" if is_s3(uri) else "on this machine"
        raise ConfigError(f"{key} {uri} cannot be read {where}: {exc}") from None
    return Teacher(uri, weights, run_id=_producing_run(weights))


def _producing_run(weights: bytes) -> str | None:
    """The MLflow run id a cmd-ray training checkpoint records (``None`` for other files)."""
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    except Exception:  # not a cmd-ray file (pytracking checkpoints refuse weights_only): no lineage to read
        return None
    run_id = state.get("mlflow_run_id") if isinstance(state, dict) else None
    return run_id if isinstance(run_id, str) else None


def load_teacher_weights(model: nn.Module, teacher: Teacher) -> LoadReport | None:
    """Load ``teacher``'s weights into ``model`` (what fits; the rest is reported).

    Raises:
        CheckpointError: nothing in the file fits the network.
    """
    if teacher.weights is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
        tmp.write(teacher.weights)
        tmp.flush()
        report = load_into(model, load_state_dict(tmp.name))
    if not report.loaded:
        raise CheckpointError(f"starting weights {teacher.source} have nothing that fits this network")
    if not report.ok:
        logger.warning("teacher %s loaded partially:\n%s", teacher.source, report)
    return report
