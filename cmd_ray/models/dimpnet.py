"""DiMPNet assembly, factories and the per-variant parameter groups.

``DiMPNet`` holds ``feature_extractor`` (ResNet backbone), ``classifier`` (TCL, a
:class:`~cmd_ray.models.classifier.LinearFilterClassifier`) and ``bb_regressor`` (BBE, an
:class:`~cmd_ray.models.iounet.AtomIoUNet`), so state-dict keys start with ``feature_extractor.``,
``classifier.`` and ``bb_regressor.`` exactly as in pytracking.

Layouts: images ``[N, B, 3, H, W]`` (``N`` images per sequence, ``B`` sequences); boxes ``[N, B, 4]``
and proposals ``[N, B, P, 4]`` are ``x, y, w, h`` in crop pixels. Backbone features are computed on
the image-major flattening ``[N*B, …]`` (row ``n*B + b``).

Trainability (:func:`apply_variant_trainability`): the backbone is always frozen; the variant's TCL
and BBE branches (see :mod:`cmd_ray.distill.variants`) are the only parameters with
``requires_grad``; BatchNorm layers of frozen parts stay in eval mode even after ``model.train()``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cmd_ray.distill.variants import Variant, get_variant
from cmd_ray.models.backbone import ResNetBackbone, freeze_batchnorm_stats
from cmd_ray.models.classifier import LinearFilterClassifier
from cmd_ray.models.iounet import AtomIoUNet

if TYPE_CHECKING:
    from cmd_ray.config import Config

# Per-backbone defaults: classifier width and blocks, IoU-Net widths.
_HEADS: dict[str, dict[str, Any]] = {
    "tiny": {
        "clf_out_dim": 64,
        "clf_feat_blocks": 0,
        "iou_pred_dim": (64, 64),
        "iou_inter_dim": (64, 64),
        "iou_hidden_dim": 64,
        "iou_ref3_dim": 32,
    },
    "resnet18": {
        "clf_out_dim": 256,
        "clf_feat_blocks": 1,
        "iou_pred_dim": (256, 256),
        "iou_inter_dim": (256, 256),
        "iou_hidden_dim": 256,
        "iou_ref3_dim": 128,
    },
    "resnet50": {
        "clf_out_dim": 512,
        "clf_feat_blocks": 0,
        "iou_pred_dim": (256, 256),
        "iou_inter_dim": (256, 256),
        "iou_hidden_dim": 256,
        "iou_ref3_dim": 128,
    },
}


class DiMPNet(nn.Module):
    """The DiMP network as used in (distillation) training.

    Args:
        feature_extractor: backbone returning a dict of feature maps (``forward(im, layers)``).
        classifier: target classifier (TCL).
        bb_regressor: IoU-Net (BBE).
        classification_layer: backbone layer the classifier reads.
        bb_regressor_layer: the two backbone layers the IoU-Net reads.
    """

    def __init__(
        self,
        feature_extractor: ResNetBackbone,
        classifier: LinearFilterClassifier,
        bb_regressor: AtomIoUNet,
        classification_layer: str = "layer3",
        bb_regressor_layer: Sequence[str] = ("layer2", "layer3"),
    ) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.classifier = classifier
        self.bb_regressor = bb_regressor
        self.classification_layer = classification_layer
        self.bb_regressor_layer = tuple(bb_regressor_layer)
        self.output_layers = tuple(sorted({classification_layer, *self.bb_regressor_layer}))

    def train(self, mode: bool = True) -> DiMPNet:
        """Like ``nn.Module.train``, but BatchNorms of frozen parts stay in eval mode (no stat drift)."""
        super().train(mode)
        if mode:
            freeze_batchnorm_stats(self)
        return self

    def forward(
        self,
        train_imgs: torch.Tensor,
        test_imgs: torch.Tensor,
        train_bb: torch.Tensor,
        test_proposals: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run the network as in training.

        Args:
            train_imgs: reference images ``[Ntr, B, 3, H, W]`` (ImageNet-normalised).
            test_imgs: test images ``[Nte, B, 3, H, W]``.
            train_bb: reference boxes ``[Ntr, B, 4]``.
            test_proposals: IoU-Net proposals in the test images ``[Nte, B, P, 4]``.

        Returns:
            ``(scores, iou_pred)``: one score map ``[Nte, B, L, L]`` per filter iterate
            (``L = H/16 + (filter_size+1)%2``) and the predicted IoUs ``[Nte, B, P]``.
        """
        if train_imgs.dim() != 5 or test_imgs.dim() != 5:
            raise ValueError("expected 5-D images [N, B, 3, H, W]")
        num_train, num_seq = train_imgs.shape[:2]
        num_test = test_imgs.shape[0]
        train_feat = self.extract_backbone_features(train_imgs.reshape(-1, *train_imgs.shape[-3:]))
        test_feat = self.extract_backbone_features(test_imgs.reshape(-1, *test_imgs.shape[-3:]))

        train_clf = self.get_backbone_clf_feat(train_feat)
        test_clf = self.get_backbone_clf_feat(test_feat)
        scores = self.classifier(
            train_clf.reshape(num_train, num_seq, *train_clf.shape[-3:]),
            test_clf.reshape(num_test, num_seq, *test_clf.shape[-3:]),
            train_bb,
        )
        iou_pred = self.bb_regressor(
            self.get_backbone_bbreg_feat(train_feat), self.get_backbone_bbreg_feat(test_feat), train_bb, test_proposals
        )
        return scores, iou_pred

    def extract_backbone_features(
        self, im: torch.Tensor, layers: Sequence[str] | None = None
    ) -> OrderedDict[str, torch.Tensor]:
        """Images ``[M, 3, H, W]`` -> ``{layer: [M, C, H/s, W/s]}``; no autograd graph when the backbone is frozen."""
        layers = self.output_layers if layers is None else tuple(layers)
        if any(p.requires_grad for p in self.feature_extractor.parameters()):
            return self.feature_extractor(im, layers)
        with torch.no_grad():
            return self.feature_extractor(im, layers)

    def get_backbone_clf_feat(self, backbone_feat: dict[str, torch.Tensor]) -> torch.Tensor:
        """The classification layer's map ``[M, C, H, W]``."""
        return backbone_feat[self.classification_layer]

    def get_backbone_bbreg_feat(self, backbone_feat: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The IoU-Net's two maps ``[layer2 [M, C2, …], layer3 [M, C3, …]]``."""
        return [backbone_feat[layer] for layer in self.bb_regressor_layer]

    def extract_classification_feat(self, backbone_feat: dict[str, torch.Tensor]) -> torch.Tensor:
        """Classifier features ``[M, C_clf, H, W]`` of a backbone feature dict."""
        return self.classifier.extract_classification_feat(self.get_backbone_clf_feat(backbone_feat))


def build_dimpnet(
    backbone: str = "tiny",
    filter_size: int = 4,
    feature_stride: int = 16,
    optim_iter: int = 5,
    *,
    clf_out_dim: int | None = None,
    clf_feat_blocks: int | None = None,
    iou_pred_dim: tuple[int, int] | None = None,
    iou_inter_dim: tuple[int, int] | None = None,
    optim_init_step: float = 0.9,
    optim_init_reg: float = 0.1,
    init_gauss_sigma: float = 0.9,
    num_dist_bins: int = 100,
    bin_displacement: float = 0.1,
    mask_init_factor: float = 3.0,
) -> DiMPNet:
    """A randomly initialised DiMPNet (DiMP-50 training settings for the optimizer by default).

    Presets: ``"tiny"`` (classifier 64 channels, IoU-Net 64 wide: a CPU step on 4 pairs of
    128×128 crops is a fraction of a second), ``"resnet18"`` (DiMP-18 layout: one BasicBlock in the
    classifier features, 256 channels) and ``"resnet50"`` (DiMP-50 layout: 512 channels). All
    parameters are trainable on return; see :func:`apply_variant_trainability`.
    """
    if backbone not in _HEADS:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(_HEADS)}")
    heads = _HEADS[backbone]
    net = ResNetBackbone(backbone, output_layers=("layer2", "layer3"))
    if net.out_stride("layer3") != feature_stride:
        raise ValueError(f"feature_stride {feature_stride} does not match layer3's stride {net.out_stride('layer3')}")
    classifier = LinearFilterClassifier(
        input_dim=net.out_channels("layer3"),
        out_dim=clf_out_dim or heads["clf_out_dim"],
        filter_size=filter_size,
        feature_stride=feature_stride,
        num_iter=optim_iter,
        num_blocks=heads["clf_feat_blocks"] if clf_feat_blocks is None else clf_feat_blocks,
        init_step_length=optim_init_step,
        init_filter_reg=optim_init_reg,
        init_gauss_sigma=init_gauss_sigma,
        num_dist_bins=num_dist_bins,
        bin_displacement=bin_displacement,
        mask_init_factor=mask_init_factor,
    )
    bb_regressor = AtomIoUNet(
        input_dim=(net.out_channels("layer2"), net.out_channels("layer3")),
        pred_input_dim=iou_pred_dim or heads["iou_pred_dim"],
        pred_inter_dim=iou_inter_dim or heads["iou_inter_dim"],
        hidden_dim=heads["iou_hidden_dim"],
        ref3_dim=heads["iou_ref3_dim"],
    )
    return DiMPNet(net, classifier, bb_regressor, "layer3", ("layer2", "layer3"))


