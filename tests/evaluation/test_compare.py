"""``cmd-ray compare``: Table-1 style deltas and per-attribute tables computed from known boxes (no Ray)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from cmd_ray import cli
from cmd_ray.evaluation.results import (
    PER_SEQUENCE_COLUMNS,
    ResultMeta,
    ResultsError,
    load_results,
    write_meta,
    write_result,
)
from cmd_ray.evaluation.tables import format_attribute_table, format_comparison

# Two sequences of 5 frames with a fixed 20x20 target. 'perfect' returns the ground truth; 'lost' is 30 px off from
# frame 2 on (IoU 0, centre error 30 px), so by docs/evaluation.md (lsotb):
#   perfect: Success = 20/21 (IoU 1 > t for t < 1), Precision@20 = 1, Norm. Precision = 1
#   lost:    Success = 20/21 * 1/5, Precision@20 = 1/5, Norm. Precision = 1/5 (30/20 = 1.5 > 0.5)
GT = np.array([[10.0, 10.0, 20.0, 20.0]] * 5)
PERFECT_SUCCESS = 20 / 21
LOST_SUCCESS = 20 / 21 / 5


def _write_benchmark(root: Path, attributes: dict[str, dict[str, int]]) -> None:
    for name, flags in attributes.items():
        img = root / name / "img"
        img.mkdir(parents=True)
        for i in range(len(GT)):
            (img / f"{i + 1:04d}.jpg").write_bytes(b"")  # scoring reads only the ground truth
        (root / name / "groundtruth_rect.txt").write_text("".join(",".join(map(str, b)) + "\n" for b in GT))
        (root / name / "attributes.txt").write_text("".join(f"{k},{v}\n" for k, v in flags.items()))


def _write_tracker(results: Path, name: str, index: int, root: Path, seqs: list[str], boxes: np.ndarray) -> Path:
    d = results / name
    for s in seqs:
        write_result(d, s, boxes, np.full(len(boxes), 0.01))
    write_meta(
        d,
        ResultMeta(
            tracker=name,
            kind="dimp",
            model=f"models:/{name}@candidate",
            model_version=None,
            benchmark="synthetic",
            root=str(root),
            lsotb_subset=None,
            protocol="lsotb",
            sequences=tuple(seqs),
            index=index,
        ),
    )
    return d


@pytest.fixture
def folders(tmp_path):
    root = tmp_path / "seqs"
    _write_benchmark(root, {"s1": {"occlusion": 1, "distractor": 0}, "s2": {"occlusion": 0, "distractor": 0}})
    lost = GT.copy()
    lost[1:, 0] += 30
    results = tmp_path / "results"
    # 'lost' is listed first by the evaluation (index 0), 'perfect' second.
    lost_dir = _write_tracker(results, "lost", 0, root, ["s1", "s2"], lost)
    perfect_dir = _write_tracker(results, "perfect", 1, root, ["s1", "s2"], GT)
    return results, perfect_dir, lost_dir


def test_scores_from_known_boxes(folders):
    _, perfect_dir, lost_dir = folders
    perfect, lost = load_results([perfect_dir, lost_dir])
    assert perfect.label == "perfect" and lost.label == "lost"
    assert perfect.scores.success == pytest.approx(PERFECT_SUCCESS)
    assert perfect.scores.precision == 1.0 and perfect.scores.norm_precision == 1.0
    assert lost.scores.success == pytest.approx(LOST_SUCCESS)
    assert lost.scores.precision == pytest.approx(0.2) and lost.scores.norm_precision == pytest.approx(0.2)
    assert perfect.fps == pytest.approx(100.0)


def test_table_has_deltas_to_the_first(folders):
    _, perfect_dir, lost_dir = folders
    loaded = load_results([perfect_dir, lost_dir])
    table = format_comparison({r.label: r.scores for r in loaded}, dataset="synthetic")
    lines = table.splitlines()
    assert lines[0] == "OPE — protocol: lsotb — dataset: synthetic — deltas to perfect"
    perfect_row = next(line for line in lines if line.startswith("perfect"))
    lost_row = next(line for line in lines if line.startswith("lost"))
    assert "(" not in perfect_row  # the reference row has no deltas
    assert perfect_row.split()[1:4] == [f"{PERFECT_SUCCESS:.3f}", "1.000", "1.000"]
    delta_s = f"{LOST_SUCCESS - PERFECT_SUCCESS:+.3f}"
    assert delta_s == "-0.762"
    assert f"{LOST_SUCCESS:.3f} ({delta_s})" in lost_row
    with_fps = format_comparison({r.label: r.scores for r in loaded}, fps={"perfect": 100.0, "lost": float("nan")})
    rows = {line.split()[0]: line.split() for line in with_fps.splitlines()[3:]}
    assert rows["perfect"][-2] == "100.0" and rows["lost"][-2] == "–"  # a speed that means nothing shows as a dash
    assert "0.200 (-0.800)" in lost_row  # precision and norm. precision


def test_attribute_table(folders):
    _, perfect_dir, lost_dir = folders
    loaded = load_results([perfect_dir, lost_dir])
    table = format_attribute_table({r.label: r.scores for r in loaded}, "precision")
    assert table.splitlines()[0] == "Per attribute — Prec@20px — protocol: lsotb — deltas to perfect"
    occlusion = next(line for line in table.splitlines() if line.startswith("occlusion"))
    assert occlusion.split()[:3] == ["occlusion", "1", "1.000"] and "0.200 (-0.800)" in occlusion
    assert "distractor" not in table  # no sequence carries it


def test_results_dir_expands_in_evaluation_order(folders):
    results, _, _ = folders
    assert [r.label for r in load_results([results])] == ["lost", "perfect"]


def test_cli_compare_prints_both_tables_and_writes_plots(folders, tmp_path, capsys):
    _, perfect_dir, lost_dir = folders
    assert cli.main(["compare", str(perfect_dir), str(lost_dir), "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "deltas to perfect" in out and "(-0.762)" in out and "(-0.800)" in out
    assert "Per attribute — Success" in out and "Per attribute — Prec@20px" in out
    assert "NormPrec(AUC)" in out and "FPS" in out
    for name in ("success_plot.png", "precision_plot.png", "norm_precision_plot.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_cli_compare_under_pytracking(folders, capsys):
    _, perfect_dir, lost_dir = folders
    assert cli.main(["compare", str(perfect_dir), str(lost_dir), "--protocol", "pytracking"]) == 0
    out = capsys.readouterr().out
    assert "protocol: pytracking" in out and "NormPrec@0.20" in out


def test_cli_compare_refuses_bad_folders(folders, tmp_path, capsys):
    results, perfect_dir, _ = folders
    assert cli.main(["compare", str(tmp_path / "nope")]) == 2
    assert "results folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["compare", str(tmp_path / "empty")]) == 2
    assert "holds no tracker results" in capsys.readouterr().err
    (perfect_dir / "s2.txt").unlink()
    assert cli.main(["compare", str(results)]) == 2
    err = capsys.readouterr().err
    assert "no complete result" in err and "['s2']" in err and "perfect" in err


def test_folders_over_different_sequences_are_refused(folders, tmp_path):
    _, perfect_dir, _ = folders
    other = _write_tracker(tmp_path / "other", "partial", 0, tmp_path / "seqs", ["s1"], GT)
    with pytest.raises(ResultsError, match="different sequences"):
        load_results([perfect_dir, other])


def test_same_tracker_name_from_two_runs_gets_distinct_labels(folders, tmp_path):
    _, perfect_dir, _ = folders
    again = _write_tracker(tmp_path / "run2", "perfect", 0, tmp_path / "seqs", ["s1", "s2"], GT)
    labels = [r.label for r in load_results([perfect_dir, again])]
    assert labels == ["perfect@results", "perfect@run2"]


def test_pytracking_excludes_for_every_tracker_a_sequence_one_folder_lacks(folders, capsys, caplog):
    _, perfect_dir, lost_dir = folders
    (perfect_dir / "s2.txt").unlink()
    with pytest.raises(ResultsError, match=r"\['s2'\]"):  # lsotb: every result is needed
        load_results([perfect_dir, lost_dir], "lsotb")
    perfect, lost = load_results([perfect_dir, lost_dir], "pytracking")
    assert perfect.scores.excluded == lost.scores.excluded == ("s2",)
    assert perfect.scores.sequences == lost.scores.sequences == ("s1",)
    assert lost.scores.success == pytest.approx(LOST_SUCCESS) and lost.scores.precision == pytest.approx(0.2)
    assert "s2 (no result from perfect)" in caplog.text
    assert lost.fps == pytest.approx(100.0)  # over the sequences scored
    assert cli.main(["compare", str(perfect_dir), str(lost_dir), "--protocol", "pytracking"]) == 0
    out = capsys.readouterr().out
    assert "1 (1 excluded)" in out
    assert "1 sequence(s) excluded for every tracker (some tracker has no result): s2" in out


def test_pytracking_compares_folders_over_different_sequences(folders, tmp_path):
    _, perfect_dir, _ = folders
    partial = _write_tracker(tmp_path / "other", "partial", 0, tmp_path / "seqs", ["s1"], GT)
    a, b = load_results([perfect_dir, partial], "pytracking")
    assert a.scores.excluded == b.scores.excluded == ("s2",)
    assert b.scores.success == pytest.approx(PERFECT_SUCCESS)


# ------------------------------------------------------------------------------------------ plain result folders


def _plain(folder: Path, boxes: np.ndarray, seqs: list[str], sep: str, times: dict[str, float] | None = None) -> Path:
    """A result folder as another toolkit leaves it: ``<seq>.txt`` (and maybe ``<seq>_time.txt``), no meta.json."""
    folder.mkdir(parents=True)
    for s in seqs:
        (folder / f"{s}.txt").write_text("".join(sep.join(f"{v:g}" for v in b) + "\n" for b in boxes))
        if times and s in times:
            (folder / f"{s}_time.txt").write_text(f"{times[s]}\n" * len(boxes))
    return folder


def test_plain_folders_are_scored_with_the_benchmark_named(tmp_path, capsys):
    root = tmp_path / "seqs"
    _write_benchmark(root, {"s1": {"occlusion": 1}, "s2": {"occlusion": 0}})
    lost = GT.copy()
    lost[1:, 0] += 30
    other = tmp_path / "other_toolkit"
    _plain(other / "good", GT, ["s1", "s2"], ",", times={"s1": 0.02})
    _plain(other / "bad", lost, ["s1", "s2"], "\t")
    with pytest.raises(ResultsError, match="--benchmark NAME --root URI"):
        load_results([other / "good"])
    good, bad = load_results([other / "good", other / "bad"], benchmark="synthetic", root=str(root))
    assert (good.label, bad.label) == ("good", "bad") and good.meta is None and good.benchmark == "synthetic"
    assert good.scores.success == pytest.approx(PERFECT_SUCCESS) and good.scores.precision == 1.0
    assert bad.scores.success == pytest.approx(LOST_SUCCESS) and bad.scores.precision == pytest.approx(0.2)
    # FPS from the time files that exist: s1 only for 'good' (0.02 s a frame), none for 'bad'.
    assert good.fps == pytest.approx(50.0) and good.sequence_fps == {"s1": pytest.approx(50.0)}
    assert math.isnan(bad.fps) and bad.sequence_fps == {}
    # The parent folder stands for its plain sub-folders, by name.
    assert [r.label for r in load_results([other], benchmark="synthetic", root=str(root))] == ["bad", "good"]
    out = tmp_path / "cmp"
    argv = ["compare", str(other / "good"), str(other / "bad"), "--benchmark", "synthetic", "--root", str(root)]
    assert cli.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "deltas to good" in printed and f"{LOST_SUCCESS:.3f} ({LOST_SUCCESS - PERFECT_SUCCESS:+.3f})" in printed
    assert (out / "ope_tables.txt").read_text().startswith("OPE — protocol: lsotb — dataset: synthetic")
    assert sorted(p.name for p in out.iterdir()) == ["ope_tables.txt", "per_sequence.csv", "per_sequence.json"]


def test_plain_folder_missing_a_result(tmp_path):
    root = tmp_path / "seqs"
    _write_benchmark(root, {"s1": {}, "s2": {}})
    a = _plain(tmp_path / "a", GT, ["s1", "s2"], ",")
    b = _plain(tmp_path / "b", GT, ["s1"], ",")
    with pytest.raises(ResultsError, match=r"one line per frame in <seq>\.txt\) for 1 sequence\(s\): \['s2'\]"):
        load_results([a, b], benchmark="synthetic", root=str(root))
    ra, rb = load_results([a, b], "pytracking", benchmark="synthetic", root=str(root))
    assert ra.scores.excluded == rb.scores.excluded == ("s2",) and ra.scores.sequences == ("s1",)
    assert cli.main(["compare", str(a), "--benchmark", "nope", "--root", str(root)]) == 2


def test_per_sequence_csv_and_json(folders, tmp_path):
    _, perfect_dir, lost_dir = folders
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(perfect_dir), str(lost_dir), "--out", str(out)]) == 0
    with (out / "per_sequence.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(PER_SEQUENCE_COLUMNS)
    assert [(r["tracker"], r["sequence"]) for r in rows] == [
        ("perfect", "s1"),
        ("perfect", "s2"),
        ("lost", "s1"),
        ("lost", "s2"),
    ]
    perfect, lost = rows[0], rows[2]
    # perfect: IoU 1 on every frame; lost: IoU 1 on frame 1 only, 30 px (1.5 widths) off on the other 4.
    assert float(perfect["success_auc"]) == pytest.approx(PERFECT_SUCCESS, abs=1e-6)
    assert (perfect["precision_20px"], perfect["norm_precision"]) == ("1.000000", "1.000000")
    assert (perfect["op50"], perfect["op75"]) == ("1.000000", "1.000000")
    assert float(lost["success_auc"]) == pytest.approx(LOST_SUCCESS, abs=1e-6)
    assert lost["precision_20px"] == lost["norm_precision"] == lost["op50"] == lost["op75"] == "0.200000"
    assert perfect["fps"] == "100.000" and perfect["frames"] == "5" and perfect["status"] == "averaged"
    tree = json.loads((out / "per_sequence.json").read_text())
    assert tree["protocol"] == "lsotb" and tree["benchmark"] == "synthetic" and tree["excluded"] == []
    assert len(tree["rows"]) == 4 and tree["rows"][2]["op75"] == pytest.approx(0.2)
    assert tree["rows"][0]["success_auc"] == pytest.approx(PERFECT_SUCCESS)
