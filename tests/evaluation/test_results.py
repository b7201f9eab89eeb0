"""Result files (round trip, atomic writes, completeness), meta.json and scoring a result folder (no Ray)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from cmd_ray.evaluation.benchmarks import Sequence
from cmd_ray.evaluation.metrics import aggregate, aggregate_trackers, sequence_curves
from cmd_ray.evaluation.results import (
    META_FILE,
    ResultMeta,
    ResultsError,
    atomic_write_text,
    complete_sequences,
    format_per_sequence_csv,
    format_per_sequence_json,
    frame_rate,
    has_complete_result,
    per_sequence_rows,
    prepare_tracker_dir,
    read_boxes,
    read_meta,
    read_result,
    read_times,
    result_paths,
    score_directory,
    tracking_settings,
    write_meta,
    write_result,
)


def _seq(name: str, gt: np.ndarray, attributes: dict[str, bool] | None = None) -> Sequence:
    frames = tuple(Path(f"/nowhere/{name}/img/{i + 1:04d}.jpg") for i in range(len(gt)))
    return Sequence(
        name=name, frames=frames, ground_truth=np.asarray(gt, dtype=np.float64), attributes=attributes or {}
    )


def _meta(**changes) -> ResultMeta:
    base = dict(
        tracker="t",
        kind="dimp",
        model="models:/m@a",
        model_version="3",
        benchmark="synthetic",
        root="/data/seqs",
        lsotb_subset=None,
        protocol="lsotb",
        sequences=("a", "b"),
        index=0,
    )
    return ResultMeta(**{**base, **changes})


def test_result_files_round_trip(tmp_path):
    boxes = np.array([[1.5, 2.25, 10.0, 20.125], [3.0, 4.0, 5.0, 6.0], [np.nan, 1.0, 2.0, 3.0]])
    times = np.array([0.25, 0.000125, 1.5])
    path = write_result(tmp_path / "tracker", "seq_1", boxes, times)
    assert path == str(tmp_path / "tracker" / "seq_1.txt")
    assert Path(path).read_text().splitlines()[0] == "1.5000,2.2500,10.0000,20.1250"
    assert (tmp_path / "tracker" / "seq_1_time.txt").read_text().splitlines()[1] == "0.000125000"
    got_boxes, got_times = read_result(tmp_path / "tracker", "seq_1")
    np.testing.assert_allclose(got_boxes, boxes, atol=5e-5)
    assert np.isnan(got_boxes[2, 0])
    np.testing.assert_allclose(got_times, times, atol=5e-10)
    assert has_complete_result(tmp_path / "tracker", "seq_1", 3)
    assert not has_complete_result(tmp_path / "tracker", "seq_1", 4)  # a sequence of 4 frames is not done
    assert sorted(p.name for p in (tmp_path / "tracker").iterdir()) == ["seq_1.txt", "seq_1_time.txt"]


def test_reading_accepts_tabs_and_spaces_and_names_a_bad_line(tmp_path):
    f = tmp_path / "r.txt"
    f.write_text("1\t2\t3\t4\n\n5 6 7 8\n")
    np.testing.assert_array_equal(read_boxes(f), [[1, 2, 3, 4], [5, 6, 7, 8]])
    f.write_text("1,2,3,4\n1,2,3\n")
    with pytest.raises(ResultsError, match=r"r\.txt:2: expected 4 numbers"):
        read_boxes(f)
    t = tmp_path / "t.txt"
    t.write_text("0.1\n-1\n")
    with pytest.raises(ResultsError, match=r"t\.txt:2: .*>= 0"):
        read_times(t)
    with pytest.raises(ResultsError, match="not found"):
        read_boxes(tmp_path / "missing.txt")


def test_incomplete_results_are_not_complete(tmp_path):
    d = tmp_path / "tr"
    write_result(d, "s", np.ones((4, 4)), np.ones(4))
    boxes_path, times_path = map(Path, result_paths(d, "s"))
    # What a run killed in the middle of a non-atomic write would leave: a truncated box file.
    boxes_path.write_text("".join(boxes_path.read_text().splitlines(keepends=True)[:2]))
    assert not has_complete_result(d, "s", 4)
    write_result(d, "s", np.ones((4, 4)), np.ones(4))
    times_path.unlink()  # boxes without times
    assert not has_complete_result(d, "s", 4)
    write_result(d, "s", np.ones((4, 4)), np.ones(4))
    times_path.write_text("0.1\n0.1\n")  # counts disagree
    with pytest.raises(ResultsError, match=r"4 boxes but .* 2 times"):
        read_result(d, "s")
    boxes_path.write_text("garbage\n")
    assert not has_complete_result(d, "s", 1)


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "out" / "seq.txt"
    atomic_write_text(target, "old\n")
    assert target.read_text() == "old\n"
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in target.parent.iterdir()] == ["seq.txt"]  # no temporary file left behind

    # A failure at the rename (the target is a non-empty folder) leaves the folder as it was and no temporary file.
    blocked = tmp_path / "out" / "blocked.txt"
    blocked.mkdir()
    (blocked / "keep").write_text("x")
    with pytest.raises(OSError):
        atomic_write_text(blocked, "partial\n")
    assert (blocked / "keep").read_text() == "x"
    assert sorted(p.name for p in target.parent.iterdir()) == ["blocked.txt", "seq.txt"]


def test_write_result_rejects_mismatched_shapes(tmp_path):
    with pytest.raises(ValueError, match="boxes must be"):
        write_result(tmp_path, "s", np.ones((3, 4)), np.ones(2))
    with pytest.raises(ValueError, match="boxes must be"):
        write_result(tmp_path, "s", np.ones((3, 3)), np.ones(3))
    assert list(tmp_path.iterdir()) == []


def test_meta_round_trip_and_errors(tmp_path):
    meta = _meta()
    write_meta(tmp_path, meta)
    back = read_meta(tmp_path)
    assert back == meta
    (tmp_path / META_FILE).write_text('{"tracker": "t"}')
    with pytest.raises(ResultsError, match="lacks"):
        read_meta(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(ResultsError, match="cannot read"):
        read_meta(tmp_path)
    with pytest.raises(ResultsError, match=r"no meta\.json"):
        read_meta(tmp_path / "elsewhere")


def test_prepare_refuses_results_of_another_model(tmp_path):
    d = tmp_path / "t"
    prepare_tracker_dir(d, _meta(sequences=("a",)))
    # Same model and benchmark: the sequences of both runs belong to the folder.
    merged = prepare_tracker_dir(d, _meta(sequences=("b", "a")))
    assert merged.sequences == ("a", "b") and read_meta(d).sequences == ("a", "b")
    with pytest.raises(ResultsError, match=r"model_version: '3' there, '4' now.*overwrite"):
        prepare_tracker_dir(d, _meta(model_version="4"))
    with pytest.raises(ResultsError, match="root"):
        prepare_tracker_dir(d, _meta(root="/other"))
    replaced = prepare_tracker_dir(d, _meta(model="/ckpt/b1.pt", model_version=None, sequences=("c",)), overwrite=True)
    assert read_meta(d) == replaced and replaced.sequences == ("c",)


def test_results_are_reused_only_under_the_same_tracker_settings(tmp_path, caplog):
    d = tmp_path / "t"
    settings = tracking_settings("dimp", {"use_iou_net": False, "seed": 0}, {"file": "/w.pt", "size": 9})
    prepare_tracker_dir(d, _meta(sequences=("a", "b"), settings=settings))
    for name in ("a", "b"):
        write_result(d, name, np.ones((3, 4)), np.ones(3))
    frames = {"a": 3, "b": 3}

    prepare_tracker_dir(d, _meta(sequences=("a", "b"), settings=settings))
    assert complete_sequences(d, frames) == {"a", "b"}  # unchanged: reused
    assert read_meta(d).settings == settings

    changed = tracking_settings("dimp", {"use_iou_net": True, "seed": 0}, {"file": "/w.pt", "size": 9})
    with caplog.at_level(logging.WARNING, logger="cmd_ray.evaluation.results"):
        meta = prepare_tracker_dir(d, _meta(sequences=("b",), settings=changed))
    assert complete_sequences(d, frames) == set()
    assert sorted(p.name for p in d.iterdir()) == [META_FILE]
    assert "results not reused" in caplog.text and "tracker.use_iou_net: False → True" in caplog.text
    assert "removing 4 old result file(s)" in caplog.text
    assert meta.sequences == ("b",) and read_meta(d).settings == changed  # the old sequences left with their files

    # a rewritten weights file (same URI) is another model
    write_result(d, "b", np.ones((3, 4)), np.ones(3))
    restamped = tracking_settings("dimp", {"use_iou_net": True, "seed": 0}, {"file": "/w.pt", "size": 10})
    prepare_tracker_dir(d, _meta(sequences=("b",), settings=restamped))
    assert complete_sequences(d, frames) == set()


def test_an_old_meta_without_settings_is_not_reused(tmp_path, caplog):
    d = tmp_path / "t"
    write_meta(d, _meta())  # as an earlier cmd-ray wrote it: no settings
    write_result(d, "a", np.ones((3, 4)), np.ones(3))
    with caplog.at_level(logging.WARNING, logger="cmd_ray.evaluation.results"):
        prepare_tracker_dir(d, _meta(settings=tracking_settings("dimp", {"seed": 0}, None)))
    assert "records no tracker settings" in caplog.text
    assert complete_sequences(d, {"a": 3}) == set()
    # a caller that does not know its settings (None) reuses what is there
    write_result(d, "a", np.ones((3, 4)), np.ones(3))
    prepare_tracker_dir(d, _meta())
    assert complete_sequences(d, {"a": 3}) == {"a"}


def test_the_static_baseline_ignores_the_tracker_parameters():
    assert tracking_settings("static", {"use_iou_net": True}, None) == {}
    assert tracking_settings("dimp", {"step": (1.0, 2.0)}, None) == {"tracker": {"step": [1.0, 2.0]}, "weights": None}


def test_score_directory_matches_the_metrics_and_names_missing_results(tmp_path):
    gt_a = np.array([[10, 10, 20, 20]] * 5, dtype=np.float64)
    gt_b = np.array([[50, 40, 10, 30]] * 4, dtype=np.float64)
    pred_a = gt_a + np.array([3.0, 0, 0, 0])
    pred_b = gt_b.copy()
    pred_b[1:, 0] += 40  # lost after frame 1
    seqs = [_seq("a", gt_a, {"occlusion": True}), _seq("b", gt_b, {"occlusion": False})]
    d = tmp_path / "tr"
    write_result(d, "a", pred_a, np.full(5, 0.1))
    with pytest.raises(ResultsError, match=r"1 sequence\(s\): \['b'\]"):
        score_directory(d, seqs)
    write_result(d, "b", pred_b, np.full(4, 0.2))
    scores = score_directory(d, seqs, "lsotb")
    expected = aggregate(
        {"a": sequence_curves(pred_a, gt_a), "b": sequence_curves(pred_b, gt_b)},
        {"a": {"occlusion": True}, "b": {"occlusion": False}},
    )
    assert scores.success == pytest.approx(expected.success)
    assert scores.precision == pytest.approx(expected.precision)
    assert scores.norm_precision == pytest.approx(expected.norm_precision)
    assert scores.per_attribute["occlusion"].sequences == ("a",)
    assert scores.precision == pytest.approx((1.0 + 0.25) / 2)  # a: 3 px off everywhere; b: only frame 1 within 20
    assert frame_rate(d, ["a", "b"]) == pytest.approx(9 / (0.5 + 0.8))
    assert math.isnan(frame_rate(d, ["a", "b"], kind="static"))  # copying a box has no meaningful speed
    assert score_directory(d, seqs, "pytracking").protocol == "pytracking"


def test_per_sequence_rows_mark_dropped_and_excluded_sequences():
    gt = np.array([[10, 10, 20, 20]] * 4, dtype=np.float64)
    gt_c = gt.copy()
    gt_c[0, 0] = 0.0  # frame 1 invalid: a tracker far off afterwards scores zero on every frame
    far = np.array([[200, 200, 20, 20]] * 4, dtype=np.float64)
    for protocol, status_c in (("lsotb", "dropped"), ("pytracking", "averaged")):
        curves = {
            "x": {"a": sequence_curves(gt, gt, protocol), "c": sequence_curves(far, gt_c, protocol)},
            "y": {"a": sequence_curves(gt, gt, protocol), "c": sequence_curves(gt, gt_c, protocol)},
        }
        rows = per_sequence_rows(aggregate_trackers(curves, ["a", "c"]), {"x": {"a": 25.0}})
        assert [(r["tracker"], r["sequence"], r["status"]) for r in rows] == [
            ("x", "a", "averaged"),
            ("x", "c", status_c),
            ("y", "a", "averaged"),
            ("y", "c", "averaged"),
        ]
        assert rows[0]["fps"] == 25.0 and rows[1]["fps"] is None
        assert rows[1]["success_auc"] == 0.0 and rows[3]["op50"] == 0.75  # y: frames 2-4 exact, frame 1 invalid
    curves["x"].pop("a")  # pytracking: 'a' is excluded for both, and only y's row of it remains
    scores = aggregate_trackers(curves, ["a", "c"])
    rows = per_sequence_rows(scores)
    assert [(r["tracker"], r["sequence"], r["status"]) for r in rows] == [
        ("x", "c", "averaged"),
        ("y", "a", "excluded"),
        ("y", "c", "averaged"),
    ]
    text = format_per_sequence_csv(rows)
    assert text.splitlines()[1] == "x,c,4,0.000000,0.000000,0.250000,0.000000,0.000000,,averaged"
    assert json.loads(format_per_sequence_json(rows, scores, "synthetic"))["excluded"] == ["a"]
