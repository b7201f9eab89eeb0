"""Image decoding and encoding: bytes in, ``uint8 HxWx3`` RGB or ``HxW`` TIR out.

Every image leaves decoding in one of two forms: RGB as ``uint8 [H, W, 3]`` in
RGB channel order, TIR as ``[H, W]`` (``uint8`` or ``uint16``). TIR is expanded
to three channels only at the network input.

TIR files come as one channel (8-bit JPEG/PNG, 16-bit PNG/TIFF), as three
channels (a grey image saved as colour, or a false-colour palette image), or
with an alpha channel; :func:`tir_to_gray` is the one rule that turns all of
them into ``[H, W]`` (see there). Depth normalisation (uint16 ─▶ uint8) happens
later, in :func:`cmd_ray.data.processing.normalize_tir`.
"""

from __future__ import annotations

import cv2
import numpy as np


class ImageDecodeError(ValueError):
    """An image cannot be decoded; the message names its key."""


def decode_rgb(data: bytes, key: str = "<bytes>") -> np.ndarray:
    """Decode an encoded colour image to ``uint8 [H, W, 3]`` in RGB order (grey is replicated)."""
    image = _decode(data, key, cv2.IMREAD_COLOR)
    if image.dtype != np.uint8:
        raise ImageDecodeError(f"{key}: RGB image must be 8-bit, got {image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ANYDEPTH keeps 16 bits, ANYCOLOR keeps one channel as one (and drops alpha); unlike IMREAD_UNCHANGED
# it applies the EXIF orientation, as decode_rgb's IMREAD_COLOR does, so both modalities stay aligned.
TIR_READ_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
"""``cv2.imdecode`` flags for thermal images."""


def decode_tir(data: bytes, key: str = "<bytes>") -> np.ndarray:
    """Decode a thermal image to ``[H, W]`` ``uint8`` or ``uint16`` (16-bit depth is kept).

    One channel passes through; three channels (or four, alpha dropped) become one by
    :func:`tir_to_gray`. Other depths (float TIFF, 32-bit) raise :class:`ImageDecodeError`.
    """
    image = _decode(data, key, TIR_READ_FLAGS)
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError(f"{key}: TIR image must be 8- or 16-bit, got {image.dtype}")
    return tir_to_gray(image, key, channel_order="bgr")


def tir_to_gray(image: np.ndarray, key: str = "<array>", channel_order: str = "bgr") -> np.ndarray:
    """The one rule that turns a thermal image of one, three or four channels into ``[H, W]``.

    Args:
        image: ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha ignored), uint8 or uint16.
        key: name of the image, for error messages.
        channel_order: ``"bgr"`` (as OpenCV decodes) or ``"rgb"`` (as :func:`decode_rgb` returns).

    Returns:
        ``[H, W]`` of the input dtype. Three channels become their ITU-R BT.601 luma,
        ``0.299 R + 0.587 G + 0.114 B`` (``cv2.COLOR_*2GRAY``, rounded). The weights sum to one,
        so a grey image saved as three equal channels comes back exactly (also for uint16). A
        false-colour palette image (ironbow, rainbow, …) is *not* inverted to temperature: its luma
        is monotone in temperature only for palettes whose brightness rises with temperature, which
        is what thermal cameras' exported palettes are designed for; use one-channel files when
        the raw values matter.
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError(f"{key}: TIR image must be 8- or 16-bit, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return image
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageDecodeError(f"{key}: TIR image must have 1, 3 or 4 channels, got shape {image.shape}")
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")
    code = cv2.COLOR_BGR2GRAY if channel_order == "bgr" else cv2.COLOR_RGB2GRAY
    return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), code)


def _decode(data: bytes, key: str, flags: int) -> np.ndarray:
    if not data:
        raise ImageDecodeError(f"{key}: empty file")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageDecodeError(f"{key}: not a decodable image ({len(data)} bytes)")
    return image


def encode_rgb(image: np.ndarray, ext: str = ".jpg", quality: int = 92) -> bytes:
    """Encode ``uint8 [H, W, 3]`` RGB to JPEG/PNG bytes."""
    return _encode(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), ext, quality)


def encode_tir(image: np.ndarray, ext: str = ".jpg", quality: int = 92) -> bytes:
    """Encode a ``[H, W]`` thermal image (PNG keeps 16-bit)."""
    return _encode(image, ext, quality)


def _encode(image: np.ndarray, ext: str, quality: int) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"cannot encode image of shape {image.shape} as {ext}")
    return buf.tobytes()
