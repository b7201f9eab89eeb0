"""Shared by the tracker tests: one tiny DiMP network with seeded random weights."""

import pytest
import torch

from cmd_ray.config import load_config
from cmd_ray.models.dimpnet import DiMPNet, build_model


@pytest.fixture(scope="module")
def net() -> DiMPNet:
    """A tiny DiMP (``model.preset=tiny``), random weights from seed 0, built once per test module."""
    torch.manual_seed(0)
    model = build_model(load_config(None, ["model.preset=tiny"]))
    assert isinstance(model, DiMPNet)
    return model
