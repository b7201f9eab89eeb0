"""The vocabulary is the bottom layer, and the config and the implementations agree with its names."""

import ast
import typing
from pathlib import Path

import pytest

from cmd_ray import vocabulary
from cmd_ray.config import (
    SAMPLING_PRESETS,
    Config,
    DataConfig,
    DistillConfig,
    EvaluationConfig,
    ModelConfig,
    TrackerConfig,
)
from cmd_ray.data.boxes import BOX_METHODS
from cmd_ray.distill.losses import BBE_LOSS_FORMS, TCL_LOSS_FORMS
from cmd_ray.evaluation.benchmarks import BENCHMARK_READERS
from cmd_ray.models.dimpnet import FACTORIES


def _allowed(model: type, field: str) -> tuple[str, ...]:
    return typing.get_args(model.model_fields[field].annotation)


def test_vocabulary_imports_nothing_from_cmd_ray():
    tree = ast.parse(Path(vocabulary.__file__).read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [name for name in imported if name and name.split(".")[0] == "cmd_ray"]


@pytest.mark.parametrize(
    ("model", "field", "names"),
    [
        (DistillConfig, "variant", vocabulary.VARIANT_NAMES),
        (DistillConfig, "tcl_loss", vocabulary.TCL_LOSS_FORMS),
        (DistillConfig, "bbe_loss", vocabulary.BBE_LOSS_FORMS),
        (DistillConfig, "mixing", vocabulary.MIXINGS),
        (DataConfig, "boxes", vocabulary.BOX_METHODS),
        (ModelConfig, "architecture", vocabulary.ARCHITECTURES),
        (ModelConfig, "preset", vocabulary.MODEL_PRESET_NAMES),
        (EvaluationConfig, "benchmark", vocabulary.BENCHMARKS),
        (TrackerConfig, "preset", vocabulary.TRACKER_PRESETS),
    ],
)
def test_config_allows_exactly_the_vocabulary_names(model, field, names):
    assert _allowed(model, field) == names


def test_presets_with_values_are_the_named_ones():
    assert tuple(SAMPLING_PRESETS) == vocabulary.SAMPLING_PRESETS
    assert tuple(TrackerConfig.PRESETS) == vocabulary.TRACKER_PRESETS
    assert {arch: tuple(f) for arch, f in FACTORIES.items()} == vocabulary.MODEL_PRESETS
    assert set(vocabulary.PRESET_BACKBONE) == set(vocabulary.MODEL_PRESET_NAMES)


def test_every_variant_uses_a_known_box_method_and_is_accepted_by_the_config():
    for name, variant in vocabulary.VARIANTS.items():
        assert variant.box_method in vocabulary.BOX_METHODS
        assert Config(distill={"variant": name}).distill.variant == name


@pytest.mark.parametrize(
    ("registry", "names"),
    [
        (BOX_METHODS, vocabulary.BOX_METHODS),
        (TCL_LOSS_FORMS, vocabulary.TCL_LOSS_FORMS),
        (BBE_LOSS_FORMS, vocabulary.BBE_LOSS_FORMS),
        (BENCHMARK_READERS, vocabulary.BENCHMARKS),
    ],
)
def test_registries_implement_exactly_the_vocabulary_names(registry, names):
    assert tuple(registry) == names


def test_a_row_is_named_by_its_own_name_only_from_where_the_paper_starts_it():
    d_rows = [name for name, v in vocabulary.VARIANTS.items() if v.init_from]
    assert d_rows == ["D1", "D2", "D3", "D4", "D5"]
    for name in vocabulary.VARIANT_NAMES:
        paper = vocabulary.paper_start(name)
        assert paper == (vocabulary.START_D if name in d_rows else vocabulary.START_TEACHER)
        assert vocabulary.run_label(name, paper) == name
    assert vocabulary.run_label("D3", vocabulary.START_TEACHER) == "D3 loss from the teacher"
    assert vocabulary.run_label("D5", "teacher") == "D5 loss from the teacher"
    assert vocabulary.run_label("C1", vocabulary.START_D) == "C1 loss from merge(B3,C1)"
    with pytest.raises(ValueError, match="unknown start"):
        vocabulary.run_label("D3", "B3")
