"""The filter optimizer's steps against their closed form, computed here from the objective alone.

DiMP's objective for the filter ``f`` of one sequence (reference images ``n`` with weights ``w_n``):
``L(f) = sum_n w_n || v * (act(x_n * f, m) - y) ||^2 + reg ||f||^2``, ``reg = filter_reg**2``. One
steepest-descent step with Gauss–Newton step length is ``f - s * alpha * g`` with ``g = dL/df / 2``,
``alpha = |g|^2 / (|J g|^2 + reg |g|^2)`` (``J``: Jacobian of the weighted residuals) and ``s`` the learnt
step length ``exp(log_step_length)``. The test builds the residuals itself (a per-image ``conv2d``, the
activation from its definition, the label from each cell's distance to the box centre), gets ``g`` by
autograd and ``J g`` by a forward-mode product: nothing of the module's own arithmetic is reused.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import jvp

from cmd_ray.models.classifier import DiMPSteepestDescentGN

STRIDE = 16
NUM_BINS = 12
BIN = 0.5


def _optimizer(
    mask: float, filter_reg: float, step_length: float, score_act: str = "relu", spatial: float = 0.0, **kwargs
) -> DiMPSteepestDescentGN:
    """An optimizer whose mask is the constant ``mask``, label the distance ``d`` (in cells) and spatial weight
    ``1 + spatial * d``."""
    opt = DiMPSteepestDescentGN(
        num_iter=1,
        feat_stride=STRIDE,
        init_step_length=step_length,
        init_filter_reg=filter_reg,
        num_dist_bins=NUM_BINS,
        bin_displacement=BIN,
        mask_act="linear",
        score_act=score_act,
        **kwargs,
    )
    bins = torch.arange(NUM_BINS, dtype=torch.float32).reshape(1, -1, 1, 1)
    with torch.no_grad():
        # The distance bins are a partition of unity that interpolates linearly between bin centres: constant
        # weights give that constant, weights k * BIN give the distance itself (up to the last bin's centre).
        opt.target_mask_predictor[0].weight.fill_(mask)
        opt.spatial_weight_predictor.weight.copy_(1.0 + spatial * bins * BIN)
        opt.label_map_predictor.weight.copy_(bins * BIN)
    return opt


def _label(bb: torch.Tensor, feat_hw: tuple[int, int], filter_hw: tuple[int, int]) -> torch.Tensor:
    """``[N, B, Lh, Lw]``: each cell's distance (in cells) to the box centre, capped at the last bin's centre.

    Score cell ``i`` sits at ``(i + 0.5 * (f % 2)) * STRIDE`` crop pixels; an even filter side ``f`` adds a cell.
    """
    (fh, fw), (h, w) = filter_hw, feat_hw
    centre_x = (bb[..., 0] + bb[..., 2] / 2) / STRIDE - 0.5 * (fw % 2)
    centre_y = (bb[..., 1] + bb[..., 3] / 2) / STRIDE - 0.5 * (fh % 2)
    dy = torch.arange(h + (fh + 1) % 2, dtype=torch.float32).reshape(1, 1, -1, 1) - centre_y[..., None, None]
    dx = torch.arange(w + (fw + 1) % 2, dtype=torch.float32).reshape(1, 1, 1, -1) - centre_x[..., None, None]
    return torch.sqrt(dx**2 + dy**2).clamp(max=(NUM_BINS - 1) * BIN)


def _act(x: torch.Tensor, mask: float, score_act: str, b: float = 1.0) -> torch.Tensor:
    """The score activation by its definition: identity on the target (mask 1), a (smooth) hinge off it (mask 0)."""
    if score_act == "relu":
        return mask * x + (1 - mask) * torch.clamp(x, min=0)
    hinge = torch.sqrt(x**2 + 4.0 * b**2) - 2.0 * b
    return mask * x + (1 - mask) * (hinge + x) / 2


def _scores(feat: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """``[N, B, L, L]``: one plain ``conv2d`` per (image, sequence)."""
    pad = (filt.shape[-2] // 2, filt.shape[-1] // 2)
    return torch.stack(
        [
            torch.stack([F.conv2d(feat[n, b][None], filt[b][None], padding=pad)[0, 0] for b in range(feat.shape[1])])
            for n in range(feat.shape[0])
        ]
    )


def _closed_form(feat, bb, filt, sample_weight, mask, reg, step_length, score_act, spatial=0.0, eps=0.0, b=1.0):
    """One step by the closed form, and the objective (per sequence) at ``filt``."""
    label = _label(bb, tuple(feat.shape[-2:]), tuple(filt.shape[-2:]))
    root_w = sample_weight.sqrt()[..., None, None] * (1.0 + spatial * label)

    def residuals(f):
        return root_w * (_act(_scores(feat, f), mask, score_act, b) - label)

    def objective(f):  # per sequence [B]
        return (residuals(f) ** 2).sum(dim=(0, 2, 3)) + reg * (f**2).sum(dim=(1, 2, 3))

    f = filt.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(f).sum(), f)
    g = grad / 2
    _, jg = jvp(residuals, (filt,), (g,))
    g_sq = (g**2).sum(dim=(1, 2, 3))
    alpha = g_sq / ((jg**2).sum(dim=(0, 2, 3)) + (reg + eps) * g_sq)
    return filt - step_length * alpha.reshape(-1, 1, 1, 1) * g, objective(filt).detach(), g, alpha


def _problem(filter_size: int | tuple[int, int], seed: int = 0, feat_hw: tuple[int, int] = (6, 6)):
    g = torch.Generator().manual_seed(seed)
    num_images, num_seq, channels = 3, 2, 4
    fh, fw = (filter_size, filter_size) if isinstance(filter_size, int) else filter_size
    feat = torch.randn(num_images, num_seq, channels, *feat_hw, generator=g)
    bb = torch.stack(
        [
            torch.tensor([30.0, 22.0, 24.0, 28.0]) + 8 * torch.randn(4, generator=g).clamp(-1, 1)
            for _ in range(num_images * num_seq)
        ]
    ).reshape(num_images, num_seq, 4)
    filt = 0.3 * torch.randn(num_seq, channels, fh, fw, generator=g)
    sample_weight = torch.rand(num_images, num_seq, generator=g) + 0.2
    return feat, bb, filt, sample_weight / sample_weight.sum(dim=0)


@pytest.mark.parametrize("filter_size", [3, 4])
@pytest.mark.parametrize(
    ("mask", "score_act"), [(1.0, "relu"), (0.0, "relu"), (0.4, "relu"), (0.0, "bentpar"), (0.7, "bentpar")]
)
def test_one_step_is_the_gauss_newton_closed_form(filter_size, mask, score_act):
    feat, bb, filt, weights = _problem(filter_size)
    filter_reg, step_length = 0.3, 0.6
    opt = _optimizer(mask, filter_reg, step_length, score_act)
    with torch.no_grad():
        new, iterates, losses = opt(filt, feat, bb, sample_weight=weights, num_iter=1)
    expected, objective, _, _ = _closed_form(feat, bb, filt, weights, mask, filter_reg**2, step_length, score_act)
    torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-5)
    assert len(iterates) == 2 and torch.equal(iterates[0], filt) and torch.equal(iterates[1], new)
    # the reported objective is the per-sequence objective averaged over the sequences
    assert float(losses[0]) == pytest.approx(float(objective.mean()), rel=1e-5)


def test_two_steps_repeat_the_closed_form_and_default_weights_are_uniform():
    feat, bb, filt, _ = _problem(4, seed=3)
    uniform = torch.full(feat.shape[:2], 1.0 / feat.shape[0])
    opt = _optimizer(1.0, 0.2, 0.5)
    with torch.no_grad():
        new, iterates, losses = opt(filt, feat, bb, num_iter=2)
    first, objective0, _, _ = _closed_form(feat, bb, filt, uniform, 1.0, 0.04, 0.5, "relu")
    second, objective1, _, _ = _closed_form(feat, bb, first, uniform, 1.0, 0.04, 0.5, "relu")
    _, objective2, _, _ = _closed_form(feat, bb, second, uniform, 1.0, 0.04, 0.5, "relu")
    torch.testing.assert_close(iterates[1], first, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(new, second, rtol=1e-4, atol=1e-5)
    reported = [float(v) for v in losses]
    assert reported == pytest.approx([float(o.mean()) for o in (objective0, objective1, objective2)], rel=1e-4)


def test_with_the_mask_at_one_a_unit_step_is_the_exact_line_minimum():
    """On the target (mask 1) the objective is quadratic in ``f``: ``alpha`` minimises it along ``-g``."""
    feat, bb, filt, weights = _problem(4, seed=1)
    filter_reg = 0.5
    opt = _optimizer(1.0, filter_reg, 1.0)
    with torch.no_grad():
        new, _, losses = opt(filt, feat, bb, sample_weight=weights, num_iter=1)
    _, _, g, alpha = _closed_form(feat, bb, filt, weights, 1.0, filter_reg**2, 1.0, "relu")
    label = _label(bb, tuple(feat.shape[-2:]), (4, 4))

    def objective(f):
        r = weights.sqrt()[..., None, None] * (_scores(feat, f) - label)
        return (r**2).sum(dim=(0, 2, 3)) + filter_reg**2 * (f**2).sum(dim=(1, 2, 3))

    step = torch.zeros(filt.shape[0], requires_grad=True)
    (slope,) = torch.autograd.grad(objective(filt - (alpha + step).reshape(-1, 1, 1, 1) * g).sum(), step)
    # the derivative along the step vanishes at alpha (relative to the slope at the start, -2|g|^2)
    assert torch.all(slope.abs() <= 1e-4 * 2 * (g**2).sum(dim=(1, 2, 3)))
    for factor in (0.8, 1.25):
        moved = objective(filt - factor * alpha.reshape(-1, 1, 1, 1) * g)
        assert torch.all(objective(new) < moved)
    assert float(losses[1]) == pytest.approx(float(objective(new).mean()), rel=1e-5)


@pytest.mark.parametrize("step_length", [0.25, 0.5, 2.0])
def test_the_step_scales_with_the_learnt_step_length(step_length):
    """``f - f'`` is ``exp(log_step_length)`` times the unit step: an inverted exponent would divide instead."""
    feat, bb, filt, weights = _problem(3, seed=2)
    unit = _optimizer(0.5, 0.3, 1.0)
    scaled = _optimizer(0.5, 0.3, step_length)
    assert float(scaled.log_step_length.detach()) == pytest.approx(math.log(step_length))
    with torch.no_grad():
        unit_step = filt - unit(filt, feat, bb, sample_weight=weights, num_iter=1)[0]
        scaled_step = filt - scaled(filt, feat, bb, sample_weight=weights, num_iter=1)[0]
    torch.testing.assert_close(scaled_step, step_length * unit_step, rtol=1e-4, atol=1e-6)


