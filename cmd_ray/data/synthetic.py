"""Procedural RGB–TIR data: unlabeled aligned pairs and labeled RGB/TIR sequences (the embedded default data set).

Nothing is downloaded and everything is deterministic per seed. Every image is rendered from one *scene* in both
modalities with the same geometry (pixel-aligned), but the two modalities see different things, as real cameras do:

- **Objects** ("person", "vehicle", "animal"-like blobs, "crate" boxes) are textured and coloured in RGB (stripes,
  checkers, dots, noise, random hues, skin, paint, glass) and have smooth, temperature-driven intensity in TIR: warm
  bodies are bright with a soft radial falloff towards the silhouette, with hot spots (head, engine, wheels, exhaust)
  and cold parts (car windows reflecting the sky). Some objects are colder than their surroundings.
- **Backgrounds** have RGB clutter (colour blotches, grain, painted road markings, posters, checker mats, scribbles,
  cast shadows, night lamps) that is invisible in TIR, thermal clutter (pipes, vents, cold puddles, heated windows)
  that is invisible in RGB, and some structure shared by both (sky/horizon, buildings, ground patches with their own
  temperature). The sky is bright in RGB and cold in TIR.
- **Thermal crossover**: the target's temperature is pulled towards the local background temperature, so it fades
  out of the TIR image while staying visible in RGB.
- **Occluders**: foreground poles and bars cover the target in both modalities (painted stripes only in RGB).
- **Sensors**: RGB gets white balance, exposure (day/night), colour noise and JPEG compression; TIR gets optical blur,
  a lower native resolution, fixed-pattern column/row noise with vignetting, temporal noise and a gain (AGC) fixed on
  the first frame of a sequence.
- **Sequences**: a target moving smoothly (random-walk heading, bounces off the frame edge) with scale change,
  occlusion and crossover events, distractors of the same kind, and camera motion (global translation plus a small
  zoom) applied to the world (background, occluders, distractors).

Boxes are ``x, y, w, h`` in continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``; the right edge is
``x + w``), the box of the target's whole silhouette (also while occluded), clipped to the frame.

On disk (``write_synthetic_dataset``)::

    {out}/pairs/rgb/000000.jpg, {out}/pairs/tir/000000.jpg, …
    {out}/rgb_sequences/synth_rgb_000/img/0001.jpg, …, groundtruth_rect.txt
    {out}/tir_sequences/synth_tir_000/img/0001.jpg, …, groundtruth_rect.txt, attributes.txt

Frames are numbered from 1 (as LSOTB-TIR does); line ``k`` of ``groundtruth_rect.txt`` is frame ``k``.
``attributes.txt`` holds one ``name,flag`` line per attribute of :data:`ATTRIBUTES`, the flag being ``0`` or ``1``.
"""

from __future__ import annotations

import colorsys
import math
import os
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from cmd_ray import storage
from cmd_ray.config import SynthConfig
from cmd_ray.data.images import encode_rgb, encode_tir

ATTRIBUTES = ("occlusion", "thermal_crossover", "camera_motion", "scale_variation", "distractor")
"""Attribute names written to ``attributes.txt``, in this order."""

OBJECT_KINDS = ("person", "vehicle", "animal", "crate")

# A sequence is flagged 'occlusion' when at least this fraction of the target is covered in some frame,
# and 'scale_variation' when its size (sqrt of the box area) changes by at least this factor.
OCCLUSION_FRACTION = 0.3
SCALE_VARIATION_RATIO = 1.5

HEAT_DECOYS = (2, 5)
"""Hot TIR-only decoys per scene (fewest, most): the default of ``SynthConfig.heat_decoys``."""
HEAT_DECOY_SCALE = (0.35, 0.7)  # decoy side / target side
HEAT_DECOY_CONTRAST = (0.4, 0.7)  # above the ground; warm bodies are 0.12-0.32 above ambient, plus hot spots

_WRITE_QUALITY = 95  # files are written near-losslessly: the RGB sensor model already applied its own JPEG

__all__ = [
    "ATTRIBUTES",
    "OBJECT_KINDS",
    "SEQUENCE_SPLITS",
    "PairInfo",
    "SequenceSplit",
    "SyntheticSummary",
    "generate_pair",
    "generate_pair_with_info",
    "generate_sequence",
    "item_rng",
    "sequence_name",
    "split_sizes",
    "write_synthetic_dataset",
]


# --------------------------------------------------------------------------------------------------------------------
# small helpers


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float, channels: int = 0) -> np.ndarray:
    """Band-limited noise of unit-ish amplitude: a coarse random grid upsampled with bicubic interpolation."""
    gh = max(2, round(cells * h / max(h, w)) + 1)
    gw = max(2, round(cells * w / max(h, w)) + 1)
    shape = (gh, gw, channels) if channels else (gh, gw)
    grid = rng.standard_normal(shape, dtype=np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of an ``h`` x ``w`` raster."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x + 0.5, y + 0.5


def _ellipse_alpha(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    q = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    return np.clip(0.5 - (q - 1.0) * min(rx, ry), 0.0, 1.0)


def _rrect_alpha(x: np.ndarray, y: np.ndarray, cx: float, cy: float, hx: float, hy: float, r: float) -> np.ndarray:
    """Anti-aliased rounded rectangle (half sizes ``hx``, ``hy``, corner radius ``r``) from its signed distance."""
    r = min(r, hx, hy)
    dx = np.abs(x - cx) - (hx - r)
    dy = np.abs(y - cy) - (hy - r)
    outside = np.sqrt(np.maximum(dx, 0.0) ** 2 + np.maximum(dy, 0.0) ** 2)
    sd = outside + np.minimum(np.maximum(dx, dy), 0.0) - r
    return np.clip(0.5 - sd, 0.0, 1.0)


def _blob_alpha(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float
) -> np.ndarray:
    """A random star-convex blob: radius 1 + sum of a few harmonics, scaled to fit the ellipse (rx, ry)."""
    ks = np.arange(2, 6)
    amp = rng.uniform(0.0, 0.14, ks.size)
    phase = rng.uniform(0, 2 * np.pi, ks.size)
    dx, dy = (x - cx) / rx, (y - cy) / ry
    rho = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    radius = 1.0 + sum(a * np.cos(k * theta + p) for a, k, p in zip(amp, ks, phase, strict=True))
    radius = radius / (1.0 + amp.sum())
    return np.clip(0.5 - (rho - radius) * min(rx, ry), 0.0, 1.0)


def _contrast_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours with clearly different brightness (so textures are strong in grey too)."""
    h1 = _u(rng, 0, 1)
    h2 = (h1 + _u(rng, 0.15, 0.85)) % 1.0
    dark = _hsv(h1, _u(rng, 0.4, 1.0), _u(rng, 0.08, 0.4))
    light = _hsv(h2, _u(rng, 0.2, 0.9), _u(rng, 0.7, 1.0))
    return (dark, light) if rng.random() < 0.5 else (light, dark)


def _texture(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A colourful texture ``[h, w, 3]`` (0..1): stripes, checker, dots, plaid or noise; ``scale`` in pixels."""
    c1, c2 = _contrast_colours(rng)
    x, y = _grid(h, w)
    kind = int(rng.integers(5))
    period = max(3.0, scale * _u(rng, 0.14, 0.32))
    if kind == 0:  # stripes at a random angle
        th = _u(rng, 0, np.pi)
        f = 0.5 + 0.5 * np.tanh(3.0 * np.sin(2 * np.pi * (x * np.cos(th) + y * np.sin(th)) / period))
    elif kind == 1:  # checker
        f = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    elif kind == 2:  # dots
        gx = (x / period) % 1.0 - 0.5
        gy = (y / period) % 1.0 - 0.5
        f = np.clip(0.5 - (np.sqrt(gx * gx + gy * gy) - 0.3) * period, 0.0, 1.0)
    elif kind == 3:  # plaid
        sx = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * x / period))
        sy = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * y / (period * _u(rng, 0.7, 1.4))))
        f = 0.5 * (sx + sy)
    else:  # blotchy noise
        f = 1.0 / (1.0 + np.exp(-3.0 * _smooth_noise(rng, h, w, cells=max(2.0, max(h, w) / period))))
    tex = c1 * (1.0 - f[..., None]) + c2 * f[..., None]
    tex += rng.standard_normal((h, w, 1), dtype=np.float32) * 0.04
    return tex.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# objects: a sprite is an object's RGB appearance, temperature and alpha at a canonical resolution


