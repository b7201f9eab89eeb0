"""TrackerConfig: DiMP-50 defaults, presets filling unset fields, range checks naming the key."""

from __future__ import annotations

import pytest

from cmd_ray.config import ConfigError, TrackerConfig, load_config


def test_defaults_are_dimp50() -> None:
    p = TrackerConfig()
    assert p.preset == "dimp50"
    assert (p.image_sample_size, p.search_area_scale) == (288, 5.0)
    assert (p.net_opt_iter, p.net_opt_update_iter, p.net_opt_hn_iter) == (10, 2, 1)
    assert (p.sample_memory_size, p.learning_rate, p.train_skipping) == (50, 0.01, 20)
    assert (p.target_not_found_threshold, p.distractor_threshold, p.hard_negative_threshold) == (0.25, 0.8, 0.5)
    assert (p.box_refinement_iter, p.box_refinement_step_length, p.iounet_k) == (5, 1.0, 3)
    assert p.augmentation.fliplr and p.augmentation.rotate == [10.0, -10.0, 45.0, -45.0]
    # plain + 4 relative shifts + flip + 3 blurs + 4 rotations + 2 dropout copies
    assert p.num_init_samples() == 15


def test_preset_fills_only_unset_fields() -> None:
    sd = TrackerConfig(preset="superdimp")
    assert (sd.image_sample_size, sd.search_area_scale, sd.border_mode) == (352, 6.0, "inside_major")
    assert (sd.box_refinement_space, sd.box_refinement_iter, sd.box_refinement_step_length) == ("relative", 10, 2.5e-3)
    assert TrackerConfig(preset="tiny").image_sample_size == 128
    assert TrackerConfig(preset="tiny", image_sample_size=160).image_sample_size == 160
    assert TrackerConfig(preset="superdimp", box_refinement_iter=3).box_refinement_iter == 3


def test_yaml_overrides_and_round_trip() -> None:
    cfg = load_config(None, ["tracker.preset=tiny", "tracker.augmentation.fliplr=false", "tracker.learning_rate=0.05"])
    assert cfg.tracker.image_sample_size == 128
    assert not cfg.tracker.augmentation.fliplr
    assert cfg.tracker.num_init_samples() == 14
    assert TrackerConfig.model_validate(cfg.tracker.model_dump()) == cfg.tracker
    # what the evaluation runner ships to its tasks
    sd = TrackerConfig(preset="superdimp", box_refinement_step_length=(1.0, 0.5))
    assert TrackerConfig.model_validate(sd.model_dump(mode="json")) == sd


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("tracker.learning_rate=1.5", "tracker.learning_rate"),
        ("tracker.image_sample_size=8", "tracker.image_sample_size"),
        ("tracker.preset=dimp18", "tracker.preset"),
        ("tracker.border_mode=wrap", "tracker.border_mode"),
        ("tracker.sample_memory_size=15", "sample_memory_size"),
        ("tracker.augmentation.blur=[[0, 1]]", "augmentation.blur"),
        ("tracker.augmentation.dropout=[2, 1.5]", "augmentation.dropout"),
        ("tracker.box_refinement_step_length=-1", "box_refinement_step_length"),
        ("tracker.no_such_knob=1", "no_such_knob"),
    ],
)
def test_bad_values_name_the_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])


def test_memory_may_be_small_without_updates() -> None:
    p = TrackerConfig(update_classifier=False, sample_memory_size=2)
    assert p.sample_memory_size == 2
