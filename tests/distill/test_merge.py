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

from cmd_ray.distill.merge import merge_branches, merge_modules, part_prefixes
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


@pytest.mark.parametrize(("part", "key"), [("tcl", CLF_KEY), ("bbe_reference", REF_KEY), ("bbe_test", TEST_KEY)])
def test_merge_modules_takes_exactly_the_named_part(tmp_path, state_a, state_b, part, key):
    torch.save(state_a, tmp_path / "base.pt")
    torch.save(state_b, tmp_path / "other.pt")
    merged = torch.load(merge_modules(tmp_path / "base.pt", tmp_path / "m.pt", **{part: tmp_path / "other.pt"}))
    prefixes = part_prefixes(part)
    assert key.startswith(prefixes) and not torch.equal(state_a[key], state_b[key])
    for name, value in merged.items():
        assert torch.equal(value, (state_b if name.startswith(prefixes) else state_a)[name]), name


def test_the_d_rows_start_is_b3_with_c1s_classifier(tmp_path, state_a, state_b):
    """§4.3: D1–D5 start from merge(B3, C1); B3 itself is merge(B1, B2)."""
    b1, b2, c1 = state_a, state_b, {k: v + 1 for k, v in state_a.items()}
    for name, state in (("b1", b1), ("b2", b2), ("c1", c1)):
        torch.save(state, tmp_path / f"{name}.pt")
    b3 = merge_branches(tmp_path / "b1.pt", tmp_path / "b2.pt", tmp_path / "b3.pt")
    start = torch.load(merge_modules(b3, tmp_path / "d.pt", tcl=tmp_path / "c1.pt"), weights_only=True)
    assert torch.equal(start[CLF_KEY], c1[CLF_KEY])
    assert torch.equal(start[REF_KEY], b1[REF_KEY]) and torch.equal(start[TEST_KEY], b2[TEST_KEY])


def test_merge_modules_refuses_what_does_not_fit(tmp_path, state_a):
    torch.save(state_a, tmp_path / "a.pt")
    no_classifier = {k: v for k, v in state_a.items() if not k.startswith("classifier.")}
    torch.save(no_classifier, tmp_path / "atom.pt")
    with pytest.raises(CheckpointError, match=r"has no tcl weights"):
        merge_modules(tmp_path / "atom.pt", tmp_path / "out.pt", tcl=tmp_path / "a.pt")
    with pytest.raises(CheckpointError, match="key sets differ"):
        merge_modules(tmp_path / "a.pt", tmp_path / "out.pt", tcl=tmp_path / "atom.pt")
    with pytest.raises(ValueError, match="unknown merge part 'backbone'"):
        merge_modules(tmp_path / "a.pt", tmp_path / "out.pt", backbone=tmp_path / "a.pt")
    with pytest.raises(ValueError, match="name at least one part"):
        merge_modules(tmp_path / "a.pt", tmp_path / "out.pt", tcl=None)