@dataclass
class _Sprite:
    kind: str
    rgb: np.ndarray  # float32 [h, w, 3], 0..1
    temp: np.ndarray  # float32 [h, w], absolute temperature (scene units, roughly 0..1)
    alpha: np.ndarray  # float32 [h, w]
    tight: tuple[float, float, float, float]  # silhouette extent x0, y0, x1, y1 in canonical pixel coordinates

    @property
    def size(self) -> tuple[int, int]:
        return self.alpha.shape[1], self.alpha.shape[0]


def _aspect(rng: np.random.Generator, kind: str) -> float:
    """Width / height of an object's sprite box."""
    low, high = {"person": (0.36, 0.5), "vehicle": (1.6, 2.3), "animal": (0.8, 1.7), "crate": (0.6, 1.6)}[kind]
    return _u(rng, low, high)


_P_WARM = {"person": 0.92, "animal": 0.92, "vehicle": 0.8, "crate": 0.5}


def _is_warm(rng: np.random.Generator, kind: str, factor: float = 1.0) -> bool:
    """Living things are nearly always warmer than their surroundings, vehicles usually, crates half the time."""
    return bool(rng.random() < _P_WARM[kind] * factor)


def _make_sprite(rng: np.random.Generator, kind: str, w: int, h: int, t_amb: float, warm: bool) -> _Sprite:
    """Draw one object of ``kind`` at ``w`` x ``h`` pixels; ``warm`` decides whether it is hotter than ambient."""
    w, h = max(int(w), 6), max(int(h), 6)
    x, y = _grid(h, w)
    rgb = np.zeros((h, w, 3), np.float32)
    temp = np.zeros((h, w), np.float32)
    contrast = _u(rng, 0.12, 0.32) if warm else -_u(rng, 0.05, 0.14)
    t_core = t_amb + contrast
    hot: list[tuple[float, float, float, float]] = []  # (cx, cy, sigma, delta) hot/cold spots after the falloff

    def paint(alpha_part: np.ndarray, colour: np.ndarray, t: float) -> np.ndarray:
        a = alpha_part[..., None]
        rgb[:] = rgb * (1 - a) + colour * a
        temp[:] = temp * (1 - alpha_part) + t * alpha_part
        return alpha_part

    if kind == "person":
        parts = []
        legs_tex = _texture(rng, h, w, w) if rng.random() < 0.4 else None
        leg_colour = _hsv(_u(rng, 0, 1), _u(rng, 0, 0.6), _u(rng, 0.1, 0.6))
        for side in (-1, 1):
            a = _rrect_alpha(x, y, w / 2 + side * 0.22 * w, 0.76 * h, 0.19 * w, 0.24 * h, 0.12 * w)
            parts.append(paint(a, legs_tex if legs_tex is not None else leg_colour, t_core - _u(rng, 0.02, 0.06)))
        shirt = _texture(rng, h, w, w)
        parts.append(paint(_rrect_alpha(x, y, w / 2, 0.55 * h, 0.4 * w, 0.06 * h, 0.05 * w), shirt, t_core))
        parts.append(paint(_rrect_alpha(x, y, w / 2, 0.33 * h, 0.48 * w, 0.19 * h, 0.25 * w), shirt, t_core))
        skin = _hsv(_u(rng, 0.02, 0.1), _u(rng, 0.25, 0.65), _u(rng, 0.3, 0.95))
        head = _ellipse_alpha(x, y, w / 2, 0.08 * h, min(0.065 * h, 0.24 * w), 0.075 * h)
        parts.append(paint(head, skin, t_core + _u(rng, 0.05, 0.12)))
        hair = head * (y < 0.06 * h)
        rgb[:] = (
            rgb * (1 - hair[..., None])
            + _hsv(_u(rng, 0.02, 0.12), _u(rng, 0.2, 0.8), _u(rng, 0.05, 0.5)) * hair[..., None]
        )
        alpha = np.maximum.reduce(parts)
    elif kind == "vehicle":
        t_core = t_amb + 0.6 * contrast  # the body is only mildly warm; the heat sits in engine, wheels, exhaust
        front = 0.1 * w if rng.random() < 0.5 else 0.9 * w
        if rng.random() < 0.5:  # a wrapped livery / advertisement
            body_rgb = _texture(rng, h, w, h)
        else:  # plain paint with a shading gradient, a decal stripe and door seams
            paint_colour = _hsv(_u(rng, 0, 1), _u(rng, 0.3, 1.0), _u(rng, 0.35, 1.0))
            body_rgb = np.clip(paint_colour * (1.15 - 0.5 * y / h)[..., None], 0, 1)
            band = (np.abs(y - _u(rng, 0.55, 0.7) * h) < 0.04 * h)[..., None]
            body_rgb = np.where(band, _contrast_colours(rng)[1], body_rgb)
            for seam in (0.38 * w, 0.62 * w):
                body_rgb = np.where((np.abs(x - seam) < 0.6)[..., None], body_rgb * 0.4, body_rgb)
        cab_cx = _u(rng, 0.42, 0.58) * w
        cabin = paint(_rrect_alpha(x, y, cab_cx, 0.3 * h, 0.3 * w, 0.2 * h, 0.12 * h), body_rgb, t_core)
        body = paint(_rrect_alpha(x, y, w / 2, 0.62 * h, 0.49 * w, 0.22 * h, 0.12 * h), body_rgb, t_core)
        glass = _rrect_alpha(x, y, cab_cx, 0.31 * h, 0.26 * w, 0.14 * h, 0.08 * h)
        glass_rgb = _hsv(_u(rng, 0.5, 0.7), _u(rng, 0.2, 0.5), _u(rng, 0.1, 0.35)) + (0.25 * (1 - y / h))[..., None]
        paint(glass, np.clip(glass_rgb, 0, 1), t_core - _u(rng, 0.02, 0.06))  # glass mirrors the cold sky
        lights = (
            (front, _hsv(0.15, 0.2, 1.0)),  # headlight
            (w - front, _hsv(0.0, 0.9, 0.8)),  # tail light
        )
        for lx, colour in lights:
            paint(_ellipse_alpha(x, y, lx, 0.55 * h, 0.05 * w, 0.06 * h) * body, colour, t_core)
        wheels = []
        for wx in (0.2 * w, 0.8 * w):
            wa = paint(_ellipse_alpha(x, y, wx, 0.84 * h, 0.15 * h, 0.15 * h), np.full(3, 0.05, np.float32), t_core)
            paint(_ellipse_alpha(x, y, wx, 0.84 * h, 0.06 * h, 0.06 * h), np.full(3, 0.6, np.float32), t_core)
            wheels.append(wa)
            if warm:
                hot.append((wx, 0.84 * h, 0.08 * h, _u(rng, 0.03, 0.07)))
        if warm:
            hot.append((front, 0.6 * h, 0.15 * h, _u(rng, 0.05, 0.12)))  # engine
            hot.append((w - front, 0.8 * h, 0.05 * h, _u(rng, 0.05, 0.15)))  # exhaust
        alpha = np.maximum.reduce([cabin, body, *wheels])
    elif kind == "animal":
        fur = _texture(rng, h, w, min(w, h))
        alpha = paint(_blob_alpha(rng, x, y, w / 2, h / 2, w / 2 - 0.5, h / 2 - 0.5), fur, t_core)
        hot.append((_u(rng, 0.2, 0.8) * w, _u(rng, 0.2, 0.5) * h, 0.12 * min(w, h), _u(rng, 0.03, 0.08)))
    else:  # crate
        tex = _texture(rng, h, w, min(w, h))
        alpha = paint(_rrect_alpha(x, y, w / 2, h / 2, w / 2 - 0.5, h / 2 - 0.5, 0.05 * min(w, h)), tex, t_core)
        if warm and rng.random() < 0.5:  # a machine with a hot core
            hot.append((w / 2, h / 2, 0.25 * min(w, h), _u(rng, 0.05, 0.15)))

    # soft radial falloff: full contrast in the middle, about half of it at the silhouette
    r2 = ((x - w / 2) / (w / 2)) ** 2 + ((y - h / 2) / (h / 2)) ** 2
    falloff = np.clip(1.0 - r2, 0.0, 1.0) ** 0.6
    inside = alpha > 0.01
    fill = float(temp[inside].mean()) if inside.any() else t_core
    temp = np.where(inside, temp / np.maximum(alpha, 1e-3), fill)
    temp = t_amb + (temp - t_amb) * (0.5 + 0.5 * falloff)
    for cx, cy, sigma, delta in hot:
        temp += delta * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))
    temp = cv2.GaussianBlur(temp.astype(np.float32), (0, 0), max(0.6, 0.035 * max(w, h)))
    rgb = np.clip(rgb / np.maximum(alpha, 1e-3)[..., None], 0, 1)

    cols = np.flatnonzero((alpha >= 0.5).any(axis=0))
    rows = np.flatnonzero((alpha >= 0.5).any(axis=1))
    tight = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)) if cols.size else (0, 0, w, h)
    return _Sprite(kind, rgb.astype(np.float32), temp.astype(np.float32), alpha.astype(np.float32), tight)


