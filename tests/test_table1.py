"""Table 1 without a cluster: which rows a table needs, each row's config (paper rates, boxes, seed, start), the
merged weights, and the summary table (mean ± std over seeds, deltas to A1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from checkpoint_fakes import CLF_KEY, REF_KEY, TEST_KEY, tiny_state

from cmd_ray.config import ConfigError, load_config
from cmd_ray.evaluation.metrics import Scores
from cmd_ray.evaluation.tables import format_table1, summarise_rows
from cmd_ray.table1 import check_table, merge_into, row_config
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
    # a rerun keeps what exists
    assert not merge_into(cfg, start_uri, b3_uri, tcl=str(tmp_path / "b2.pt"))
    assert torch.equal(torch.load(start_uri, weights_only=True)[CLF_KEY], c1[CLF_KEY])


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


def test_the_job_refuses_a_table_without_a_teacher_before_any_cluster_work(capsys):
    from cmd_ray import cli

    assert cli.main(["table1", "--seeds", "2"]) == 2
    assert "table1 needs model.init_checkpoint" in capsys.readouterr().err