def test_regularisation_is_the_square_of_filter_reg_with_a_floor():
    feat, bb, filt, weights = _problem(4, seed=4)
    for filter_reg, reg in ((0.4, 0.16), (-0.4, 0.16), (1e-5, 1e-3**2)):
        opt = _optimizer(1.0, filter_reg, 0.7)
        with torch.no_grad():
            new, _, losses = opt(filt, feat, bb, sample_weight=weights, num_iter=1)
        expected, objective, _, _ = _closed_form(feat, bb, filt, weights, 1.0, reg, 0.7, "relu")
        torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-5)
        assert float(losses[0]) == pytest.approx(float(objective.mean()), rel=1e-5)


@pytest.mark.parametrize(("filter_hw", "feat_hw"), [((3, 4), (5, 7)), ((4, 3), (7, 5))])
def test_non_square_filters_and_maps_keep_their_axes_apart(filter_hw, feat_hw):
    feat, bb, filt, weights = _problem(filter_hw, seed=5, feat_hw=feat_hw)
    opt = _optimizer(0.6, 0.3, 0.8)
    with torch.no_grad():
        new, _, losses = opt(filt, feat, bb, sample_weight=weights, num_iter=1)
    expected, objective, _, _ = _closed_form(feat, bb, filt, weights, 0.6, 0.09, 0.8, "relu")
    torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-5)
    assert float(losses[0]) == pytest.approx(float(objective.mean()), rel=1e-5)