# --------------------------------------------------------------------------------------------------------------------
# backgrounds: one canvas in world coordinates, RGB and temperature with partly different content


@dataclass
class _Look:
    """Illumination and sensor parameters of one scene (fixed over a sequence)."""

    night: bool
    t_amb: float
    obj_light: float  # illumination of objects in RGB (night: dark)
    rgb_gain: float
    white_balance: np.ndarray
    rgb_noise: float
    jpeg_quality: int
    tir_blur: float
    tir_downscale: float
    tir_pattern: np.ndarray  # [H, W] fixed-pattern column/row offsets and vignetting, in grey levels
    tir_noise: float  # temporal noise, grey levels
    horizon: float | None  # fraction of the image height, None for a top-down view


def _sample_look(rng: np.random.Generator, width: int, height: int) -> _Look:
    night = bool(rng.random() < 0.25)
    cols = rng.standard_normal(width, dtype=np.float32) * _u(rng, 3.0, 8.0)
    rows = rng.standard_normal(height, dtype=np.float32) * _u(rng, 0.5, 2.5)
    x, y = _grid(height, width)
    r2 = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2
    vignette = -_u(rng, 0.0, 10.0) * r2 / 2
    return _Look(
        night=night,
        t_amb=_u(rng, 0.35, 0.55),
        obj_light=_u(rng, 0.15, 0.4) if night else _u(rng, 0.85, 1.1),
        rgb_gain=_u(rng, 1.5, 2.5) if night else _u(rng, 0.85, 1.15),
        white_balance=rng.uniform(0.88, 1.12, 3).astype(np.float32),
        rgb_noise=_u(rng, 0.02, 0.045) if night else _u(rng, 0.006, 0.02),
        jpeg_quality=int(rng.integers(60, 93)),
        tir_blur=_u(rng, 0.9, 1.8),
        tir_downscale=float(rng.choice([2.0, 2.5, 3.0])),
        tir_pattern=(cols[None, :] + rows[:, None] + vignette).astype(np.float32),
        tir_noise=_u(rng, 3.0, 6.0),
        horizon=_u(rng, 0.15, 0.5) if rng.random() < 0.55 else None,
    )


