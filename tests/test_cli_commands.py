"""``cmd-ray variants``, the rate notes of ``cmd-ray config`` and the wiring of ``cmd-ray merge`` (in-process: no
Ray, no subprocess)."""

from __future__ import annotations

import pytest

from cmd_ray import cli
from cmd_ray.distill import merge
from cmd_ray.vocabulary import VARIANTS


def test_variants_prints_one_line_per_table_row(capsys):
    assert cli.main(["variants"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if not line.startswith(" ")]
    assert len(lines) == 10
    assert [line.split()[0] for line in lines] == list(VARIANTS)
    rows = dict(zip(VARIANTS, lines, strict=True))
    # under each row: the modules it trains through each branch
    modules = dict(zip(VARIANTS, [line.strip() for line in out if line.startswith(" ")], strict=True))
    assert modules["A1"] == modules["B3"] == "gradients: none"
    assert modules["C1"] == (
        "gradients through the reference branch: classifier.{feature_extractor,filter_initializer,filter_optimizer}; "
        "test branch: -"
    )
    assert "reference branch: -; test branch: classifier.feature_extractor bb_regressor.{conv3_1t" in modules["D1"]
    reference, test = modules["D3"].split("; ")
    assert "classifier.{feature_extractor," in reference and "bb_regressor.{conv3_1r," in reference
    assert "classifier.feature_extractor " in test and "iou_predictor" in test
    assert "ref=tir" in rows["B1"] and "test=rgb" in rows["B1"] and "bbe:reference" in rows["B1"]
    assert "lr_bbe=1e-06" in rows["B1"] and "lr_tcl=0 " in rows["B1"]
    assert "ref=mix" in rows["D3"] and "tcl:both bbe:both" in rows["D3"] and "lr_tcl=2e-08 lr_bbe=1e-07" in rows["D3"]
    assert "merge" in rows["B3"] and "B1" in rows["B3"] and "B2" in rows["B3"]
    assert "trains=nothing" in rows["A1"]
    assert "boxes=random" in rows["D4"] and "boxes=detection" in rows["D5"] and "boxes=center" in rows["C1"]


def test_merge_calls_merge_branches_with_the_three_paths(monkeypatch, capsys, tmp_path):
    calls = []

    def fake(reference, test, out):
        calls.append((reference, test, out))
        return tmp_path / "merged.pt"

    monkeypatch.setattr(merge, "merge_branches", fake)
    assert cli.main(["merge", "--reference", "b1.pt", "--test", "b2.pt", "--out", "b3.pt"]) == 0
    assert calls == [("b1.pt", "b2.pt", "b3.pt")]
    assert str(tmp_path / "merged.pt") in capsys.readouterr().out


def test_merge_reports_a_bad_checkpoint(monkeypatch, capsys):
    def fake(reference, test, out):
        raise ValueError(f"checkpoint {reference} does not exist")

    monkeypatch.setattr(merge, "merge_branches", fake)
    assert cli.main(["merge", "--reference", "nope.pt", "--test", "b2.pt", "--out", "b3.pt"]) == 2
    assert "nope.pt does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--reference", "b1.pt"],  # the B3 shorthand needs both sides
        ["--base", "b3.pt"],  # a base and nothing to take
        ["--tcl", "c1.pt"],  # a part without a base
        ["--reference", "b1.pt", "--test", "b2.pt", "--tcl", "c1.pt"],  # both forms at once
    ],
)
def test_merge_refuses_incomplete_or_mixed_arguments(args, capsys):
    assert cli.main(["merge", *args, "--out", "out.pt"]) == 2
    assert "cmd-ray merge:" in capsys.readouterr().err


def test_merge_requires_an_output():
    with pytest.raises(SystemExit):
        cli.main(["merge", "--reference", "b1.pt", "--test", "b2.pt"])


def test_merge_by_module_takes_each_part_from_its_checkpoint(tmp_path, capsys, state_a, state_b):
    """The D rows' start, as a user would make it: B3's weights with C1's classifier."""
    import torch
    from checkpoint_fakes import CLF_KEY, REF_KEY, TEST_KEY

    torch.save(state_a, tmp_path / "b3.pt")
    torch.save(state_b, tmp_path / "c1.pt")
    out = tmp_path / "d_start.pt"
    assert (
        cli.main(["merge", "--base", str(tmp_path / "b3.pt"), "--tcl", str(tmp_path / "c1.pt"), "--out", str(out)]) == 0
    )
    merged = torch.load(out, weights_only=True)
    assert torch.equal(merged[CLF_KEY], state_b[CLF_KEY]) and not torch.equal(state_a[CLF_KEY], state_b[CLF_KEY])
    assert torch.equal(merged[REF_KEY], state_a[REF_KEY]) and torch.equal(merged[TEST_KEY], state_a[TEST_KEY])
    assert "tcl from" in capsys.readouterr().out


