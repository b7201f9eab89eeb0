"""Weights files: a network's state dict from any checkpoint, and loading what fits into a model.

:func:`load_state_dict` reads a plain state dict, a cmd-ray training checkpoint (file or folder,
:mod:`cmd_ray.models.training_state`) or a pytracking checkpoint (:mod:`cmd_ray.models.pytracking_checkpoint`,
through the restricted unpickler of :mod:`cmd_ray.models.safe_unpickler`): no pickled code runs.
:func:`load_into` loads what fits and reports the rest. Weights files written by cmd-ray
(:func:`cmd_ray.distill.merge.merge_branches`) are plain state dicts, ``weights_only`` loadable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cmd_ray.models.pytracking_checkpoint import PytrackingCheckpoint, load_pytracking_checkpoint, normalize_weights
from cmd_ray.models.safe_unpickler import CheckpointError
from cmd_ray.models.training_state import TRAINING_STATE_FILE, load_weights_only

log = logging.getLogger(__name__)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights in ``path``: a plain state dict, a training checkpoint's ``model``, or a pytracking ``net``.

    ``path`` may also be a folder holding ``training_state.pt``. cmd-ray files are read with
    ``torch.load(weights_only=True)``; a file that refuses that is tried as a pytracking checkpoint
    through the restricted unpickler (no pickled code runs). DataParallel ``module.`` prefixes are
    stripped and ``feature_extractor.fc.*`` (the ImageNet head, not built here) dropped.
    """
    return _read_weights(Path(path))


# ---------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What :func:`load_into` did: ``loaded`` keys, and the ``missing``/``unexpected``/``mismatched`` ones."""

    loaded: list[str]
    missing_keys: list[str]
    unexpected_keys: list[str]
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # key -> (checkpoint, model) shape

    @property
    def ok(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.shape_mismatches)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for title, keys in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys)):
            if keys:
                lines.append(f"{title} ({len(keys)}): {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}")
        for key, (theirs, ours) in list(self.shape_mismatches.items())[:8]:
            lines.append(f"shape mismatch {key}: checkpoint {list(theirs)} vs model {list(ours)}")
        return "\n".join(lines)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor] | PytrackingCheckpoint) -> LoadReport:
    """Load what fits (``strict=False``; shape mismatches skipped instead of raising) and report the rest."""
    if isinstance(state_dict, PytrackingCheckpoint):
        state_dict = state_dict.state_dict
    own = model.state_dict()
    mismatched = {
        k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items() if k in own and v.shape != own[k].shape
    }
    usable = {k: v for k, v in state_dict.items() if k not in mismatched}
    result = model.load_state_dict(usable, strict=False)
    missing = sorted(k for k in result.missing_keys if k not in mismatched)
    report = LoadReport(
        loaded=sorted(k for k in usable if k in own),
        missing_keys=missing,
        unexpected_keys=sorted(result.unexpected_keys),
        shape_mismatches=dict(sorted(mismatched.items())),
    )
    if not report.ok:
        log.warning("partial load into %s:\n%s", type(model).__name__, report)
    return report


# ---------------------------------------------------------------------------------------------
# Reading weights from any weights file
# ---------------------------------------------------------------------------------------------


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Weights of a cmd-ray state dict / training checkpoint (file or folder) or a pytracking checkpoint."""
    if path.is_dir():
        path = path / TRAINING_STATE_FILE
    try:
        loaded = load_weights_only(path)
    except CheckpointError:
        if not path.is_file():
            raise
        return load_pytracking_checkpoint(path).state_dict  # its CheckpointError names the file
    if isinstance(loaded, Mapping):
        for key in ("model", "net", "state_dict"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return normalize_weights(loaded, path)[0]
