"""Table 1 without a cluster: which rows a table needs, each row's config (paper rates, boxes, seed, start), the
merged weights, and the summary table (mean ± std over seeds, deltas to A1)."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from checkpoint_fakes import CLF_KEY, REF_KEY, TEST_KEY, tiny_state

from cmd_ray.config import ConfigError, load_config
from cmd_ray.evaluation.metrics import (
    NORM_PRECISION_THRESHOLDS,
    PRECISION_THRESHOLDS,
    SUCCESS_THRESHOLDS,
    DatasetScores,
    Scores,
    SequenceCurves,
    aggregate,
)
from cmd_ray.evaluation.tables import format_table1, summarise_rows
from cmd_ray.table1 import check_table, merge_into, read_merged_from, row_config
from cmd_ray.vocabulary import VARIANT_NAMES, row_dependencies, table1_rows


def test_dependencies_follow_the_paper():
    assert row_dependencies("B3") == ("B1", "B2")
    assert row_dependencies("D3") == ("B1", "B2", "B3", "C1")
    assert row_dependencies("B1") == ()


def test_a_table_adds_a1_and_what_its_rows_depend_on_in_dependency_order():
    assert table1_rows(None) == VARIANT_NAMES
    assert table1_rows(["D4"]) == ("A1", "B1", "B2", "B3", "C1", "D4")
    assert table1_rows(["C1", "B2"]) == ("A1", "B2", "C1")
    assert table1_rows(None, "atom") == ("A1", "B1", "B2", "B3")
    with pytest.raises(ValueError, match="D1: the target classifier"):
        table1_rows(["D1"], "atom")


def test_rows_train_at_their_paper_rates_unless_the_config_sets_one():
    base = load_config("configs/dimp50.yaml", [])
    rates = {row: row_config(base, row, 0).distill for row in ("B1", "B2", "C1", "D1", "D5")}
    assert (rates["B1"].lr_bbe, rates["B2"].lr_bbe, rates["C1"].lr_tcl) == (1e-6, 1e-6, 1e-6)
    assert (rates["D1"].lr_tcl, rates["D1"].lr_bbe) == (2e-8, 1e-7)
    assert rates["C1"].rate_overrides() == {}

    explicit = load_config("configs/dimp50.yaml", ["distill.lr_bbe=3e-5"])
    b1 = row_config(explicit, "B1", 0).distill
    assert b1.lr_bbe == 3e-5 and b1.rate_overrides() == {"lr_bbe": (3e-5, 1e-6)}
    assert row_config(explicit, "C1", 0).distill.lr_tcl == 1e-6  # lr_tcl still the row's


def test_every_row_trains_at_its_paper_rates_times_lr_scale_and_explicit_rates_stay_as_given():
    scaled = load_config("configs/dimp50.yaml", ["distill.lr_scale=50"])
    rates = {row: row_config(scaled, row, 0).distill for row in ("B1", "B2", "C1", "D3")}
    assert (rates["B1"].lr_bbe, rates["B2"].lr_bbe, rates["C1"].lr_tcl) == (5e-5, 5e-5, 5e-5)
    assert (rates["D3"].lr_tcl, rates["D3"].lr_bbe) == (1e-6, 5e-6)  # the D rows' 1:5 ratio kept
    assert (rates["B1"].lr_tcl, rates["C1"].lr_bbe) == (0.0, 0.0)  # a module a row does not train stays at 0
    assert all(r.lr_scale == 50 and r.rate_overrides() == {} for r in rates.values())

    explicit = load_config("configs/dimp50.yaml", ["distill.lr_scale=50", "distill.lr_bbe=3e-5"])
    assert row_config(explicit, "B1", 0).distill.lr_bbe == 3e-5  # not scaled
    assert row_config(explicit, "D3", 0).distill.lr_tcl == 1e-6  # the unset rate still is


def test_row_config_sets_boxes_seed_start_and_run_name():
    base = load_config(
        None,
        [
            "distill.seed=7",
            "table1.run_name=t1",
            "table1.epochs=3",
            "distill.samples_per_epoch=80",
            "model.init_checkpoint=teacher.pt",
        ],
    )
    cfg = row_config(base, "D4", 2, ("s3://bucket/t1/s2/B3.pt", "s3://bucket/t1-C1-s2/epoch_0002"))
    assert (cfg.distill.epochs, cfg.distill.samples_per_epoch) == (3, 80)
    assert cfg.data.boxes == "random" and cfg.distill.variant == "D4"
    assert cfg.distill.seed == 9
    # a D row starts from B3 with C1's classifier, given as distill.start; the teacher stays model.init_checkpoint
    assert (cfg.distill.start.b3, cfg.distill.start.c1) == (
        "s3://bucket/t1/s2/B3.pt",
        "s3://bucket/t1-C1-s2/epoch_0002",
    )
    assert cfg.model.init_checkpoint == "teacher.pt"
    assert cfg.distill.run_label == "D4" and cfg.distill.start_kind == "merge(B3,C1)"
    assert cfg.storage.run_name == "t1-D4-s2"
    c1 = row_config(base, "C1", 2)
    assert not c1.distill.start.given and c1.distill.run_label == "C1"


def test_a_table_refuses_a_d_start_of_its_own():
    cfg = load_config(None, ["model.init_checkpoint=t.pt", "distill.start.b3=b3.pt", "distill.start.c1=c1.pt"])
    with pytest.raises(ConfigError, match=r"unset distill\.start\.b3, distill\.start\.c1"):
        check_table(cfg)


def test_check_table_needs_a_teacher():
    with pytest.raises(ConfigError, match=r"model\.init_checkpoint"):
        check_table(load_config(None, []))
    rows = check_table(load_config(None, ["model.init_checkpoint=t.pt", "table1.rows=[B3]"]))
    assert rows == ("A1", "B1", "B2", "B3")


def test_table1_rows_are_checked_against_the_architecture():
    with pytest.raises(ConfigError, match=r"table1\.rows"):
        load_config("configs/atom18.yaml", ["table1.rows=[C1]"])


def test_merges_give_b3_and_the_d_rows_start(tmp_path):
    b1, b2, c1 = tiny_state(1), tiny_state(2), tiny_state(3)
    for name, state in (("b1", b1), ("b2", b2), ("c1", c1)):
        torch.save(state, tmp_path / f"{name}.pt")
    cfg = load_config(None, [])
    b3_uri, start_uri = str(tmp_path / "out" / "B3.pt"), str(tmp_path / "out" / "start.pt")
    assert merge_into(cfg, b3_uri, str(tmp_path / "b1.pt"), bbe_test=str(tmp_path / "b2.pt"))
    assert merge_into(cfg, start_uri, b3_uri, tcl=str(tmp_path / "c1.pt"))
    start = torch.load(start_uri, weights_only=True)
    assert torch.equal(start[REF_KEY], b1[REF_KEY])
    assert torch.equal(start[TEST_KEY], b2[TEST_KEY])
    assert torch.equal(start[CLF_KEY], c1[CLF_KEY])
    assert not torch.equal(start[CLF_KEY], b1[CLF_KEY])
    backbone = next(k for k in start if k.startswith("feature_extractor."))
    assert torch.equal(start[backbone], b1[backbone])
    # a rerun with the same sources keeps what exists
    assert not merge_into(cfg, b3_uri, str(tmp_path / "b1.pt"), bbe_test=str(tmp_path / "b2.pt"))
    assert not merge_into(cfg, start_uri, b3_uri, tcl=str(tmp_path / "c1.pt"))
    # another source rebuilds it
    assert merge_into(cfg, start_uri, b3_uri, tcl=str(tmp_path / "b2.pt"))
    assert torch.equal(torch.load(start_uri, weights_only=True)[CLF_KEY], b2[CLF_KEY])


def test_a_merged_file_records_its_sources_and_is_rebuilt_when_one_changes(tmp_path, caplog):
    for name, seed in (("b1", 1), ("b2", 2), ("c1", 3)):
        torch.save(tiny_state(seed), tmp_path / f"{name}.pt")
    cfg = load_config(None, [])
    b1, b2, c1 = (str(tmp_path / f"{n}.pt") for n in ("b1", "b2", "c1"))
    b3_uri, start_uri = str(tmp_path / "out" / "B3.pt"), str(tmp_path / "out" / "D-start.pt")
    about = {"base": {"row": "B1", "seed": 0, "run_id": "run-b1"}, "bbe_test": {"row": "B2", "seed": 0, "run_id": "r2"}}
    assert merge_into(cfg, b3_uri, b1, about=about, bbe_test=b2)
    assert merge_into(cfg, start_uri, b3_uri, about={"tcl": {"row": "C1", "run_id": "run-c1"}}, tcl=c1)

    record = json.loads((tmp_path / "out" / "B3.merged_from.json").read_text())
    assert record["weights"] == b3_uri
    assert record["merged_from"]["base"]["run_id"] == "run-b1" and record["merged_from"]["base"]["uri"] == b1
    assert record["merged_from"]["bbe_test"]["file"]["size"] == os.path.getsize(b2)
    assert read_merged_from(start_uri)["base"]["merged_from"] == record["merged_from"]  # B3's sources, nested
    # the loaders still read the merged file as the plain state dict it is
    assert set(torch.load(b3_uri, weights_only=True)) == set(tiny_state(1))

    # unchanged: kept, and the file is not touched
    before = os.stat(b3_uri).st_mtime_ns
    assert not merge_into(cfg, b3_uri, b1, about=about, bbe_test=b2)
    assert os.stat(b3_uri).st_mtime_ns == before

    # B1 retrained into another MLflow run: rebuilt, saying why
    other_run = {**about, "base": {**about["base"], "run_id": "run-b1-again"}}
    with caplog.at_level(logging.INFO, logger="cmd_ray.table1"):
        assert merge_into(cfg, b3_uri, b1, about=other_run, bbe_test=b2)
    assert "base.run_id: 'run-b1' → 'run-b1-again'" in caplog.text

    # B2's checkpoint file rewritten in place (same URI, same run): its stamp changed, so B3 is rebuilt, and the
    # D rows' start, made from the old B3, is rebuilt in turn
    torch.save(tiny_state(4), b2)
    os.utime(b2, ns=(before + 10**9, before + 10**9))
    assert merge_into(cfg, b3_uri, b1, about=other_run, bbe_test=b2)
    assert torch.equal(torch.load(b3_uri, weights_only=True)[TEST_KEY], tiny_state(4)[TEST_KEY])
    assert merge_into(cfg, start_uri, b3_uri, about={"tcl": {"row": "C1", "run_id": "run-c1"}}, tcl=c1)
    assert not merge_into(cfg, start_uri, b3_uri, about={"tcl": {"row": "C1", "run_id": "run-c1"}}, tcl=c1)

    # a merged file without a record (an older cmd-ray, or a merge cut short before the record was written)
    (tmp_path / "out" / "B3.merged_from.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cmd_ray.table1"):
        assert merge_into(cfg, b3_uri, b1, about=other_run, bbe_test=b2)
    assert "records no sources" in caplog.text
    assert (tmp_path / "out" / "B3.merged_from.json").is_file()


def _scores(success: float, precision: float, norm: float) -> Scores:
    return Scores(
        success=success,
        precision=precision,
        norm_precision=norm,
        success_curve=np.zeros(1),
        precision_curve=np.zeros(1),
        norm_precision_curve=np.zeros(1),
        num_sequences_averaged=3,
        sequences=("a", "b", "c"),
    )


def test_summary_is_mean_and_sample_std_over_seeds_with_deltas_to_the_reference():
    scores = {
        "A1": [_scores(0.5, 0.6, 0.55)],
        "D3": [_scores(0.6, 0.7, 0.6), _scores(0.7, 0.8, 0.7), _scores(0.8, 0.6, 0.8)],
    }
    a1, d3 = summarise_rows(scores, "A1")
    assert math.isnan(a1.std["success"]) and a1.delta["success"] == 0
    assert d3.mean["success"] == pytest.approx(0.7)
    assert d3.std["success"] == pytest.approx(0.1)  # ddof=1
    assert d3.delta["precision"] == pytest.approx(0.7 - 0.6)
    assert d3.per_seed["success"] == (0.6, 0.7, 0.8)

    text = format_table1([a1, d3], protocol="lsotb", dataset="synthetic")
    assert "mean ± std over seeds, Δ to A1" in text
    d3_line = next(line for line in text.splitlines() if line.startswith("D3"))
    assert "0.700 ± 0.100" in d3_line and "+0.200" in d3_line and d3_line.rstrip().endswith("3")
    with pytest.raises(ValueError, match="reference row"):
        summarise_rows({"D3": scores["D3"]}, "A1")


def _dataset(per_sequence: dict[str, float]) -> DatasetScores:
    """Dataset scores whose every sequence scores ``per_sequence[name]`` on each metric (flat curves)."""
    curves = {
        name: SequenceCurves(
            protocol="lsotb",
            success=np.full(SUCCESS_THRESHOLDS.shape, v),
            precision=np.full(PRECISION_THRESHOLDS.shape, v),
            norm_precision=np.full(NORM_PRECISION_THRESHOLDS.shape, v),
            num_frames=10,
        )
        for name, v in per_sequence.items()
    }
    return aggregate(curves)


def test_table1_marks_rows_whose_paired_interval_excludes_zero():
    rng = np.random.default_rng(0)
    names = [f"s{i:02d}" for i in range(30)]
    teacher = rng.uniform(0.3, 0.7, len(names))  # sequences of very different difficulty
    a1 = _dataset(dict(zip(names, teacher, strict=True)))
    gain = [_dataset(dict(zip(names, teacher + 0.03 + rng.normal(0, 0.01, len(names)), strict=True))) for _ in range(5)]
    same = [a1] * 5  # e.g. rows that train a module the tracker does not use
    noise = [_dataset(dict(zip(names, teacher + rng.normal(0, 0.02, len(names)), strict=True))) for _ in range(5)]
    a1_row, d3, b1, c1 = summarise_rows({"A1": [a1], "D3": gain, "B1": same, "C1": noise}, "A1")

    assert a1_row.paired == {}
    assert d3.paired["success"].excludes_zero and d3.paired["success"].low > 0
    # flat curves: every metric sees the same per-sequence differences
    assert d3.paired["precision"].mean == pytest.approx(d3.paired["success"].mean)
    diffs = np.mean([[g.per_sequence[n].success_score - teacher[i] for i, n in enumerate(names)] for g in gain])
    assert d3.paired["success"].mean == pytest.approx(diffs)
    assert (b1.paired["success"].low, b1.paired["success"].high) == (0.0, 0.0)
    assert not b1.paired["success"].excludes_zero
    assert not c1.paired["success"].excludes_zero

    text = format_table1([a1_row, d3, b1, c1], protocol="lsotb", dataset="synthetic")
    lines = text.splitlines()
    assert "Δ to A1 paired over seeds × sequences" in lines[0]
    assert "95% CI" in lines[1] and lines[1].split()[-2:] == ["p(Success)", "Seeds"]
    d3_line = next(line for line in lines if line.startswith("D3"))
    p = d3.paired["success"]
    assert f"{p.mean:+.3f}  [{p.low:+.3f}, {p.high:+.3f}] *" in d3_line
    assert "*" not in next(line for line in lines if line.startswith("B1"))
    assert "*" not in next(line for line in lines if line.startswith("C1"))
    assert any(line.startswith("*: the interval excludes 0") for line in lines)
    assert any("10000 resamples, generator seed 0" in line for line in lines)
    # the same scores give the same table
    again = summarise_rows({"A1": [a1], "D3": gain, "B1": same, "C1": noise}, "A1")
    assert format_table1(again, protocol="lsotb", dataset="synthetic") == text
    assert "all-zero success" not in format_table1(again, protocol="pytracking")  # no drops under pytracking


def test_table1_plot_adds_the_paired_differences_when_there_are_some(tmp_path):
    from PIL import Image

    from cmd_ray.evaluation.plots import table1_plot

    names = ["a", "b", "c"]
    a1 = _dataset(dict.fromkeys(names, 0.5))
    paired = summarise_rows({"A1": [a1], "D3": [_dataset(dict.fromkeys(names, 0.6))] * 2}, "A1")
    plain = [replace(s, paired={}) for s in paired]
    with_ci = table1_plot(paired, tmp_path / "paired.png", protocol="lsotb")
    without = table1_plot(plain, tmp_path / "plain.png", protocol="lsotb")
    assert Image.open(with_ci).size[1] > Image.open(without).size[1]  # a second panel below the bars


def test_the_job_refuses_a_table_without_a_teacher_before_any_cluster_work(capsys):
    from cmd_ray import cli

    assert cli.main(["table1", "--seeds", "2"]) == 2
    assert "table1 needs model.init_checkpoint" in capsys.readouterr().err
