"""Readers for the tracking benchmarks on local disk (layouts as ``EVALUATION.md`` fixes them).

- LSOTB-TIR evaluation set: ``<root>/<seq>/img/0001.jpg`` (4 digits); ground truth ``<root>/anno/<seq>.txt`` or
  ``<root>/<seq>/groundtruth_rect.txt``; attributes ``<root>/anno/att/<seq>.txt`` (16 flags, :data:`LSOTB_ATTRIBUTES`).
  ``subset="120"`` is the full set, ``subset="119"`` the paper's (without ``cat_D_001``).
- PTB-TIR: ``<root>/tirsequences/<seq>/img/00000001.jpg`` (8 digits); ground truth ``<root>/tiranno/<seq>.txt``;
  attributes ``<root>/tiranno/att/<seq>.txt`` (10 flags, named generically: :data:`PTB_ATTRIBUTES`).
- cmd-ray synthetic TIR sequences: ``<root>/<seq>/img/NNNN.jpg``, ``<root>/<seq>/groundtruth_rect.txt``, optional
  ``<root>/<seq>/attributes.txt`` with ``name,0|1`` lines.

Ground-truth lines are ``x, y, w, h`` separated by commas, tabs or spaces. A malformed line, missing ground truth or a
frame/ground-truth count mismatch raises an error naming the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cmd_ray.data.sequences import parse_boxes

LSOTB_ATTRIBUTES: tuple[str, ...] = (
    "deformation",
    "occlusion",
    "distractor",
    "background_clutter",
    "out_of_view",
    "scale_variation",
    "fast_motion",
    "motion_blur",
    "thermal_crossover",
    "intensity_variation",
    "low_resolution",
    "aspect_ratio_variation",
    "vehicle_mounted",
    "drone_mounted",
    "surveillance",
    "hand_held",
)
"""The 16 LSOTB-TIR attribute flags, in the order of ``anno/att/<seq>.txt``."""

PTB_ATTRIBUTES: tuple[str, ...] = tuple(f"attr_{i:02d}" for i in range(1, 11))
"""The 10 PTB-TIR attribute flags of ``tiranno/att/<seq>.txt`` (EVALUATION.md does not name them)."""

LSOTB_EXCLUDED_BY_PAPER = "cat_D_001"
"""The one LSOTB-TIR evaluation sequence the paper left out (120 → 119)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_SEP = re.compile(r"[,\t ]+")


@dataclass(frozen=True, eq=False)
class Sequence:
    """One benchmark sequence.

    Attributes:
        name: the sequence's folder name.
        frames: frame paths in order (frame ``k`` is ``frames[k-1]``).
        ground_truth: ``[T, 4]`` float64 ``x, y, w, h`` (NaN kept as NaN).
        attributes: attribute name → flag (empty when the benchmark gives none for this sequence).
    """

    name: str
    frames: tuple[Path, ...]
    ground_truth: np.ndarray
    attributes: dict[str, bool] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


def _split(line: str) -> list[str]:
    return _SEP.split(line.strip())


def parse_ground_truth(path: Path | str) -> np.ndarray:
    """``[T, 4]`` float64 boxes from a text file of ``x,y,w,h`` lines (commas, tabs or spaces; blank lines skipped).

    Raises ``FileNotFoundError``, or ``ValueError`` naming ``path:line`` for a malformed line or no boxes at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ground truth file not found: {path}")
    boxes = parse_boxes(path.read_text(), str(path))  # SequenceError is a ValueError
    if not len(boxes):
        raise ValueError(f"{path}: ground truth file has no boxes")
    return boxes


def _parse_flag(token: str, path: Path, what: str) -> bool:
    if token not in ("0", "1"):
        raise ValueError(f"{path}: attribute {what}: expected 0 or 1, got {token!r}")
    return token == "1"


def parse_attribute_flags(path: Path | str, names: tuple[str, ...]) -> dict[str, bool]:
    """``len(names)`` 0/1 flags (commas, tabs, spaces or newlines between them), in ``names``' order."""
    path = Path(path)
    tokens = [t for t in re.split(r"[,\s]+", path.read_text().strip()) if t]
    if len(tokens) != len(names):
        raise ValueError(f"{path}: expected {len(names)} attribute flags, got {len(tokens)}")
    return {n: _parse_flag(t, path, n) for n, t in zip(names, tokens, strict=True)}


def parse_named_attributes(path: Path | str) -> dict[str, bool]:
    """``name,0|1`` lines (comma, tab or space between) → {name: flag}."""
    path = Path(path)
    out: dict[str, bool] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        tokens = _split(line)
        if len(tokens) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'name,0|1', got {line!r}")
        out[tokens[0]] = _parse_flag(tokens[1], path, tokens[0])
    return out


def list_frames(img_dir: Path, digits: int | None = None) -> tuple[Path, ...]:
    """Numbered image files of ``img_dir`` in frame order; they must be numbered 1, 2, …, T without gaps.

    ``digits`` fixes the zero-padded width of the number (4 for LSOTB-TIR, 8 for PTB-TIR).
    """
    if not img_dir.is_dir():
        raise FileNotFoundError(f"frame folder not found: {img_dir}")
    pattern = re.compile(rf"^(\d{{{digits}}})$" if digits else r"^(\d+)$")
    numbered: list[tuple[int, Path]] = []
    for p in img_dir.iterdir():
        if p.suffix.lower() in IMAGE_SUFFIXES and pattern.match(p.stem):
            numbered.append((int(p.stem), p))
    if not numbered:
        width = f"{digits}-digit " if digits else ""
        raise FileNotFoundError(f"no {width}numbered frames ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}")
    numbered.sort()
    numbers = [n for n, _ in numbered]
    if numbers != list(range(1, len(numbers) + 1)):
        missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
        raise ValueError(
            f"{img_dir}: frames must be numbered 1..T without gaps or repeats; missing {missing[:10]}, "
            f"found {len(numbers)} files up to {numbers[-1]}"
        )
    return tuple(p for _, p in numbered)


