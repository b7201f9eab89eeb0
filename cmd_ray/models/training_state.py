"""cmd-ray's training state: one ``torch.save`` file per checkpoint, read with ``torch.load(weights_only=True)``.

A training checkpoint holds only tensors, numbers, strings and plain containers:
``{"model", "optimizer", "scheduler", "epoch", "config", "rng"}`` (and ``mlflow_run_id``), in
``<checkpoint folder>/training_state.pt``. The RNG states are stored as tensors and plain values, so the
file stays ``weights_only`` loadable.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmd_ray.models.safe_unpickler import CheckpointError

TRAINING_STATE_FILE = "training_state.pt"


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
    return load_weights_only(Path(directory) / TRAINING_STATE_FILE)


def load_weights_only(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; :class:`CheckpointError` naming the file if it cannot be."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for mangled or unsafe files
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely: {exc}") from exc