def _rot_rect(cx: float, cy: float, hw: float, hh: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    pts = [(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)]
    return np.array([[cx + px * c - py * s, cy + px * s + py * c] for px, py in pts], np.int32)


def _poly_mask(h: int, w: int, pts: np.ndarray, soft: float = 0.0) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    cv2.fillPoly(mask, [pts.reshape(-1, 1, 2)], 1.0, lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(mask, (0, 0), soft) if soft > 0 else mask


def _make_background(
    rng: np.random.Generator, ch: int, cw: int, pad_x: int, pad_y: int, unit: float, look: _Look
) -> tuple[np.ndarray, np.ndarray]:
    """An RGB canvas ``[ch, cw, 3]`` (0..1) and a temperature canvas ``[ch, cw]``; ``unit`` = min(image W, H)."""
    y = (np.arange(ch, dtype=np.float32) + 0.5)[:, None]
    cells = max(cw, ch) / unit

    # ground: a base colour with colour blotches and grain; temperature a smooth gradient with gentle undulation
    palette = int(rng.integers(4))
    base = [
        _hsv(_u(rng, 0, 1), _u(rng, 0.0, 0.12), _u(rng, 0.3, 0.55)),  # asphalt / concrete
        _hsv(_u(rng, 0.2, 0.36), _u(rng, 0.35, 0.7), _u(rng, 0.3, 0.6)),  # grass
        _hsv(_u(rng, 0.06, 0.12), _u(rng, 0.25, 0.5), _u(rng, 0.45, 0.75)),  # sand / dirt
        _hsv(_u(rng, 0, 1), _u(rng, 0.2, 0.6), _u(rng, 0.3, 0.7)),  # anything
    ][palette]
    rgb = np.broadcast_to(base, (ch, cw, 3)).copy()
    rgb += _u(rng, 0.05, 0.12) * _smooth_noise(rng, ch, cw, cells * _u(rng, 3, 8), channels=3)
    rgb += _u(rng, 0.03, 0.08) * rng.standard_normal((ch, cw, 1), dtype=np.float32)
    temp = look.t_amb + _u(rng, -0.08, 0.08) * (y / ch - 0.5) + np.zeros((1, cw), np.float32)
    temp += _u(rng, 0.01, 0.035) * _smooth_noise(rng, ch, cw, cells * 2.5)

    if look.horizon is not None:  # sky: bright in RGB, cold in TIR; buildings on the skyline seen by both
        y_h = pad_y + look.horizon * (ch - 2 * pad_y)
        sky = (y < y_h).astype(np.float32)
        top = _hsv(_u(rng, 0.52, 0.65), _u(rng, 0.2, 0.7), _u(rng, 0.6, 1.0))
        low = _hsv(_u(rng, 0.0, 0.65), _u(rng, 0.0, 0.3), _u(rng, 0.7, 1.0))
        g = np.clip(y / max(y_h, 1.0), 0, 1)[..., None]
        sky_rgb = top * (1 - g) + low * g + 0.03 * _smooth_noise(rng, ch, cw, cells * 3, channels=3)
        rgb = rgb * (1 - sky[..., None]) + sky_rgb * sky[..., None]
        sky_t = _u(rng, 0.02, 0.15) + _u(rng, 0.03, 0.1) * np.clip(y / max(y_h, 1.0), 0, 1)
        temp = temp * (1 - sky) + sky_t * sky
        if rng.random() < 0.7:
            for _ in range(int(rng.integers(1, 5))):
                bw = _u(rng, 0.2, 0.6) * unit
                bx0 = _u(rng, -0.1, 1.0) * cw
                bh = _u(rng, 0.12, 0.45) * unit
                x0, x1 = max(int(bx0), 0), min(int(bx0 + bw), cw)
                y0, y1 = max(int(y_h - bh), 0), max(int(y_h), 0)
                if x1 <= x0 or y1 <= y0:
                    continue
                facade = _hsv(_u(rng, 0, 1), _u(rng, 0, 0.4), _u(rng, 0.25, 0.8))
                rgb[y0:y1, x0:x1] = facade + 0.04 * rng.standard_normal((y1 - y0, x1 - x0, 1), dtype=np.float32)
                t_facade = look.t_amb + _u(rng, -0.06, 0.06)
                temp[y0:y1, x0:x1] = t_facade
                step = max(4, int(_u(rng, 0.06, 0.11) * unit))
                win = max(2, int(step * _u(rng, 0.4, 0.65)))
                lit = _hsv(_u(rng, 0.1, 0.16), 0.6, 0.95) if look.night else _hsv(_u(rng, 0.55, 0.65), 0.4, 0.2)
                for wy in range(y0 + step // 2, y1 - win, step):
                    for wx in range(x0 + step // 3, x1 - win, step):
                        rgb[wy : wy + win, wx : wx + win] = lit
                        # the thermal window pattern differs: only some windows are heated, the rest mirror the sky
                        temp[wy : wy + win, wx : wx + win] = t_facade + (
                            _u(rng, 0.05, 0.15) if rng.random() < 0.3 else -0.03
                        )

    # shared ground structures (paved areas, lawns, walls): own colour and own temperature
    for _ in range(int(rng.integers(1, 4))):
        pts = _rot_rect(
            _u(rng, 0, cw), _u(rng, 0, ch), _u(rng, 0.1, 0.5) * unit, _u(rng, 0.05, 0.3) * unit, _u(rng, 0, np.pi)
        )
        mask = _poly_mask(ch, cw, pts)
        colour = _hsv(_u(rng, 0, 1), _u(rng, 0, 0.6), _u(rng, 0.2, 0.8))
        patch = colour + 0.05 * rng.standard_normal((ch, cw, 1), dtype=np.float32)
        rgb = rgb * (1 - mask[..., None]) + patch * mask[..., None]
        temp += cv2.GaussianBlur(mask, (0, 0), 1.5) * _u(rng, 0.03, 0.1) * (1 if rng.random() < 0.5 else -1)

    # RGB-only clutter: paint, posters, mats, scribbles and shadows have no thermal signature
    for _ in range(int(rng.integers(2, 7))):
        kind = int(rng.integers(5))
        cx, cy = _u(rng, 0, cw), _u(rng, 0, ch)
        if kind == 0:  # road markings
            colour = tuple(float(c) for c in (_hsv(0.14, 0.8, 0.95) if rng.random() < 0.3 else np.full(3, 0.95)))
            angle, gap = _u(rng, 0, np.pi), _u(rng, 0.05, 0.12) * unit
            hw, hh = _u(rng, 0.1, 0.3) * unit, max(1.0, _u(rng, 0.01, 0.03) * unit)
            for k in range(int(rng.integers(2, 6))):
                ox, oy = -math.sin(angle) * gap * k, math.cos(angle) * gap * k
                cv2.fillPoly(rgb, [_rot_rect(cx + ox, cy + oy, hw, hh, angle)], colour, lineType=cv2.LINE_AA)
        elif kind == 1:  # checker mat
            hw, hh = _u(rng, 0.08, 0.25) * unit, _u(rng, 0.08, 0.25) * unit
            x0, x1 = max(int(cx - hw), 0), min(int(cx + hw), cw)
            y0, y1 = max(int(cy - hh), 0), min(int(cy + hh), ch)
            if x1 > x0 and y1 > y0:
                rgb[y0:y1, x0:x1] = _texture(rng, y1 - y0, x1 - x0, unit * 0.5)
        elif kind == 2:  # poster / graffiti blob
            colour = tuple(float(c) for c in _contrast_colours(rng)[0])
            if rng.random() < 0.5:
                cv2.circle(rgb, (int(cx), int(cy)), int(_u(rng, 0.03, 0.12) * unit) + 1, colour, -1, cv2.LINE_AA)
            else:
                pts = _rot_rect(cx, cy, _u(rng, 0.04, 0.15) * unit, _u(rng, 0.04, 0.15) * unit, _u(rng, 0, np.pi))
                cv2.fillPoly(rgb, [pts], colour, lineType=cv2.LINE_AA)
        elif kind == 3:  # scribbles
            colour = tuple(float(c) for c in _contrast_colours(rng)[1])
            pts = np.cumsum(rng.normal(0, 0.08 * unit, (int(rng.integers(3, 8)), 2)), axis=0) + np.array([cx, cy])
            cv2.polylines(rgb, [pts.astype(np.int32)], False, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif not look.night:  # a cast shadow
            pts = _rot_rect(cx, cy, _u(rng, 0.1, 0.4) * unit, _u(rng, 0.05, 0.2) * unit, _u(rng, 0, np.pi))
            rgb *= 1.0 - _u(rng, 0.3, 0.6) * _poly_mask(ch, cw, pts, soft=0.02 * unit)[..., None]

    # TIR-only clutter: pipes, vents, puddles are invisible in RGB
    delta = np.zeros((ch, cw), np.float32)
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(3))
        cx, cy = _u(rng, 0, cw), _u(rng, 0, ch)
        if kind == 0:  # warm pipe
            angle, length = _u(rng, 0, np.pi), _u(rng, 0.2, 0.8) * unit
            p0 = (int(cx - math.cos(angle) * length), int(cy - math.sin(angle) * length))
            p1 = (int(cx + math.cos(angle) * length), int(cy + math.sin(angle) * length))
            layer = np.zeros_like(delta)
            cv2.line(layer, p0, p1, _u(rng, 0.06, 0.2), max(1, int(_u(rng, 0.01, 0.03) * unit)), cv2.LINE_AA)
            delta += cv2.GaussianBlur(layer, (0, 0), 1.2)
        elif kind == 1:  # vent / heated spot
            sigma = _u(rng, 0.02, 0.08) * unit
            xx = (np.arange(cw, dtype=np.float32) + 0.5 - cx)[None, :]
            delta += _u(rng, 0.08, 0.25) * np.exp(-(xx**2 + (y - cy) ** 2) / (2 * sigma * sigma))
        else:  # cold puddle
            layer = np.zeros_like(delta)
            axes = (int(_u(rng, 0.05, 0.2) * unit) + 1, int(_u(rng, 0.03, 0.1) * unit) + 1)
            cv2.ellipse(layer, (int(cx), int(cy)), axes, _u(rng, 0, 180), 0, 360, -_u(rng, 0.04, 0.12), -1)
            delta += cv2.GaussianBlur(layer, (0, 0), 0.02 * unit + 0.5)
    temp += delta

    if look.night:  # dark, with light pools of street lamps (light does not change temperature)
        illum = np.full((ch, cw), _u(rng, 0.15, 0.35), np.float32)
        xx = (np.arange(cw, dtype=np.float32) + 0.5)[None, :]
        for _ in range(int(rng.integers(1, 4))):
            lx, ly, sigma = _u(rng, 0, cw), _u(rng, 0, ch), _u(rng, 0.1, 0.3) * unit
            illum += _u(rng, 0.4, 1.0) * np.exp(-((xx - lx) ** 2 + (y - ly) ** 2) / (2 * sigma * sigma))
        rgb *= illum[..., None] * _hsv(_u(rng, 0.06, 0.14), _u(rng, 0.1, 0.5), 1.0)
    return np.clip(rgb, 0, 1).astype(np.float32), temp.astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# scenes: background + actors (sprites with per-frame image placements) + occluders + camera path


@dataclass
class _Actor:
    sprite: _Sprite
    cx: np.ndarray  # [T] image-space centre of the sprite box
    cy: np.ndarray
    bw: np.ndarray  # [T] image-space size of the sprite box
    bh: np.ndarray
    crossover: np.ndarray  # [T] 1 = own temperature, 0 = local background temperature
    target: bool = False

    def box(self, t: int) -> tuple[float, float, float, float]:
        """The silhouette's extent (x0, y0, x1, y1) in the image at frame ``t``."""
        sw, sh = self.sprite.size
        sx, sy = self.bw[t] / sw, self.bh[t] / sh
        left, top = self.cx[t] - self.bw[t] / 2, self.cy[t] - self.bh[t] / 2
        x0, y0, x1, y1 = self.sprite.tight
        return left + x0 * sx, top + y0 * sy, left + x1 * sx, top + y1 * sy


@dataclass
class _Occluder:
    vertical: bool
    center: float  # world coordinate across the bar
    half: float  # world half width
    colours: tuple[np.ndarray, np.ndarray]
    period: float  # world length of a painted stripe, 0 = plain
    temp: float


@dataclass
class _Scene:
    width: int
    height: int
    look: _Look
    bg_rgb: np.ndarray
    bg_temp: np.ndarray
    pad: tuple[int, int]
    zoom: np.ndarray  # [T]
    cam: np.ndarray  # [T, 2] world point at the image centre
    actors: list[_Actor] = field(default_factory=list)
    occluders: list[_Occluder] = field(default_factory=list)
    agc: tuple[float, float] | None = None  # TIR gain fixed on the first rendered frame

    def to_image(self, t: int, wx: np.ndarray | float, wy: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        z = self.zoom[t]
        return z * (wx - self.cam[t, 0]) + self.width / 2, z * (wy - self.cam[t, 1]) + self.height / 2

    def to_world(self, t: int, ix: np.ndarray | float, iy: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        z = self.zoom[t]
        return (ix - self.width / 2) / z + self.cam[t, 0], (iy - self.height / 2) / z + self.cam[t, 1]


def _make_occluder(rng: np.random.Generator, vertical: bool, center: float, half: float, t_amb: float) -> _Occluder:
    plain = _hsv(_u(rng, 0, 1), _u(rng, 0, 0.5), _u(rng, 0.25, 0.8))
    striped = rng.random() < 0.4  # warning paint: visible in RGB only
    colours = _contrast_colours(rng) if striped else (plain, plain)
    return _Occluder(vertical, center, half, colours, _u(rng, 4, 12) if striped else 0.0, t_amb + _u(rng, -0.06, 0.1))


def _new_scene(rng: np.random.Generator, width: int, height: int, zoom: np.ndarray, cam: np.ndarray) -> _Scene:
    look = _sample_look(rng, width, height)
    # the canvas covers every world point any frame sees
    half_w = width / (2 * zoom)
    half_h = height / (2 * zoom)
    pad_x = math.ceil(max(0.0, float(np.max(np.abs(cam[:, 0] - width / 2) + half_w - width / 2)))) + 2
    pad_y = math.ceil(max(0.0, float(np.max(np.abs(cam[:, 1] - height / 2) + half_h - height / 2)))) + 2
    static = bool(np.all(zoom == 1.0) and np.allclose(cam, (width / 2, height / 2)))
    if static:
        pad_x = pad_y = 0
    bg_rgb, bg_temp = _make_background(
        rng, height + 2 * pad_y, width + 2 * pad_x, pad_x, pad_y, float(min(width, height)), look
    )
    return _Scene(width, height, look, bg_rgb, bg_temp, (pad_x, pad_y), zoom, cam)


# --------------------------------------------------------------------------------------------------------------------
# rendering


def _composite(
    scene: _Scene,
    rgb: np.ndarray | None,
    temp: np.ndarray,
    actor: _Actor,
    t: int,
    want_tir: bool,
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Paint ``actor`` at frame ``t`` into the frame buffers; returns its ROI and alpha there (None if off-frame)."""
    sprite = actor.sprite
    sw, sh = sprite.size
    bw, bh = float(actor.bw[t]), float(actor.bh[t])
    left, top = float(actor.cx[t]) - bw / 2, float(actor.cy[t]) - bh / 2
    x0, y0 = max(math.floor(left) - 1, 0), max(math.floor(top) - 1, 0)
    x1, y1 = min(math.ceil(left + bw) + 1, scene.width), min(math.ceil(top + bh) + 1, scene.height)
    if x1 <= x0 or y1 <= y0:
        return None
    sx, sy = bw / sw, bh / sh
    m = np.array([[sx, 0, 0.5 * sx + left - 0.5 - x0], [0, sy, 0.5 * sy + top - 0.5 - y0]], np.float32)
    dsize = (x1 - x0, y1 - y0)
    warp = {"dsize": dsize, "flags": cv2.INTER_LINEAR, "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    alpha = cv2.warpAffine(sprite.alpha, m, **warp)
    roi = (slice(y0, y1), slice(x0, x1))
    a = alpha[..., None]
    if rgb is not None:
        premult = cv2.warpAffine(sprite.rgb * sprite.alpha[..., None], m, **warp)
        rgb[roi] = rgb[roi] * (1 - a) + premult * scene.look.obj_light
    if want_tir:
        premult_t = cv2.warpAffine(sprite.temp * sprite.alpha, m, **warp)
        c = float(actor.crossover[t])
        if c < 1.0:  # thermal crossover: pull the object's temperature towards the background around it
            ex0, ey0 = max(int(left - 0.4 * bw), 0), max(int(top - 0.4 * bh), 0)
            ex1, ey1 = min(int(left + 1.4 * bw) + 1, scene.width), min(int(top + 1.4 * bh) + 1, scene.height)
            ring = temp[ey0:ey1, ex0:ex1]
            inner = temp[roi]
            n = ring.size - inner.size
            t_local = float((ring.sum() - inner.sum()) / n) if n > 0 else float(ring.mean())
            premult_t = (1 - c) * alpha * t_local + c * premult_t
        temp[roi] = temp[roi] * (1 - alpha) + premult_t
    return roi, alpha


def _occluder_alpha(scene: _Scene, t: int, occ: _Occluder) -> tuple[np.ndarray, np.ndarray]:
    """Alpha ``[H, W]``, RGB ``[H, W, 3]`` of one occluder in frame ``t`` (temperature is uniform)."""
    w, h, z = scene.width, scene.height, float(scene.zoom[t])
    across_n, along_n = (w, h) if occ.vertical else (h, w)
    coord = np.arange(across_n, dtype=np.float32) + 0.5
    c_img = scene.to_image(t, occ.center, occ.center)[0 if occ.vertical else 1]
    half = occ.half * z
    prof = np.clip(0.5 - (np.abs(coord - c_img) - half), 0.0, 1.0)
    shade = 0.55 + 0.45 * np.sqrt(np.clip(1.0 - ((coord - c_img) / max(half, 1e-3)) ** 2, 0.0, 1.0))
    along = np.arange(along_n, dtype=np.float32) + 0.5
    along_w = scene.to_world(t, along, along)[1 if occ.vertical else 0]
    stripe = ((along_w / occ.period) % 1.0 < 0.5) if occ.period > 0 else np.ones(along_n, bool)
    colour = np.where(stripe[:, None], occ.colours[0], occ.colours[1])  # [along, 3]
    rgb = colour[:, None, :] * shade[None, :, None]  # [along, across, 3]
    alpha = np.broadcast_to(prof[None, :], (along_n, across_n))
    if occ.vertical:
        return alpha, rgb
    return alpha.T, rgb.transpose(1, 0, 2)


def _render(
    scene: _Scene,
    t: int,
    want_rgb: bool,
    want_tir: bool,
    rng_rgb: np.random.Generator,
    rng_tir: np.random.Generator,
) -> tuple[np.ndarray | None, np.ndarray | None, float, np.ndarray | None]:
    """Frame ``t``: RGB uint8, TIR uint8, occluded fraction of the target, visible target alpha ``[H, W]``."""
    w, h = scene.width, scene.height
    pad_x, pad_y = scene.pad
    if pad_x == 0 and pad_y == 0 and scene.zoom[t] == 1.0:
        rgb = scene.bg_rgb.copy() if want_rgb else None
        temp = scene.bg_temp.copy()
    else:
        z = float(scene.zoom[t])
        cx, cy = scene.cam[t]
        m = np.array(
            [[z, 0, z * (0.5 - pad_x - cx) + w / 2 - 0.5], [0, z, z * (0.5 - pad_y - cy) + h / 2 - 0.5]], np.float32
        )
        warp = {"dsize": (w, h), "flags": cv2.INTER_LINEAR, "borderMode": cv2.BORDER_REFLECT}
        rgb = cv2.warpAffine(scene.bg_rgb, m, **warp) if want_rgb else None
        temp = cv2.warpAffine(scene.bg_temp, m, **warp)

    target: tuple[tuple[slice, slice], np.ndarray] | None = None
    for actor in scene.actors:
        placed = _composite(scene, rgb, temp, actor, t, want_tir)
        if actor.target:
            target = placed

    occ_total = np.zeros((h, w), np.float32) if scene.occluders else None
    for occ in scene.occluders:
        alpha, occ_rgb = _occluder_alpha(scene, t, occ)
        if rgb is not None:
            rgb *= 1 - alpha[..., None]
            rgb += alpha[..., None] * occ_rgb * scene.look.obj_light
        temp *= 1 - alpha
        temp += alpha * occ.temp
        occ_total = 1 - (1 - occ_total) * (1 - alpha)

    occluded, visible = 0.0, None
    if target is not None:
        roi, alpha = target
        visible = np.zeros((h, w), np.float32)
        visible[roi] = alpha if occ_total is None else alpha * (1 - occ_total[roi])
        total = float(alpha.sum())
        occluded = 1.0 - float(visible.sum()) / total if total > 0 else 0.0

    rgb_u8 = _rgb_sensor(rgb, scene.look, rng_rgb) if rgb is not None else None
    tir_u8 = _tir_sensor(scene, temp, rng_tir) if want_tir else None
    return rgb_u8, tir_u8, occluded, visible


def _rgb_sensor(rgb: np.ndarray, look: _Look, rng: np.random.Generator) -> np.ndarray:
    """White balance, exposure gain, colour noise, quantisation and JPEG compression."""
    img = rgb * (look.white_balance * look.rgb_gain)
    img += rng.standard_normal(img.shape, dtype=np.float32) * (look.rgb_noise * look.rgb_gain)
    u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, look.jpeg_quality])
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 images
        return u8
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _tir_sensor(scene: _Scene, temp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optics blur, lower native resolution, AGC (fixed on the first frame), fixed-pattern and temporal noise."""
    look = scene.look
    h, w = temp.shape
    img = cv2.GaussianBlur(temp, (0, 0), look.tir_blur)
    small = (max(8, round(w / look.tir_downscale)), max(8, round(h / look.tir_downscale)))
    img = cv2.resize(cv2.resize(img, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_LINEAR)
    if scene.agc is None:
        lo, hi = np.percentile(img, [0.5, 99.8])
        margin = 0.08 * (hi - lo) + 0.02
        scene.agc = (float(lo - margin), float(hi + margin))
    lo, hi = scene.agc
    grey = (img - lo) * (255.0 / (hi - lo)) + look.tir_pattern
    grey += rng.standard_normal(grey.shape, dtype=np.float32) * look.tir_noise
    return np.clip(grey + 0.5, 0, 255).astype(np.uint8)


def _add_heat_decoys(
    scene: _Scene, rng: np.random.Generator, near: list[tuple[float, float]], size: float, count: int
) -> None:
    """Paint ``count`` hot, compact heat sources that RGB cannot see into the scene's temperature canvas.

    They stand for vents, exhaust, lamps behind panels, sun-heated metal and heat reflected by glass or wet ground:
    hotter than a body (:data:`HEAT_DECOY_CONTRAST`), smaller than the target (:data:`HEAT_DECOY_SCALE`), with a
    soft edge, and no colour, texture or outline in the visible image. Each sits 0.8 to 1.6 ``size`` (target side,
    pixels) away from a point of ``near`` (world coordinates), inside the tracker's search area. A tracker that
    takes the most salient blob follows them; one that knows how warm its target is does not.
    """
    ch, cw = scene.bg_temp.shape
    pad_x, pad_y = scene.pad
    y, x = np.mgrid[0:ch, 0:cw].astype(np.float32) + 0.5
    for _ in range(count):
        wx, wy = near[int(rng.integers(len(near)))]
        angle, dist = _u(rng, 0, 2 * np.pi), _u(rng, 0.8, 1.6) * size
        cx, cy = wx + pad_x + math.cos(angle) * dist, wy + pad_y + math.sin(angle) * dist
        aspect = _u(rng, 0.4, 2.0)
        scale = 0.5 * size * _u(rng, *HEAT_DECOY_SCALE)
        rx, ry = scale * math.sqrt(aspect), scale / math.sqrt(aspect)
        shape = _ellipse_alpha(x, y, cx, cy, rx, ry)
        r2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        heat = shape * (0.5 + 0.5 * np.clip(1.0 - r2, 0.0, 1.0) ** 0.6) * _u(rng, *HEAT_DECOY_CONTRAST)
        scene.bg_temp += cv2.GaussianBlur(heat, (0, 0), max(0.6, 0.08 * size))


def _split_rng(rng: np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent noise streams for the two sensors, so rendering one modality does not change the other."""
    seeds = rng.integers(0, 2**63 - 1, size=2)
    return np.random.default_rng(int(seeds[0])), np.random.default_rng(int(seeds[1]))


# --------------------------------------------------------------------------------------------------------------------
# pairs


@dataclass(frozen=True)
class PairInfo:
    """What a generated pair contains (for tests and diagnostics; the pairs on disk are unlabeled).

    Attributes:
        box: the main object's silhouette box ``[x, y, w, h]`` (float32), or None when the scene has no main object.
        mask: the main object's visible alpha ``[H, W]`` (float32, occluders removed), or None.
        kind: the main object's kind, or None.
        crossover: whether the main object is in thermal crossover.
        night: whether the RGB image is a night shot.
    """

    box: np.ndarray | None
    mask: np.ndarray | None
    kind: str | None
    crossover: bool
    night: bool


def _static_actor(sprite: _Sprite, cx: float, cy: float, bw: float, bh: float, c: float, target: bool) -> _Actor:
    one = lambda v: np.array([v], np.float32)  # noqa: E731
    return _Actor(sprite, one(cx), one(cy), one(bw), one(bh), one(c), target)


def _random_kind(rng: np.random.Generator) -> str:
    return str(rng.choice(OBJECT_KINDS, p=[0.4, 0.25, 0.2, 0.15]))


def _object_size(size: float, aspect: float) -> tuple[float, float]:
    """Sprite box (w, h) for a 'size' = sqrt(w * h)."""
    return size * math.sqrt(aspect), size / math.sqrt(aspect)


def generate_pair_with_info(
    rng: np.random.Generator, width: int, height: int, heat_decoys: tuple[int, int] = HEAT_DECOYS
) -> tuple[np.ndarray, np.ndarray, PairInfo]:
    """One aligned pair plus what it shows; ``generate_pair`` returns the same images for the same generator state.
    ``heat_decoys``: fewest and most hot TIR-only decoys around the main object (:func:`_add_heat_decoys`)."""
    unit = float(min(width, height))
    scene = _new_scene(rng, width, height, np.ones(1, np.float32), np.array([[width / 2, height / 2]], np.float32))
    t_amb = scene.look.t_amb

    for _ in range(int(rng.integers(0, 4))):  # other objects anywhere, behind the main one
        kind = _random_kind(rng)
        bw, bh = _object_size(_u(rng, 0.1, 0.28) * unit, _aspect(rng, kind))
        sprite = _make_sprite(rng, kind, math.ceil(bw), math.ceil(bh), t_amb, warm=_is_warm(rng, kind, 0.8))
        scene.actors.append(_static_actor(sprite, _u(rng, 0, width), _u(rng, 0, height), bw, bh, 1.0, False))

    main: _Actor | None = None
    crossover = False
    if rng.random() < 0.93:
        kind = _random_kind(rng)
        bw, bh = _object_size(_u(rng, 0.22, 0.38) * unit, _aspect(rng, kind))
        bw, bh = min(bw, 0.9 * width), min(bh, 0.9 * height)
        if rng.random() < 0.8:  # most main objects sit near the centre (what the 'center' pseudo box assumes)
            cx = width / 2 + rng.normal(0, 0.06 * unit)
            cy = height / 2 + rng.normal(0, 0.06 * unit)
        else:
            cx, cy = _u(rng, 0, width), _u(rng, 0, height)
        crossover = bool(rng.random() < 0.15)
        c = _u(rng, 0.0, 0.15) if crossover else 1.0
        sprite = _make_sprite(rng, kind, math.ceil(bw), math.ceil(bh), t_amb, warm=_is_warm(rng, kind))
        main = _static_actor(sprite, cx, cy, bw, bh, c, True)
        scene.actors.append(main)

    if rng.random() < 0.25:
        for _ in range(int(rng.integers(1, 3))):
            vertical = bool(rng.random() < 0.75)
            center = _u(rng, 0, width if vertical else height)
            scene.occluders.append(_make_occluder(rng, vertical, center, _u(rng, 0.015, 0.05) * unit, t_amb))

    rng_rgb, rng_tir = _split_rng(rng)
    if main is not None:  # warm decoys around the main object (TIR stream: the RGB image does not change)
        size = math.sqrt(float(main.bw[0] * main.bh[0]))
        count = int(rng_tir.integers(heat_decoys[0], heat_decoys[1] + 1))
        _add_heat_decoys(scene, rng_tir, [(float(main.cx[0]), float(main.cy[0]))], size, count)
    rgb, tir, _, visible = _render(scene, 0, True, True, rng_rgb, rng_tir)
    assert rgb is not None and tir is not None
    box = None
    if main is not None:
        x0, y0, x1, y1 = _clip_box(main.box(0), width, height)
        box = np.array([x0, y0, x1 - x0, y1 - y0], np.float32)
    info = PairInfo(box, visible, main.sprite.kind if main else None, crossover, scene.look.night)
    return rgb, tir, info


def generate_pair(
    rng: np.random.Generator, width: int, height: int, heat_decoys: tuple[int, int] = HEAT_DECOYS
) -> tuple[np.ndarray, np.ndarray]:
    """One unlabeled, pixel-aligned pair: RGB ``uint8 [H, W, 3]`` and TIR ``uint8 [H, W]``.

    The main object sits near the image centre in about three pairs out of four, so a centred square of
    ~0.3·min(H, W) usually covers an object, but not always (off-centre objects, empty scenes, occluders).
    """
    rgb, tir, _ = generate_pair_with_info(rng, width, height, heat_decoys)
    return rgb, tir


# --------------------------------------------------------------------------------------------------------------------
# sequences


def _ease(s: np.ndarray) -> np.ndarray:
    return s * s * (3 - 2 * s)


def _clip_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    return x0, y0, x1, y1


def generate_sequence(
    rng: np.random.Generator,
    width: int,
    height: int,
    length: int,
    modality: str,
    heat_decoys: tuple[int, int] = HEAT_DECOYS,
) -> tuple[list[np.ndarray], np.ndarray, dict[str, bool]]:
    """A labeled sequence: frames, the target's box per frame and its attributes.

    Args:
        rng: the random generator; the same state gives the same scene, boxes and attributes for either modality.
        width, height: frame size in pixels.
        length: number of frames (>= 1).
        modality: ``"rgb"`` (frames ``uint8 [H, W, 3]``) or ``"tir"`` (frames ``uint8 [H, W]``).
        heat_decoys: fewest and most hot TIR-only decoys along the target's path (:func:`_add_heat_decoys`); they
            come from the TIR noise stream, so the RGB frames are the same whatever this is.

    Returns:
        ``(frames, boxes, attributes)``: ``boxes`` float32 ``[T, 4]`` as ``x, y, w, h`` pixels inside the frame;
        ``attributes`` maps each name of :data:`ATTRIBUTES` to a bool.
    """
    if modality not in ("rgb", "tir"):
        raise ValueError(f"modality must be 'rgb' or 'tir', got {modality!r}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    n = length
    unit = float(min(width, height))
    s = _ease(np.linspace(0.0, 1.0, n, dtype=np.float32))
    tt = np.arange(n, dtype=np.float32)

    # camera: a drift with a wandering heading, shake and a slow zoom
    camera_motion = bool(rng.random() < 0.5)
    cam = np.tile(np.array([width / 2, height / 2], np.float32), (n, 1))
    zoom = np.ones(n, np.float32)
    if camera_motion:
        speed = _u(rng, 0.005, 0.015) * unit
        heading = _u(rng, 0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.1, n))
        steps = np.stack([np.cos(heading), np.sin(heading)], 1) * speed + rng.normal(0, 0.3, (n, 2))
        steps[0] = 0
        cam += np.cumsum(steps, axis=0).astype(np.float32)
        zoom = np.exp(_u(rng, -0.12, 0.15) * s).astype(np.float32)
    scene = _new_scene(rng, width, height, zoom, cam)
    t_amb = scene.look.t_amb

    # target: size schedule, then a smooth image-space path that stays in the frame
    kind = _random_kind(rng)
    aspect = _aspect(rng, kind)
    scale_event = bool(rng.random() < 0.5)
    log_ratio = (_u(rng, math.log(1.6), math.log(2.0)) * (1 if rng.random() < 0.5 else -1)) if scale_event else 0.0
    log_ratio += _u(rng, -0.08, 0.08)
    size = np.exp(log_ratio * s) * (1 + 0.03 * np.sin(2 * np.pi * tt / _u(rng, 8, 20) + _u(rng, 0, 6.3)))
    bw0, bh0 = _object_size(1.0, aspect)
    fit = min(0.8 * width / (bw0 * size.max()), 0.8 * height / (bh0 * size.max()))
    base = min(_u(rng, 0.16, 0.3) * unit, fit)
    bw = (bw0 * base * size).astype(np.float32)
    bh = (bh0 * base * size).astype(np.float32)

    pos = np.zeros((n, 2), np.float32)
    pos[0] = (_u(rng, bw[0] / 2 + 1, width - bw[0] / 2 - 1), _u(rng, bh[0] / 2 + 1, height - bh[0] / 2 - 1))
    speed = _u(rng, 0.008, 0.03) * unit
    heading = _u(rng, 0, 2 * np.pi)
    vel = np.array([math.cos(heading), math.sin(heading)]) * speed
    for t in range(1, n):
        turn = rng.normal(0, 0.2)
        c, s_ = math.cos(turn), math.sin(turn)
        vel = np.array([c * vel[0] - s_ * vel[1], s_ * vel[0] + c * vel[1]])
        p = pos[t - 1] + vel
        for k, half, extent in ((0, bw[t] / 2, width), (1, bh[t] / 2, height)):
            lo, hi = half + 1.0, extent - half - 1.0
            if p[k] < lo or p[k] > hi:
                vel[k] = -vel[k]
                p[k] = min(max(p[k], lo), hi)
        pos[t] = p

    crossover = np.ones(n, np.float32)
    thermal_crossover = bool(rng.random() < 0.4)
    if thermal_crossover:
        centre, half_width = _u(rng, 0.3, 0.75) * n, _u(rng, 0.15, 0.3) * n
        bump = np.clip(1 - np.abs(tt - centre) / half_width, 0, 1)
        crossover = (1 - (1 - _u(rng, 0.0, 0.1)) * _ease(bump)).astype(np.float32)

    # distractors: objects of the same kind moving in the world, behind the target
    n_distractors = int(rng.integers(1, 3)) if rng.random() < 0.4 else 0
    for _ in range(n_distractors):
        d_size = base * _u(rng, 0.7, 1.2)
        d_bw, d_bh = _object_size(d_size, _aspect(rng, kind))
        start = scene.to_world(0, _u(rng, 0, width), _u(rng, 0, height))
        d_heading = _u(rng, 0, 2 * np.pi)
        d_vel = np.array([math.cos(d_heading), math.sin(d_heading)]) * _u(rng, 0.003, 0.015) * unit
        wx, wy = start[0] + d_vel[0] * tt, start[1] + d_vel[1] * tt
        ix, iy = np.array([scene.to_image(t, wx[t], wy[t]) for t in range(n)], np.float32).T
        d_sprite = _make_sprite(rng, kind, math.ceil(d_bw * zoom.max()), math.ceil(d_bh * zoom.max()), t_amb, True)
        scene.actors.append(_Actor(d_sprite, ix, iy, d_bw * zoom, d_bh * zoom, np.ones(n, np.float32)))

    sprite = _make_sprite(rng, kind, math.ceil(bw.max()), math.ceil(bh.max()), t_amb, warm=_is_warm(rng, kind))
    target = _Actor(sprite, pos[:, 0].copy(), pos[:, 1].copy(), bw, bh, crossover, target=True)
    scene.actors.append(target)

    # an occlusion event: a pole (or bar) standing where the target will be, crossing its path
    if rng.random() < 0.5:
        t_occ = int(_u(rng, 0.3, 0.7) * (n - 1))
        wx, wy = scene.to_world(t_occ, float(pos[t_occ, 0]), float(pos[t_occ, 1]))
        t_next = min(t_occ + 1, n - 1)
        t_prev = max(t_occ - 1, 0)
        nx, ny = scene.to_world(t_next, float(pos[t_next, 0]), float(pos[t_next, 1]))
        px, py = scene.to_world(t_prev, float(pos[t_prev, 0]), float(pos[t_prev, 1]))
        vertical = abs(nx - px) >= abs(ny - py)
        half = _u(rng, 0.2, 0.5) * min(bw[t_occ], bh[t_occ]) / zoom[t_occ]
        scene.occluders.append(_make_occluder(rng, vertical, wx if vertical else wy, half, t_amb))
    if rng.random() < 0.25:  # an unrelated pole somewhere in the world
        vertical = bool(rng.random() < 0.75)
        centre = scene.to_world(0, _u(rng, 0, width), _u(rng, 0, height))[0 if vertical else 1]
        scene.occluders.append(_make_occluder(rng, vertical, centre, _u(rng, 0.015, 0.04) * unit, t_amb))

    rng_rgb, rng_tir = _split_rng(rng)
    # warm decoys near the target's path, drawn from the TIR stream: the RGB render of the scene does not change
    path = [scene.to_world(t, float(pos[t, 0]), float(pos[t, 1])) for t in range(0, n, max(1, n // 6))]
    _add_heat_decoys(scene, rng_tir, path, float(base), int(rng_tir.integers(heat_decoys[0], heat_decoys[1] + 1)))
    frames: list[np.ndarray] = []
    boxes = np.zeros((n, 4), np.float32)
    max_occluded = 0.0
    for t in range(n):
        rgb, tir, occluded, _ = _render(scene, t, modality == "rgb", modality == "tir", rng_rgb, rng_tir)
        frame = rgb if modality == "rgb" else tir
        assert frame is not None
        frames.append(frame)
        max_occluded = max(max_occluded, occluded)
        x0, y0, x1, y1 = _clip_box(target.box(t), width, height)
        boxes[t] = (x0, y0, x1 - x0, y1 - y0)

    sizes = np.sqrt(bw * bh)
    attributes = {
        "occlusion": max_occluded >= OCCLUSION_FRACTION,
        "thermal_crossover": thermal_crossover,
        "camera_motion": camera_motion,
        "scale_variation": float(sizes.max() / sizes.min()) >= SCALE_VARIATION_RATIO,
        "distractor": n_distractors > 0,
    }
    return frames, boxes, attributes


# --------------------------------------------------------------------------------------------------------------------
# writing a data set


@dataclass(frozen=True)
class SequenceSplit:
    """One labeled sequence split of the data set: where it goes, which scenes it draws and how it renders them.

    Attributes:
        folder: its folder below the data set's root.
        scenes: the :func:`item_rng` kind its scenes come from; a twin split shares its partner's, so sequence ``i``
            of both shows the same scene, boxes and attributes.
        modality: what is rendered: ``"rgb"`` (``uint8 [H, W, 3]`` frames) or ``"tir"`` (``uint8 [H, W]``).
        prefix: sequence ``i`` is named ``synth_<prefix>_<i:03d>`` (a twin keeps its partner's names).
    """

    folder: str
    scenes: str
    modality: str
    prefix: str

    def sequence_name(self, index: int) -> str:
        return sequence_name(self.prefix, index)


SEQUENCE_SPLITS: dict[str, SequenceSplit] = {
    "rgb": SequenceSplit("rgb_sequences", "rgb_sequence", "rgb", "rgb"),
    "tir": SequenceSplit("tir_sequences", "tir_sequence", "tir", "tir"),
    "tir_rgb_twins": SequenceSplit("tir_sequences_rgb", "tir_sequence", "rgb", "tir"),
    "tir_val": SequenceSplit("tir_val_sequences", "tir_val_sequence", "tir", "tir_val"),
    "tir_train": SequenceSplit("tir_train_sequences", "tir_train_sequence", "tir", "tir_train"),
}
"""The labeled splits ``cmd-ray synth`` writes, each from its own seeded scenes (the twins aside): the teacher's RGB
sequences, the TIR test sequences and their RGB twins, a TIR validation split and a TIR training split."""


def split_sizes(cfg: SynthConfig) -> dict[str, int]:
    """How many sequences each split of :data:`SEQUENCE_SPLITS` gets under ``cfg``."""
    return {
        "rgb": cfg.num_rgb_sequences,
        "tir": cfg.num_tir_sequences,
        "tir_rgb_twins": cfg.num_tir_sequences if cfg.rgb_twins else 0,
        "tir_val": cfg.num_tir_val_sequences,
        "tir_train": cfg.num_tir_train_sequences,
    }


@dataclass(frozen=True)
class SyntheticSummary:
    """What ``write_synthetic_dataset`` wrote: the pairs and each split's sequence count and folder."""

    root: str
    num_pairs: int
    sequence_length: int
    num_files: int
    pairs_uri: str
    splits: dict[str, int]

    def split_uri(self, split: str) -> str:
        return storage.join(self.root, SEQUENCE_SPLITS[split].folder)

    @property
    def num_rgb_sequences(self) -> int:
        return self.splits["rgb"]

    @property
    def num_tir_sequences(self) -> int:
        return self.splits["tir"]

    @property
    def rgb_sequences_uri(self) -> str:
        return self.split_uri("rgb")

    @property
    def tir_sequences_uri(self) -> str:
        return self.split_uri("tir")

    @property
    def tir_twins_uri(self) -> str:
        return self.split_uri("tir_rgb_twins")

    def __str__(self) -> str:
        lines = [f"pairs: {self.num_pairs} at {self.pairs_uri}"]
        for split, count in self.splits.items():
            if count:
                spec = SEQUENCE_SPLITS[split]
                lines.append(f"{spec.folder} ({spec.modality}): {count} x {self.sequence_length} frames")
        return "\n".join([*lines, f"files written: {self.num_files}"])


def item_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The generator of one item, derived from ``(seed, kind, index)``: independent of order and threads."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**64, zlib.crc32(kind.encode()), index]))


def sequence_name(prefix: str, index: int) -> str:
    return f"synth_{prefix}_{index:03d}"


def _pair_files(root: str, cfg: SynthConfig, index: int) -> list[tuple[str, bytes]]:
    rgb, tir = generate_pair(item_rng(cfg.seed, "pair", index), cfg.image_width, cfg.image_height, cfg.heat_decoys)
    name = f"{index:06d}.jpg"
    return [
        (storage.join(root, "pairs", "rgb", name), encode_rgb(rgb, quality=_WRITE_QUALITY)),
        (storage.join(root, "pairs", "tir", name), encode_tir(tir, quality=_WRITE_QUALITY)),
    ]


def _sequence_files(root: str, cfg: SynthConfig, split: str, index: int) -> list[tuple[str, bytes]]:
    spec = SEQUENCE_SPLITS[split]
    rng = item_rng(cfg.seed, spec.scenes, index)
    frames, boxes, attributes = generate_sequence(
        rng, cfg.image_width, cfg.image_height, cfg.sequence_length, spec.modality, cfg.heat_decoys
    )
    seq = storage.join(root, spec.folder, spec.sequence_name(index))
    encode = encode_rgb if spec.modality == "rgb" else encode_tir
    files = [
        (storage.join(seq, "img", f"{t + 1:04d}.jpg"), encode(frame, quality=_WRITE_QUALITY))
        for t, frame in enumerate(frames)
    ]
    gt = "".join(f"{x:.2f},{y:.2f},{w:.2f},{h:.2f}\n" for x, y, w, h in boxes.tolist())
    files.append((storage.join(seq, "groundtruth_rect.txt"), gt.encode()))
    if split != "rgb":  # the evaluation's readers take attributes; the teacher's training sequences need none
        text = "".join(f"{name},{int(attributes[name])}\n" for name in ATTRIBUTES)
        files.append((storage.join(seq, "attributes.txt"), text.encode()))
    return files


def write_synthetic_dataset(
    out_uri: str,
    cfg: SynthConfig,
    endpoint_url: str | None = None,
    progress: bool = True,
    workers: int | None = None,
    io_workers: int = 16,
) -> SyntheticSummary:
    """Generate and write the synthetic data set below ``out_uri`` (local folder or ``s3://bucket/prefix``).

    Items (pairs, sequences) are rendered on ``workers`` threads (default: the CPU count, at most 8) and their files
    uploaded on ``io_workers`` threads, with a bounded number in flight. Every item draws from
    :func:`item_rng` ``(cfg.seed, kind, index)``, so the output is the same whatever the thread order.

    Raises:
        cmd_ray.storage.StorageError: when a file cannot be written.
    """
    root = out_uri.rstrip("/") or out_uri
    sizes = split_sizes(cfg)
    jobs: list[tuple[str, int]] = [("pair", i) for i in range(cfg.num_pairs)]
    jobs += [(split, i) for split, count in sizes.items() for i in range(count)]
    total = 2 * cfg.num_pairs
    total += sum(count * (cfg.sequence_length + (1 if split == "rgb" else 2)) for split, count in sizes.items())

    def render(job: tuple[str, int]) -> list[tuple[str, bytes]]:
        kind, index = job
        return _pair_files(root, cfg, index) if kind == "pair" else _sequence_files(root, cfg, kind, index)

    gen_workers = workers or max(1, min(8, os.cpu_count() or 1))
    max_in_flight = 2 * gen_workers + 4 * io_workers
    written = 0
    with (
        ThreadPoolExecutor(gen_workers, thread_name_prefix="synth-render") as gen_pool,
        ThreadPoolExecutor(io_workers, thread_name_prefix="synth-write") as io_pool,
        tqdm(total=total, desc="synth", unit="file", disable=not progress) as bar,
    ):
        pending: dict[Future, bool] = {}  # future -> is a render job

        def settle(done: set[Future]) -> None:
            nonlocal written
            for future in done:
                is_render = pending.pop(future)
                result = future.result()
                if is_render:
                    for uri, data in result:
                        pending[io_pool.submit(storage.write_bytes, uri, data, endpoint_url)] = False
                else:
                    written += 1
                    bar.update(1)

        try:
            for job in jobs:
                pending[gen_pool.submit(render, job)] = True
                while len(pending) > max_in_flight:
                    settle(wait(pending, return_when=FIRST_COMPLETED)[0])
            while pending:
                settle(wait(pending, return_when=FIRST_COMPLETED)[0])
        except BaseException:
            for future in pending:
                future.cancel()
            raise

    return SyntheticSummary(
        root=root,
        num_pairs=cfg.num_pairs,
        sequence_length=cfg.sequence_length,
        num_files=written,
        pairs_uri=storage.join(root, "pairs"),
        splits=sizes,
    )
