"""The pure parts of the Ray Data pipeline module (the streaming itself runs in the end-to-end tests)."""

import pytest

from cmd_ray.data.pipeline import split_pairs


def pairs(n):
    return [(f"s3://b/rgb/{i:05d}.jpg", f"s3://b/tir/{i:05d}.jpg") for i in range(n)]


def test_split_is_deterministic_disjoint_and_near_the_fraction():
    train, val = split_pairs(pairs(2000), 0.1)
    assert split_pairs(pairs(2000), 0.1) == (train, val)
    assert not set(train) & set(val)
    assert len(train) + len(val) == 2000
    assert 150 < len(val) < 250


def test_split_is_stable_when_pairs_are_added():
    _, val_small = split_pairs(pairs(500), 0.2)
    _, val_large = split_pairs(pairs(1000), 0.2)
    assert set(val_small) <= set(val_large)


def test_tiny_sets_still_get_a_validation_pair_and_zero_disables_it():
    train, val = split_pairs(pairs(3), 0.01)
    assert len(val) == 1 and len(train) == 2
    assert split_pairs(pairs(3), 0.0) == (pairs(3), [])


def test_split_that_leaves_nothing_to_train_names_the_setting():
    with pytest.raises(ValueError, match="val_fraction"):
        split_pairs(pairs(1), 0.99)
