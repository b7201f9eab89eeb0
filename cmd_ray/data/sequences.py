"""Labeled RGB sequences for supervised teacher training (``jobs/pretrain.py``).

Layout, one folder per sequence (local path or ``s3://`` prefix)::

    <root>/<seq>/img/0001.jpg … NNNN.jpg       frames, numbered 1..T in order
    <root>/<seq>/groundtruth_rect.txt          T lines ``x,y,w,h`` (commas, tabs or spaces), pixels

A training sample is ordinary DiMP supervision: a reference frame and a test frame of one
sequence, at most ``max_gap`` frames apart, each cropped around its own jittered true box.
Frames whose box is missing (``w`` or ``h`` ≤ 0, or NaN) are never drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cmd_ray.config import SamplingConfig
from cmd_ray.data.processing import apply_crop, jittered_crop_geometry, search_targets
from cmd_ray.data.sequence_folders import (
    FRAMES_FOLDER,
    GROUND_TRUTH_FILE,
    BoxCountError,
    MissingFramesError,
    MissingGroundTruthError,
    SequenceError,
    list_root,
    numbered_frames,
    read_sequence_folder,
)
from cmd_ray.storage import StorageError


@dataclass(frozen=True)
class LabeledSequence:
    """One labeled sequence.

    Attributes:
        name: folder name.
        frames: frame URIs in order (``frames[t]`` is frame ``t + 1``).
        boxes: ``float64 [T, 4]`` true boxes ``x, y, w, h`` in pixels.
    """

    name: str
    frames: tuple[str, ...]
    boxes: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``bool [T]``: frames with a usable box (finite, positive size)."""
        return np.all(np.isfinite(self.boxes), axis=1) & (self.boxes[:, 2] > 0) & (self.boxes[:, 3] > 0)


def list_sequences(root_uri: str, endpoint_url: str | None = None) -> list[LabeledSequence]:
    """Every labeled sequence below ``root_uri``, sorted by name, from one recursive listing.

    A sequence is a folder with digit-named frames in ``img/`` or a ``groundtruth_rect.txt``; its frames are taken
    in the order of their numbers, whatever the numbers are (read by
    :func:`cmd_ray.data.sequence_folders.read_sequence_folder` with ``numbered_from_one=False``).

    Raises:
        SequenceError: no sequence found, a frame/ground-truth count mismatch, a malformed line, or a sequence
            without any usable box — each naming the file.
        StorageError: the root cannot be listed.
    """
    listing = list_root(root_uri, endpoint_url)
    with_frames = [
        name
        for name in listing.sequence_dirs()
        if numbered_frames(listing.files_in(f"{name}/{FRAMES_FOLDER}"), "", numbered_from_one=False)
    ]
    names = sorted(set(with_frames) | set(listing.dirs_with(GROUND_TRUTH_FILE)))
    if not names:
        raise SequenceError(
            f"no labeled sequences under {root_uri}: expected <seq>/img/0001.jpg … and <seq>/{GROUND_TRUTH_FILE}"
        )
    sequences = []
    for name in names:
        where = listing.uri(f"{name}/{GROUND_TRUTH_FILE}")
        try:
            folder = read_sequence_folder(listing, name, numbered_from_one=False, endpoint_url=endpoint_url)
        except MissingGroundTruthError:
            where = f"{root_uri}/{name}/{GROUND_TRUTH_FILE}"
            raise SequenceError(f"{where} is missing (sequence {name!r} has frames but no ground truth)") from None
        except MissingFramesError:
            raise SequenceError(
                f"sequence {name!r} under {root_uri} has {GROUND_TRUTH_FILE} but no img/ frames"
            ) from None
        except BoxCountError as exc:
            raise SequenceError(
                f"{where}: {exc.num_boxes} boxes for {exc.num_frames} frames in {name}/{FRAMES_FOLDER}"
            ) from None
        except (StorageError, UnicodeDecodeError) as exc:
            raise SequenceError(f"cannot read {where}: {exc}") from exc
        sequence = LabeledSequence(name, folder.frames, folder.boxes)
        if not sequence.valid.any():
            raise SequenceError(f"{where}: no frame has a usable box (w, h > 0)")
        sequences.append(sequence)
    return sequences


