"""The sweep's tracking objective: a tiny DiMP tracks synthetic TIR sequences, scored by the OPE metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmd_ray.config import ConfigError, SynthConfig, load_config
from cmd_ray.data.synthetic import write_synthetic_dataset
from cmd_ray.evaluation.benchmarks import Sequence
from cmd_ray.evaluation.metrics import SUCCESS_THRESHOLDS, aggregate, sequence_curves
from cmd_ray.evaluation.validation import TrackingValidator, tracking_validator
from cmd_ray.models.dimpnet import build_model
from cmd_ray.tracking.run import TrackResult


@pytest.fixture(scope="module")
def seq_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    cfg = SynthConfig(num_pairs=1, num_rgb_sequences=0, num_tir_sequences=3, sequence_length=6)
    return write_synthetic_dataset(str(root), cfg, progress=False).tir_sequences_uri


def _cfg(seq_root: str, *overrides: str):
    return load_config(
        None,
        [
            "model.preset=tiny",
            "tracker.preset=tiny",
            "tune.metric=val_success",
            f"tune.eval_root={seq_root}",
            "tune.eval_sequences=[synth_tir_000, synth_tir_002]",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return build_model(load_config(None, ["model.preset=tiny"]))


def test_the_validator_reads_the_named_sequences_once_and_is_picklable(seq_root):
    import pickle

    validator = tracking_validator(_cfg(seq_root))
    assert [s.name for s in validator.sequences] == ["synth_tir_000", "synth_tir_002"]
    assert all(len(s) == 6 and s.ground_truth.shape == (6, 4) for s in validator.sequences)
    assert validator.protocol == "lsotb" and validator.tasks == 1
    again = pickle.loads(pickle.dumps(validator))
    assert [s.frames for s in again.sequences] == [s.frames for s in validator.sequences]
    assert tracking_validator(_cfg(seq_root, "tune.eval_sequences=null")).sequences[1].name == "synth_tir_001"
    assert tracking_validator(_cfg(seq_root, "tune.eval_tasks=3")).tasks == 3
    assert tracking_validator(_cfg(seq_root, "scaling.cpus_per_worker=2.5")).tasks == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.eval_root=/nonexistent/cmd-ray-tir", "tune.eval_root='/nonexistent/cmd-ray-tir'"),
        ("tune.eval_sequences=[no_such_sequence]", "no_such_sequence"),
    ],
)
def test_an_unusable_eval_root_fails_before_any_tracking_naming_the_key(seq_root, override, message):
    with pytest.raises(ConfigError, match=r"tune\.eval_root") as err:
        tracking_validator(_cfg(seq_root, override))
    assert message in str(err.value)


def test_scores_are_the_evaluations_ope_scores(seq_root):
    """Perfect boxes: Success is the share of thresholds below IoU 1 (20 of 21), Precision 1; scores otherwise are
    exactly what aggregate() gives over sequence_curves()."""
    validator = tracking_validator(_cfg(seq_root))
    perfect = {s.name: TrackResult(s.ground_truth.copy(), np.zeros(len(s))) for s in validator.sequences}
    assert validator.score(perfect) == {
        "val_success": pytest.approx(float(np.mean(SUCCESS_THRESHOLDS < 1.0))),
        "val_precision": 1.0,
    }
    shifted = {name: TrackResult(r.boxes + np.array([3.0, -2.0, 0.0, 0.0]), r.times) for name, r in perfect.items()}
    expected = aggregate({s.name: sequence_curves(shifted[s.name].boxes, s.ground_truth) for s in validator.sequences})
    got = validator.score(shifted)
    assert got == {"val_success": pytest.approx(expected.success), "val_precision": pytest.approx(expected.precision)}


def test_a_tracker_lost_on_every_sequence_scores_zero_not_nan():
    """Under lsotb a sequence with an all-zero success curve leaves the average; with none left the scores are NaN,
    reported as 0.0 so that ASHA ranks the trial last."""
    gt = np.tile([[10.0, 10.0, 8.0, 8.0]], (5, 1))
    gt[0] = [0.0, 0.0, 0.0, 0.0]  # invalid: frame 1 (replaced by the ground truth) fails every threshold too
    sequences = (Sequence("a", tuple(f"/f/{i}.jpg" for i in range(5)), gt),)
    far = {"a": TrackResult(np.tile([[90.0, 90.0, 4.0, 4.0]], (5, 1)), np.zeros(5))}
    assert np.isnan(aggregate({"a": sequence_curves(far["a"].boxes, gt)}).success)
    assert TrackingValidator(sequences, {}, {}, "lsotb").score(far) == {"val_success": 0.0, "val_precision": 0.0}
    kept = TrackingValidator(sequences, {}, {}, "pytracking").score(far)  # pytracking keeps it: a real 0
    assert kept["val_success"] == 0.0


def test_a_tiny_dimp_tracks_the_sequences_in_process(seq_root, tiny_net):
    validator = tracking_validator(_cfg(seq_root))
    threads = torch.get_num_threads()
    scores = validator(tiny_net, remote=False)
    assert set(scores) == {"val_success", "val_precision", "val_tracking_s"}
    assert 0.0 <= scores["val_success"] <= 1.0 and 0.0 <= scores["val_precision"] <= 1.0
    assert torch.get_num_threads() == threads  # the tracker's one thread is not left behind
    # deterministic: the same weights track the same boxes
    assert validator(tiny_net, remote=False)["val_success"] == scores["val_success"]


def test_ray_tasks_track_the_same_boxes_as_the_process(ray_session, seq_root, tiny_net):
    validator = tracking_validator(_cfg(seq_root, "tune.eval_tasks=2"))
    weights = {k: v.detach().clone() for k, v in tiny_net.state_dict().items()}
    remote = validator.track(weights)
    assert sorted(remote) == ["synth_tir_000", "synth_tir_002"]
    from cmd_ray.evaluation.loading import track_frames

    for seq in validator.sequences:
        here = track_frames(**validator._kwargs(seq), state_dict=weights)
        np.testing.assert_allclose(remote[seq.name].boxes, here.boxes, rtol=1e-5, atol=1e-4)
    scores = validator(tiny_net)  # a Ray session is up: tasks
    assert scores["val_success"] == pytest.approx(validator.score(remote)["val_success"], abs=1e-6)
