"""The B3 merge: the reference branch from one checkpoint, the test branch from another; files that do not fit are
refused, and a malicious pytracking file runs nothing."""

from __future__ import annotations

import pytest
import torch
from checkpoint_fakes import (
    CLF_KEY,
    REF_KEY,
    TEST_KEY,
    TEST_PREFIXES,
    SystemPayload,
    assert_same_state,
    tiny_state,
    write_malicious,
    write_pytracking,
)

from cmd_ray.distill.merge import merge_branches
from cmd_ray.models.checkpoint import load_state_dict
from cmd_ray.models.safe_unpickler import CheckpointError
from cmd_ray.models.training_state import rng_state, save_training_state


@pytest.mark.parametrize("test_kind", ["pytracking", "plain", "folder"])
def test_merge_takes_each_branch_from_its_side(tmp_path, state_a, state_b, test_kind):
    ref_dir = tmp_path / "ref_run"
    ref_dir.mkdir()
    save_training_state(ref_dir, {"model": state_a, "epoch": 3, "rng": rng_state()})
    test_path = {
        "pytracking": lambda: write_pytracking(tmp_path / "b.pth.tar", state_b),
        "plain": lambda: (torch.save(state_b, tmp_path / "b.pt"), tmp_path / "b.pt")[1],
        "folder": lambda: save_training_state(tmp_path, {"model": state_b, "epoch": 1}).parent,
    }[test_kind]()

    out = merge_branches(ref_dir, test_path, tmp_path / "merged" / "b3.pt")

    merged = torch.load(out, weights_only=True)
    assert list(merged) == list(state_a)
    for key in (REF_KEY, TEST_KEY, CLF_KEY):
        assert not torch.equal(state_a[key], state_b[key])  # the two sides differ, so the checks can fail
    assert torch.equal(merged[REF_KEY], state_a[REF_KEY])
    assert torch.equal(merged[TEST_KEY], state_b[TEST_KEY])
    assert torch.equal(merged[CLF_KEY], state_a[CLF_KEY])
    for key, value in merged.items():
        expected = state_b[key] if key.startswith(TEST_PREFIXES) else state_a[key]
        assert torch.equal(value, expected), key
    assert sum(k.startswith(TEST_PREFIXES) for k in merged) > 10


def test_merge_of_mismatched_checkpoints_raises(tmp_path, state_a):
    a = tmp_path / "a.pt"
    torch.save(state_a, a)
    wider = tmp_path / "wider.pt"
    torch.save(tiny_state(2, clf_out_dim=32), wider)
    with pytest.raises(CheckpointError, match="shapes differ"):
        merge_branches(a, wider, tmp_path / "out.pt")
    fewer = tmp_path / "fewer.pt"
    torch.save({k: v for k, v in state_a.items() if k != CLF_KEY}, fewer)
    with pytest.raises(CheckpointError, match="key sets differ"):
        merge_branches(fewer, a, tmp_path / "out.pt")
    no_iounet = tmp_path / "no_iounet.pt"
    torch.save({k: v for k, v in state_a.items() if not k.startswith("bb_regressor.")}, no_iounet)
    with pytest.raises(CheckpointError, match="IoU-Net"):
        merge_branches(no_iounet, no_iounet, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_merge_and_load_state_dict_run_nothing(tmp_path, state_a):
    path = write_malicious(tmp_path, SystemPayload, state_a, "top")
    assert_same_state(load_state_dict(path), state_a)
    merge_branches(path, path, tmp_path / "out.pt")
    assert not (tmp_path / "pwned").exists()
