"""Which weights a distillation run keeps when ``distill.select_by`` is a tracking score, and their registration.

The teacher's weights are scored once, before training, as epoch :data:`TEACHER_EPOCH` (-1); then every scored epoch
(:func:`scored_epochs`). An epoch is selected only when it scores strictly higher than every epoch before it, the
teacher included, so among equal scores the earliest stays (the teacher first) and a run that never beats its teacher
keeps the teacher's weights. A NaN score never beats anything.

The train loop's rank-0 worker applies the rule as the scores come (:meth:`BestEpoch.after`) and keeps the result in
each checkpoint, so a restarted or resumed run goes on from it. Each report carries :data:`CHECKPOINT_SCORE`, which
Ray Train's ``CheckpointConfig(checkpoint_score_attribute=…, checkpoint_score_order="max")`` keeps the highest of: it
is the epoch itself when that epoch became the selected one, else -1, so the selected epoch's checkpoint is never
among those ``storage.checkpoints_to_keep`` lets Ray Train delete (Ray Train always keeps the latest one as well).

After the run the driver reads the selection off the last report (:func:`selected_model`): the selected epoch's
checkpoint, or for the teacher its weights rebuilt as the workers load them (:func:`teacher_network`), and registers
it as a new version whose description and tags name the epoch and whether it beat the teacher
(:func:`register_selection`). Registering the teacher's weights anew, rather than pointing the alias at an older
version, keeps one version per run: it links to this run and its scores, and the teacher need not be a version of
the same registered model (or registered at all). Nothing here imports Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from cmd_ray import mlflow_runs, registry
from cmd_ray.config import Config
from cmd_ray.models.dimpnet import build_model
from cmd_ray.schedule import schedule_for
from cmd_ray.train.teacher import Teacher, load_teacher_weights

if TYPE_CHECKING:
    import ray.train

logger = logging.getLogger(__name__)

TEACHER_EPOCH = -1
"""The epoch number of the teacher's weights (scored before the first epoch)."""

CHECKPOINT_SCORE = "new_best_epoch"
"""Report key Ray Train ranks checkpoints by: the epoch when it became the selected epoch, else -1."""

BEST_EPOCH = "best_epoch"
"""Report and MLflow metric: the epoch selected so far (-1: the teacher)."""


@dataclass(frozen=True)
class BestEpoch:
    """The epoch selected so far and the scores it was chosen on.

    Attributes:
        metric: the score compared (``val_success`` or ``val_precision``, in [0, 1]; higher is better).
        epoch: the selected epoch, 0-based; :data:`TEACHER_EPOCH` for the teacher's weights.
        value: its score.
        teacher_value: the teacher's score.
    """

    metric: str
    epoch: int
    value: float
    teacher_value: float

    @classmethod
    def of_teacher(cls, metric: str, value: float) -> BestEpoch:
        """The selection before any epoch is trained: the teacher, scoring ``value``."""
        return cls(metric, TEACHER_EPOCH, float(value), float(value))

    @property
    def beat_teacher(self) -> bool:
        """Whether a trained epoch scored strictly higher than the teacher."""
        return self.epoch != TEACHER_EPOCH

    def after(self, epoch: int, value: float) -> BestEpoch:
        """The selection once ``epoch`` has scored ``value``: that epoch if it beats the selected one, else this."""
        if epoch <= self.epoch:
            raise ValueError(f"epoch {epoch} scored after epoch {self.epoch}: epochs are scored in order")
        return BestEpoch(self.metric, epoch, float(value), self.teacher_value) if value > self.value else self

    def metrics(self) -> dict[str, float]:
        """``best_epoch``, ``best_<metric>`` and ``teacher_<metric>``, for each report and MLflow."""
        return {
            BEST_EPOCH: float(self.epoch),
            f"best_{self.metric}": self.value,
            f"teacher_{self.metric}": self.teacher_value,
        }

    def state(self) -> dict[str, Any]:
        """Plain values for a training checkpoint (``torch.load(weights_only=True)`` reads them back)."""
        return {"metric": self.metric, "epoch": self.epoch, "value": self.value, "teacher_value": self.teacher_value}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> BestEpoch:
        """The inverse of :meth:`state`."""
        return cls(str(state["metric"]), int(state["epoch"]), float(state["value"]), float(state["teacher_value"]))


def checkpoint_score(before: BestEpoch, after: BestEpoch, epoch: int) -> float:
    """:data:`CHECKPOINT_SCORE` of ``epoch``'s checkpoint: ``epoch`` when it became the selection, else -1."""
    return float(epoch) if after.epoch == epoch and before.epoch != epoch else -1.0


