"""Backbone, box pooling, classifier and IoU-Net pieces on tiny shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmd_ray.models.backbone import ResNetBackbone, freeze_batchnorm_stats
from cmd_ray.models.classifier import (
    DistanceMap,
    InstanceL2Norm,
    LinearFilterClassifier,
    apply_feat_transpose,
    apply_filter,
)
from cmd_ray.models.iounet import AtomIoUNet
from cmd_ray.models.pooling import pool_boxes


@pytest.mark.parametrize(("name", "c2", "c3"), [("tiny", 128, 256), ("resnet18", 128, 256), ("resnet50", 512, 1024)])
def test_backbone_channels_and_strides(name, c2, c3):
    net = ResNetBackbone(name)
    assert net.out_channels("layer2") == c2
    assert net.out_channels("layer3") == c3
    assert net.out_stride("layer3") == 16
    assert (net.layer4 is None) == (name == "tiny")
    if name == "tiny":
        with torch.no_grad():
            out = net.eval()(torch.randn(1, 3, 64, 96))
        assert list(out) == ["layer2", "layer3"]
        assert out["layer2"].shape == (1, c2, 8, 12)
        assert out["layer3"].shape == (1, c3, 4, 6)
        with pytest.raises(ValueError, match="layer4"):
            net(torch.randn(1, 3, 32, 32), ["layer4"])


def test_unknown_backbone_lists_allowed():
    with pytest.raises(ValueError, match="tiny, resnet18, resnet50"):
        ResNetBackbone("vgg")


def test_freeze_batchnorm_stats_only_frozen_parts():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    for p in net[1].parameters():
        p.requires_grad_(False)
    net.train()
    freeze_batchnorm_stats(net)
    assert not net[1].training
    assert net[3].training
    before = net[1].running_mean.clone()
    net(torch.randn(2, 3, 5, 5) + 3.0)
    assert torch.equal(before, net[1].running_mean)


def test_pool_boxes_averages_under_box():
    # Feature value = x coordinate of the cell; a box over cells 1..3 (px 16..48 at stride 16) averages to 2.
    feat = torch.arange(6, dtype=torch.float32).reshape(1, 1, 1, 6).expand(2, 3, 6, 6).contiguous()
    feat[1] *= 10.0
    out = pool_boxes(feat, torch.tensor([[16.0, 16.0, 32.0, 32.0], [16.0, 0.0, 32.0, 16.0]]), 1, 1 / 16)
    assert out.shape == (2, 3, 1, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([2.0] * 3 + [20.0] * 3))
    # [N, K, 4] boxes come out map-major.
    boxes = torch.tensor([[[0.0, 0.0, 16.0, 16.0], [32.0, 0.0, 32.0, 16.0]]]).expand(2, 2, 4)
    out = pool_boxes(feat, boxes, 1, 1 / 16)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.5, 3.0, 5.0, 30.0]))


def test_feat_transpose_is_adjoint_of_filter():
    torch.manual_seed(0)
    for fsz in (4, 3):
        feat = torch.randn(3, 2, 5, 6, 6, dtype=torch.float64)
        w = torch.randn(2, 5, fsz, fsz, dtype=torch.float64, requires_grad=True)
        scores = apply_filter(feat, w)
        assert scores.shape == (3, 2, 6 + (fsz + 1) % 2, 6 + (fsz + 1) % 2)
        r = torch.randn_like(scores)
        (grad,) = torch.autograd.grad((scores * r).sum(), w)
        torch.testing.assert_close(apply_feat_transpose(feat, r, (fsz, fsz)), grad)


def test_apply_filter_keeps_sequences_apart():
    feat = torch.randn(2, 3, 4, 5, 5)
    w = torch.randn(3, 4, 3, 3)
    full = apply_filter(feat, w)
    alone = apply_filter(feat[:, 1:2], w[1:2])
    torch.testing.assert_close(full[:, 1:2], alone)


def test_instance_l2_norm_scale():
    x = torch.randn(2, 8, 3, 3) * 7.0
    y = InstanceL2Norm(scale=0.5)(x)
    torch.testing.assert_close((y**2).mean(dim=(1, 2, 3)), torch.full((2,), 0.25), rtol=1e-3, atol=1e-4)


def test_distance_map_bins():
    dmap = DistanceMap(num_bins=4, bin_displacement=1.0)(torch.tensor([[1.0, 1.0]]), (3, 5))
    assert dmap.shape == (1, 4, 3, 5)
    assert dmap[0, :, 1, 1].tolist() == [1.0, 0.0, 0.0, 0.0]  # at the centre
    assert dmap[0, :, 1, 2].tolist() == [0.0, 1.0, 0.0, 0.0]  # one cell away
    assert dmap[0, :, 1, 4].tolist() == [0.0, 0.0, 0.0, 1.0]  # last bin saturates
    torch.testing.assert_close(dmap.sum(dim=1), torch.ones(1, 3, 5))


def test_classifier_uses_every_reference_image_and_keeps_sequences_apart():
    torch.manual_seed(0)
    clf = LinearFilterClassifier(input_dim=16, out_dim=8, filter_size=4, num_iter=2).eval()
    train = torch.randn(2, 3, 16, 4, 4)
    test = torch.randn(1, 3, 16, 4, 4)
    bb = torch.tensor([16.0, 16.0, 24.0, 24.0]).expand(2, 3, 4).clone()
    with torch.no_grad():
        base = clf(train, test, bb)
        changed = train.clone()
        changed[1, 2] += 1.0  # second reference image of sequence 2
        other = clf(changed, test, bb)
    assert len(base) == 3 and base[0].shape == (1, 3, 5, 5)
    torch.testing.assert_close(base[-1][:, :2], other[-1][:, :2])
    assert not torch.allclose(base[-1][:, 2], other[-1][:, 2])


def test_iounet_layouts_agree_and_sequences_stay_apart():
    torch.manual_seed(0)
    net = AtomIoUNet(input_dim=(8, 16), pred_input_dim=(8, 8), pred_inter_dim=(8, 8), hidden_dim=8, ref3_dim=4).eval()
    n_train, n_test, batch, props = 2, 2, 3, 4
    ref = [torch.randn(n_train, batch, 8, 8, 8), torch.randn(n_train, batch, 16, 4, 4)]
    test = [torch.randn(n_test, batch, 8, 8, 8), torch.randn(n_test, batch, 16, 4, 4)]
    bb = torch.tensor([16.0, 16.0, 30.0, 30.0]).expand(n_train, batch, 4)
    proposals = torch.rand(n_test, batch, props, 4) * 20 + 10
    with torch.no_grad():
        out5 = net(ref, test, bb, proposals)
        out4 = net(
            [f.reshape(-1, *f.shape[2:]) for f in ref], [f.reshape(-1, *f.shape[2:]) for f in test], bb, proposals
        )
        changed = [f.clone() for f in ref]
        changed[0][0, 1] += 1.0  # first reference image (the one used) of sequence 1
        out_changed = net(changed, test, bb, proposals)
        ignored = [f.clone() for f in ref]
        ignored[0][1] += 1.0  # second reference image: not used for the modulation
        out_ignored = net(ignored, test, bb, proposals)
    assert out5.shape == (n_test, batch, props)
    torch.testing.assert_close(out5, out4)
    torch.testing.assert_close(out5[:, [0, 2]], out_changed[:, [0, 2]])
    assert not torch.allclose(out5[:, 1], out_changed[:, 1])
    torch.testing.assert_close(out5, out_ignored)
