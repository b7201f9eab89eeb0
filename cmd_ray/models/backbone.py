"""ResNet backbone (``feature_extractor`` of DiMPNet) built from torchvision, never downloading weights.

Module names are those of torchvision's and pytracking's ResNet (``conv1``, ``bn1``, ``layer1`` …
``layer4``), so a pytracking state dict's ``feature_extractor.*`` keys map one to one.

Presets:

- ``"tiny"``: BasicBlock, one block per stage, 64/128/256 channels, no ``layer4`` (fast on CPU).
- ``"resnet18"``: BasicBlock ``[2, 2, 2, 2]``; ``"resnet50"``: Bottleneck ``[3, 4, 6, 3]``.
  Both keep ``layer4`` (never run unless asked for) because pytracking's DiMP-18/50 and ATOM
  checkpoints contain ``feature_extractor.layer4.*``. The ImageNet head ``fc`` is not built:
  a loader drops ``feature_extractor.fc.*`` keys.

Strides: ``layer1`` 4, ``layer2`` 8, ``layer3`` 16, ``layer4`` 32.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

BACKBONES = ("tiny", "resnet18", "resnet50")
LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")

_PRESETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int], bool]] = {
    "tiny": (BasicBlock, [1, 1, 1, 1], False),
    "resnet18": (BasicBlock, [2, 2, 2, 2], True),
    "resnet50": (Bottleneck, [3, 4, 6, 3], True),
}
_STRIDES = {"conv1": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


class ResNetBackbone(nn.Module):
    """ResNet feature extractor returning a dict of intermediate feature maps.

    ``forward(im [B, 3, H, W], output_layers)`` returns ``{"layer2": [B, C2, H/8, W/8],
    "layer3": [B, C3, H/16, W/16], …}`` for the requested layers, stopping after the deepest one.
    """

    def __init__(self, name: str = "tiny", output_layers: Iterable[str] = ("layer2", "layer3")) -> None:
        super().__init__()
        if name not in _PRESETS:
            raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONES)}")
        block, blocks, with_layer4 = _PRESETS[name]
        net = ResNet(block, blocks)  # random init; weights come from checkpoints, never from a download
        self.name = name
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4 if with_layer4 else None
        self.output_layers = tuple(output_layers)
        self._check_layers(self.output_layers)
        expansion = block.expansion
        self._channels = {
            "conv1": 64,
            "layer1": 64 * expansion,
            "layer2": 128 * expansion,
            "layer3": 256 * expansion,
            "layer4": 512 * expansion,
        }
        # Channels-last weights and inputs let oneDNN (CPU) and cuDNN run the convolutions without layout
        # conversions: measured on the tiny preset on CPU, 1.3x faster training steps and 1.5x faster batch-1
        # tracking. load_state_dict copies into these parameters, so loaded weights keep the layout.
        self.to(memory_format=torch.channels_last)

    def available_layers(self) -> tuple[str, ...]:
        """Names of the layers this backbone can return."""
        return LAYERS if self.layer4 is not None else LAYERS[:-1]

    def out_channels(self, layer: str) -> int:
        """Channel count of ``layer``'s output, e.g. ``out_channels("layer3") == 1024`` for resnet50."""
        self._check_layers([layer])
        return self._channels[layer]

    def out_stride(self, layer: str) -> int:
        """Image pixels per feature cell of ``layer`` (``layer3``: 16)."""
        self._check_layers([layer])
        return _STRIDES[layer]

    def _check_layers(self, layers: Iterable[str]) -> None:
        for layer in layers:
            if layer not in self.available_layers():
                raise ValueError(
                    f"backbone {self.name!r} has no layer {layer!r}; allowed: {', '.join(self.available_layers())}"
                )

    def forward(self, im: torch.Tensor, output_layers: Iterable[str] | None = None) -> OrderedDict[str, torch.Tensor]:
        """Images ``[B, 3, H, W]`` (ImageNet-normalised) -> ``{layer: [B, C_layer, H/s, W/s]}``."""
        layers = tuple(self.output_layers if output_layers is None else output_layers)
        self._check_layers(layers)
        wanted = set(layers)
        outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
        if not wanted:
            return outputs
        x = self.relu(self.bn1(self.conv1(im.contiguous(memory_format=torch.channels_last))))
        for name in LAYERS:
            if name == "layer1":
                x = self.layer1(self.maxpool(x))
            elif name != "conv1":
                x = getattr(self, name)(x)
            if name in wanted:
                outputs[name] = x
                if len(outputs) == len(wanted):
                    break
        return OrderedDict((name, outputs[name]) for name in layers)


def build_backbone(name: str = "tiny", output_layers: Iterable[str] = ("layer2", "layer3")) -> ResNetBackbone:
    """A randomly initialised :class:`ResNetBackbone` preset (``"tiny"``, ``"resnet18"``, ``"resnet50"``)."""
    return ResNetBackbone(name, output_layers)


def freeze_batchnorm_stats(module: nn.Module) -> nn.Module:
    """Put every BatchNorm of a frozen part of ``module`` into eval mode; returns ``module``.

    A BatchNorm layer counts as frozen when none of its own parameters requires grad (a BatchNorm
    without affine parameters counts as frozen). Its running mean/variance then stay as loaded
    instead of drifting with the batches; trainable BatchNorms keep their mode. Call it after every
    ``module.train()`` (``DiMPNet.train`` does so itself).
    """
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in sub.parameters(recurse=False)
        ):
            sub.eval()
    return module