def build_model(cfg: Config) -> DiMPNet:
    """The DiMPNet a :class:`~cmd_ray.config.Config` describes (backbone, filter size, stride, label sigma)."""
    sampling = cfg.data.sampling
    if cfg.model.architecture != "dimp":
        raise ValueError(f"unsupported architecture {cfg.model.architecture!r}; allowed: dimp")
    return build_dimpnet(
        backbone=cfg.model.backbone,
        filter_size=sampling.filter_size,
        feature_stride=sampling.feature_stride,
        init_gauss_sigma=sampling.label_sigma_factor / sampling.search_area_factor * sampling.feature_sz,
    )


def _unwrap(model: nn.Module) -> DiMPNet:
    core = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    if not isinstance(core, DiMPNet):
        raise TypeError(f"expected a DiMPNet, got {type(core).__name__}")
    return core


def _tcl_modules(model: DiMPNet, branch: str) -> list[nn.Module]:
    clf = model.classifier
    if branch == "test":
        return [clf.feature_extractor]
    return [clf.feature_extractor, clf.filter_initializer, clf.filter_optimizer]


def _bbe_modules(model: DiMPNet, branch: str) -> list[nn.Module]:
    names = {
        "reference": AtomIoUNet.REFERENCE_MODULES,
        "test": AtomIoUNet.TEST_MODULES,
        "both": AtomIoUNet.REFERENCE_MODULES + AtomIoUNet.TEST_MODULES,
    }[branch]
    return [getattr(model.bb_regressor, name) for name in names]


