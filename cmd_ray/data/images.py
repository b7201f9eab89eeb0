"""Image decoding and encoding: bytes in, ``uint8 HxWx3`` RGB or ``HxW`` TIR out.

Every image leaves decoding in one of two forms: RGB as ``uint8 [H, W, 3]`` in
RGB channel order, TIR as ``[H, W]`` (``uint8`` or ``uint16``). TIR is expanded
to three channels only at the network input.
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


def decode_tir(data: bytes, key: str = "<bytes>") -> np.ndarray:
    """Decode a thermal image to ``[H, W]``, keeping 16-bit depth; a 3-channel file is averaged to one."""
    image = _decode(data, key, cv2.IMREAD_UNCHANGED)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2).astype(image.dtype)
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError(f"{key}: TIR image must be 8- or 16-bit, got {image.dtype}")
    return image


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
