"""What each tracker option changes, seen from outside the tracker.

A tiny random-init DiMPNet tracks a short synthetic TIR sequence with one option changed at a time. The tracker is
observed through PyTorch forward hooks (every call of the filter optimizer with its step count and samples, every
call of the IoU predictor with its number of boxes), its boxes and flags, and its sample memory; the expected
values are worked out here from what the option means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from synthetic_sequences import synthetic_tir_sequences

from cmd_ray.config import TrackerConfig
from cmd_ray.models.dimpnet import DiMPNet
from cmd_ray.tracking import DiMPTracker

WIDTH, HEIGHT, LENGTH = 160, 128, 6
STRIDE = 16  # the tiny network's feature stride (crop pixels per score cell)
# Defaults of these tests: one first-frame sample (fast), every peak counts as found.
BASE = {"preset": "tiny", "use_augmentation": False, "target_not_found_threshold": -1e9}
# Every found frame a plain one: no localisation flags, a filter update on every frame.
PLAIN = {**BASE, "advanced_localization": False, "train_skipping": 1}
NO_IOU = {"use_iou_net": False}


@pytest.fixture(scope="module")
def sequence() -> tuple[list[np.ndarray], np.ndarray]:
    _, frames, gt = synthetic_tir_sequences(1, WIDTH, HEIGHT, LENGTH, seed=5)[0]
    return frames, gt.astype(np.float64)


@dataclass
class Run:
    """One tracked sequence and what the hooks saw."""

    tracker: DiMPTracker
    boxes: np.ndarray
    flags: list[str]
    first_filter: torch.Tensor
    filter_calls: list[dict] = field(default_factory=list)  # num_iter, samples, weighted (an update)
    iou_calls: list[int] = field(default_factory=list)  # boxes per IoU prediction


def track(net: DiMPNet, sequence, frames: int = LENGTH, box=None, **options) -> Run:
    """Track ``frames`` frames with ``TrackerConfig(**options)`` and the hooks in place."""
    images, gt = sequence
    tracker = DiMPTracker(net, TrackerConfig(**options))
    filter_calls: list[dict] = []
    iou_calls: list[int] = []

    def on_filter(_module, args, kwargs):
        feat = args[1] if len(args) > 1 else kwargs["feat"]
        weighted = kwargs.get("sample_weight") is not None
        filter_calls.append({"num_iter": kwargs.get("num_iter"), "samples": feat.shape[0], "weighted": weighted})

    def on_iou(_module, args):
        iou_calls.append(args[0].shape[0])

    hooks = [
        net.classifier.filter_optimizer.register_forward_pre_hook(on_filter, with_kwargs=True),
        net.bb_regressor.iou_predictor.register_forward_pre_hook(on_iou),
    ]
    try:
        start = gt[0] if box is None else np.asarray(box, dtype=np.float64)
        tracker.initialize(images[0], start)
        first_filter = tracker._filter.clone()
        boxes, flags = [tracker.current_box()], ["init"]
        for image in images[1:frames]:
            boxes.append(tracker.track(image))
            flags.append(tracker.last_flag)
    finally:
        for hook in hooks:
            hook.remove()
    return Run(tracker, np.stack(boxes), flags, first_filter, filter_calls, iou_calls)


def updates(run: Run) -> list[dict]:
    return [c for c in run.filter_calls if c["weighted"]]


# ------------------------------------------------------------------ filter learning and updates


@pytest.mark.parametrize("steps", [0, 3])
def test_net_opt_iter_is_the_first_frames_step_count(net, sequence, steps):
    run = track(net, sequence, frames=1, **BASE, net_opt_iter=steps)
    assert run.filter_calls == [{"num_iter": steps, "samples": 1, "weighted": False}]
    if steps == 0:  # no step: the filter is the initializer's
        other = track(net, sequence, frames=1, **BASE, net_opt_iter=1)
        assert not torch.equal(run.first_filter, other.first_filter)


@pytest.mark.parametrize(("skipping", "steps"), [(1, 2), (2, 1), (3, 3), (2, 0)])
def test_train_skipping_and_net_opt_update_iter_set_the_filter_updates(net, sequence, skipping, steps):
    run = track(net, sequence, **NO_IOU, **{**PLAIN, "train_skipping": skipping}, net_opt_update_iter=steps)
    assert set(run.flags[1:]) == {"normal"}
    # frame f (1 = first) updates when (f - 1) is a multiple of train_skipping; the memory then holds f samples
    due = [f for f in range(2, LENGTH + 1) if (f - 1) % skipping == 0] if steps else []
    assert [(c["num_iter"], c["samples"]) for c in updates(run)] == [(steps, f) for f in due]
    assert run.tracker._memory.num_stored == LENGTH  # every frame entered the memory, updated or not
    if not due:
        assert torch.equal(run.tracker._filter, run.first_filter)


def test_update_classifier_off_keeps_the_first_filter(net, sequence):
    run = track(net, sequence, **NO_IOU, **PLAIN, update_classifier=False)
    assert updates(run) == [] and run.tracker._memory is None
    assert torch.equal(run.tracker._filter, run.first_filter)
    on = track(net, sequence, **NO_IOU, **PLAIN)
    assert len(updates(on)) == LENGTH - 1 and not torch.equal(on.tracker._filter, on.first_filter)


def _weights_by_dimp_rule(num_init: int, rates: list[float]) -> np.ndarray:
    """Memory weights after updates at ``rates``: first-frame samples equal, each new sample ``1 / (1 - rate)``
    times the previous new one (the first new one ``rate`` against the old total ``1 / (1 - rate)``)."""
    weights = [1.0 / num_init] * num_init
    for i, rate in enumerate(rates):
        if i == 0:
            weights = [w / (1 - rate) for w in weights] + [rate]
        else:
            weights.append(weights[-1] / (1 - rate))
    return np.array(weights) / sum(weights)


@pytest.mark.parametrize("rate", [0.05, 0.3])
def test_learning_rate_sets_how_fast_new_samples_gain_weight(net, sequence, rate):
    run = track(net, sequence, **NO_IOU, **PLAIN, learning_rate=rate, init_samples_minimum_weight=0.0)
    weights = run.tracker._memory.weights.double().numpy()
    np.testing.assert_allclose(weights, _weights_by_dimp_rule(1, [rate] * (LENGTH - 1)), rtol=1e-5)


HARD_NEGATIVES = {**BASE, **NO_IOU, "hard_negative_threshold": 1e-6, "distractor_threshold": 1e6}


def test_hard_negatives_take_net_opt_hn_iter_steps_at_their_own_learning_rate(net, sequence):
    options = {"train_skipping": 100, "init_samples_minimum_weight": 0.0, "learning_rate": 0.01}
    run = track(net, sequence, **HARD_NEGATIVES, **options, net_opt_hn_iter=3, hard_negative_learning_rate=0.25)
    assert set(run.flags[1:]) == {"hard_negative"}
    # a filter step on every hard negative, though a regular update would only come every 100 frames
    assert [(c["num_iter"], c["samples"]) for c in updates(run)] == [(3, f) for f in range(2, LENGTH + 1)]
    weights = run.tracker._memory.weights.double().numpy()
    np.testing.assert_allclose(weights, _weights_by_dimp_rule(1, [0.25] * (LENGTH - 1)), rtol=1e-5)
    # the same frames under a hard-negative threshold nothing reaches are normal ones: no update is due
    normal = track(net, sequence, **{**HARD_NEGATIVES, "hard_negative_threshold": 1e6}, **options)
    assert set(normal.flags[1:]) == {"normal"} and updates(normal) == []


def test_sample_memory_size_caps_the_stored_samples(net, sequence):
    small = track(net, sequence, **NO_IOU, **PLAIN, sample_memory_size=3)
    assert small.tracker._memory.samples.shape[0] == 3 and [c["samples"] for c in updates(small)][-1] == 3
    large = track(net, sequence, **NO_IOU, **PLAIN, sample_memory_size=50)
    assert large.tracker._memory.samples.shape[0] == LENGTH


@pytest.mark.parametrize("floor", [0.0, 0.6])
def test_init_samples_minimum_weight_is_the_first_frames_least_weight(net, sequence, floor):
    run = track(net, sequence, **NO_IOU, **PLAIN, learning_rate=0.5, init_samples_minimum_weight=floor)
    weights = run.tracker._memory.weights.double().numpy()
    unfloored = _weights_by_dimp_rule(1, [0.5] * (LENGTH - 1))
    assert unfloored[0] < 0.6  # the floor binds
    if floor == 0:
        np.testing.assert_allclose(weights, unfloored, rtol=1e-5)
    else:
        assert weights[0] == pytest.approx(floor)
        np.testing.assert_allclose(weights[1:], unfloored[1:] * (1 - floor) / unfloored[1:].sum(), rtol=1e-5)


# ------------------------------------------------------------------ first-frame samples


def test_augmentation_options_set_the_first_frame_samples(net, sequence):
    augmentation = {
        "shift": [(4.0, -4.0)],
        "relativeshift": [],
        "fliplr": True,
        "blur": [(1.0, 2.0)],
        "scale": [],
        "rotate": [15.0],
        "dropout": (2, 0.5),
    }
    run = track(net, sequence, frames=1, **{**BASE, "use_augmentation": True}, augmentation=augmentation)
    expected = 1 + 1 + 1 + 1 + 1 + 2  # plain, shift, flip, blur, rotate, two dropout copies
    assert run.filter_calls[0]["samples"] == expected == run.tracker._memory.num_init
    samples = run.tracker._memory.samples
    plain = samples[0]
    for copy in samples[-2:]:  # channel dropout of the plain sample: each channel dropped or scaled by 1 / (1 - p)
        for c in range(plain.shape[0]):
            assert torch.all(copy[c] == 0) or torch.allclose(copy[c], 2.0 * plain[c], rtol=1e-5, atol=1e-6)
    off = track(net, sequence, frames=1, **{**BASE, "use_augmentation": False}, augmentation=augmentation)
    assert off.filter_calls[0]["samples"] == 1 == off.tracker._memory.num_init


def test_random_shift_factor_moves_the_augmented_samples(net, sequence):
    augmentation = {"relativeshift": [], "blur": [], "rotate": [], "dropout": None, "fliplr": True}
    options = {**BASE, "use_augmentation": True, "augmentation": augmentation}
    still = track(net, sequence, frames=1, **options, random_shift_factor=0.0).tracker._memory.boxes.double()
    side = 128.0
    # no shift: the flipped sample's box is the plain one mirrored about the crop's vertical centre line
    mirrored = torch.stack([side - still[0, 0] - still[0, 2], still[0, 1], still[0, 2], still[0, 3]])
    torch.testing.assert_close(still[1], mirrored, rtol=0, atol=1e-4)
    moved = track(net, sequence, frames=1, **options, random_shift_factor=0.3).tracker._memory.boxes.double()
    offset = moved[1, :2] - mirrored[:2]
    assert torch.all(offset.abs() <= 0.3 * side / 2 + 1e-4) and float(offset.abs().max()) > 1.0
    torch.testing.assert_close(moved[1, 2:], still[1, 2:])


def test_seed_sets_the_random_first_frame_samples(net, sequence):
    options = {**BASE, "use_augmentation": True}
    a = track(net, sequence, frames=1, **options, seed=0).first_filter
    assert torch.equal(a, track(net, sequence, frames=1, **options, seed=0).first_filter)
    assert not torch.equal(a, track(net, sequence, frames=1, **options, seed=1).first_filter)


# ------------------------------------------------------------------ the search crop


@pytest.mark.parametrize(("area_scale", "sample_size"), [(5.0, 128), (4.0, 128), (5.0, 96)])
def test_search_area_scale_and_image_sample_size_set_the_crop(net, sequence, area_scale, sample_size):
    run = track(net, sequence, frames=1, **BASE, search_area_scale=area_scale, image_sample_size=sample_size)
    w, h = sequence[1][0][2:]
    zoom = sample_size / (math.sqrt(w * h) * area_scale)  # crop pixels per image pixel
    box = run.tracker._memory.boxes[0].double().numpy()
    np.testing.assert_allclose(box[2:], [w * zoom, h * zoom], rtol=1e-5)
    np.testing.assert_allclose(box[:2] + box[2:] / 2, [sample_size / 2] * 2, rtol=1e-5)  # the target in the middle
    assert run.tracker._memory.samples.shape[-2:] == (sample_size // STRIDE, sample_size // STRIDE)


@pytest.mark.parametrize(
    ("mode", "max_change", "crop_side"),
    [
        ("replicate", None, 200.0),  # as asked: sqrt(40 * 40) * 5
        ("inside", None, 128.0),  # shrunk until it fits both sides of the 160 x 128 image
        ("inside_major", None, 160.0),  # shrunk to fit the larger side only
        ("inside", 1.25, 160.0),  # shrinking by at most 1.25
    ],
)
def test_border_mode_and_patch_max_scale_change_fit_the_crop_to_the_image(net, sequence, mode, max_change, crop_side):
    box = np.array([5.0, 5.0, 40.0, 40.0])  # near the top-left corner; crop side 200 px asked
    run = track(
        net,
        sequence,
        frames=1,
        box=box,
        **BASE,
        search_area_scale=5.0,
        border_mode=mode,
        patch_max_scale_change=max_change,
    )
    zoom = 128 / crop_side
    if mode == "replicate":
        corner = box[:2] + box[2:] / 2 - crop_side / 2
    else:  # moved into the image along each axis it fits in, else centred on it
        corner = np.array(
            [
                min(max(box[0] + 20 - crop_side / 2, 0.0), extent - crop_side)
                if crop_side <= extent
                else (extent - crop_side) / 2
                for extent in (WIDTH, HEIGHT)
            ]
        )
    expected = np.concatenate([(box[:2] - corner) * zoom, box[2:] * zoom])
    np.testing.assert_allclose(run.tracker._memory.boxes[0].double().numpy(), expected, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ localisation


def test_target_not_found_threshold_stops_every_update_unless_localisation_is_plain(net, sequence):
    lost = track(net, sequence, **{**BASE, "target_not_found_threshold": 1e9}, train_skipping=1)
    assert set(lost.flags[1:]) == {"not_found"} and updates(lost) == []
    np.testing.assert_array_equal(lost.boxes, np.repeat(lost.boxes[:1], LENGTH, axis=0))  # it never moved
    plain = track(
        net, sequence, **{**BASE, "target_not_found_threshold": 1e9}, train_skipping=1, advanced_localization=False
    )
    assert set(plain.flags[1:]) == {"normal"} and len(updates(plain)) == LENGTH - 1


def test_target_neighborhood_scale_sets_what_counts_as_a_second_peak(net, sequence):
    # any second peak is a hard negative; masking the whole map around the peak leaves none
    wide = track(net, sequence, **HARD_NEGATIVES, target_neighborhood_scale=1e3)
    assert set(wide.flags[1:]) == {"normal"}
    narrow = track(net, sequence, **HARD_NEGATIVES, target_neighborhood_scale=0.05)
    assert set(narrow.flags[1:]) == {"hard_negative"}


UNCERTAIN = {**BASE, "distractor_threshold": 1e-9, "displacement_scale": 100.0}


def test_distractors_near_the_centre_make_uncertain_frames_without_updates(net, sequence):
    run = track(net, sequence, **UNCERTAIN, **NO_IOU, train_skipping=1)
    assert set(run.flags[1:]) == {"uncertain"}
    assert updates(run) == [] and run.tracker._memory.num_stored == 1
    assert not np.allclose(run.boxes[1:, :2], run.boxes[0, :2])  # it still follows the peak


def test_displacement_scale_decides_which_of_two_peaks_is_the_target():
    from cmd_ray.tracking.localization import localize_target

    size = 19
    rows = torch.arange(size, dtype=torch.float32).reshape(-1, 1)
    cols = torch.arange(size, dtype=torch.float32).reshape(1, -1)

    def blob(row, col, height):
        return height * torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * 0.7**2))

    scores = blob(2, 2, 1.0) + blob(9, 11, 0.9)  # the stronger peak 9.9 cells from the centre, the other 2
    for scale, flag, peak in ((0.8, "hard_negative", (9, 11)), (2.0, "uncertain", (2, 2)), (0.1, "uncertain", (2, 2))):
        # threshold = scale * 19 / 2 cells: 7.6 separates the peaks, 19 and 0.95 do not
        loc = localize_target(scores, (3.0, 3.0), TrackerConfig(displacement_scale=scale))
        assert (loc.flag, loc.peak) == (flag, peak), scale


@pytest.mark.parametrize("subcell", [False, True])
def test_subcell_peak_lets_the_target_move_by_less_than_a_cell(net, sequence, subcell):
    run = track(net, sequence, **NO_IOU, **PLAIN, subcell_peak=subcell)
    side = run.tracker._scale * 128  # image pixels of the crop (fixed: no IoU-Net, crop kept as asked)
    cell = STRIDE * side / 128
    centres = run.boxes[:, :2] + run.boxes[:, 2:] / 2
    # each frame's crop is centred on the previous centre; an even filter puts score cells on multiples of a cell
    cells = (centres[1:] - centres[:-1] + side / 2) / cell
    on_grid = np.allclose(cells, np.round(cells), atol=1e-6)
    assert on_grid is not subcell


def test_update_scale_when_uncertain(net, sequence):
    fixed = track(net, sequence, **UNCERTAIN, update_scale_when_uncertain=False)
    assert set(fixed.flags[1:]) == {"uncertain"}
    assert fixed.tracker._scale == pytest.approx(track(net, sequence, frames=1, **UNCERTAIN).tracker._scale, rel=0)
    assert not np.allclose(fixed.boxes[1:, 2:], fixed.boxes[0, 2:])  # the IoU-Net still sets the box size
    free = track(net, sequence, **UNCERTAIN, update_scale_when_uncertain=True)
    first = track(net, sequence, frames=1, **UNCERTAIN).tracker._scale
    assert free.tracker._scale != pytest.approx(first)


def test_target_inside_ratio_keeps_a_share_of_the_target_in_the_image(net, sequence):
    box = np.array([-36.0, 40.0, 40.0, 40.0])  # 4 px of 40 inside the image
    frames = 2
    centres = {}
    for ratio in (0.0, 0.2, 0.5):
        run = track(net, sequence, frames=frames, box=box, **NO_IOU, **PLAIN, target_inside_ratio=ratio)
        centres[ratio] = run.boxes[1, :2] + run.boxes[1, 2:] / 2
    peak = centres[0.0]  # the first tracked frame's peak, kept unless it leaves the widest bounds
    for ratio, centre in centres.items():
        margin = (ratio - 0.5) * box[2:]
        np.testing.assert_allclose(centre, np.clip(peak, margin, [WIDTH, HEIGHT] - margin), atol=1e-9)
    assert centres[0.5][0] == pytest.approx(0.0) and peak[0] < -0.3 * 40  # the bounds bind


# ------------------------------------------------------------------ IoU-Net refinement


def test_use_iou_net_sets_the_box_size(net, sequence):
    fixed = track(net, sequence, **PLAIN, use_iou_net=False)
    assert fixed.iou_calls == []
    np.testing.assert_allclose(fixed.boxes[:, 2:], np.repeat(fixed.boxes[:1, 2:], LENGTH, axis=0), rtol=1e-12)
    refined = track(net, sequence, **PLAIN, use_iou_net=True)
    assert refined.iou_calls and not np.allclose(refined.boxes[1:, 2:], refined.boxes[0, 2:])


@pytest.mark.parametrize(("num_boxes", "iterations"), [(0, 0), (4, 2), (9, 5)])
def test_num_init_random_boxes_and_box_refinement_iter_set_the_iou_predictions(net, sequence, num_boxes, iterations):
    run = track(net, sequence, **PLAIN, num_init_random_boxes=num_boxes, box_refinement_iter=iterations)
    # per frame: one prediction per ascent step and one of the final boxes, each over the box and its copies
    assert run.iou_calls == [num_boxes + 1] * ((iterations + 1) * (LENGTH - 1))


def test_without_jitter_or_steps_the_iou_net_keeps_the_classifiers_box(net, sequence):
    still = {**PLAIN, "box_jitter_pos": 0.0, "box_jitter_sz": 0.0, "box_refinement_step_length": 0.0}
    run = track(net, sequence, **still)
    np.testing.assert_allclose(run.boxes, track(net, sequence, **PLAIN, **NO_IOU).boxes, rtol=0, atol=1e-3)
    # size jitter alone changes the size; position jitter alone the position only
    sized = track(net, sequence, frames=2, **{**still, "box_jitter_sz": 0.5})
    assert not np.allclose(sized.boxes[1, 2:], run.boxes[1, 2:])
    moved = track(net, sequence, frames=2, **{**still, "box_jitter_pos": 0.5})
    np.testing.assert_allclose(moved.boxes[1, 2:], run.boxes[1, 2:], rtol=1e-6)
    assert not np.allclose(moved.boxes[1, :2], run.boxes[1, :2])


@pytest.mark.parametrize("space", ["default", "relative"])
def test_box_refinement_space_and_split_step_lengths(net, sequence, space):
    """A size-only step ``(0, s)``: the relative space keeps each box's centre, the default its top-left corner."""
    step = (0.0, 1.0) if space == "default" else (0.0, 0.5)
    options = {**PLAIN, "num_init_random_boxes": 0, "iounet_k": 1}
    run = track(net, sequence, frames=2, **options, box_refinement_space=space, box_refinement_step_length=step)
    plain = track(net, sequence, frames=2, **PLAIN, **NO_IOU)  # the classifier's box on the same first crop
    got, before = run.boxes[1], plain.boxes[1]
    assert not np.allclose(got[2:], before[2:])
    if space == "relative":
        np.testing.assert_allclose(got[:2] + got[2:] / 2, before[:2] + before[2:] / 2, atol=1e-3)
    else:
        np.testing.assert_allclose(got[:2], before[:2], atol=1e-3)


