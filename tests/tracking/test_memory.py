"""Sample memory: weights sum to 1, grow by 1/(1 - learning rate) per sample, keep the first-frame floor."""

from __future__ import annotations

import pytest
import torch

from cmd_ray.tracking.memory import SampleMemory, update_sample_weights


def _memory(capacity: int = 8, num_init: int = 3, floor: float = 0.0) -> SampleMemory:
    samples = torch.arange(num_init, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 2, 3, 3).clone()
    boxes = torch.ones(num_init, 4)
    return SampleMemory(samples, boxes, capacity, floor)


def test_initial_weights_are_uniform() -> None:
    memory = _memory()
    assert memory.samples.shape == (3, 2, 3, 3)
    torch.testing.assert_close(memory.weights, torch.full((3,), 1 / 3))


def test_weights_follow_the_learning_rate() -> None:
    lr = 0.1
    memory = _memory(capacity=10)
    first = memory.update(torch.full((2, 3, 3), 10.0), torch.zeros(4), lr)
    assert first == 3
    w = memory.weights
    assert float(w.sum()) == pytest.approx(1.0)
    # the first new sample: old weights divided by (1 - lr), new one lr, then normalised
    expected_new = lr / (1 / (1 - lr) + lr)
    assert float(w[3]) == pytest.approx(expected_new)
    for step in range(4):
        index = memory.update(torch.full((2, 3, 3), 20.0 + step), torch.zeros(4), lr)
        w = memory.weights
        assert index == 4 + step
        assert float(w.sum()) == pytest.approx(1.0)
        # each new sample weighs 1/(1 - lr) times the previous one: old samples decay by (1 - lr)
        assert float(w[index] / w[index - 1]) == pytest.approx(1 / (1 - lr))
        torch.testing.assert_close(memory.samples[index], torch.full((2, 3, 3), 20.0 + step))
    # the first-frame samples keep equal weights among themselves
    torch.testing.assert_close(w[:3], w[:1].expand(3))


def test_full_memory_replaces_the_lightest_non_initial_sample() -> None:
    memory = _memory(capacity=5, num_init=3, floor=0.25)
    memory.update(torch.zeros(2, 3, 3), torch.zeros(4), 0.1)  # slot 3
    memory.update(torch.zeros(2, 3, 3), torch.zeros(4), 0.1)  # slot 4 (heavier than 3)
    index = memory.update(torch.full((2, 3, 3), 7.0), torch.zeros(4), 0.1)
    assert index == 3 and memory.num_filled == 5
    assert float(memory.weights.sum()) == pytest.approx(1.0)
    assert float(memory.samples[3, 0, 0, 0]) == 7.0
    assert float(memory.samples[0, 0, 0, 0]) == 0.0  # first-frame samples are never replaced


def test_first_frame_floor() -> None:
    weights = torch.zeros(6)
    weights[:2] = 0.5
    prev = None
    for stored in range(2, 20):
        weights, prev = update_sample_weights(weights, prev, min(stored, 6), 2, 0.5, init_min_weight=0.25)
        assert float(weights.sum()) == pytest.approx(1.0)
        assert float(weights[:2].sum()) >= 0.25 - 1e-6
        assert prev >= 2
    # without the floor the first-frame samples decay like any other and their slots get replaced
    weights = torch.zeros(6)
    weights[:2] = 0.5
    prev = None
    replaced = set()
    for stored in range(2, 20):
        weights, prev = update_sample_weights(weights, prev, min(stored, 6), 2, 0.5, init_min_weight=0.0)
        replaced.add(prev)
        assert float(weights.sum()) == pytest.approx(1.0)
    assert {0, 1} <= replaced


def test_learning_rate_one_keeps_only_the_new_sample() -> None:
    weights, index = update_sample_weights(torch.tensor([0.5, 0.5, 0.0]), None, 2, 2, 1.0)
    assert index == 0 and weights.tolist() == [1.0, 0.0, 0.0]


def test_memory_must_exceed_the_first_frame() -> None:
    with pytest.raises(ValueError, match="3 slots"):
        _memory(capacity=3, num_init=3)
