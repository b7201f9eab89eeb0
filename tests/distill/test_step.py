"""The distillation step: network input, modality routing per variant, and that a tiny D3 model learns."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from cmd_ray.distill.step import IMAGENET_MEAN, IMAGENET_STD, distill_step, to_network_input
from cmd_ray.models.classifier import DiMPSteepestDescentGN, FilterInitializerLinear
from cmd_ray.models.dimpnet import apply_variant_trainability, build_dimpnet
from cmd_ray.vocabulary import VARIANTS


def test_to_network_input_rgb_and_tir():
    rgb = torch.zeros(2, 3, 4, 3, dtype=torch.uint8)
    rgb[..., 0] = 255
    x = to_network_input(rgb)
    assert x.shape == (2, 3, 3, 4) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0], torch.full((2, 3, 4), (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    torch.testing.assert_close(x[:, 1], torch.full((2, 3, 4), -IMAGENET_MEAN[1] / IMAGENET_STD[1]))

    tir = torch.tensor([[[0, 51], [102, 255]]], dtype=torch.uint8)
    y = to_network_input(tir)
    assert y.shape == (1, 3, 2, 2)
    for c in range(3):
        expected = (tir[0].float() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        torch.testing.assert_close(y[0, c], expected)

    with pytest.raises(ValueError, match="shape"):
        to_network_input(torch.zeros(2, 4, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError):
        to_network_input(torch.zeros(2, 4, 4))


class _Recorder(nn.Module):
    """Stands in for DiMPNet: records the images each branch got, returns fixed-shape outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, train_imgs, test_imgs, train_bb, proposals, **options):
        self.seen = (train_imgs, test_imgs, train_bb, proposals)
        self.options = options
        side = 5
        score = self.w * torch.zeros(test_imgs.shape[0], test_imgs.shape[1], side, side)
        return [score, score], self.w * torch.zeros(proposals.shape[:3])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_branch_modalities_follow_variant(name, random_batch):
    batch = random_batch(batch_size=5)
    rec = _Recorder()
    out = distill_step(rec, batch, name, loss_weight_bbe=1.0)
    assert set(out) == {"loss", "loss_tcl", "loss_bbe"}
    assert all(v.dim() == 0 for v in out.values())
    train_imgs, test_imgs, train_bb, proposals = rec.seen
    assert train_imgs.shape == test_imgs.shape == (1, 5, 3, 64, 64)
    assert train_bb.shape == (1, 5, 4) and proposals.shape == (1, 5, 4, 4)
    variant = VARIANTS[name]
    expected = {
        "rgb": {"ref": "rgb", "test": "rgb"},
        "tir": {"ref": "tir", "test": "tir"},
    }
    ref_mod = variant.reference_modality
    test_mod = variant.test_modality
    for i in range(5):
        if ref_mod == "mix":
            want_ref, want_test = ("rgb", "tir") if i < 3 else ("tir", "rgb")  # first ceil(5/2) samples RGB->ref
        else:
            want_ref, want_test = expected[ref_mod]["ref"], expected[test_mod]["test"]
        ref_src = batch["rgb_ref"] if want_ref == "rgb" else batch["tir_ref"]
        test_src = batch["rgb_test"] if want_test == "rgb" else batch["tir_test"]
        torch.testing.assert_close(train_imgs[0, i], to_network_input(ref_src[i : i + 1])[0])
        torch.testing.assert_close(test_imgs[0, i], to_network_input(test_src[i : i + 1])[0])


@pytest.mark.parametrize(
    ("name", "branch"), [("B1", "both"), ("C1", "reference"), ("D1", "test"), ("D2", "reference"), ("D3", "both")]
)
def test_the_row_says_through_which_frame_the_shared_classifier_features_learn(name, branch, random_batch):
    rec = _Recorder()
    distill_step(rec, random_batch(), name, loss_weight_bbe=1.0)
    assert rec.options == {"clf_feature_grad": branch}  # B1 trains no TCL: nothing to restrict


@pytest.mark.parametrize("name", ["D3", "D4", "D5"])
def test_side_by_side_mixing_feeds_rgb_tir_to_the_reference_and_tir_rgb_to_the_test_branch(name, random_batch):
    batch = random_batch(batch_size=3)
    g = torch.Generator().manual_seed(5)
    wide = {key: torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=g) for key in ("ref", "test")}
    batch = {k: v for k, v in batch.items() if not k.startswith(("rgb_", "tir_"))}
    batch["rgb_tir_ref"], batch["tir_rgb_test"] = wide["ref"], wide["test"]
    rec = _Recorder()
    distill_step(rec, batch, name, loss_weight_bbe=1.0, mixing="side_by_side")
    train_imgs, test_imgs, _, _ = rec.seen
    torch.testing.assert_close(train_imgs[0], to_network_input(wide["ref"]))
    torch.testing.assert_close(test_imgs[0], to_network_input(wide["test"]))
    with pytest.raises(ValueError, match=r"'rgb_ref' or 'tir_ref'.*distill.mixing"):
        distill_step(rec, batch, name, loss_weight_bbe=1.0)  # batch_split expects the four crops


def test_tiny_d3_overfits_one_batch(random_batch):
    """Acceptance: the loss of a tiny D3 model on one fixed batch falls by at least half."""
    torch.manual_seed(0)
    model = build_dimpnet("tiny", optim_iter=3)
    apply_variant_trainability(model, "D3")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    batch = random_batch(batch_size=4, crop=128, num_proposals=8, seed=1)
    losses, bbe_losses = [], []
    for _ in range(40):
        out = distill_step(model, batch, "D3", loss_weight_bbe=1.0)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
        bbe_losses.append(float(out["loss_bbe"].detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-5:]) <= 0.5 * losses[0], losses
    assert bbe_losses[-1] <= 0.5 * bbe_losses[0], bbe_losses


def test_filter_optimizer_objective_decreases():
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 16, 8, 8) / 4.0
    bb = torch.tensor([40.0, 36.0, 48.0, 52.0]).expand(2, 3, 4).clone()
    init = FilterInitializerLinear(filter_size=4, feature_dim=16)
    opt = DiMPSteepestDescentGN(num_iter=6)
    with torch.no_grad():
        weights, iterates, losses = opt(init(feat, bb), feat, bb)
    assert len(iterates) == 7 and len(losses) == 7
    assert weights.shape == (3, 16, 4, 4)
    values = [float(v) for v in losses]
    assert all(b <= a * (1 + 1e-4) for a, b in itertools.pairwise(values)), values
    assert values[-1] < 0.5 * values[0], values
