"""Resuming from a training checkpoint continues the run exactly, without Ray.

A tiny D3 model trains ``EPOCHS`` epochs of ``STEPS`` optimizer steps straight through, and again in two halves:
after the first half the training state is written as the worker loop writes it (:func:`save_training_state`),
read back through the loop's own restore (:func:`cmd_ray.train.loop._restore`, from a ``ray.train.Checkpoint``
folder, which needs no cluster) into a model, optimizer and scheduler built afresh, and the second half runs on
them. The StepLR decay falls inside the second half. Both runs must end bit for bit the same: weights,
Adam's moments and step counts, learning rates and the scheduler's position.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cmd_ray.config import load_config
from cmd_ray.distill.step import distill_step
from cmd_ray.models.dimpnet import apply_variant_trainability, build_model
from cmd_ray.models.training_state import rng_state, save_training_state
from cmd_ray.train.loop import _restore, build_optimizer

EPOCHS = 4
STEPS = 2
HALF = EPOCHS // 2
GAMMA = 0.5
LR_STEP = 3  # the decay comes after the third epoch: in the resumed half
LR_TCL, LR_BBE = 1e-3, 2e-3


@pytest.fixture(scope="module")
def cfg():
    return load_config(
        None,
        [
            "model.preset=tiny",
            "distill.variant=D3",
            f"distill.lr_tcl={LR_TCL}",
            f"distill.lr_bbe={LR_BBE}",
            f"distill.lr_step={LR_STEP}",
            f"distill.lr_gamma={GAMMA}",
        ],
    )


def _fresh(cfg, seed: int):
    """Model, optimizer and scheduler as a worker builds them; ``seed`` makes the initial weights differ."""
    torch.manual_seed(seed)
    model = apply_variant_trainability(build_model(cfg), "D3")
    optimizer, scheduler = build_optimizer(model, cfg)
    return model, optimizer, scheduler


def _run_epochs(model, optimizer, scheduler, epochs: range, random_batch) -> list[dict[str, float]]:
    """The loop's epoch: ``STEPS`` Adam steps on fixed batches, then one scheduler step; returns each epoch's lrs."""
    seen = []
    model.train()
    for epoch in epochs:
        for step in range(STEPS):
            batch = random_batch(batch_size=2, crop=64, num_proposals=3, seed=100 * epoch + step)
            loss = distill_step(model, batch, "D3", 1.0)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        seen.append({group["name"]: group["lr"] for group in optimizer.param_groups})
        scheduler.step()
    return seen


def _assert_same_state(a, b) -> None:
    """Equal nested state: tensors bit for bit, everything else by ``==``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_state(x, y)
    else:
        assert a == b


def test_resumed_run_matches_the_straight_run_across_a_decay(cfg, random_batch, tmp_path):
    import ray
    import ray.train

    straight = _fresh(cfg, seed=0)
    straight_lrs = _run_epochs(*straight, range(EPOCHS), random_batch)

    first = _fresh(cfg, seed=0)
    first_lrs = _run_epochs(*first, range(HALF), random_batch)
    model, optimizer, scheduler = first
    save_training_state(
        tmp_path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": HALF - 1,
            "job": "distill",
            "config": cfg.model_dump(mode="json"),
            "rng": rng_state(),
            "mlflow_run_id": None,
        },
    )
    expected_rng = (random.random(), float(np.random.rand()), float(torch.rand(())))  # the draws after the save
    # Scramble what a restarted process would not have: other weights, other RNG states.
    resumed = _fresh(cfg, seed=1)
    assert not torch.equal(
        resumed[0].classifier.filter_initializer.filter_conv.weight,
        model.classifier.filter_initializer.filter_conv.weight,
    )
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)

    ray_was_up = ray.is_initialized()  # an earlier test of the session may have started Ray; this one must not
    next_epoch, selection = _restore(ray.train.Checkpoint.from_directory(str(tmp_path)), *resumed)
    assert next_epoch == HALF and selection is None  # a run that selects no weights stores none
    assert ray.is_initialized() == ray_was_up  # restoring read a local folder and started nothing
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected_rng
    resumed_lrs = _run_epochs(*resumed, range(next_epoch, EPOCHS), random_batch)

    # learning rates per epoch: LR_TCL / LR_BBE until the decay, times GAMMA after LR_STEP epochs
    want = [{"tcl": LR_TCL * GAMMA ** (e // LR_STEP), "bbe": LR_BBE * GAMMA ** (e // LR_STEP)} for e in range(EPOCHS)]
    assert straight_lrs == [pytest.approx(w) for w in want]
    assert first_lrs + resumed_lrs == straight_lrs

    straight_model, straight_opt, straight_sched = straight
    resumed_model, resumed_opt, resumed_sched = resumed
    _assert_same_state(resumed_model.state_dict(), straight_model.state_dict())
    _assert_same_state(resumed_opt.state_dict(), straight_opt.state_dict())
    _assert_same_state(resumed_sched.state_dict(), straight_sched.state_dict())
    assert resumed_sched.last_epoch == EPOCHS
    assert [g["lr"] for g in resumed_opt.param_groups] == pytest.approx([LR_TCL * GAMMA, LR_BBE * GAMMA])
    steps = {float(s["step"]) for s in resumed_opt.state_dict()["state"].values()}
    assert steps == {float(EPOCHS * STEPS)}
    # the run did train: the weights moved away from their start
    start = _fresh(cfg, seed=0)[0]
    assert not torch.equal(
        start.classifier.filter_initializer.filter_conv.weight,
        resumed_model.classifier.filter_initializer.filter_conv.weight,
    )
