"""Weights files: any checkpoint's state dict (``load_state_dict``), unreadable files named, load reports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from checkpoint_fakes import CLF_KEY, REF_KEY, TEST_KEY, assert_same_state, write_pytracking

from cmd_ray.distill.merge import merge_branches
from cmd_ray.models.checkpoint import load_into, load_state_dict
from cmd_ray.models.dimpnet import build_dimpnet
from cmd_ray.models.pytracking_checkpoint import (
    load_pytracking_checkpoint,
)
from cmd_ray.models.safe_unpickler import CheckpointError


def test_load_state_dict_reads_pytracking_files(tmp_path, state_a):
    assert_same_state(load_state_dict(write_pytracking(tmp_path / "p.pth.tar", state_a)), state_a)


def _truncate(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


@pytest.mark.parametrize(
    "make",
    [
        lambda d, good, legacy: (d / "random.pth.tar", (d / "random.pth.tar").write_bytes(os.urandom(4096)))[0],
        lambda d, good, legacy: (d / "notes.pth.tar", (d / "notes.pth.tar").write_text("not a checkpoint\n"))[0],
        lambda d, good, legacy: (d / "empty.pth.tar", (d / "empty.pth.tar").write_bytes(b""))[0],
        lambda d, good, legacy: _truncate(good, d / "truncated_zip.pth.tar"),
        lambda d, good, legacy: _truncate(legacy, d / "truncated_legacy.pth.tar"),
        lambda d, good, legacy: d / "missing.pth.tar",
    ],
    ids=["random", "text", "empty", "truncated-zip", "truncated-legacy", "missing"],
)
def test_unreadable_file_raises_checkpoint_error_naming_it(tmp_path, state_a, make):
    good = write_pytracking(tmp_path / "good.pth.tar", state_a)
    legacy = write_pytracking(tmp_path / "good_legacy.pth.tar", state_a, legacy_format=True)
    bad = make(tmp_path, good, legacy)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_pytracking_checkpoint(bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_state_dict(bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        merge_branches(good, bad, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_load_into_reports_missing_unexpected_and_mismatched(state_a, state_b):
    model = build_dimpnet("tiny", optim_iter=1)
    model.load_state_dict(state_b)
    source = dict(state_a)
    del source[CLF_KEY]
    source["classifier.extra.weight"] = torch.zeros(3)
    source[TEST_KEY] = torch.zeros(2, 5)

    report = load_into(model, source)

    assert report.missing_keys == [CLF_KEY]
    assert report.unexpected_keys == ["classifier.extra.weight"]
    assert report.shape_mismatches == {TEST_KEY: ((2, 5), tuple(state_a[TEST_KEY].shape))}
    assert not report.ok and TEST_KEY in str(report)
    loaded = model.state_dict()
    assert torch.equal(loaded[REF_KEY], state_a[REF_KEY])  # what fits was loaded
    assert torch.equal(loaded[TEST_KEY], state_b[TEST_KEY])  # mismatched and missing keys untouched
    assert torch.equal(loaded[CLF_KEY], state_b[CLF_KEY])
    assert len(report.loaded) == len(state_a) - 2
