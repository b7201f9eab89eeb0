"""Which config changes a resumed training run may make. Pure: no Ray, no storage, unit-testable.

A training job run again with the same run name and storage path resumes the earlier run from its latest
checkpoint. That is only sound when the new config describes the same run: the same data, network, variant,
starting weights (``model.init_checkpoint``, ``distill.start.*``), learning rates (``distill.lr_scale`` among
them: it changes the resolved rates as ``distill.lr_tcl`` does), schedule and seed. A resume may change where the
run lives and how it is executed (the ``storage.*`` and ``scaling.*`` settings, the Ray Data actor pool, progress
bars, the MLflow server, the cap on unreadable data), and how long it trains (``distill.epochs``, ``pretrain.epochs``
for the pretrain job). Every other difference between the config stored in the run's checkpoint and the new one is
a *blocker*: :func:`resume_blockers` lists them, :func:`check_resume` raises a :class:`~cmd_ray.config.ConfigError`
naming each key with its old and new value and how to start a new run instead.

Settings no training job reads (``tune.*``, ``synth.*``, ``tracker.*``, ``evaluation.*``) never block, and
neither do those of the other job (``pretrain.*`` for distillation; for pretraining, the distillation-only
``distill.*`` keys, ``model.init_checkpoint`` and ``mlflow.registered_model_name``). The exception: a distill run
that selects its weights by tracking (``distill.select_by``) scores every epoch with ``tune.eval_*``, ``tracker.*``
and the evaluation protocol (:data:`SELECTION_SCORES`), so those block its resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from cmd_ray.config import Config, ConfigError, flatten_tree

RESUMABLE: tuple[str, ...] = (
    "storage",
    "scaling",
    "mlflow.tracking_uri",
    "data.num_actors",
    "data.cpus_per_actor",
    "data.object_store_memory_mb",
    "data.preserve_order",
    "data.progress",
    "data.label_selector",
    "data.max_skipped_fraction",  # how much unreadable data the run tolerates, not what it trains on
)
"""Dotted keys (a section name covers all its keys) that any resume may change: where the run's checkpoints
and records live and how the run is executed, never what it trains on or how it learns."""

NOT_READ_BY_TRAINING: tuple[str, ...] = ("tune", "synth", "tracker", "evaluation")
"""Sections that neither training job reads: differences there never block a resume."""

_DISTILL_ONLY: tuple[str, ...] = tuple(
    f"distill.{key}"
    for key in (
        "variant",
        "mixing",
        "lr_tcl",
        "lr_bbe",
        "lr_scale",
        "lr_backbone",
        "loss_weight_bbe",
        "epochs",
        "samples_per_epoch",
        "batch_size",
        "val_samples",
        "lr_step",
        "lr_gamma",
        "seed",
        "start",
        "select_by",
        "select_every",
    )
)
"""``distill.*`` keys pretraining does not read (it shares only the loss options: ``distill.tcl_loss``,
``distill.tcl_weights``, ``distill.hinge_threshold``, ``distill.filter_reg_mu``, ``distill.bbe_loss``,
``distill.bbe_reg_nu``, which still block a pretraining resume)."""

JOB_RESUMABLE: dict[str, tuple[str, ...]] = {
    "distill": ("distill.epochs", "pretrain"),
    "pretrain": ("pretrain.epochs", *_DISTILL_ONLY, "model.init_checkpoint", "mlflow.registered_model_name"),
}
"""Per job: the epoch count a resume may raise, and the settings of the other job, which this one does not read."""

SELECTION_SCORES: tuple[str, ...] = (
    "tune.eval_root",
    "tune.eval_benchmark",
    "tune.eval_sequences",
    "tracker",
    "evaluation.benchmark",
    "evaluation.protocol",
    "evaluation.lsotb_subset",
)
"""What a distill run with ``distill.select_by`` other than ``last`` scores its epochs and its teacher with: the
validation sequences, their layout, the tracker and the OPE protocol. A resume of such a run may not change them, or
the epochs it trains would be compared with the stored best (and the teacher) on other terms."""

RUN_NAME_KEY: dict[str, str] = {"distill": "storage.run_name", "pretrain": "pretrain.run_name"}
"""The key that names a job's run (its checkpoint folder under ``storage.storage_path``)."""