def select_epoch(metric: str, teacher_value: float, scores: Mapping[int, float]) -> BestEpoch:
    """The rule applied to a whole run: ``scores`` maps each scored epoch (0-based) to its score."""
    best = BestEpoch.of_teacher(metric, teacher_value)
    for epoch in sorted(scores):
        best = best.after(epoch, scores[epoch])
    return best


def scored_epochs(epochs: int, every: int) -> list[int]:
    """The 0-based epochs whose weights are scored: every ``every``-th (``every - 1``, ``2·every - 1``, …) and the
    last one."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if epochs < 1:
        return []
    return sorted({e for e in range(epochs) if (e + 1) % every == 0} | {epochs - 1})


@dataclass(frozen=True)
class Selection:
    """The weights a distill run with ``distill.select_by`` registered, and why."""

    best: BestEpoch
    """The selected epoch (-1: the teacher), its score and the teacher's."""
    checkpoint_path: str
    """The selected epoch's checkpoint as Ray Train reported it; empty when the teacher's weights were kept."""

    def summary(self) -> str:
        """One line for the job log and the CLI: which epoch, its score, the teacher's, and whether it beat it."""
        best, metric = self.best, self.best.metric
        if best.beat_teacher:
            return (
                f"epoch {best.epoch} selected by {metric}: {best.value:.4f} beat the teacher's {best.teacher_value:.4f}"
            )
        return (
            f"no epoch beat the teacher's {metric} of {best.teacher_value:.4f}: the teacher's weights (epoch "
            f"{TEACHER_EPOCH}) are kept"
        )


def teacher_network(cfg: Config, teacher: Teacher) -> torch.nn.Module:
    """The network a distill run starts from, as its rank-0 worker builds it: initialised from ``distill.seed``
    (what a partial teacher file leaves untouched keeps that initialisation), then the teacher's weights; in eval
    mode on CPU. The driver's own random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(schedule_for(cfg, "distill").seed)  # the loop seeds rank 0 with seed + 0
        model = build_model(cfg)
    load_teacher_weights(model, teacher)
    return model.eval()


def selected_model(
    result: ray.train.Result, cfg: Config, teacher: Teacher, select_by: str
) -> tuple[torch.nn.Module, Selection]:
    """The network a run with ``distill.select_by`` registers and its :class:`Selection`, from the run's last report:
    the selected epoch's checkpoint (among those Ray Train kept), or the teacher's weights (:func:`teacher_network`).

    Raises:
        RuntimeError: the last report holds no selection, or Ray Train kept no checkpoint of the selected epoch.
    """
    metrics = result.metrics or {}
    try:
        best = BestEpoch(
            select_by,
            int(metrics[BEST_EPOCH]),
            float(metrics[f"best_{select_by}"]),
            float(metrics[f"teacher_{select_by}"]),
        )
    except KeyError as exc:
        raise RuntimeError(
            f"run {cfg.storage.run_name}: its last report holds no selection by {select_by} ({exc})"
        ) from None
    if not best.beat_teacher:
        return teacher_network(cfg, teacher), Selection(best, "")
    kept = result.best_checkpoints or []
    for checkpoint, reported in kept:
        if int(reported.get("epoch", TEACHER_EPOCH)) == best.epoch:
            with checkpoint.as_directory() as directory:
                model, _ = registry.load_model(directory, cfg)
            return model, Selection(best, checkpoint.path)
    paths = ", ".join(checkpoint.path for checkpoint, _ in kept) or "none"
    raise RuntimeError(
        f"run {cfg.storage.run_name}: Ray Train kept no checkpoint of the selected epoch {best.epoch} (kept: {paths})"
    )


def register_selection(
    cfg: Config, run_id: str, model: torch.nn.Module, selection: Selection, name: str | None = None
) -> registry.RegisteredModel:
    """Tag run ``run_id`` with ``selection`` (:func:`cmd_ray.registry.selection_tags`), then register ``model`` and
    move the alias to it; the version's description and tags say which epoch it holds and whether it beat the
    teacher. A run that did not beat its teacher registers the teacher's weights and logs a warning saying so."""
    best = selection.best
    mlflow_runs.set_tags(cfg, run_id, registry.selection_tags(best.metric, best.epoch, best.value, best.teacher_value))
    mlflow_runs.log_metrics(cfg, run_id, {"selected_epoch": best.epoch}, step=cfg.distill.epochs)
    registered = registry.log_and_register(cfg, run_id, model, name)
    if best.beat_teacher:
        logger.info("%s; registered %s (version %s)", selection.summary(), registered.uri, registered.version)
    else:
        logger.warning(
            "%s; registered them as %s (version %s)", selection.summary(), registered.uri, registered.version
        )
    return registered