def _build(name: str, img_dir: Path, gt_path: Path, attributes: dict[str, bool], digits: int | None) -> Sequence:
    frames = list_frames(img_dir, digits)
    gt = parse_ground_truth(gt_path)
    if len(frames) != gt.shape[0]:
        raise ValueError(f"{gt_path}: {gt.shape[0]} ground-truth boxes but {len(frames)} frames in {img_dir}")
    return Sequence(name=name, frames=frames, ground_truth=gt, attributes=attributes)


def _names(found: Iterable[str], sequences: Iterable[str] | None, where: Path) -> list[str]:
    found = sorted(found)
    if sequences is None:
        return found
    wanted = list(sequences)
    missing = [s for s in wanted if s not in set(found)]
    if missing:
        raise FileNotFoundError(f"sequences not found under {where}: {missing}")
    return wanted


def _seq_dirs(root: Path) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark folder not found: {root}")
    return [p.name for p in root.iterdir() if (p / "img").is_dir()]


def read_lsotb_sequence(root: Path | str, name: str) -> Sequence:
    """One LSOTB-TIR sequence; ground truth from ``anno/<seq>.txt``, else ``<seq>/groundtruth_rect.txt``."""
    root = Path(root)
    candidates = (root / "anno" / f"{name}.txt", root / name / "groundtruth_rect.txt")
    gt_path = next((c for c in candidates if c.is_file()), None)
    if gt_path is None:
        raise FileNotFoundError(
            f"no ground truth for LSOTB-TIR sequence {name!r}: tried {[str(c) for c in candidates]}"
        )
    att = root / "anno" / "att" / f"{name}.txt"
    attributes = parse_attribute_flags(att, LSOTB_ATTRIBUTES) if att.is_file() else {}
    return _build(name, root / name / "img", gt_path, attributes, digits=4)


def read_lsotb_tir(
    root: Path | str, subset: Literal["119", "120"] = "119", sequences: Iterable[str] | None = None
) -> list[Sequence]:
    """The LSOTB-TIR evaluation set under ``root`` (every ``<seq>/`` with an ``img/`` folder), sorted by name.

    ``subset="119"`` (the paper's set) leaves out ``cat_D_001``; ``"120"`` keeps it. ``sequences`` picks names
    explicitly (then ``subset`` still removes ``cat_D_001`` under ``"119"``).
    """
    if subset not in ("119", "120"):
        raise ValueError(
            f"subset must be '119' (the paper's, without {LSOTB_EXCLUDED_BY_PAPER}) or '120', got {subset!r}"
        )
    root = Path(root)
    names = _names(_seq_dirs(root), sequences, root)
    if subset == "119":
        names = [n for n in names if n != LSOTB_EXCLUDED_BY_PAPER]
    return [read_lsotb_sequence(root, n) for n in names]


def read_ptb_tir(root: Path | str, sequences: Iterable[str] | None = None) -> list[Sequence]:
    """PTB-TIR: ``tirsequences/<seq>/img/00000001.jpg``, ``tiranno/<seq>.txt``, ``tiranno/att/<seq>.txt``."""
    root = Path(root)
    seq_root = root / "tirsequences"
    names = _names(_seq_dirs(seq_root), sequences, seq_root)
    out = []
    for name in names:
        att = root / "tiranno" / "att" / f"{name}.txt"
        attributes = parse_attribute_flags(att, PTB_ATTRIBUTES) if att.is_file() else {}
        out.append(_build(name, seq_root / name / "img", root / "tiranno" / f"{name}.txt", attributes, digits=8))
    return out


def read_synthetic(root: Path | str, sequences: Iterable[str] | None = None) -> list[Sequence]:
    """cmd-ray's synthetic TIR sequences: ``<seq>/img/NNNN.jpg``, ``<seq>/groundtruth_rect.txt``, ``attributes.txt``."""
    root = Path(root)
    names = _names(_seq_dirs(root), sequences, root)
    out = []
    for name in names:
        att = root / name / "attributes.txt"
        attributes = parse_named_attributes(att) if att.is_file() else {}
        out.append(_build(name, root / name / "img", root / name / "groundtruth_rect.txt", attributes, digits=None))
    return out


BENCHMARKS: tuple[str, ...] = ("synthetic", "lsotb", "ptb")
"""Benchmark names of :func:`read_benchmark` (``evaluation.benchmark`` in the config)."""


def read_benchmark(
    benchmark: str,
    root: Path | str,
    sequences: Iterable[str] | None = None,
    lsotb_subset: Literal["119", "120"] = "119",
) -> list[Sequence]:
    """The sequences of ``benchmark`` (``synthetic``, ``lsotb`` or ``ptb``) under ``root``, sorted by name.

    ``sequences`` picks names explicitly; ``lsotb_subset`` applies to ``lsotb`` only.
    """
    if benchmark == "synthetic":
        return read_synthetic(root, sequences)
    if benchmark == "lsotb":
        return read_lsotb_tir(root, lsotb_subset, sequences)
    if benchmark == "ptb":
        return read_ptb_tir(root, sequences)
    raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")
