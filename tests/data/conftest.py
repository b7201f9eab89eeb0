"""Fixtures of the data tests: a small local pair folder with one corrupt and one mismatched pair."""

from pathlib import Path

import numpy as np
import pytest

from cmd_ray.config import SynthConfig
from cmd_ray.data.images import encode_rgb, encode_tir
from cmd_ray.data.synthetic import generate_pair, write_synthetic_dataset


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory) -> Path:
    """Eight synthetic pairs on local disk, plus one corrupt pair and one whose TIR has another aspect ratio."""
    root = tmp_path_factory.mktemp("pipeline-pairs")
    write_synthetic_dataset(str(root), SynthConfig(num_pairs=8, num_rgb_sequences=0, num_tir_sequences=0), False)
    pairs_dir = root / "pairs"
    (pairs_dir / "rgb" / "900000.jpg").write_bytes(b"not a jpeg")
    (pairs_dir / "tir" / "900000.jpg").write_bytes(b"not a jpeg either")
    rgb, _ = generate_pair(np.random.default_rng(5), 160, 128)
    (pairs_dir / "rgb" / "900001.jpg").write_bytes(encode_rgb(rgb))
    (pairs_dir / "tir" / "900001.png").write_bytes(encode_tir(np.zeros((100, 100), np.uint8), ".png"))
    return pairs_dir