def test_box_refinement_step_decay_scales_the_later_steps(net, sequence):
    one = {**PLAIN, "box_refinement_iter": 1}
    np.testing.assert_array_equal(
        track(net, sequence, frames=2, **one, box_refinement_step_decay=1.0).boxes,
        track(net, sequence, frames=2, **one, box_refinement_step_decay=0.2).boxes,
    )
    three = {**PLAIN, "box_refinement_iter": 3}
    assert not np.allclose(
        track(net, sequence, frames=2, **three, box_refinement_step_decay=1.0).boxes,
        track(net, sequence, frames=2, **three, box_refinement_step_decay=0.2).boxes,
    )


def test_iounet_k_averages_more_boxes(net, sequence):
    options = {**PLAIN, "box_refinement_step_length": 0.0}  # the jittered boxes themselves are averaged
    top1 = track(net, sequence, frames=2, **options, iounet_k=1).boxes[1]
    top3 = track(net, sequence, frames=2, **options, iounet_k=3).boxes[1]
    assert not np.allclose(top1, top3)


def test_maximal_aspect_ratio_drops_boxes(net, sequence):
    # a bound no jittered box meets: nothing is kept and the classifier's box stands (size unchanged)
    strict = track(net, sequence, **PLAIN, maximal_aspect_ratio=1.0 + 1e-9, box_jitter_sz=0.5)
    np.testing.assert_allclose(strict.boxes[:, 2:], np.repeat(strict.boxes[:1, 2:], LENGTH, axis=0), rtol=1e-12)
    loose = track(net, sequence, **PLAIN, maximal_aspect_ratio=6.0, box_jitter_sz=0.5)
    assert not np.allclose(loose.boxes[1:, 2:], loose.boxes[0, 2:])
