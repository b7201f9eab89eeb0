"""SuperDiMP's Gaussian-mixture proposals and densities (``proposal_method="gmm"``) behind the sampling option."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmd_ray.config import SamplingConfig
from cmd_ray.data.boxes import box_iou, center_box
from cmd_ray.data.processing import make_sample, sample_gmm_proposals

GMM = SamplingConfig(output_sz=128, num_proposals=128, proposal_method="gmm")  # SuperDiMP's sigmas by default
BOX = np.array([30.0, 40.0, 20.0, 50.0])


def _normal(x: float, std: float) -> float:
    return math.exp(-0.5 * (x / std) ** 2) / (math.sqrt(2 * math.pi) * std)


def test_gmm_densities_follow_the_mixture_written_out():
    proposals, q, p, iou = sample_gmm_proposals(BOX, GMM, np.random.default_rng(0))
    assert proposals.shape == (128, 4) and q.shape == p.shape == iou.shape == (128,)
    assert all(a.dtype == np.float32 for a in (proposals, q, p, iou))
    np.testing.assert_array_equal(iou, box_iou(proposals, BOX.astype(np.float32)))
    w, h = BOX[2:]
    for k in range(0, 128, 9):
        x, y, pw, ph = proposals[k].astype(np.float64)
        # offsets in (cx / w, cy / h, log w, log h) relative to the box
        d = (
            (x + pw / 2 - (BOX[0] + w / 2)) / w,
            (y + ph / 2 - (BOX[1] + h / 2)) / h,
            math.log(pw / w),
            math.log(ph / h),
        )
        q_k = 0.5 * (math.prod(_normal(v, 0.05) for v in d) + math.prod(_normal(v, 0.5) for v in d))
        p_k = math.prod(_normal(v, 0.05) for v in d)
        assert q[k] == pytest.approx(q_k, rel=1e-3, abs=1e-12)
        assert p[k] == pytest.approx(p_k, rel=1e-3, abs=1e-6)
    assert np.all(q > 0)
    assert p.max() <= _normal(0.0, 0.05) ** 4
    assert np.all(proposals[:, 2:] > 0)


def test_gmm_components_are_both_drawn():
    proposals, *_ = sample_gmm_proposals(BOX, GMM, np.random.default_rng(1))
    log_w = np.log(proposals[:, 2] / BOX[2])
    narrow = np.abs(log_w) < 0.15  # within 3 std of the 0.05 component
    assert 0.3 < narrow.mean() < 0.75  # half from each component (plus the wide one's centre)
    assert np.abs(log_w).max() > 0.5  # the 0.5 component reaches far


def test_make_sample_gmm_adds_two_keys_and_keeps_the_rest():
    rgb = np.zeros((96, 128, 3), np.uint8)
    tir = np.zeros((96, 128), np.uint8)
    box = center_box(96, 128, 0.3)
    default = make_sample(rgb, tir, box, SamplingConfig(), np.random.default_rng(0))
    gmm = make_sample(rgb, tir, box, GMM, np.random.default_rng(0))
    assert set(gmm) == set(default) | {"proposal_density", "gt_density"}
    assert "proposal_density" not in default
    assert gmm["test_proposals"].shape == (128, 4)
    assert gmm["proposal_density"].shape == gmm["gt_density"].shape == (128,)
    np.testing.assert_array_equal(gmm["proposal_iou"], box_iou(gmm["test_proposals"], gmm["test_box"]))
