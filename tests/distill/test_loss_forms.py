"""Eq. 2 squared form and μ‖φ‖², Eq. 3 ν‖θ‖², SuperDiMP's KL box loss, and how distill_step applies them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cmd_ray.config import SamplingConfig, load_config
from cmd_ray.data.processing import sample_gmm_proposals
from cmd_ray.distill.losses import (
    filter_l2,
    kl_regression_loss,
    lb_hinge,
    parameters_l2,
    squared_tcl_loss,
    tcl_loss,
    weight_iterates,
)
from cmd_ray.distill.step import branch_input, distill_step, loss_options
from cmd_ray.models.dimpnet import apply_variant_trainability, build_atomnet, build_dimpnet

LABEL = torch.tensor([[1.0, 0.0], [0.5, 0.01]])
PRED = torch.tensor([[0.5, -0.3], [0.7, 0.2]])

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_squared_tcl_loss_hand_case():
    # No hinge: the negative score under a background label costs (-0.3)^2, the 0.01 label counts.
    mse = (0.25 + 0.09 + 0.04 + (0.2 - 0.01) ** 2) / 4
    assert squared_tcl_loss([PRED], LABEL, weight_init=2, weight_iter=5, weight_final=3).item() == pytest.approx(
        5 * mse
    )
    assert lb_hinge(PRED, LABEL).item() < mse  # the hinge form forgives the -0.3
    zeros = torch.zeros(2, 2)
    three = squared_tcl_loss([zeros, PRED, PRED], LABEL, weight_init=1, weight_iter=10, weight_final=100)
    assert three.item() == pytest.approx(1 * (1 + 0.25 + 0.0001) / 4 + 10 * mse + 100 * mse)
    # mu * |phi|^2 on the final filter: squared norm per sequence, mean over sequences (not iterate-weighted)
    filt = torch.ones(2, 1, 2, 2)
    filt[1] *= 2.0  # |phi_0|^2 = 4, |phi_1|^2 = 16
    assert filter_l2(filt).item() == pytest.approx(10.0)
    with_mu = squared_tcl_loss([PRED], LABEL, filt, mu=0.5, weight_init=2, weight_iter=5, weight_final=3)
    assert with_mu.item() == pytest.approx(5 * mse + 0.5 * 10.0)
    with pytest.raises(ValueError, match="final filter"):
        squared_tcl_loss([PRED], LABEL, None, mu=0.5)


def test_weight_iterates_matches_lbhinge_weighting():
    losses = [torch.tensor(v) for v in (1.0, 2.0, 4.0, 8.0)]
    assert weight_iterates(losses, 100, 400, 100).item() == pytest.approx(100 + 400 / 2 * 6 + 800)
    scores = [torch.full((1, 1, 2, 2), v) for v in (0.0, 1.0, 3.0)]
    label = torch.zeros(1, 1, 2, 2)
    expected = weight_iterates([lb_hinge(s, label) for s in scores], 100, 400, 100)
    assert tcl_loss(scores, label).item() == pytest.approx(expected.item())


def test_kl_regression_hand_cases():
    # s = (0, log 2), q = (1, 1), p = (1, 0): log((1 + 2) / 2) - mean(0 * 1, log2 * 0) = log 1.5
    s = torch.tensor([0.0, math.log(2.0)])
    assert kl_regression_loss(s, torch.ones(2), torch.tensor([1.0, 0.0])).item() == pytest.approx(math.log(1.5))
    # s = (1, 2), q = (0.5, 0.25), p = (0.5, 0.5): log((2e + 4e^2) / 2) - mean(1 * 1, 2 * 2)
    s2, q2, p2 = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.25]), torch.tensor([0.5, 0.5])
    second = math.log(math.e + 2 * math.e**2) - 2.5
    assert kl_regression_loss(s2, q2, p2).item() == pytest.approx(second, rel=1e-6)
    # rows are averaged; the sample dimension is mc_dim
    batch = kl_regression_loss(torch.stack([s, s2]), torch.stack([torch.ones(2), q2]), torch.stack([p2 * 0 + 1, p2]))
    first = math.log(1.5) - (0.0 + math.log(2.0)) / 2
    assert batch.item() == pytest.approx((first + second) / 2, rel=1e-6)
    cols = kl_regression_loss(
        torch.stack([s, s2]).T, torch.stack([torch.ones(2), q2]).T, torch.stack([p2 * 0 + 1, p2]).T, mc_dim=0
    )
    assert cols.item() == pytest.approx(batch.item())
    # eps is added to the proposal density
    eps = kl_regression_loss(s2, q2, p2, eps=0.25)
    expected = math.log((math.e / 0.75 + math.e**2 / 0.5) / 2) - (1 * 0.5 / 0.75 + 2 * 0.5 / 0.5) / 2
    assert eps.item() == pytest.approx(expected, rel=1e-6)


def test_kl_regression_is_smallest_at_the_log_gt_density():
    """With q = p_gt the Monte Carlo KL is minimised (up to a constant) by s = log p_gt + c."""
    cfg = SamplingConfig(num_proposals=128, proposal_method="gmm", gmm_proposal_sigma=[(0.05, 0.05)])
    _, q, p, _ = sample_gmm_proposals(np.array([40.0, 40.0, 20.0, 30.0]), cfg, np.random.default_rng(0))
    q, p = torch.from_numpy(q).double(), torch.from_numpy(p).double()
    best = kl_regression_loss(torch.log(p) + 3.0, q, p)
    torch.manual_seed(0)
    for _ in range(5):
        assert kl_regression_loss(torch.log(p) + torch.randn(128).double(), q, p) > best


def test_parameters_l2():
    params = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]
    assert parameters_l2(params).item() == pytest.approx(14.0)
    assert parameters_l2([]).item() == 0.0


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_dimpnet("tiny", optim_iter=2).state_dict()


def tiny(state: dict[str, torch.Tensor]):
    model = build_dimpnet("tiny", optim_iter=2)
    model.load_state_dict(state)
    return model.eval()  # eval: BatchNorms use running statistics, so repeated forwards agree


def test_step_squared_form_and_filter_regulariser(tiny_state, random_batch):
    model = tiny(tiny_state)
    batch = random_batch(seed=2)
    base = distill_step(model, batch, "C1", 1.0, clf_loss_weights=(1.0, 2.0, 3.0))
    squared = distill_step(model, batch, "C1", 1.0, clf_loss_weights=(1.0, 2.0, 3.0), tcl_loss="squared")
    with_mu = distill_step(
        model, batch, "C1", 1.0, clf_loss_weights=(1.0, 2.0, 3.0), tcl_loss="squared", filter_reg_mu=0.3
    )
    train = branch_input(batch, "ref", ("tir",) * 4).unsqueeze(0)
    test = branch_input(batch, "test", ("rgb",) * 4).unsqueeze(0)
    with torch.no_grad():
        scores, _, filt = model(
            train, test, batch["ref_box"].unsqueeze(0), batch["test_proposals"].unsqueeze(0), return_filter=True
        )
    label = batch["test_label"].unsqueeze(0)
    mses = [torch.mean((s - label) ** 2) for s in scores]
    hinges = [lb_hinge(s, label) for s in scores]
    assert squared["loss_tcl"].item() == pytest.approx(float(mses[0] + 2.0 * mses[1] + 3.0 * mses[2]), rel=1e-5)
    assert base["loss_tcl"].item() == pytest.approx(float(hinges[0] + 2.0 * hinges[1] + 3.0 * hinges[2]), rel=1e-5)
    assert with_mu["loss_tcl"].item() == pytest.approx(
        squared["loss_tcl"].item() + 0.3 * filter_l2(filt).item(), rel=1e-5
    )
    torch.testing.assert_close(with_mu["loss_bbe"], squared["loss_bbe"])


def test_filter_regulariser_reaches_the_filter_parameters(tiny_state, random_batch):
    model = tiny(tiny_state)
    apply_variant_trainability(model, "C1")
    out = distill_step(model, random_batch(seed=4), "C1", 1.0, clf_loss_weights=(0.0, 0.0, 0.0), filter_reg_mu=1.0)
    out["loss"].backward()  # only mu * |phi|^2 is left: it still reaches the initializer and the optimizer
    params = dict(model.named_parameters())
    assert params["classifier.filter_initializer.filter_conv.weight"].grad.abs().sum() > 0
    assert params["classifier.filter_optimizer.log_step_length"].grad.abs().sum() > 0


def test_step_bbe_regulariser_is_over_the_trained_branch(tiny_state, random_batch):
    model = tiny(tiny_state)
    batch = random_batch(seed=5)
    base = distill_step(model, batch, "B1", 2.0)
    reg = distill_step(model, batch, "B1", 2.0, bbe_reg_nu=1e-3)
    branch = ("conv3_1r", "conv4_1r", "fc3_1r", "fc34_3r", "fc34_4r")
    reference = [p for k, p in model.named_parameters() if k.split(".")[:2] in [["bb_regressor", m] for m in branch]]
    assert len(reference) == 5 * 4  # five blocks of conv/linear weight + bias and BatchNorm weight + bias
    expected = 1e-3 * sum(float((p.detach() ** 2).sum()) for p in reference)
    assert reg["loss_bbe"].item() == pytest.approx(base["loss_bbe"].item() + expected, rel=1e-5)
    assert reg["loss"].item() == pytest.approx(base["loss"].item() + 2.0 * expected, rel=1e-5)
    torch.testing.assert_close(reg["loss_tcl"], base["loss_tcl"])


def test_step_kl_box_loss(tiny_state, random_batch):
    model = tiny(tiny_state)
    batch = random_batch(seed=6, num_proposals=6)
    g = torch.Generator().manual_seed(1)
    batch["proposal_density"] = torch.rand(4, 6, generator=g) + 0.1
    batch["gt_density"] = torch.rand(4, 6, generator=g)
    out = distill_step(model, batch, "B2", 0.01, bbe_loss="kl")
    test = branch_input(batch, "test", ("tir",) * 4).unsqueeze(0)
    ref = branch_input(batch, "ref", ("rgb",) * 4).unsqueeze(0)
    with torch.no_grad():
        _, iou = model(ref, test, batch["ref_box"].unsqueeze(0), batch["test_proposals"].unsqueeze(0))
    expected = kl_regression_loss(iou[0], batch["proposal_density"], batch["gt_density"])
    assert out["loss_bbe"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(out["loss_tcl"].item() + 0.01 * expected.item(), rel=1e-5)
    del batch["gt_density"]
    with pytest.raises(ValueError, match="proposal_method=gmm"):
        distill_step(model, batch, "B2", 0.01, bbe_loss="kl")
    with pytest.raises(ValueError, match="allowed: mse, kl"):
        distill_step(model, batch, "B2", 0.01, bbe_loss="l1")


def test_step_on_atom_has_no_tcl_term(random_batch):
    torch.manual_seed(0)
    model = build_atomnet("tiny").eval()
    out = distill_step(model, random_batch(seed=7), "B1", 0.5, tcl_loss="squared", filter_reg_mu=1.0)
    assert out["loss_tcl"].item() == 0.0
    assert out["loss"].item() == pytest.approx(0.5 * out["loss_bbe"].item())


def test_loss_options_come_from_the_config():
    cfg = load_config(CONFIGS / "superdimp.yaml", ["distill.filter_reg_mu=0.2", "distill.tcl_weights.final=50"])
    assert loss_options(cfg.distill) == {
        "hinge_threshold": 0.05,
        "clf_loss_weights": (100.0, 400.0, 50.0),
        "tcl_loss": "lbhinge",
        "filter_reg_mu": 0.2,
        "bbe_loss": "kl",
        "bbe_reg_nu": 0.0,
        "mixing": "batch_split",
    }