@pytest.mark.parametrize(("spatial", "alpha_eps", "act_param"), [(0.3, 0.0, None), (0.0, 0.4, None), (0.0, 0.0, 2.5)])
def test_spatial_weight_alpha_eps_and_act_param_enter_the_step(spatial, alpha_eps, act_param):
    feat, bb, filt, weights = _problem(4, seed=6)
    opt = _optimizer(0.3, 0.3, 0.7, "bentpar", spatial=spatial, alpha_eps=alpha_eps, act_param=act_param)
    b = 1.0 if act_param is None else act_param
    for sample_weight in (weights, None):  # given per-image weights, and the default 1 / N each
        with torch.no_grad():
            new, _, losses = opt(filt, feat, bb, sample_weight=sample_weight, num_iter=1)
        w = torch.full_like(weights, 1 / 3) if sample_weight is None else weights
        expected, objective, _, _ = _closed_form(feat, bb, filt, w, 0.3, 0.09, 0.7, "bentpar", spatial, alpha_eps, b)
        torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-5)
        assert float(losses[0]) == pytest.approx(float(objective.mean()), rel=1e-5)


def test_the_regularisation_floor_is_min_filter_reg_squared():
    feat, bb, filt, weights = _problem(4, seed=7)
    opt = _optimizer(1.0, 1e-4, 0.7, min_filter_reg=0.6)  # reg = max(1e-8, 0.36)
    with torch.no_grad():
        new, _, losses = opt(filt, feat, bb, sample_weight=weights, num_iter=1)
    expected, objective, _, _ = _closed_form(feat, bb, filt, weights, 1.0, 0.36, 0.7, "relu")
    torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-5)
    assert float(losses[0]) == pytest.approx(float(objective.mean()), rel=1e-5)


