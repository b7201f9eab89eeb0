"""Precise RoI pooling against a brute-force integral of the bilinear interpolant, finite differences and pooling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cmd_ray.models.pooling import pool_boxes
from cmd_ray.models.prroi import PrRoIPool2D, prroi_pool2d, prroi_pool2d_per_map

SCALE = 1 / 8


def interpolant_mean(features, rois, output_size, spatial_scale, samples=200):
    """Brute force: mean of ``samples × samples`` midpoint samples per bin of the bilinear interpolant.

    The interpolant comes from ``grid_sample`` (``align_corners=True``: cell ``p`` at coordinate ``p``;
    ``padding_mode='zeros'``: zero outside the map), independent of the closed form under test.
    """
    ph, pw = output_size
    height, width = features.shape[-2:]
    mid = (torch.arange(samples, dtype=features.dtype) + 0.5) / samples
    out = []
    for roi in rois:
        x1, y1, x2, y2 = (roi[1:] * spatial_scale).tolist()
        bin_h, bin_w = max(y2 - y1, 0.0) / ph, max(x2 - x1, 0.0) / pw
        if bin_h * bin_w == 0:
            out.append(features.new_zeros(features.shape[1], ph, pw))
            continue
        ys = y1 + ((torch.arange(ph, dtype=features.dtype)[:, None] + mid) * bin_h).flatten()
        xs = x1 + ((torch.arange(pw, dtype=features.dtype)[:, None] + mid) * bin_w).flatten()
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((2 * gx / (width - 1) - 1, 2 * gy / (height - 1) - 1), dim=-1)[None]
        b = int(roi[0])
        values = F.grid_sample(features[b : b + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(values[0].reshape(-1, ph, samples, pw, samples).mean(dim=(2, 4)))
    return torch.stack(out)


def random_rois(gen, num, num_maps, height, width, dtype=torch.float64):
    """Boxes in image pixels: inside, partly or wholly outside the map, tiny, and edges on cell centres."""
    size = torch.tensor([width, height], dtype=dtype) / SCALE
    center = (torch.rand(num, 2, generator=gen, dtype=dtype) * 1.4 - 0.2) * size
    wh = torch.rand(num, 2, generator=gen, dtype=dtype) * 0.6 * size + 0.2 / SCALE
    wh[: num // 4] *= 1e-2  # tiny boxes (a few hundredths of a cell)
    boxes = torch.cat((center - wh / 2, center + wh / 2), dim=1)
    # Edges exactly on cell centres (the hat's kinks), rounded outwards so that the box keeps its area.
    boxes[-2:, :2] = torch.floor(boxes[-2:, :2] * SCALE) / SCALE
    boxes[-2:, 2:] = torch.ceil(boxes[-2:, 2:] * SCALE) / SCALE
    index = torch.randint(num_maps, (num, 1), generator=gen).to(dtype)
    return torch.cat((index, boxes), dim=1)


@pytest.mark.parametrize("output_size", [(3, 2), (1, 1), (5, 5)])
def test_matches_numerical_integral(output_size):
    gen = torch.Generator().manual_seed(sum(output_size))
    feat = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 12, 2, 7, 9)
    rois = torch.cat((rois, torch.tensor([[1.0, -24.0, -16.0, 20.0, 12.0], [0.0, 60.0, 40.0, 90.0, 70.0]])))
    expected = interpolant_mean(feat, rois, output_size, SCALE)
    out = prroi_pool2d(feat, rois, output_size, SCALE)
    assert out.shape == (len(rois), 3, *output_size)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    # float32 agrees with float64 to a few float32 ulps, tiny boxes (bins of ~1e-3 cells) included.
    out32 = prroi_pool2d(feat.float(), rois.float(), output_size, SCALE)
    torch.testing.assert_close(out32.double(), out, rtol=0, atol=3e-6)


def test_box_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 2, 6, 7, generator=gen, dtype=torch.float64)
    rois = random_rois(gen, 8, 2, 6, 7)
    # Edges on cell centres inside the map, on the map border and one cell beyond it.
    edges = torch.tensor([[0.0, 8.0, 16.0, 24.0, 40.0], [1.0, 0.0, 0.0, 48.0, 40.0], [0.0, -8.0, 8.0, 56.0, 48.0]])
    rois = torch.cat((rois, edges.double()))
    coords = rois[:, 1:].clone().requires_grad_(True)

    def pooled(c):
        return prroi_pool2d(feat, torch.cat((rois[:, :1], c), dim=1), (3, 2), SCALE)

    assert torch.autograd.gradcheck(pooled, (coords,), eps=1e-6, atol=1e-6, rtol=1e-4)
    # The single box-edge derivative at a cell centre is the line integral of the interpolant (no double count).
    (grad,) = torch.autograd.grad(pooled(coords)[-3].sum(), coords)
    assert grad[-3].abs().max() > 1e-3


def test_feature_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(4)
    feat = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = random_rois(gen, 5, 2, 5, 6)
    assert torch.autograd.gradcheck(lambda f: prroi_pool2d(f, rois, (2, 3), SCALE), (feat,), eps=1e-6, atol=1e-6)


def test_constant_map_gives_constant_inside():
    feat = torch.full((1, 4, 6, 8), 2.5)
    # In feature units the map spans [0, 7] × [0, 5]; these boxes stay inside it.
    rois = torch.tensor([[0.0, 0.0, 0.0, 56.0, 40.0], [0.0, 3.0, 5.0, 17.0, 9.5], [0.0, 20.0, 20.0, 20.5, 20.25]])
    out = prroi_pool2d(feat, rois, (3, 3), SCALE)
    torch.testing.assert_close(out, torch.full_like(out, 2.5), rtol=2e-5, atol=0)
    # Beyond the map the interpolant falls off to zero: a box over [-1, 0] in x averages half the constant.
    out = prroi_pool2d(feat, torch.tensor([[0.0, -8.0, 8.0, 0.0, 16.0]]), 1, SCALE)
    torch.testing.assert_close(out, torch.full_like(out, 1.25))


def test_zero_area_box_gives_zero_and_zero_gradient():
    feat = torch.randn(1, 3, 5, 5, requires_grad=True)
    coords = torch.tensor([[8.0, 8.0, 8.0, 24.0], [8.0, 8.0, 24.0, 8.0], [20.0, 8.0, 10.0, 24.0]], requires_grad=True)
    rois = torch.cat((torch.zeros(3, 1), coords), dim=1)
    out = prroi_pool2d(feat, rois, (2, 2), SCALE)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(coords.grad, torch.zeros_like(coords))
    assert torch.equal(feat.grad, torch.zeros_like(feat))


@pytest.mark.parametrize(
    "index",
    [
        [2, 0, 2, 0, 0, 2],  # balanced: all maps pooled in one padded contraction
        [0, 0, 2, 0, 0, 0],  # unbalanced: one contraction per map
    ],
)
def test_batch_index_routing(index):
    gen = torch.Generator().manual_seed(5)
    feat = torch.randn(3, 2, 6, 6, generator=gen, requires_grad=True)
    boxes = torch.rand(6, 4, generator=gen) * 24.0
    boxes[:, 2:] += boxes[:, :2] + 4.0
    index = torch.tensor(index, dtype=torch.float32)
    out = prroi_pool2d(feat, torch.cat((index[:, None], boxes), dim=1), (2, 2), SCALE)
    for k in range(len(index)):
        n = int(index[k])
        alone = torch.cat((torch.zeros(1, 1), boxes[k : k + 1]), dim=1)
        torch.testing.assert_close(out[k : k + 1], prroi_pool2d(feat[n : n + 1], alone, 2, SCALE))
    out.sum().backward()
    assert torch.equal(feat.grad[1], torch.zeros_like(feat.grad[1]))
    assert feat.grad[0].abs().sum() > 0 and feat.grad[2].abs().sum() > 0
    with pytest.raises(ValueError, match="batch indices"):
        prroi_pool2d(feat, torch.tensor([[3.0, 0.0, 0.0, 8.0, 8.0]]), 1, SCALE)
    assert prroi_pool2d(feat, torch.zeros(0, 5), (3, 2), SCALE).shape == (0, 2, 3, 2)


def test_module_has_no_state_and_matches_function():
    pool = PrRoIPool2D(5, 3, 1 / 16)
    assert list(pool.state_dict()) == []
    assert "pooled_height=5" in repr(pool)
    feat = torch.randn(2, 4, 5, 5)
    rois = torch.tensor([[1.0, 3.0, 7.0, 50.0, 60.0], [0.0, -10.0, 0.0, 20.0, 30.0]])
    torch.testing.assert_close(pool(feat, rois), prroi_pool2d(feat, rois, (5, 3), 1 / 16))


def test_pool_boxes_is_prroi_with_box_gradients():
    gen = torch.Generator().manual_seed(6)
    feat = torch.randn(2, 3, 6, 7, generator=gen, dtype=torch.float64)
    xywh = torch.rand(2, 4, 4, generator=gen, dtype=torch.float64) * 40.0 + 2.0
    xywh.requires_grad_(True)
    out = pool_boxes(feat, xywh, (3, 2), SCALE)
    rois = torch.cat(
        (
            torch.arange(2, dtype=torch.float64).repeat_interleave(4)[:, None],
            xywh.detach().reshape(-1, 4)[:, :2],
            xywh.detach().reshape(-1, 4)[:, :2] + xywh.detach().reshape(-1, 4)[:, 2:],
        ),
        dim=1,
    )
    torch.testing.assert_close(out, prroi_pool2d(feat, rois, (3, 2), SCALE))
    xyxy = rois[:, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(prroi_pool2d_per_map(feat, xyxy, (3, 2), SCALE).reshape_as(out), out)
    (grad,) = torch.autograd.grad(out.square().sum(), xywh)
    assert torch.isfinite(grad).all() and grad.abs().min() > 0