_ABSENT = object()
_MAX_VALUE_CHARS = 200


def may_change_on_resume(key: str, job: str = "distill") -> bool:
    """Whether dotted ``key`` may differ between a run's stored config and the config that resumes it."""
    if job not in JOB_RESUMABLE:
        raise ValueError(f"unknown training job {job!r}; allowed: {', '.join(JOB_RESUMABLE)}")
    return _under(key, (*RESUMABLE, *NOT_READ_BY_TRAINING, *JOB_RESUMABLE[job]))


def resume_blockers(old: Mapping[str, Any], new: Mapping[str, Any], job: str = "distill") -> list[str]:
    """``"key: old → new"`` for every setting that differs between two config trees and blocks a resume of ``job``.

    ``old`` is the config stored in the run's checkpoint, ``new`` the one of the rerun (nested dicts, as
    ``Config.model_dump(mode="json")`` gives). A tree that is a valid :class:`~cmd_ray.config.Config` is first
    completed with the defaults, so a stored config that predates a key with a default does not block; a key
    present on one side only shows as ``(absent)``. Sorted by key.
    """
    old_flat, new_flat = _flatten(_normalized(old)), _flatten(_normalized(new))
    # distill.select_by itself blocks when it changes; while it selects, so do the settings its scores depend on
    selecting = job == "distill" and new_flat.get("distill.select_by", "last") != "last"
    blockers = []
    for key in sorted(old_flat.keys() | new_flat.keys()):
        before, after = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        if before == after:
            continue
        if not may_change_on_resume(key, job) or (selecting and _under(key, SELECTION_SCORES)):
            blockers.append(f"{key}: {_show(before)} → {_show(after)}")
    return blockers


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or lies below one of them."""
    return any(key == prefix or key.startswith(prefix + ".") for prefix in prefixes)


def check_resume(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    job: str = "distill",
    *,
    run: str,
    old_job: str | None = None,
    note: str = "",
) -> None:
    """Raise :class:`~cmd_ray.config.ConfigError` when ``new`` may not resume the run that stored ``old``.

    Args:
        old: the config tree stored in the run's latest checkpoint.
        new: the config tree of the rerun.
        job: the job that reruns (``distill`` or ``pretrain``).
        run: how the message names the run (e.g. its folder ``storage_path/run_name``).
        old_job: the job that wrote the checkpoint, when known; another job than ``job`` always blocks.
        note: appended to the message (e.g. where the stored config was read).
    """
    blockers = resume_blockers(old, new, job)
    if old_job is not None and old_job != job:
        blockers.insert(0, f"job: {old_job} → {job} (the folder holds a {old_job} run)")
    if not blockers:
        return
    name_key = RUN_NAME_KEY.get(job, "storage.run_name")
    epochs_key = f"{job}.epochs"
    lines = "\n".join(f"  {line}" for line in blockers)
    operational = ", ".join(key for key in RESUMABLE if "." in key)
    message = (
        f"{run} is an earlier {job} run with another config. A resume may change only {epochs_key}, storage.*, "
        f"scaling.* and operational settings ({operational}); these settings differ (stored → now):\n{lines}\n"
        f"To train with the new settings, start a new run: set {name_key}=<new name> (or another "
        f"storage.storage_path). To continue the earlier run, drop these changes."
    )
    raise ConfigError(f"{message}\n{note}" if note else message)


def _normalized(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` as a validated Config dump; a tree that no longer validates (a key since removed) is laid over
    the defaults instead. Either way a key missing from ``tree`` takes its default."""
    try:
        return Config.model_validate(dict(tree)).model_dump(mode="json")
    except (ValidationError, ValueError, TypeError):
        return _overlay(Config().model_dump(mode="json"), tree)


def _overlay(base: Mapping[str, Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in tree.items():
        below = merged.get(key)
        merged[key] = _overlay(below, value) if isinstance(below, Mapping) and isinstance(value, Mapping) else value
    return merged


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys to leaf values; tuples compare equal to lists."""
    return {key: _plain(value) for key, value in flatten_tree(tree).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"