def test_small_problems_are_not_floored_by_the_denominator_guard():
    """Features and filter a hundredth of the size: the step denominator is far below 1 and is used as is."""
    feat, bb, filt, weights = _problem(4, seed=8)
    feat, filt = feat / 100, filt / 100
    opt = _optimizer(1.0, 1e-3, 1.0, min_filter_reg=1e-4)
    with torch.no_grad():
        new, _, _ = opt(filt, feat, bb, sample_weight=weights, num_iter=1)
    expected, _, g, alpha = _closed_form(feat, bb, filt, weights, 1.0, 1e-6, 1.0, "relu")
    assert torch.all((g**2).sum(dim=(1, 2, 3)) / alpha < 1e-2)  # the denominator
    torch.testing.assert_close(new, expected, rtol=1e-4, atol=1e-9)


def test_bent_identity_defaults_to_b_one():
    from cmd_ray.models.classifier import bent_ident_par, bent_ident_par_deriv

    x = torch.linspace(-3, 3, 13)
    a = torch.full_like(x, 0.25)
    torch.testing.assert_close(bent_ident_par(x, a), _act(x, 0.25, "bentpar", 1.0))
    xg = x.clone().requires_grad_(True)
    (slope,) = torch.autograd.grad(_act(xg, 0.25, "bentpar", 1.0).sum(), xg)
    torch.testing.assert_close(bent_ident_par_deriv(x, a), slope)


def _unrolled(feat, bb, init, num_iter, detach_length=math.inf):
    """Filter iterates of the module, differentiable in ``init``."""
    opt = _optimizer(1.0, 0.3, 0.8, detach_length=detach_length)
    _, iterates, _ = opt(init, feat, bb, num_iter=num_iter, compute_losses=False)
    return iterates


def test_gradients_flow_through_every_step_unless_detached():
    feat, bb, filt, _ = _problem(4, seed=9)
    uniform = torch.full(feat.shape[:2], 1.0 / feat.shape[0])
    probe = torch.randn(filt.shape, generator=torch.Generator().manual_seed(1))

    def grad_of(out, init):
        return torch.autograd.grad((out * probe).sum(), init, allow_unused=True)[0]

    # the whole unroll: the same derivative as differentiating the closed-form steps
    init = filt.clone().requires_grad_(True)
    reference = init
    for _ in range(3):
        reference = _closed_form_differentiable(feat, bb, reference, uniform)
    iterates = _unrolled(feat, bb, init, 3)
    torch.testing.assert_close(grad_of(iterates[-1], init), grad_of(reference, init), rtol=1e-3, atol=1e-5)
    # detach_length 0: no step carries a gradient back to the initial filter
    init = filt.clone().requires_grad_(True)
    assert grad_of(_unrolled(feat, bb, init, 2, detach_length=0)[-1], init) is None
    # detach_length 1: the first step keeps its gradient, the later ones are cut
    init = filt.clone().requires_grad_(True)
    iterates = _unrolled(feat, bb, init, 2, detach_length=1)
    assert grad_of(iterates[1], init) is not None and grad_of(iterates[2], init) is None
    # detach_length 2 over 3 steps: cut before the third step only
    init = filt.clone().requires_grad_(True)
    iterates = _unrolled(feat, bb, init, 3, detach_length=2)
    assert grad_of(iterates[2], init) is not None and grad_of(iterates[3], init) is None


def _closed_form_differentiable(feat, bb, filt, sample_weight):
    """One step of ``_optimizer(1.0, 0.3, 0.8)`` by the closed form, keeping the graph (mask 1: quadratic)."""
    label = _label(bb, tuple(feat.shape[-2:]), tuple(filt.shape[-2:]))
    root_w = sample_weight.sqrt()[..., None, None]
    reg = 0.09
    r = root_w * (_scores(feat, filt) - label)
    (grad,) = torch.autograd.grad((r**2).sum() + reg * (filt**2).sum(), filt, create_graph=True)
    g = grad / 2
    jg = root_w * _scores(feat, g)  # the residuals are affine in f: J g is the correlation with g
    g_sq = (g**2).sum(dim=(1, 2, 3))
    alpha = g_sq / ((jg**2).sum(dim=(0, 2, 3)) + reg * g_sq)
    return filt - 0.8 * alpha.reshape(-1, 1, 1, 1) * g


def test_leaky_relu_derivative_at_and_around_zero():
    from cmd_ray.models.classifier import leaky_relu_par_deriv

    x = torch.tensor([-2.0, 0.0, 3.0])
    a = torch.full_like(x, 0.2)
    # slope a on the negative side, 1 on the positive side; sign(0) = 0 gives the mean of the two at 0
    torch.testing.assert_close(leaky_relu_par_deriv(x, a), torch.tensor([0.2, 0.6, 1.0]))
