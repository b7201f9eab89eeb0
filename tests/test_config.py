from pathlib import Path

import pytest

from cmd_ray.config import Config, ConfigError, dump_config, load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_demo_config_loads_and_round_trips(tmp_path):
    cfg = load_config(DEMO)
    assert cfg.distill.variant == "D3"
    assert cfg.data.sampling.label_sz == cfg.data.sampling.feature_sz + 1  # even filter adds a cell
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_dotted_overrides_are_parsed_as_yaml():
    cfg = load_config(DEMO, ["distill.lr_tcl=3e-6", "scaling.use_gpu=true", "tune.lr_bbe=[1e-7, 1e-5]"])
    assert cfg.distill.lr_tcl == pytest.approx(3e-6)
    assert cfg.scaling.use_gpu is True
    assert cfg.tune.lr_bbe == (1e-7, 1e-5)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("distill.lr_tcll=1e-6", "distill.lr_tcll"),
        ("distil.lr_tcl=1e-6", "distil"),
        ("distill.variant=Z9", "distill.variant"),
        ("distill.lr_bbe=-1", "distill.lr_bbe"),
        ("data.sampling.output_sz=130", "output_sz"),
        ("scaling.num_workers=0", "scaling.num_workers"),
        ("tune.lr_tcl=[1e-3, 1e-6]", "lr_tcl range"),
    ],
)
def test_bad_values_name_the_key(override, named):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert named in str(err.value)


def test_unknown_key_in_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"distill\.learning_rate: unknown key"):
        load_config(bad)


def test_missing_file_and_bad_yaml_are_reported(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_epoch_smaller_than_global_batch_is_rejected():
    with pytest.raises(ConfigError, match="samples_per_epoch"):
        load_config(None, ["distill.samples_per_epoch=4", "distill.batch_size=5"])


def test_flat_dict_has_dotted_keys():
    flat = Config().to_flat_dict()
    assert flat["distill.lr_bbe"] == pytest.approx(1e-7)
    assert flat["data.sampling.output_sz"] == 128
