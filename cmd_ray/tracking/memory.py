"""The tracker's sample memory: classifier features of past frames with their boxes and weights.

The first frame's (augmented) samples fill the first slots with equal weights. Each later sample is weighted
``1 / (1 - learning_rate)`` times the previous new sample, i.e. every older sample decays by
``(1 - learning_rate)`` per update (DiMP). Weights always sum to 1; the first-frame samples together keep at least
``init_samples_minimum_weight``. A full memory overwrites the lowest-weighted non-initial sample.
"""

from __future__ import annotations

import torch


def update_sample_weights(
    weights: torch.Tensor,
    previous_index: int | None,
    num_stored: int,
    num_init: int,
    learning_rate: float,
    init_min_weight: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Weights after adding one sample, and the slot it goes to.

    Args:
        weights: ``[M]`` current weights (the first ``num_stored`` slots in use, summing to 1).
        previous_index: slot of the previous new sample, None before the first update.
        num_stored: samples stored so far.
        num_init: first-frame samples (slots ``0 .. num_init-1``).
        learning_rate: in ``(0, 1]``; 1 keeps only the new sample.
        init_min_weight: the least total weight of the first-frame samples (None or 0: no floor); their slots
            are then never replaced.

    Returns:
        ``(new weights [M] summing to 1, slot of the new sample)``.
    """
    weights = weights.clone()
    floor = init_min_weight or None
    first_replaceable = num_init if floor is not None else 0
    if num_stored == 0 or learning_rate >= 1:
        weights.zero_()
        weights[0] = 1.0
        return weights, 0
    if num_stored < weights.shape[0]:
        index = num_stored
    else:
        index = int(torch.argmin(weights[first_replaceable:])) + first_replaceable
    if previous_index is None:
        weights /= 1 - learning_rate
        weights[index] = learning_rate
    else:
        weights[index] = weights[previous_index] / (1 - learning_rate)
    weights /= weights.sum()
    if floor is not None and float(weights[:num_init].sum()) < floor:
        # the first-frame samples get the floor, shared equally; the later ones share the rest in proportion
        weights[num_init:] *= (1.0 - floor) / weights[num_init:].sum()
        weights[:num_init] = floor / num_init
    return weights, index


class SampleMemory:
    """Classifier training samples ``[M, C, H, W]``, their target boxes ``[M, 4]`` (crop px) and weights ``[M]``.

    Args:
        init_samples: first-frame features ``[N, C, H, W]`` (``N < capacity``).
        init_boxes: their boxes ``[N, 4]``, ``x, y, w, h`` crop pixels.
        capacity: ``sample_memory_size``.
        init_min_weight: ``init_samples_minimum_weight`` (0: no floor).
    """

    def __init__(
        self, init_samples: torch.Tensor, init_boxes: torch.Tensor, capacity: int, init_min_weight: float = 0.0
    ) -> None:
        num_init = init_samples.shape[0]
        if num_init >= capacity:
            raise ValueError(f"sample memory of {capacity} slots cannot hold {num_init} first-frame samples and more")
        self.capacity = capacity
        self.num_init = num_init
        self.num_stored = num_init
        self.init_min_weight = init_min_weight
        self.previous_index: int | None = None
        self._samples = init_samples.new_zeros((capacity, *init_samples.shape[1:]))
        self._samples[:num_init] = init_samples
        self._boxes = init_boxes.new_zeros((capacity, 4))
        self._boxes[:num_init] = init_boxes
        self._weights = init_samples.new_zeros(capacity)
        self._weights[:num_init] = 1.0 / num_init

    @property
    def samples(self) -> torch.Tensor:
        """Stored features ``[n, C, H, W]`` (``n = min(num_stored, capacity)``)."""
        return self._samples[: self.num_filled]

    @property
    def boxes(self) -> torch.Tensor:
        """Stored boxes ``[n, 4]``."""
        return self._boxes[: self.num_filled]

    @property
    def weights(self) -> torch.Tensor:
        """Stored weights ``[n]``, summing to 1."""
        return self._weights[: self.num_filled]

    @property
    def num_filled(self) -> int:
        return min(self.num_stored, self.capacity)

    def update(self, sample: torch.Tensor, box: torch.Tensor, learning_rate: float) -> int:
        """Store ``sample`` ``[C, H, W]`` with ``box`` ``[4]`` at ``learning_rate``; returns the slot used."""
        self._weights, index = update_sample_weights(
            self._weights, self.previous_index, self.num_stored, self.num_init, learning_rate, self.init_min_weight
        )
        self.previous_index = index
        self._samples[index] = sample
        self._boxes[index] = box
        self.num_stored += 1
        return index