def test_merge_end_to_end_on_tiny_state_dicts(tmp_path, capsys):
    import torch

    from cmd_ray.models.dimpnet import build_dimpnet

    torch.manual_seed(0)
    b1, b2 = build_dimpnet("tiny", optim_iter=1).state_dict(), build_dimpnet("tiny", optim_iter=1).state_dict()
    torch.save(b1, tmp_path / "b1.pt")
    torch.save(b2, tmp_path / "b2.pt")
    out = tmp_path / "b3.pt"
    assert (
        cli.main(
            ["merge", "--reference", str(tmp_path / "b1.pt"), "--test", str(tmp_path / "b2.pt"), "--out", str(out)]
        )
        == 0
    )
    merged = torch.load(out, weights_only=True)
    assert torch.equal(merged["bb_regressor.conv3_1r.0.weight"], b1["bb_regressor.conv3_1r.0.weight"])
    assert torch.equal(merged["bb_regressor.conv3_1t.0.weight"], b2["bb_regressor.conv3_1t.0.weight"])
    assert torch.equal(merged["bb_regressor.iou_predictor.weight"], b2["bb_regressor.iou_predictor.weight"])
    assert torch.equal(merged["classifier.feature_extractor.0.weight"], b1["classifier.feature_extractor.0.weight"])
    assert str(out) in capsys.readouterr().out


def test_config_reference_prints_a_markdown_table_per_section(capsys):
    assert cli.main(["config-reference"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Configuration reference\n")
    sections = [line for line in out.splitlines() if line.startswith("## ")]
    assert sections[:2] == ["## `data`", "## `data.sampling`"] and "## `evaluation.trackers[]`" in sections
    assert out.count("| key | type | default | allowed | description |") == len(sections)
    assert "| `distill.lr_backbone` | float | `1e-07` | > 0 |" in out
    with pytest.raises(SystemExit):
        cli.main(["config-reference", "extra"])


def test_config_shows_the_rates_scaled_by_lr_scale_and_what_the_run_is_called(capsys):
    assert cli.main(["config", "--config", "configs/demo.yaml", "distill.variant=C1", "distill.lr_scale=100"]) == 0
    out = capsys.readouterr().out
    assert "  lr_scale: 100.0\n" in out
    assert "# row C1's paper rates x distill.lr_scale 100: lr_tcl=0.0001 = 1e-06 x 100, lr_bbe=0 (not trained)" in out
    assert "# this run is 'C1': it starts from the teacher" in out

    assert cli.main(["config", "distill.lr_scale=10"]) == 0  # no explicit rates: the resolved ones are scaled
    out = capsys.readouterr().out
    assert "  lr_tcl: 2.0e-07\n  lr_bbe: 1.0e-06\n" in out
    assert "# this run is 'D3 loss from the teacher': it starts from the teacher" in out
    assert "overrides" not in out


def test_a_distill_run_that_kept_its_teacher_prints_the_scores_and_says_so(capsys):
    from cmd_ray.registry import RegisteredModel
    from cmd_ray.train.selection import Selection, select_epoch
    from cmd_ray.train.trainer import TrainingResult

    losses = {"loss": 1.0, "loss_tcl": 0.5, "loss_bbe": 0.5}
    teacher = {"teacher_val_success": 0.4, "teacher_val_precision": 0.6}
    history = [{"epoch": 0, **losses, **teacher, "val_success": 0.38, "val_precision": 0.55}, {"epoch": 1, **losses}]
    best = select_epoch("val_success", 0.4, {0: 0.38})
    result = TrainingResult(
        run_id="r",
        run_location="here",
        registered=RegisteredModel("tracker", "3", "candidate", "r"),
        metrics={},
        history=history,
        checkpoint_path="ray_results/run/epoch_0001",
        skipped_pairs=0,
        selection=Selection(best, ""),
    )
    cli._print_training(result, "skipped pairs")
    out = capsys.readouterr().out
    assert "starting weights' val_success: 0.4000 (precision 0.6000)" in out
    assert "epoch 0: loss 1.0000 (tcl 0.5000, bbe 0.5000)  val_success 0.3800 (precision 0.5500)" in out
    assert "epoch 1: loss 1.0000 (tcl 0.5000, bbe 0.5000)\n" in out
    assert "selected:      no epoch beat the teacher's val_success of 0.4000: the teacher's weights (epoch -1)" in out
    assert "registered:    models:/tracker@candidate (version 3)" in out
