"""Success / precision plots: PNG files with several trackers in one figure (no Ray)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from cmd_ray.evaluation.metrics import aggregate, sequence_curves
from cmd_ray.evaluation.plots import PLOT_FILES, precision_plot, success_plot, write_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scores(offset: float, protocol: str = "lsotb"):
    gt = np.array([[10.0, 10.0, 20.0, 20.0]] * 6)
    pred = gt + np.array([offset, 0.0, 0.0, 0.0])
    return aggregate({"s": sequence_curves(pred, gt, protocol)})


@pytest.fixture
def three_trackers():
    return {"good": _scores(1.0), "fair": _scores(8.0), "poor": _scores(25.0)}


def test_writes_one_png_per_plot_with_several_trackers(three_trackers, tmp_path):
    paths = write_plots(three_trackers, tmp_path / "plots", dataset="synthetic")
    names = [PLOT_FILES["success"], PLOT_FILES["precision"], PLOT_FILES["norm_precision"]]
    assert [Path(p).name for p in paths] == names
    for p in paths:
        data = Path(p).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
        image = matplotlib.image.imread(p)
        assert image.shape[:2] == (480, 640)
        assert image[..., :3].std() > 0.05  # drawn, not blank


def test_more_trackers_draw_more(tmp_path):
    one = success_plot({"good": _scores(1.0)}, tmp_path / "one.png")
    three = success_plot({"good": _scores(1.0), "fair": _scores(8.0), "poor": _scores(25.0)}, tmp_path / "three.png")
    ink = [float((matplotlib.image.imread(p)[..., :3] < 0.9).mean()) for p in (one, three)]
    assert ink[1] > ink[0]


def test_ptb_style_leaves_out_norm_precision(three_trackers, tmp_path):
    paths = write_plots(three_trackers, tmp_path, norm_precision=False)
    assert [Path(p).name for p in paths] == [PLOT_FILES["success"], PLOT_FILES["precision"]]
    assert not (tmp_path / PLOT_FILES["norm_precision"]).exists()


def test_pytracking_protocol_and_empty_input(tmp_path):
    p = precision_plot({"a": _scores(2.0, "pytracking")}, tmp_path / "p.png")
    assert p.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="at least one tracker"):
        success_plot({}, tmp_path / "none.png")
