"""DiMPNet and ATOMNet assembly, named presets, and the per-variant parameter groups.

``DiMPNet`` holds ``feature_extractor`` (ResNet backbone), ``classifier`` (TCL, a
:class:`~cmd_ray.models.classifier.LinearFilterClassifier`) and ``bb_regressor`` (BBE, an
:class:`~cmd_ray.models.iounet.AtomIoUNet`); ``ATOMNet`` holds ``feature_extractor`` and
``bb_regressor`` only. State-dict keys start with ``feature_extractor.``, ``classifier.`` and
``bb_regressor.`` exactly as in pytracking's ``DiMPnet`` / ``ATOMnet`` (the backbone's ImageNet ``fc``
is not built).

Presets (pytracking ``ltr/train_settings``; factories in :data:`FACTORIES`):

==============  ========  ======================================================================
preset          backbone  settings
==============  ========  ======================================================================
``tiny``        tiny      CPU-sized DiMP (classifier 64 ch., IoU-Net 64 wide), DiMP-50 optimizer
``dimp18``      ResNet18  DiMP-18: 1 BasicBlock + conv to 256 ch. in the classifier features
``dimp50``      ResNet50  DiMP-50: conv to 512 ch.
``superdimp``   ResNet50  SuperDiMP: the DiMP-50 network (same classifier, activations and
                          IoU-Net); label sigma for search area 6 / feature 22. Its differences are
                          in training: the KL box loss on GMM proposals (``distill.bbe_loss=kl``,
                          ``data.sampling.proposal_method=gmm``) and the crop geometry.
``atom18``      ResNet18  ATOM: IoU-Net only (``ATOMNet``)
``atom50``      ResNet50  ATOM with a ResNet50 backbone (IoU-Net input 512/1024 channels)
==============  ========  ======================================================================

Every DiMP preset uses pytracking's training settings for the filter optimizer: 5 iterations, initial
step length 0.9, initial filter regularisation 0.1, 100 distance bins 0.1 cells apart, mask init
factor 3, score activation ``relu`` (leaky ReLU with the learnt mask) and mask activation
``sigmoid``; filter size 4 (from ``data.sampling.filter_size``).

Layouts: images ``[N, B, 3, H, W]`` (``N`` images per sequence, ``B`` sequences); boxes ``[N, B, 4]``
and proposals ``[N, B, P, 4]`` are ``x, y, w, h`` in crop pixels. Backbone features are computed on
the image-major flattening ``[N*B, …]`` (row ``n*B + b``).

Trainability (:func:`apply_variant_trainability`): the backbone is always frozen; the variant's TCL
and BBE branches (see :mod:`cmd_ray.vocabulary`) are the only parameters with
``requires_grad``; BatchNorm layers of frozen parts stay in eval mode even after ``model.train()``.
ATOM has no TCL: a variant that trains it raises ``ValueError``. ``classifier.feature_extractor`` runs on
both frames; ``DiMPNet.forward(clf_feature_grad=…)`` lets it learn through the row's branch only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cmd_ray.models.backbone import ResNetBackbone, freeze_batchnorm_stats
from cmd_ray.models.classifier import LinearFilterClassifier
from cmd_ray.models.iounet import AtomIoUNet
from cmd_ray.vocabulary import BRANCH_MODULES, Branch, Variant, get_variant

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

# pytracking's DiMP-18/50 and SuperDiMP training settings of the filter optimizer (dimp18.py, dimp50.py,
# super_dimp.py all pass the same values to DiMPSteepestDescentGN).
DIMP_OPTIMIZER_SETTINGS: dict[str, Any] = {
    "optim_iter": 5,
    "optim_init_step": 0.9,
    "optim_init_reg": 0.1,
    "num_dist_bins": 100,
    "bin_displacement": 0.1,
    "mask_init_factor": 3.0,
    "score_act": "relu",
    "mask_act": "sigmoid",
}

OUTPUT_SIGMA_FACTOR = 0.25
"""pytracking's ``output_sigma_factor``: label sigma = 1/4 of the target size."""

