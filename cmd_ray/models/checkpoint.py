"""Safe checkpoint files: cmd-ray's own training state and weights, loaded without running pickled code.

A training checkpoint is one ``torch.save`` file holding only tensors, numbers,
strings and plain containers, so ``torch.load(weights_only=True)`` reads it:
``{"model", "optimizer", "scheduler", "epoch", "config", "rng"}``.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINING_STATE_FILE = "training_state.pt"


class CheckpointError(ValueError):
    """A checkpoint file is missing, mangled or of the wrong kind; the message names it."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors and plain values (weights-only loadable)."""
    np_state = np.random.get_state()
    return {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(ast.literal_eval(state["python"]))
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])


def save_training_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/training_state.pt``; returns the file path."""
    path = Path(directory) / TRAINING_STATE_FILE
    torch.save(state, path)
    return path


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`save_training_state` (weights only, no code)."""
    return _load(Path(directory) / TRAINING_STATE_FILE)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain state dict, or the ``model`` entry of a training checkpoint."""
    loaded = _load(Path(path))
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return loaded


def _load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for mangled or unsafe files
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {exc}") from exc