def parameter_groups(model: nn.Module, variant_name: str | Variant) -> dict[str, list[nn.Parameter]]:
    """``{"tcl": [...], "bbe": [...]}``: exactly the parameters the variant trains (a list may be empty).

    TCL ``"reference"``/``"both"``: ``classifier.feature_extractor``, ``filter_initializer``,
    ``filter_optimizer``; TCL ``"test"``: ``classifier.feature_extractor``. BBE ``"reference"``:
    ``bb_regressor.{conv3_1r, conv4_1r, fc3_1r, fc34_3r, fc34_4r}``; ``"test"``:
    ``bb_regressor.{conv3_1t, conv3_2t, conv4_1t, conv4_2t, fc3_rt, fc4_rt, iou_predictor}``.
    Raises ``ValueError`` for a merge-only variant (B3) or an unknown name.
    """
    variant = get_variant(variant_name)
    if variant.is_merge:
        sources = ", ".join(f"{module} {branch} branch from {src}" for module, branch, src in variant.merge_of)
        raise ValueError(f"variant {variant.name} is a merge ({sources}) and is not trained directly")
    core = _unwrap(model)
    groups: dict[str, list[nn.Parameter]] = {"tcl": [], "bbe": []}
    for key, modules in (
        ("tcl", _tcl_modules(core, variant.train_tcl) if variant.train_tcl else []),
        ("bbe", _bbe_modules(core, variant.train_bbe) if variant.train_bbe else []),
    ):
        seen: set[int] = set()
        for module in modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    groups[key].append(p)
    return groups


def apply_variant_trainability(model: nn.Module, variant_name: str | Variant) -> nn.Module:
    """Set ``requires_grad`` on exactly the variant's parameters (backbone always frozen); returns ``model``.

    BatchNorm layers of the frozen parts go to eval mode (and stay there through ``DiMPNet.train()``).
    Raises ``ValueError`` for a merge-only variant (B3).
    """
    groups = parameter_groups(model, variant_name)
    for p in model.parameters():
        p.requires_grad_(False)
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)
    freeze_batchnorm_stats(model)
    return model
