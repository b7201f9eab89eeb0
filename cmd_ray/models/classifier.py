"""Target classifier (TCL): DiMP's discriminatively learned linear filter.

``LinearFilterClassifier`` has pytracking's three submodules and parameter names:

- ``feature_extractor``: optional BasicBlocks, then a 3×3 conv without bias (index ``num_blocks``) and a
  parameter-free instance L2 normalisation. Runs on both reference and test frames; in training it can be kept
  from learning through one of them (``forward``'s ``feature_grad``).
- ``filter_initializer``: ``filter_conv`` (3×3 conv) on the reference features, then the target box
  pooled into a ``filter_size × filter_size`` filter, averaged over the reference images.
- ``filter_optimizer``: unrolled steepest descent with Gauss–Newton step lengths on DiMP's
  discriminative loss. Learned: ``log_step_length``, ``filter_reg`` and three 1×1 convs over a
  distance-bin encoding of each cell's distance to the target centre: ``label_map_predictor`` (y),
  ``target_mask_predictor`` (m, through a sigmoid) and ``spatial_weight_predictor`` (v).

Tensor layout follows pytracking: features ``[N_images, B_sequences, C, H, W]``, boxes
``[N_images, B, 4]`` as ``x, y, w, h`` in image pixels, filters ``[B, C, f, f]``, scores
``[N_images, B, L, L]`` with ``L = H + (f + 1) % 2`` (an even filter adds one cell).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from cmd_ray.models.pooling import pool_boxes


class InstanceL2Norm(nn.Module):
    """Scale each sample so that its mean squared activation is ``scale**2`` (no parameters).

    ``x [N, C, H, W] -> x * scale * sqrt(C*H*W / (sum(x**2) + eps))`` per sample.
    """

    def __init__(self, scale: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = scale
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        energy = (x * x).reshape(x.shape[0], -1).sum(dim=1).reshape(-1, 1, 1, 1)
        return x * (self.scale * torch.sqrt(x[0].numel() / (energy + self.eps)))


def classification_feature_extractor(
    input_dim: int, out_dim: int, filter_size: int, num_blocks: int = 0
) -> nn.Sequential:
    """``[N, input_dim, H, W] -> [N, out_dim, H, W]``: ``num_blocks`` BasicBlocks, 3×3 conv (no bias), L2 norm.

    The norm scale ``sqrt(1 / (out_dim * filter_size**2))`` makes a filter response of order one,
    as in DiMP. ``num_blocks = 0`` is DiMP-50's layout, ``1`` DiMP-18's.
    """
    layers: list[nn.Module] = [BasicBlock(input_dim, input_dim) for _ in range(num_blocks)]
    layers.append(nn.Conv2d(input_dim, out_dim, kernel_size=3, padding=1, bias=False))
    layers.append(InstanceL2Norm(scale=math.sqrt(1.0 / (out_dim * filter_size * filter_size))))
    net = nn.Sequential(*layers)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()
    return net


def apply_filter(feat: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Correlate each sequence's filter with its features.

    Args:
        feat: ``[N, B, C, H, W]``.
        filt: ``[B, C, fh, fw]``.

    Returns:
        scores ``[N, B, H + (fh+1)%2, W + (fw+1)%2]`` (zero padding ``f // 2``).
    """
    num_images, num_seq = feat.shape[:2]
    padding = (filt.shape[-2] // 2, filt.shape[-1] // 2)
    scores = F.conv2d(feat.reshape(num_images, -1, *feat.shape[-2:]), filt, padding=padding, groups=num_seq)
    return scores.reshape(num_images, num_seq, *scores.shape[-2:])


def apply_feat_transpose(feat: torch.Tensor, residuals: torch.Tensor, filter_size: tuple[int, int]) -> torch.Tensor:
    """Adjoint of :func:`apply_filter` with respect to the filter.

    Returns ``d/dfilt sum(residuals * apply_filter(feat, filt))``, i.e.
    ``out[b, c, i, j] = sum_{n, y, x} residuals[n, b, y, x] * feat_padded[n, b, c, y + i, x + j]``.

    Args:
        feat: ``[N, B, C, H, W]``.
        residuals: ``[N, B, L, L]`` (score-map shaped).
        filter_size: ``(fh, fw)``.

    Returns:
        ``[B, C, fh, fw]``.
    """
    num_images, num_seq, channels = feat.shape[:3]
    padding = (filter_size[0] // 2, filter_size[1] // 2)
    # Channels of the features become the conv batch, (image, sequence) pairs the groups.
    grad = F.conv2d(
        feat.permute(2, 0, 1, 3, 4).reshape(channels, num_images * num_seq, *feat.shape[-2:]),
        residuals.reshape(num_images * num_seq, 1, *residuals.shape[-2:]),
        padding=padding,
        groups=num_images * num_seq,
    )
    return grad.reshape(channels, num_images, num_seq, *filter_size).sum(dim=1).permute(1, 0, 2, 3)


class FilterInitializerLinear(nn.Module):
    """Initial filter: ``filter_conv`` on the reference features, box pooling, mean over reference images."""

    def __init__(
        self,
        filter_size: int = 4,
        feature_dim: int = 512,
        feature_stride: int = 16,
        pool_square: bool = False,
        filter_norm: bool = False,
        conv_ksz: int = 3,
    ) -> None:
        super().__init__()
        self.filter_size = filter_size
        self.feature_stride = feature_stride
        self.pool_square = pool_square
        self.filter_norm = filter_norm
        self.filter_conv = nn.Conv2d(feature_dim, feature_dim, kernel_size=conv_ksz, padding=conv_ksz // 2)
        fan_out = conv_ksz * conv_ksz * feature_dim
        self.filter_conv.weight.data.normal_(0.0, math.sqrt(2.0 / fan_out))
        self.filter_conv.bias.data.zero_()

    def forward(self, feat: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
        """Reference features ``[N, B, C, H, W]``, boxes ``[N, B, 4]`` (x, y, w, h px) -> filter ``[B, C, f, f]``."""
        num_images, num_seq = feat.shape[:2]
        x = self.filter_conv(feat.reshape(-1, *feat.shape[-3:]))
        boxes = bb.reshape(-1, 4)
        if self.pool_square:
            side = boxes[:, 2:4].prod(dim=1, keepdim=True).sqrt()
            boxes = torch.cat((boxes[:, :2] + boxes[:, 2:4] / 2 - side / 2, side, side), dim=1)
        weights = pool_boxes(x, boxes, self.filter_size, 1.0 / self.feature_stride)
        weights = weights.reshape(num_images, num_seq, *weights.shape[-3:]).mean(dim=0)
        if self.filter_norm:
            weights = weights / weights[0].numel()
        return weights


class DistanceMap(nn.Module):
    """Soft one-hot encoding of each cell's distance to a centre over ``num_bins`` bins (no parameters).

    Bin ``k`` is a triangle of half-width ``bin_displacement`` at distance ``k * bin_displacement``;
    the last bin is a ramp that saturates at 1 for every larger distance.
    """

    def __init__(self, num_bins: int, bin_displacement: float = 1.0) -> None:
        super().__init__()
        self.num_bins = num_bins
        self.bin_displacement = bin_displacement

    def forward(self, center_yx: torch.Tensor, output_sz: tuple[int, int]) -> torch.Tensor:
        """Centres ``[M, 2]`` as ``(y, x)`` in score-map cells -> ``[M, num_bins, out_h, out_w]``."""
        center_yx = center_yx.reshape(-1, 2)
        device, dtype = center_yx.device, center_yx.dtype
        bins = torch.arange(self.num_bins, device=device, dtype=dtype).reshape(1, -1, 1, 1)
        ky = torch.arange(output_sz[0], device=device, dtype=dtype).reshape(1, 1, -1, 1)
        kx = torch.arange(output_sz[1], device=device, dtype=dtype).reshape(1, 1, 1, -1)
        dy = ky - center_yx[:, 0].reshape(-1, 1, 1, 1)
        dx = kx - center_yx[:, 1].reshape(-1, 1, 1, 1)
        bin_diff = torch.sqrt(dy * dy + dx * dx) / self.bin_displacement - bins
        return torch.cat(
            (F.relu(1.0 - bin_diff[:, :-1].abs()), (1.0 + bin_diff[:, -1:]).clamp(0.0, 1.0)),
            dim=1,
        )


def leaky_relu_par(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """DiMP's score activation ``(1 - a)/2 * |x| + (1 + a)/2 * x`` with mask ``a`` in ``[0, 1]``.

    Identity where ``a = 1`` (target region), ``max(0, x)`` (a hinge) where ``a = 0`` (background).
    """
    return (1.0 - a) / 2.0 * x.abs() + (1.0 + a) / 2.0 * x


def leaky_relu_par_deriv(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Derivative of :func:`leaky_relu_par` with respect to ``x`` (sign taken on detached ``x``)."""
    return (1.0 - a) / 2.0 * torch.sign(x.detach()) + (1.0 + a) / 2.0


def bent_ident_par(x: torch.Tensor, a: torch.Tensor, b: float = 1.0) -> torch.Tensor:
    """Smooth alternative to :func:`leaky_relu_par` (pytracking's ``score_act='bentpar'``).

    ``(1 - a)/2 * (sqrt(x**2 + 4 b**2) - 2 b) + (1 + a)/2 * x``: identity where ``a = 1``, a smooth
    hinge (``≈ |x|`` for ``|x| >> b``, 0 at ``x = 0``) where ``a = 0``.
    """
    return (1.0 - a) / 2.0 * (torch.sqrt(x * x + 4.0 * b * b) - 2.0 * b) + (1.0 + a) / 2.0 * x


def bent_ident_par_deriv(x: torch.Tensor, a: torch.Tensor, b: float = 1.0) -> torch.Tensor:
    """Derivative of :func:`bent_ident_par` with respect to ``x``."""
    return (1.0 - a) / 2.0 * (x / torch.sqrt(x * x + 4.0 * b * b)) + (1.0 + a) / 2.0


FEATURE_GRAD_BRANCHES = ("reference", "test", "both")
"""Values of :meth:`LinearFilterClassifier.forward`'s ``feature_grad`` (the Table 1 branch names)."""

SCORE_ACTIVATIONS = ("relu", "bentpar")
MASK_ACTIVATIONS = ("sigmoid", "linear")


class DiMPSteepestDescentGN(nn.Module):
    """DiMP's filter optimizer: ``num_iter`` steepest-descent steps with Gauss–Newton step length.

    Objective for filter ``f`` on reference features ``x`` (per sequence):
    ``L(f) = sum_n || v_n * (act(x_n * f, m_n) - y_n) ||^2 + reg * ||f||^2`` where the label ``y``,
    target mask ``m`` and spatial weight ``v`` are predicted from the distance to the target centre,
    ``act`` is the score activation, ``reg = filter_reg**2`` (at least ``min_filter_reg**2``).
    Each step: ``g = dL/df / 2``, ``alpha = |g|^2 / (|J g|^2 + reg |g|^2)``,
    ``f <- f - exp(log_step_length) * alpha * g``.

    Activations (pytracking's options): ``score_act="relu"`` is :func:`leaky_relu_par` (the DiMP
    paper's, used by DiMP-18/50 and SuperDiMP); ``"bentpar"`` is :func:`bent_ident_par` with
    ``b = act_param`` (default 1). ``mask_act="sigmoid"`` puts a sigmoid after the mask conv (DiMP,
    SuperDiMP); ``"linear"`` uses the conv output directly and initialises its weights 0.5 higher.
    Neither option changes the parameter names.
    """

    def __init__(
        self,
        num_iter: int = 5,
        feat_stride: int = 16,
        init_step_length: float = 0.9,
        init_filter_reg: float = 0.1,
        init_gauss_sigma: float = 0.9,
        num_dist_bins: int = 100,
        bin_displacement: float = 0.1,
        mask_init_factor: float = 3.0,
        min_filter_reg: float = 1e-3,
        detach_length: float = float("inf"),
        alpha_eps: float = 0.0,
        score_act: str = "relu",
        act_param: float | None = None,
        mask_act: str = "sigmoid",
    ) -> None:
        super().__init__()
        if score_act not in SCORE_ACTIVATIONS:
            raise ValueError(f"unknown score_act {score_act!r}; allowed: {', '.join(SCORE_ACTIVATIONS)}")
        if mask_act not in MASK_ACTIVATIONS:
            raise ValueError(f"unknown mask_act {mask_act!r}; allowed: {', '.join(MASK_ACTIVATIONS)}")
        self.score_act = score_act
        self.act_param = 1.0 if act_param is None else float(act_param)
        self.mask_act = mask_act
        self.num_iter = num_iter
        self.feat_stride = feat_stride
        self.min_filter_reg = min_filter_reg
        self.detach_length = detach_length
        self.alpha_eps = alpha_eps
        self.log_step_length = nn.Parameter(math.log(init_step_length) * torch.ones(1))
        self.filter_reg = nn.Parameter(init_filter_reg * torch.ones(1))
        self.distance_map = DistanceMap(num_dist_bins, bin_displacement)

        dist = torch.arange(num_dist_bins, dtype=torch.float32).reshape(1, -1, 1, 1) * bin_displacement
        if init_gauss_sigma == 0:
            init_gauss = torch.zeros_like(dist)
            init_gauss[0, 0, 0, 0] = 1.0
        else:
            init_gauss = torch.exp(-0.5 * (dist / init_gauss_sigma) ** 2)
        self.label_map_predictor = nn.Conv2d(num_dist_bins, 1, kernel_size=1, bias=False)
        self.label_map_predictor.weight.data = init_gauss - init_gauss.min()
        mask_layers: list[nn.Module] = [nn.Conv2d(num_dist_bins, 1, kernel_size=1, bias=False)]
        if mask_act == "sigmoid":
            mask_layers.append(nn.Sigmoid())
        self.target_mask_predictor = nn.Sequential(*mask_layers)
        init_bias = 0.0 if mask_act == "sigmoid" else 0.5
        self.target_mask_predictor[0].weight.data = mask_init_factor * torch.tanh(2.0 - dist) + init_bias
        self.spatial_weight_predictor = nn.Conv2d(num_dist_bins, 1, kernel_size=1, bias=False)
        self.spatial_weight_predictor.weight.data.fill_(1.0)

    def forward(
        self,
        weights: torch.Tensor,
        feat: torch.Tensor,
        bb: torch.Tensor,
        sample_weight: torch.Tensor | None = None,
        num_iter: int | None = None,
        compute_losses: bool = True,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run the unrolled optimizer.

        Args:
            weights: initial filter ``[B, C, f, f]``.
            feat: reference features ``[N, B, C, H, W]``.
            bb: reference boxes ``[N, B, 4]``, ``x, y, w, h`` in image pixels.
            sample_weight: optional per-image weights ``[N, B]`` (default ``1/N`` each).
            num_iter: steps to run (default ``self.num_iter``).
            compute_losses: also return the objective at every iterate.

        Returns:
            ``(final filter [B, C, f, f], iterates, losses)``: ``num_iter + 1`` filter iterates
            (the initial one first) and, if asked, the objective (scalar, averaged over sequences)
            at each of them; otherwise an empty list.
        """
        num_iter = self.num_iter if num_iter is None else num_iter
        num_images, num_seq = feat.shape[:2]
        filter_sz = (weights.shape[-2], weights.shape[-1])
        output_sz = (feat.shape[-2] + (filter_sz[0] + 1) % 2, feat.shape[-1] + (filter_sz[1] + 1) % 2)

        # Keep the inner optimisation in float32 even under autocast.
        with torch.autocast(device_type=feat.device.type, enabled=False):
            feat = feat.float()
            weights = weights.float()
            bb = bb.float()
            step_length = torch.exp(self.log_step_length)
            reg_weight = (self.filter_reg * self.filter_reg).clamp(min=self.min_filter_reg**2)

            # Target centre in score-map cells, (y, x).
            offset = torch.tensor([filter_sz[0] % 2, filter_sz[1] % 2], device=bb.device, dtype=bb.dtype) / 2.0
            center = ((bb[..., :2] + bb[..., 2:] / 2) / self.feat_stride).reshape(-1, 2).flip((1,)) - offset
            dist_map = self.distance_map(center, output_sz)
            shape = (num_images, num_seq, *output_sz)
            label_map = self.label_map_predictor(dist_map).reshape(shape)
            target_mask = self.target_mask_predictor(dist_map).reshape(shape)
            spatial_weight = self.spatial_weight_predictor(dist_map).reshape(shape)

            if sample_weight is None:
                sample_weight = math.sqrt(1.0 / num_images) * spatial_weight
            else:
                sample_weight = sample_weight.float().sqrt().reshape(num_images, num_seq, 1, 1) * spatial_weight

            iterates = [weights]
            losses: list[torch.Tensor] = []
            for i in range(num_iter):
                if self.detach_length <= 0 or (i > 0 and i % self.detach_length == 0):
                    weights = weights.detach()
                scores = apply_filter(feat, weights)
                scores_act = self.score_activation(scores, target_mask)
                score_mask = self.score_activation_deriv(scores, target_mask)
                residuals = sample_weight * (scores_act - label_map)
                if compute_losses:
                    losses.append(self._objective(residuals, weights, reg_weight, num_seq))

                weights_grad = (
                    apply_feat_transpose(feat, score_mask * sample_weight * residuals, filter_sz) + reg_weight * weights
                )
                scores_grad = sample_weight * score_mask * apply_filter(feat, weights_grad)
                alpha_num = (weights_grad * weights_grad).sum(dim=(1, 2, 3))
                alpha_den = (scores_grad * scores_grad).reshape(num_images, num_seq, -1).sum(dim=(0, 2))
                alpha_den = (alpha_den + (reg_weight + self.alpha_eps) * alpha_num).clamp(min=1e-8)
                alpha = alpha_num / alpha_den
                weights = weights - (step_length * alpha).reshape(-1, 1, 1, 1) * weights_grad
                iterates.append(weights)

            if compute_losses:
                scores_act = self.score_activation(apply_filter(feat, weights), target_mask)
                residuals = sample_weight * (scores_act - label_map)
                losses.append(self._objective(residuals, weights, reg_weight, num_seq))
        return weights, iterates, losses

    def score_activation(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The configured score activation of ``scores`` under target mask ``mask``."""
        if self.score_act == "bentpar":
            return bent_ident_par(scores, mask, self.act_param)
        return leaky_relu_par(scores, mask)

    def score_activation_deriv(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Derivative of :meth:`score_activation` with respect to ``scores``."""
        if self.score_act == "bentpar":
            return bent_ident_par_deriv(scores, mask, self.act_param)
        return leaky_relu_par_deriv(scores, mask)

    @staticmethod
    def _objective(
        residuals: torch.Tensor, weights: torch.Tensor, reg_weight: torch.Tensor, num_seq: int
    ) -> torch.Tensor:
        return ((residuals**2).sum() + reg_weight * (weights**2).sum()) / num_seq


class LinearFilterClassifier(nn.Module):
    """DiMP target classifier (module ``classifier`` of DiMPNet).

    Args:
        input_dim: channels of the backbone layer it reads (``layer3``).
        out_dim: channels of the classification features (= filter depth).
        filter_size: filter side ``f`` in feature cells.
        feature_stride: image pixels per feature cell.
        num_iter: filter optimizer steps during training (``num_iter + 1`` score maps come out).
        num_blocks: BasicBlocks before the final conv of ``feature_extractor``.
        optimizer_kwargs: further arguments of :class:`DiMPSteepestDescentGN`.
    """

    def __init__(
        self,
        input_dim: int,
        out_dim: int = 512,
        filter_size: int = 4,
        feature_stride: int = 16,
        num_iter: int = 5,
        num_blocks: int = 0,
        **optimizer_kwargs: Any,
    ) -> None:
        super().__init__()
        self.filter_size = filter_size
        self.feature_extractor = classification_feature_extractor(input_dim, out_dim, filter_size, num_blocks)
        self.filter_initializer = FilterInitializerLinear(filter_size, out_dim, feature_stride)
        self.filter_optimizer = DiMPSteepestDescentGN(num_iter=num_iter, feat_stride=feature_stride, **optimizer_kwargs)

    def extract_classification_feat(self, feat: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        """Backbone features ``[N, B, C_in, H, W]`` (or ``[N, C_in, H, W]``) -> same layout, ``out_dim`` channels.

        With ``detach_params`` the features are computed with detached copies of ``feature_extractor``'s
        parameters: the same values, but no gradient reaches the parameters from this call (it still reaches
        ``feat``). Training uses it on the frame whose branch the row does not train (see :meth:`forward`).
        """
        flat = feat if feat.dim() == 4 else feat.reshape(-1, *feat.shape[-3:])
        if detach_params:
            params = {name: p.detach() for name, p in self.feature_extractor.named_parameters()}
            out = torch.func.functional_call(self.feature_extractor, params, (flat,))
        else:
            out = self.feature_extractor(flat)
        return out if feat.dim() == 4 else out.reshape(*feat.shape[:2], *out.shape[-3:])

    def get_filter(
        self, feat: torch.Tensor, bb: torch.Tensor, num_iter: int | None = None, compute_losses: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Classification features ``[N, B, C, H, W]`` and boxes ``[N, B, 4]`` -> ``(filter, iterates, losses)``."""
        weights = self.filter_initializer(feat, bb)
        return self.filter_optimizer(weights, feat, bb, num_iter=num_iter, compute_losses=compute_losses)

    def classify(self, weights: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """Filter ``[B, C, f, f]`` on classification features ``[N, B, C, H, W]`` -> scores ``[N, B, L, L]``."""
        return apply_filter(feat, weights)

    def forward(
        self,
        train_feat: torch.Tensor,
        test_feat: torch.Tensor,
        train_bb: torch.Tensor,
        return_filter: bool = False,
        feature_grad: str = "both",
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        """Learn a filter on the reference frames and score the test frames with every iterate.

        Args:
            train_feat: backbone features of the reference frames ``[Ntr, B, C_in, H, W]``.
            test_feat: backbone features of the test frames ``[Nte, B, C_in, H, W]``.
            train_bb: reference boxes ``[Ntr, B, 4]``, ``x, y, w, h`` in image pixels.
            return_filter: also return the final filter (for the ``μ‖φ‖²`` term of Eq. 2).
            feature_grad: the frames through which ``feature_extractor`` (the one module run on both) gets
                gradients: ``"reference"``, ``"test"`` or ``"both"`` (default). On the other frames it runs with
                detached parameters (:meth:`extract_classification_feat`); the outputs are the same either way.

        Returns:
            ``num_iter + 1`` score maps ``[Nte, B, L, L]``, initial filter first; with
            ``return_filter``, ``(scores, final filter [B, C, f, f])``.
        """
        if train_bb.dim() != 3 or train_feat.dim() != 5 or test_feat.dim() != 5:
            raise ValueError("expected train_feat/test_feat [N, B, C, H, W] and train_bb [N, B, 4]")
        if feature_grad not in FEATURE_GRAD_BRANCHES:
            raise ValueError(f"feature_grad must be one of {', '.join(FEATURE_GRAD_BRANCHES)}, got {feature_grad!r}")
        train_feat = self.extract_classification_feat(train_feat, detach_params=feature_grad == "test")
        test_feat = self.extract_classification_feat(test_feat, detach_params=feature_grad == "reference")
        final, iterates, _ = self.get_filter(train_feat, train_bb, compute_losses=False)
        scores = [self.classify(w, test_feat) for w in iterates]
        return (scores, final) if return_filter else scores