# (search_area_factor, feature_sz) of each preset's training crops: the label sigma the filter optimizer's
# label predictor starts from is OUTPUT_SIGMA_FACTOR / search_area_factor * feature_sz cells.
PRESET_GEOMETRY: dict[str, tuple[float, int]] = {
    "tiny": (5.0, 8),
    "dimp18": (5.0, 18),
    "dimp50": (5.0, 18),
    "superdimp": (6.0, 22),
    "atom18": (5.0, 18),
    "atom50": (5.0, 18),
}


def preset_gauss_sigma(preset: str) -> float:
    """Initial label sigma (feature cells) of a preset's filter optimizer: ``0.25 / search_area * feature_sz``."""
    search_area_factor, feature_sz = PRESET_GEOMETRY[preset]
    return OUTPUT_SIGMA_FACTOR / search_area_factor * feature_sz


class _TrackerNet(nn.Module):
    """Shared by DiMPNet and ATOMNet: frozen-BatchNorm ``train`` and graph-free frozen backbone."""

    feature_extractor: ResNetBackbone
    output_layers: tuple[str, ...]

    def train(self, mode: bool = True) -> _TrackerNet:
        """Like ``nn.Module.train``, but BatchNorms of frozen parts stay in eval mode (no stat drift)."""
        super().train(mode)
        if mode:
            freeze_batchnorm_stats(self)
        return self

    def extract_backbone_features(
        self, im: torch.Tensor, layers: Sequence[str] | None = None
    ) -> OrderedDict[str, torch.Tensor]:
        """Images ``[M, 3, H, W]`` -> ``{layer: [M, C, H/s, W/s]}``; no autograd graph when the backbone is frozen."""
        layers = self.output_layers if layers is None else tuple(layers)
        if any(p.requires_grad for p in self.feature_extractor.parameters()):
            return self.feature_extractor(im, layers)
        with torch.no_grad():
            return self.feature_extractor(im, layers)


