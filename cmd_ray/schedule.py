"""What one training job does, read off the config: distillation (``distill``) or teacher pretraining (``pretrain``).

Both jobs share the Ray Train loop; they differ in the trained parameters (the Table-1 variant, or every
head module for supervised training), the learning rates, the epoch plan and the run name. Pure: no Ray.
It sits beside the config (not in ``train``) because the data pipeline reads the epoch plan too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cmd_ray.config import Config, DistillConfig, PretrainConfig
from cmd_ray.vocabulary import Variant, get_variant, supervised_variant

Job = Literal["distill", "pretrain"]
JOBS: tuple[str, ...] = ("distill", "pretrain")


@dataclass(frozen=True)
class Schedule:
    """The training plan of one job.

    Attributes:
        job: ``"distill"`` or ``"pretrain"``.
        variant: which modality feeds which branch and which modules are trained.
        learning_rates: Adam learning rate per parameter group (``tcl``, ``bbe``, ``backbone``).
        trainable_backbone_layers: backbone stages trained at ``learning_rates["backbone"]``.
        epochs, samples_per_epoch, batch_size (per worker), val_samples: the epoch plan.
        lr_step, lr_gamma: StepLR (epochs between decays, factor).
        loss_weight_bbe: λ of Eq. 1.
        seed: seeds the sample stream and the workers' torch generators.
        run_name: the Ray Train run (checkpoint folder) and MLflow run name.
        registered_model_name: where the final model is registered.
    """

    job: Job
    variant: Variant
    learning_rates: dict[str, float]
    trainable_backbone_layers: tuple[str, ...]
    epochs: int
    samples_per_epoch: int
    batch_size: int
    val_samples: int
    lr_step: int
    lr_gamma: float
    loss_weight_bbe: float
    seed: int
    run_name: str
    registered_model_name: str

    def steps_per_epoch(self, num_workers: int) -> int:
        """Optimizer steps per epoch on every worker: the global batch (``batch_size × workers``) divides the epoch."""
        return self.samples_per_epoch // (self.batch_size * num_workers)

    def samples_per_run_epoch(self, num_workers: int) -> int:
        """Samples actually drawn per epoch (whole global batches)."""
        return self.steps_per_epoch(num_workers) * self.batch_size * num_workers


def schedule_for(cfg: Config, job: Job = "distill") -> Schedule:
    """The :class:`Schedule` of ``job`` under ``cfg``; ``ValueError`` for an unknown job."""
    if job == "distill":
        return _schedule(
            "distill",
            cfg.distill,
            get_variant(cfg.distill.variant),
            cfg.model.trainable_backbone_layers,
            cfg.storage.run_name,
            cfg.mlflow.registered_model_name,
        )
    if job == "pretrain":
        p = cfg.pretrain
        variant = supervised_variant(cfg.model.architecture)
        return _schedule("pretrain", p, variant, p.trainable_backbone_layers, p.run_name, p.registered_model_name)
    raise ValueError(f"unknown training job {job!r}; allowed: {', '.join(JOBS)}")


def _schedule(
    job: Job,
    section: DistillConfig | PretrainConfig,
    variant: Variant,
    trainable_backbone_layers: Sequence[str],
    run_name: str,
    registered_model_name: str,
) -> Schedule:
    """A schedule from the fields the ``distill`` and ``pretrain`` sections share (same names in both)."""
    return Schedule(
        job=job,
        variant=variant,
        learning_rates={"tcl": section.lr_tcl, "bbe": section.lr_bbe, "backbone": section.lr_backbone},
        trainable_backbone_layers=tuple(trainable_backbone_layers),
        epochs=section.epochs,
        samples_per_epoch=section.samples_per_epoch,
        batch_size=section.batch_size,
        val_samples=section.val_samples,
        lr_step=section.lr_step,
        lr_gamma=section.lr_gamma,
        loss_weight_bbe=section.loss_weight_bbe,
        seed=section.seed,
        run_name=run_name,
        registered_model_name=registered_model_name,
    )
