"""Table 1 presets."""

from __future__ import annotations

import dataclasses

import pytest

from cmd_ray.vocabulary import SHARED_MODULES, VARIANTS, Variant, get_variant


def test_all_table_rows_present():
    assert list(VARIANTS) == ["A1", "B1", "B2", "B3", "C1", "D1", "D2", "D3", "D4", "D5"]
    assert all(v.name == k for k, v in VARIANTS.items())


@pytest.mark.parametrize(
    ("name", "ref", "test", "tcl", "bbe", "boxes", "lr_tcl", "lr_bbe"),
    [
        ("A1", "rgb", "rgb", None, None, "center", 0.0, 0.0),
        ("B1", "tir", "rgb", None, "reference", "center", 0.0, 1e-6),
        ("B2", "rgb", "tir", None, "test", "center", 0.0, 1e-6),
        ("C1", "tir", "rgb", "reference", None, "center", 1e-6, 0.0),
        ("D1", "rgb", "tir", "test", "test", "center", 2e-8, 1e-7),
        ("D2", "tir", "rgb", "reference", "reference", "center", 2e-8, 1e-7),
        ("D3", "mix", "mix", "both", "both", "center", 2e-8, 1e-7),
        ("D4", "mix", "mix", "both", "both", "random", 2e-8, 1e-7),
        ("D5", "mix", "mix", "both", "both", "detection", 2e-8, 1e-7),
    ],
)
def test_rows(name, ref, test, tcl, bbe, boxes, lr_tcl, lr_bbe):
    v = get_variant(name)
    assert (v.reference_modality, v.test_modality, v.train_tcl, v.train_bbe, v.box_method) == (
        ref,
        test,
        tcl,
        bbe,
        boxes,
    )
    assert (v.lr_tcl, v.lr_bbe) == (lr_tcl, lr_bbe)
    assert v.trains == {"tcl": tcl, "bbe": bbe}
    assert not v.is_merge


def test_b3_is_a_merge_of_b1_reference_and_b2_test():
    b3 = get_variant("B3")
    assert b3.is_merge and not b3.trains_anything
    assert set(b3.merge_of) == {("bbe", "reference", "B1"), ("bbe", "test", "B2")}
    assert (b3.reference_modality, b3.test_modality) == ("tir", "tir")


def test_mix_splits_the_batch():
    ref, test = get_variant("D3").sample_modalities(5)
    assert ref == ("rgb", "rgb", "rgb", "tir", "tir")
    assert test == ("tir", "tir", "tir", "rgb", "rgb")
    assert get_variant("B1").sample_modalities(2) == (("tir", "tir"), ("rgb", "rgb"))


def test_side_by_side_mixing_puts_both_modalities_in_every_sample():
    assert get_variant("D3").sample_modalities(3, "side_by_side") == (("rgb_tir",) * 3, ("tir_rgb",) * 3)
    assert get_variant("D3").sample_modalities(3, "batch_split") == get_variant("D3").sample_modalities(3)
    assert get_variant("B1").sample_modalities(2, "side_by_side") == (("tir", "tir"), ("rgb", "rgb"))  # not mix
    with pytest.raises(ValueError, match="batch_split, side_by_side"):
        get_variant("D3").sample_modalities(3, "checkerboard")


_FILTER = ("classifier.filter_initializer", "classifier.filter_optimizer")
_BBE_REF = tuple(f"bb_regressor.{m}" for m in ("conv3_1r", "conv4_1r", "fc3_1r", "fc34_3r", "fc34_4r"))
_BBE_TEST = tuple(
    f"bb_regressor.{m}" for m in ("conv3_1t", "conv3_2t", "conv4_1t", "conv4_2t", "fc3_rt", "fc4_rt", "iou_predictor")
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("A1", {}),
        ("B1", dict.fromkeys(_BBE_REF, "reference")),
        ("B2", dict.fromkeys(_BBE_TEST, "test")),
        ("B3", {}),
        ("C1", {"classifier.feature_extractor": "reference", **dict.fromkeys(_FILTER, "reference")}),
        ("D1", {"classifier.feature_extractor": "test", **dict.fromkeys(_BBE_TEST, "test")}),
        (
            "D2",
            {
                "classifier.feature_extractor": "reference",
                **dict.fromkeys(_FILTER + _BBE_REF, "reference"),
            },
        ),
        (
            "D3",
            {
                "classifier.feature_extractor": "both",
                **dict.fromkeys(_FILTER + _BBE_REF, "reference"),
                **dict.fromkeys(_BBE_TEST, "test"),
            },
        ),
    ],
)
def test_trained_modules_name_each_module_and_its_branch(name, expected):
    assert get_variant(name).trained_modules == expected


def test_the_classifier_features_are_the_one_shared_module():
    assert SHARED_MODULES == ("classifier.feature_extractor",)
    assert [v.name for v in VARIANTS.values() if v.is_mix] == ["D3", "D4", "D5"]


def test_get_variant_errors_and_passthrough():
    with pytest.raises(ValueError, match="A1, B1, B2, B3, C1, D1, D2, D3, D4, D5"):
        get_variant("E1")
    v = VARIANTS["D3"]
    assert get_variant(v) is v
    with pytest.raises(dataclasses.FrozenInstanceError):
        v.name = "X"  # type: ignore[misc]
    assert isinstance(hash(v), int) and isinstance(v, Variant)
