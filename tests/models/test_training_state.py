"""cmd-ray's training state: one weights-only file per checkpoint, read back as a file or its folder."""

from __future__ import annotations

import torch
from checkpoint_fakes import assert_same_state

from cmd_ray.models.checkpoint import load_state_dict
from cmd_ray.models.training_state import load_training_state, rng_state, save_training_state


def test_own_checkpoints_stay_weights_only(tmp_path, state_a):
    path = save_training_state(tmp_path, {"model": state_a, "epoch": 2, "config": {"a": 1}, "rng": rng_state()})
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 2
    assert load_training_state(tmp_path)["config"] == {"a": 1}
    assert_same_state(load_state_dict(path), state_a)
    assert_same_state(load_state_dict(tmp_path), state_a)
