"""Decoded images -> the networks' input: ImageNet-normalised float tensors, TIR expanded to 3 channels.

Training (:mod:`cmd_ray.distill.step`) and tracking (:mod:`cmd_ray.tracking.dimp`) feed the networks through
this one function, so both see the same normalisation.
"""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_network_input(images: torch.Tensor) -> torch.Tensor:
    """Decoded images -> ImageNet-normalised float network input ``[B, 3, H, W]``.

    Args:
        images: RGB ``[B, H, W, 3]`` or TIR ``[B, H, W]``, uint8 (0–255) or uint16 (0–65535, scaled
            linearly). TIR is replicated to three channels here, and only here.

    Returns:
        float32 ``[B, 3, H, W]`` on the input's device.
    """
    if images.dtype == torch.uint8:
        scale = 255.0
    elif images.dtype == torch.uint16:
        scale = 65535.0
    else:
        raise TypeError(f"expected uint8 or uint16 images, got {images.dtype}")
    if images.dim() == 3:
        x = images.float().unsqueeze(1).expand(-1, 3, -1, -1)
    elif images.dim() == 4 and images.shape[-1] == 3:
        x = images.float().permute(0, 3, 1, 2)
    else:
        raise ValueError(f"expected [B, H, W, 3] RGB or [B, H, W] TIR images, got shape {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).reshape(1, 3, 1, 1)
    return ((x / scale - mean) / std).contiguous()