class DiMPNet(_TrackerNet):
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

    def forward(
        self,
        train_imgs: torch.Tensor,
        test_imgs: torch.Tensor,
        train_bb: torch.Tensor,
        test_proposals: torch.Tensor,
        return_filter: bool = False,
        clf_feature_grad: Branch = "both",
    ) -> tuple[list[torch.Tensor], torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Run the network as in training.

        Args:
            train_imgs: reference images ``[Ntr, B, 3, H, W]`` (ImageNet-normalised).
            test_imgs: test images ``[Nte, B, 3, H, W]``.
            train_bb: reference boxes ``[Ntr, B, 4]``.
            test_proposals: IoU-Net proposals in the test images ``[Nte, B, P, 4]``.
            return_filter: also return the final classifier filter ``[B, C, f, f]`` (Eq. 2's ``φ``).
            clf_feature_grad: the branch(es) through which ``classifier.feature_extractor``, which runs on both
                the reference and the test frames, gets gradients: the row's
                ``Variant.trained_modules["classifier.feature_extractor"]``; ``"both"`` (default) for a row that
                trains TCL on both branches and for supervised training. It changes no output, only which
                frame's features pass gradients to those parameters.

        Returns:
            ``(scores, iou_pred)``: one score map ``[Nte, B, L, L]`` per filter iterate
            (``L = H/16 + (filter_size+1)%2``) and the predicted IoUs ``[Nte, B, P]``;
            ``(scores, iou_pred, filter)`` with ``return_filter``.
        """
        if train_imgs.dim() != 5 or test_imgs.dim() != 5:
            raise ValueError("expected 5-D images [N, B, 3, H, W]")
        num_train, num_seq = train_imgs.shape[:2]
        num_test = test_imgs.shape[0]
        train_feat = self.extract_backbone_features(train_imgs.reshape(-1, *train_imgs.shape[-3:]))
        test_feat = self.extract_backbone_features(test_imgs.reshape(-1, *test_imgs.shape[-3:]))

        train_clf = self.get_backbone_clf_feat(train_feat)
        test_clf = self.get_backbone_clf_feat(test_feat)
        scores, final_filter = self.classifier(
            train_clf.reshape(num_train, num_seq, *train_clf.shape[-3:]),
            test_clf.reshape(num_test, num_seq, *test_clf.shape[-3:]),
            train_bb,
            return_filter=True,
            feature_grad=clf_feature_grad,
        )
        iou_pred = self.bb_regressor(
            self.get_backbone_bbreg_feat(train_feat), self.get_backbone_bbreg_feat(test_feat), train_bb, test_proposals
        )
        if return_filter:
            return scores, iou_pred, final_filter
        return scores, iou_pred

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
    score_act: str = "relu",
    act_param: float | None = None,
    mask_act: str = "sigmoid",
) -> DiMPNet:
    """A randomly initialised DiMPNet (DiMP-50 training settings for the optimizer by default).

    Backbones: ``"tiny"`` (classifier 64 channels, IoU-Net 64 wide: a CPU step on 4 pairs of
    128×128 crops is a fraction of a second), ``"resnet18"`` (DiMP-18 layout: one BasicBlock in the
    classifier features, 256 channels) and ``"resnet50"`` (DiMP-50 layout: 512 channels). All
    parameters are trainable on return; see :func:`apply_variant_trainability`. The named presets
    :func:`dimp18`, :func:`dimp50` and :func:`superdimp` call this with their settings.
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
        score_act=score_act,
        act_param=act_param,
        mask_act=mask_act,
    )
    bb_regressor = _build_iounet(net, backbone, iou_pred_dim, iou_inter_dim)
    return DiMPNet(net, classifier, bb_regressor, "layer3", ("layer2", "layer3"))


def _build_iounet(
    net: ResNetBackbone,
    backbone: str,
    iou_pred_dim: tuple[int, int] | None = None,
    iou_inter_dim: tuple[int, int] | None = None,
) -> AtomIoUNet:
    heads = _HEADS[backbone]
    return AtomIoUNet(
        input_dim=(net.out_channels("layer2"), net.out_channels("layer3")),
        pred_input_dim=iou_pred_dim or heads["iou_pred_dim"],
        pred_inter_dim=iou_inter_dim or heads["iou_inter_dim"],
        hidden_dim=heads["iou_hidden_dim"],
        ref3_dim=heads["iou_ref3_dim"],
    )


def _dimp_preset(preset: str, backbone: str, clf_out_dim: int, clf_feat_blocks: int, **overrides: Any) -> DiMPNet:
    settings: dict[str, Any] = {
        **DIMP_OPTIMIZER_SETTINGS,
        "filter_size": 4,
        "feature_stride": 16,
        "init_gauss_sigma": preset_gauss_sigma(preset),
        "clf_out_dim": clf_out_dim,
        "clf_feat_blocks": clf_feat_blocks,
    }
    unknown = set(overrides) - set(settings) - {"act_param", "iou_pred_dim", "iou_inter_dim"}
    if unknown:
        raise TypeError(f"{preset}() got unexpected settings: {', '.join(sorted(unknown))}")
    settings.update(overrides)
    return build_dimpnet(backbone, **settings)


def dimp18(**overrides: Any) -> DiMPNet:
    """DiMP-18 (pytracking ``dimpnet18`` with ``train_settings/dimp/dimp18.py``'s arguments).

    ResNet18 backbone; classifier features: one BasicBlock (256 ch.), 3×3 conv to 256 ch., L2 norm;
    filter 4×4; optimizer: :data:`DIMP_OPTIMIZER_SETTINGS`; label sigma ``0.25/5*18 = 0.9`` cells;
    IoU-Net on ``layer2``/``layer3`` (128/256 ch.). ``overrides`` replace any of these settings
    (``filter_size``, ``init_gauss_sigma``, ``optim_iter``, …; see :func:`build_dimpnet`).
    """
    return _dimp_preset("dimp18", "resnet18", 256, 1, **overrides)


def dimp50(**overrides: Any) -> DiMPNet:
    """DiMP-50 (pytracking ``dimpnet50`` with ``train_settings/dimp/dimp50.py``'s arguments).

    ResNet50 backbone; classifier features: 3×3 conv from ``layer3`` (1024 ch.) to 512 ch., L2 norm;
    filter 4×4; optimizer: :data:`DIMP_OPTIMIZER_SETTINGS`; label sigma ``0.25/5*18 = 0.9`` cells;
    IoU-Net on ``layer2``/``layer3`` (512/1024 ch.).
    """
    return _dimp_preset("dimp50", "resnet50", 512, 0, **overrides)


def superdimp(**overrides: Any) -> DiMPNet:
    """SuperDiMP (pytracking ``train_settings/dimp/super_dimp.py``): the DiMP-50 network.

    ``super_dimp.py`` builds ``dimpnet50`` with exactly DiMP-50's classifier arguments (score
    activation ``relu``, mask activation ``sigmoid``; ``bentpar`` is not used) and the same IoU-Net;
    only the label sigma differs, ``0.25/6*22 ≈ 0.917`` cells, from its 352-pixel crops (search area 6,
    feature 22). What makes SuperDiMP is its training: the KL box loss on GMM proposals (weight
    0.01) and the crop geometry — see ``configs/superdimp.yaml``.
    """
    return _dimp_preset("superdimp", "resnet50", 512, 0, **overrides)


class ATOMNet(_TrackerNet):
    """ATOM: backbone and IoU-Net (pytracking's ``ATOMnet``), no target classifier.

    Args:
        feature_extractor: backbone returning a dict of feature maps.
        bb_regressor: IoU-Net (BBE).
        bb_regressor_layer: the two backbone layers the IoU-Net reads.
    """

    def __init__(
        self,
        feature_extractor: ResNetBackbone,
        bb_regressor: AtomIoUNet,
        bb_regressor_layer: Sequence[str] = ("layer2", "layer3"),
    ) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.bb_regressor = bb_regressor
        self.bb_regressor_layer = tuple(bb_regressor_layer)
        self.output_layers = self.bb_regressor_layer

    def forward(
        self,
        train_imgs: torch.Tensor,
        test_imgs: torch.Tensor,
        train_bb: torch.Tensor,
        test_proposals: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the IoU of each test proposal with the reference target.

        Args:
            train_imgs: reference images ``[Ntr, B, 3, H, W]`` (ImageNet-normalised).
            test_imgs: test images ``[Nte, B, 3, H, W]``.
            train_bb: reference boxes ``[Ntr, B, 4]``.
            test_proposals: proposals in the test images ``[Nte, B, P, 4]``.

        Returns:
            predicted IoUs ``[Nte, B, P]`` (trained against ``2*IoU - 1``).
        """
        if train_imgs.dim() != 5 or test_imgs.dim() != 5:
            raise ValueError("expected 5-D images [N, B, 3, H, W]")
        train_feat = self.extract_backbone_features(train_imgs.reshape(-1, *train_imgs.shape[-3:]))
        test_feat = self.extract_backbone_features(test_imgs.reshape(-1, *test_imgs.shape[-3:]))
        return self.bb_regressor(
            self.get_backbone_bbreg_feat(train_feat), self.get_backbone_bbreg_feat(test_feat), train_bb, test_proposals
        )

    def get_backbone_bbreg_feat(self, backbone_feat: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The IoU-Net's two maps ``[layer2 [M, C2, …], layer3 [M, C3, …]]``."""
        return [backbone_feat[layer] for layer in self.bb_regressor_layer]


def build_atomnet(
    backbone: str = "tiny",
    *,
    iou_pred_dim: tuple[int, int] | None = None,
    iou_inter_dim: tuple[int, int] | None = None,
) -> ATOMNet:
    """A randomly initialised ATOMNet on ``backbone`` (``"tiny"``, ``"resnet18"``, ``"resnet50"``)."""
    if backbone not in _HEADS:
        raise ValueError(f"unknown backbone {backbone!r}; allowed: {', '.join(_HEADS)}")
    net = ResNetBackbone(backbone, output_layers=("layer2", "layer3"))
    return ATOMNet(net, _build_iounet(net, backbone, iou_pred_dim, iou_inter_dim), ("layer2", "layer3"))


def atom18(**overrides: Any) -> ATOMNet:
    """ATOM with ResNet18 (pytracking ``atom_resnet18``): IoU-Net on ``layer2``/``layer3`` (128/256 ch.), 256 wide."""
    return build_atomnet("resnet18", **overrides)


def atom50(**overrides: Any) -> ATOMNet:
    """ATOM with ResNet50 (pytracking ``atom_resnet50``): IoU-Net input 512/1024 ch., 256 wide."""
    return build_atomnet("resnet50", **overrides)


def _tiny_dimp(**settings: Any) -> DiMPNet:
    return build_dimpnet("tiny", **settings)


def _tiny_atom() -> ATOMNet:
    return build_atomnet("tiny")


FACTORIES: dict[str, dict[str, Any]] = {
    "dimp": {"tiny": _tiny_dimp, "dimp18": dimp18, "dimp50": dimp50, "superdimp": superdimp},
    "atom": {"tiny": _tiny_atom, "atom18": atom18, "atom50": atom50},
}
"""``architecture -> preset -> factory``; the factories of ``dimp`` take ``filter_size``,
``feature_stride`` and ``init_gauss_sigma``."""

TrackerNet = DiMPNet | ATOMNet
"""Either network (what :func:`build_model` returns)."""


NETWORK_SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "dimp": ("architecture", "preset", "filter_size", "feature_stride", "init_gauss_sigma"),
    "atom": ("architecture", "preset"),
}
"""The keys of a network spec (:func:`network_spec`), by architecture: all :func:`build_network` reads."""


def network_spec(cfg: Config) -> dict[str, Any]:
    """The settings that rebuild the network ``cfg`` describes, as plain JSON values.

    ``{"architecture", "preset"}``, and for DiMP also ``filter_size`` and ``feature_stride`` (from
    ``data.sampling``) and ``init_gauss_sigma``: the label sigma (feature cells) the filter optimizer starts from,
    that of the config's crops (``label_sigma_factor / search_area_factor * feature_sz``, as pytracking's
    ``init_gauss_sigma``). :func:`build_network` of the result is :func:`build_model` of ``cfg``.

    Raises:
        ValueError: an unknown architecture or preset.
    """
    arch, preset = cfg.model.architecture, cfg.model.preset
    _check_network(arch, preset)
    if arch == "atom":
        return {"architecture": arch, "preset": preset}
    sampling = cfg.data.sampling
    return {
        "architecture": arch,
        "preset": preset,
        "filter_size": sampling.filter_size,
        "feature_stride": sampling.feature_stride,
        "init_gauss_sigma": sampling.label_sigma_factor / sampling.search_area_factor * sampling.feature_sz,
    }


def build_network(spec: Mapping[str, Any]) -> TrackerNet:
    """A randomly initialised network from a :func:`network_spec` (keys other than :data:`NETWORK_SPEC_KEYS`
    are ignored).

    ``architecture`` and ``preset`` pick the factory (:data:`FACTORIES`); a DiMP factory gets ``filter_size``,
    ``feature_stride`` and ``init_gauss_sigma``.

    Raises:
        ValueError: an unknown architecture or preset, or a missing key.
    """
    arch, preset = spec.get("architecture"), spec.get("preset")
    _check_network(arch, preset)
    missing = [key for key in NETWORK_SPEC_KEYS[arch] if key not in spec]
    if missing:
        raise ValueError(f"network spec of {arch}/{preset} lacks {', '.join(missing)}")
    factory = FACTORIES[arch][preset]
    if arch == "atom":
        return factory()
    return factory(
        filter_size=int(spec["filter_size"]),
        feature_stride=int(spec["feature_stride"]),
        init_gauss_sigma=float(spec["init_gauss_sigma"]),
    )


def _check_network(arch: Any, preset: Any) -> None:
    if arch not in FACTORIES:
        raise ValueError(f"unsupported architecture {arch!r}; allowed: {', '.join(FACTORIES)}")
    if preset not in FACTORIES[arch]:
        raise ValueError(f"unknown {arch} preset {preset!r}; allowed: {', '.join(FACTORIES[arch])}")


def build_model(cfg: Config) -> TrackerNet:
    """The network a :class:`~cmd_ray.config.Config` describes: :func:`build_network` of :func:`network_spec`.

    ``model.architecture`` and ``model.preset`` pick the factory (:data:`FACTORIES`); for DiMP the
    filter size and stride come from ``data.sampling`` and the label sigma the filter optimizer starts
    from is the one of the config's crops (``label_sigma_factor / search_area_factor * feature_sz``,
    as pytracking's ``init_gauss_sigma``).
    """
    return build_network(network_spec(cfg))


def _unwrap(model: nn.Module) -> TrackerNet:
    core = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    if not isinstance(core, DiMPNet | ATOMNet):
        raise TypeError(f"expected a DiMPNet or ATOMNet, got {type(core).__name__}")
    return core


def _variant_modules(model: TrackerNet, variant: Variant) -> dict[str, list[nn.Module]]:
    """``{"tcl": [...], "bbe": [...]}``: the modules of ``variant.trained_modules``, by the module they belong to."""
    trained = variant.trained_modules
    return {
        key: [model.get_submodule(name) for name in trained if any(name in names for names in branches.values())]
        for key, branches in BRANCH_MODULES.items()
    }


BACKBONE_STAGES = ("conv1", "layer1", "layer2", "layer3")


def _backbone_modules(model: TrackerNet, layers: Sequence[str]) -> list[nn.Module]:
    unknown = sorted(set(layers) - set(BACKBONE_STAGES))
    if unknown:
        raise ValueError(f"trainable backbone layers {unknown} unknown; allowed: {', '.join(BACKBONE_STAGES)}")
    net = model.feature_extractor
    stages = {"conv1": [net.conv1, net.bn1], "layer1": [net.layer1], "layer2": [net.layer2], "layer3": [net.layer3]}
    return [module for layer in layers for module in stages[layer]]


def parameter_groups(
    model: nn.Module, variant_name: str | Variant, trainable_backbone_layers: Sequence[str] = ()
) -> dict[str, list[nn.Parameter]]:
    """``{"tcl": [...], "bbe": [...], "backbone": [...]}``: exactly the parameters trained (a list may be empty).

    The backbone is frozen unless ``trainable_backbone_layers`` names stages of it (``conv1`` with its
    BatchNorm, ``layer1`` … ``layer3``); their parameters form the ``backbone`` group.

    The modules are those of the row's :attr:`~cmd_ray.vocabulary.Variant.trained_modules`. TCL
    ``"reference"``/``"both"``: ``classifier.feature_extractor``, ``filter_initializer``,
    ``filter_optimizer``; TCL ``"test"``: ``classifier.feature_extractor``. BBE ``"reference"``:
    ``bb_regressor.{conv3_1r, conv4_1r, fc3_1r, fc34_3r, fc34_4r}``; ``"test"``:
    ``bb_regressor.{conv3_1t, conv3_2t, conv4_1t, conv4_2t, fc3_rt, fc4_rt, iou_predictor}``. Which frame a
    shared module (``classifier.feature_extractor``) learns through is the forward pass's business:
    :class:`DiMPNet`'s ``clf_feature_grad``, which :func:`cmd_ray.distill.step.distill_step` sets from the row.
    Raises ``ValueError`` for a merge-only variant (B3), an unknown name, or a variant that trains
    the TCL of an :class:`ATOMNet` (which has none).
    """
    variant = get_variant(variant_name)
    if variant.is_merge:
        sources = ", ".join(f"{module} {branch} branch from {src}" for module, branch, src in variant.merge_of)
        raise ValueError(f"variant {variant.name} is a merge ({sources}) and is not trained directly")
    core = _unwrap(model)
    if isinstance(core, ATOMNet) and variant.train_tcl is not None:
        raise ValueError(
            f"variant {variant.name} trains the target classifier (TCL), but ATOM has no target classifier "
            "(only the IoU-Net, BBE); variants for ATOM: A1, B1, B2 (and B3 by merging B1 and B2)"
        )
    groups: dict[str, list[nn.Parameter]] = {"tcl": [], "bbe": [], "backbone": []}
    head = _variant_modules(core, variant)
    for key, modules in (
        ("tcl", head["tcl"]),
        ("bbe", head["bbe"]),
        ("backbone", _backbone_modules(core, trainable_backbone_layers)),
    ):
        seen: set[int] = set()
        for module in modules:
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    groups[key].append(p)
    return groups


def apply_variant_trainability(
    model: nn.Module, variant_name: str | Variant, trainable_backbone_layers: Sequence[str] = ()
) -> nn.Module:
    """Set ``requires_grad`` on exactly the variant's parameters (plus any trainable backbone stages).

    BatchNorm layers of the frozen parts go to eval mode (and stay there through ``model.train()``), so
    their running statistics stay as loaded; those of trainable stages keep updating. Returns ``model``.
    Raises ``ValueError`` for a merge-only variant (B3) or a TCL variant on ATOM.
    """
    groups = parameter_groups(model, variant_name, trainable_backbone_layers)
    for p in model.parameters():
        p.requires_grad_(False)
    for params in groups.values():
        for p in params:
            p.requires_grad_(True)
    freeze_batchnorm_stats(model)
    return model
