"""TIR decoding of real encoded files: one or three channels, 8 or 16 bits, all to ``[H, W]`` in one place."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from cmd_ray.data.images import ImageDecodeError, decode_rgb, decode_tir, encode_rgb, tir_to_gray


def _encode(image: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def _smooth(height: int = 48, width: int = 64, top: int = 255, dtype=np.uint8) -> np.ndarray:
    """A smooth ramp (JPEG reproduces it to within a few levels)."""
    y, x = np.mgrid[0:height, 0:width]
    return np.rint((x / (width - 1) * 0.7 + y / (height - 1) * 0.3) * top).astype(dtype)


def _luma(bgr: np.ndarray) -> np.ndarray:
    b, g, r = (bgr[..., i].astype(np.float64) for i in range(3))
    return 0.299 * r + 0.587 * g + 0.114 * b


def test_one_channel_png_8_and_16_bit_come_back_exactly():
    tir8 = _smooth()
    tir16 = _smooth(top=60000, dtype=np.uint16)
    out8, out16 = decode_tir(_encode(tir8, ".png")), decode_tir(_encode(tir16, ".png"))
    assert out8.dtype == np.uint8 and out16.dtype == np.uint16
    np.testing.assert_array_equal(out8, tir8)
    np.testing.assert_array_equal(out16, tir16)  # 16 bits kept, not cut to 8


def test_sixteen_bit_tiff_keeps_its_depth():
    tir16 = (np.arange(20 * 30).reshape(20, 30) * 97).astype(np.uint16)
    out = decode_tir(_encode(tir16, ".tiff"), "seq/0001.tiff")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, tir16)


def test_grey_saved_as_three_equal_channels_is_the_grey_image():
    grey8, grey16 = _smooth(), _smooth(top=50000, dtype=np.uint16)
    # lossless: exactly the grey image, at either depth (the luma weights sum to one)
    np.testing.assert_array_equal(decode_tir(_encode(np.dstack([grey8] * 3), ".png")), grey8)
    out16 = decode_tir(_encode(np.dstack([grey16] * 3), ".png"))
    assert out16.dtype == np.uint16 and out16.shape == grey16.shape
    np.testing.assert_array_equal(out16, grey16)
    # a TIR JPEG saved as colour decodes to [H, W], as the one-channel JPEG of the same image does
    jpeg3 = decode_tir(_encode(np.dstack([grey8] * 3), ".jpg"))
    jpeg1 = decode_tir(_encode(grey8, ".jpg"))
    assert jpeg3.shape == grey8.shape and jpeg3.dtype == np.uint8
    assert np.abs(jpeg3.astype(int) - grey8).max() <= 3
    assert np.abs(jpeg3.astype(int) - jpeg1).max() <= 1


def test_false_colour_image_becomes_its_luma():
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)  # channels differ: a palette image (BGR on disk)
    out = decode_tir(_encode(palette, ".png"), "tir/0007.png")
    assert out.shape == (32, 40) and out.dtype == np.uint8
    assert np.abs(out - _luma(palette)).max() <= 0.51  # 0.299 R + 0.587 G + 0.114 B, rounded
    with_alpha = np.dstack([palette, np.full((32, 40), 17, np.uint8)])  # alpha is ignored
    np.testing.assert_array_equal(decode_tir(_encode(with_alpha, ".png")), out)


def test_tir_to_gray_channel_orders_and_shapes():
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tir_to_gray(bgr[..., ::-1], channel_order="rgb"), tir_to_gray(bgr))
    single = bgr[..., :1]
    np.testing.assert_array_equal(tir_to_gray(single), bgr[..., 0])
    plain = bgr[..., 0]
    assert tir_to_gray(plain) is plain
    with pytest.raises(ImageDecodeError, match=r"cam/3\.png.*1, 3 or 4 channels"):
        tir_to_gray(np.zeros((4, 4, 2), np.uint8), "cam/3.png")
    with pytest.raises(ImageDecodeError, match="8- or 16-bit"):
        tir_to_gray(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="channel_order"):
        tir_to_gray(bgr, channel_order="hsv")


def test_unsupported_depth_and_broken_files_name_the_key():
    with pytest.raises(ImageDecodeError, match=r"tir/9\.tiff.*float32"):
        decode_tir(_encode(np.zeros((8, 8), np.float32), ".tiff"), "tir/9.tiff")
    with pytest.raises(ImageDecodeError, match=r"tir/empty\.jpg: empty"):
        decode_tir(b"", "tir/empty.jpg")
    with pytest.raises(ImageDecodeError, match=r"tir/junk\.jpg: not a decodable image"):
        decode_tir(b"not an image at all", "tir/junk.jpg")


def test_exif_orientation_applies_to_tir_as_to_rgb():
    """A rotated JPEG is turned upright in both modalities, so an RGB–TIR pair stays aligned."""
    grey = np.zeros((40, 60), np.uint8)
    grey[:10, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    data = buf.getvalue()
    tir, rgb = decode_tir(data), decode_rgb(data)
    assert tir.shape == (60, 40) and rgb.shape == (60, 40, 3)
    assert np.abs(tir.astype(int) - rgb[..., 0]).max() <= 1
    assert tir[:10, -5:].mean() > 200 and tir[-10:, :5].mean() < 50  # the bright corner moved to the top right


def test_rgb_decoding_is_unchanged():
    rgb = np.dstack([_smooth(), _smooth()[::-1], np.full((48, 64), 90, np.uint8)])
    out = decode_rgb(encode_rgb(rgb, ".png"))
    np.testing.assert_array_equal(out, rgb)
