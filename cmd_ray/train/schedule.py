"""What one training job does, read off the config: distillation (``distill``) or teacher pretraining (``pretrain``).

Both jobs share the Ray Train loop; they differ in the trained parameters (the Table-1 variant, or every
head module for supervised training), the learning rates, the epoch plan and the run name. Pure: no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cmd_ray.config import Config
from cmd_ray.distill.variants import Variant, get_variant, supervised_variant

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
        d = cfg.distill
        return Schedule(
            job="distill",
            variant=get_variant(d.variant),
            learning_rates={"tcl": d.lr_tcl, "bbe": d.lr_bbe, "backbone": d.lr_backbone},
            trainable_backbone_layers=tuple(cfg.model.trainable_backbone_layers),
            epochs=d.epochs,
            samples_per_epoch=d.samples_per_epoch,
            batch_size=d.batch_size,
            val_samples=d.val_samples,
            lr_step=d.lr_step,
            lr_gamma=d.lr_gamma,
            loss_weight_bbe=d.loss_weight_bbe,
            seed=d.seed,
            run_name=cfg.storage.run_name,
            registered_model_name=cfg.mlflow.registered_model_name,
        )
    if job == "pretrain":
        p = cfg.pretrain
        return Schedule(
            job="pretrain",
            variant=supervised_variant(cfg.model.architecture),
            learning_rates={"tcl": p.lr_tcl, "bbe": p.lr_bbe, "backbone": p.lr_backbone},
            trainable_backbone_layers=tuple(p.trainable_backbone_layers),
            epochs=p.epochs,
            samples_per_epoch=p.samples_per_epoch,
            batch_size=p.batch_size,
            val_samples=p.val_samples,
            lr_step=p.lr_step,
            lr_gamma=p.lr_gamma,
            loss_weight_bbe=p.loss_weight_bbe,
            seed=p.seed,
            run_name=p.run_name,
            registered_model_name=p.registered_model_name,
        )
    raise ValueError(f"unknown training job {job!r}; allowed: {', '.join(JOBS)}")
