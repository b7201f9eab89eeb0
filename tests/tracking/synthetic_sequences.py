"""Labeled synthetic TIR sequences in memory, for the tracker tests (no files, no JPEG round trip)."""

from __future__ import annotations

import numpy as np

from cmd_ray.data.synthetic import HEAT_DECOYS, generate_sequence, item_rng, sequence_name


def synthetic_tir_sequences(
    count: int,
    width: int = 160,
    height: int = 128,
    length: int = 30,
    seed: int = 0,
    heat_decoys: tuple[int, int] = HEAT_DECOYS,
) -> list[tuple[str, list[np.ndarray], np.ndarray]]:
    """``count`` labeled synthetic TIR sequences ``(name, frames uint8 [H, W], boxes float32 [T, 4])``: the scenes
    ``cmd-ray synth`` writes with ``synth.seed=seed`` and ``synth.heat_decoys=heat_decoys`` (same names)."""
    out = []
    for index in range(count):
        rng = item_rng(seed, "tir_sequence", index)
        frames, boxes, _ = generate_sequence(rng, width, height, length, "tir", heat_decoys)
        out.append((sequence_name("tir", index), frames, boxes))
    return out