def split_sequences(
    sequences: list[LabeledSequence], val_fraction: float
) -> tuple[list[LabeledSequence], list[LabeledSequence]]:
    """``(train, val)`` by whole sequences: every ``k``-th sequence (by name) is held out, ``k = 1/val_fraction``.

    Frames of one sequence are near-duplicates, so holding out frames would leak; with one sequence there is no
    validation split.
    """
    if val_fraction <= 0 or len(sequences) < 2:
        return list(sequences), []
    every = max(2, round(1.0 / val_fraction))
    val = [s for i, s in enumerate(sequences) if i % every == every - 1] or [sequences[-1]]
    held_out = {s.name for s in val}
    return [s for s in sequences if s.name not in held_out], val


def draw_frame_pair(valid: np.ndarray, max_gap: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(reference, test)`` frame indices: both with usable boxes, ``|test - reference| <= max_gap``.

    The reference frame is uniform over the usable frames; the test frame uniform over the usable frames within
    the gap (it may be the reference frame itself when nothing else is in reach).
    """
    usable = np.flatnonzero(valid)
    if not len(usable):
        raise ValueError("no usable frame")
    reference = int(usable[rng.integers(len(usable))])
    near = usable[np.abs(usable - reference) <= max_gap]
    return reference, int(near[rng.integers(len(near))])


def make_frame_pair_sample(
    ref_image: np.ndarray,
    ref_box: np.ndarray,
    test_image: np.ndarray,
    test_box: np.ndarray,
    cfg: SamplingConfig,
    rng: np.random.Generator,
    grayscale_probability: float = 0.0,
    brightness_jitter: float = 0.0,
) -> dict[str, np.ndarray]:
    """One supervised DiMP sample from two RGB frames and their true boxes.

    Args:
        ref_image, test_image: ``uint8 [H, W, 3]`` RGB frames (sizes may differ).
        ref_box, test_box: ``x, y, w, h`` in pixels of their frame.
        grayscale_probability: chance that both crops are made grey (luma in all three channels).
        brightness_jitter: each crop's values are scaled by its own factor from ``U[1 - j, 1 + j]``.

    Returns:
        The RGB keys of :func:`cmd_ray.data.processing.make_sample` (``rgb_ref``, ``rgb_test`` uint8
        ``[S, S, 3]``; ``ref_box``, ``test_box`` float32 ``[4]`` in crop pixels; ``test_label`` float32
        ``[L, L]``; ``test_proposals`` float32 ``[P, 4]``; ``proposal_iou`` float32 ``[P]``; with GMM
        proposals also ``proposal_density``, ``gt_density``). No TIR keys: the teacher sees RGB only.
        The photometric draws come after the geometric ones, so they never change crops, labels or proposals.
    """
    ref_box = np.asarray(ref_box, dtype=np.float64)
    test_box = np.asarray(test_box, dtype=np.float64)
    ref = jittered_crop_geometry(ref_box, cfg, rng, frame="reference", image_size=ref_image.shape[:2])
    test = jittered_crop_geometry(test_box, cfg, rng, frame="test", image_size=test_image.shape[:2])
    sample = {
        "rgb_ref": apply_crop(ref_image, ref),
        "rgb_test": apply_crop(test_image, test),
        "ref_box": ref.box_to_crop(ref_box).astype(np.float32),
        **search_targets(test.box_to_crop(test_box).astype(np.float32), cfg, rng),
    }
    if grayscale_probability > 0 or brightness_jitter > 0:
        grey = bool(rng.random() < grayscale_probability)
        for key in ("rgb_ref", "rgb_test"):
            factor = rng.uniform(1.0 - brightness_jitter, 1.0 + brightness_jitter)
            sample[key] = photometric(sample[key], grey, factor)
    return sample


def photometric(crop: np.ndarray, grey: bool, brightness: float) -> np.ndarray:
    """``crop`` ``uint8 [S, S, 3]`` RGB made grey (BT.601 luma, three channels) if ``grey``, then scaled by
    ``brightness`` and clipped to ``[0, 255]`` (DiMP's training-time ``ToGrayscale`` and brightness jitter)."""
    out = np.repeat(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2) if grey else crop
    if brightness != 1.0:
        out = np.clip(out.astype(np.float32) * brightness, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(out)
