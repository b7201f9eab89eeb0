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


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_validates_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_shipped_configs_exist():
    assert {p.stem for p in CONFIGS} >= {"demo", "cluster", "dimp50", "superdimp", "atom18"}


def test_superdimp_config_is_the_released_setting():
    cfg = load_config(DEMO.parent / "superdimp.yaml")
    s, d = cfg.data.sampling, cfg.distill
    assert (cfg.model.architecture, cfg.model.preset, cfg.model.backbone) == ("dimp", "superdimp", "resnet50")
    assert (s.search_area_factor, s.output_sz, s.feature_stride, s.feature_sz, s.filter_size) == (6.0, 352, 16, 22, 4)
    assert s.label_sz == 23
    assert (s.proposal_method, s.num_proposals) == ("gmm", 128)
    assert s.gmm_proposal_sigma == [(0.05, 0.05), (0.5, 0.5)] and s.gmm_gt_sigma == (0.05, 0.05)
    assert (d.bbe_loss, d.loss_weight_bbe, d.tcl_loss, d.hinge_threshold) == ("kl", 0.01, "lbhinge", 0.05)
    assert (d.tcl_weights.init, d.tcl_weights.iter, d.tcl_weights.final) == (100.0, 400.0, 100.0)


def test_dimp50_and_atom18_configs():
    dimp = load_config(DEMO.parent / "dimp50.yaml")
    assert (dimp.model.preset, dimp.data.sampling.feature_sz, dimp.distill.bbe_loss) == ("dimp50", 18, "mse")
    atom = load_config(DEMO.parent / "atom18.yaml")
    assert (atom.model.architecture, atom.model.preset, atom.model.backbone) == ("atom", "atom18", "resnet18")
    assert atom.distill.variant == "B1" and atom.data.sampling.num_proposals == 16


def test_old_backbone_key_points_to_preset(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  architecture: dimp\n  backbone: resnet50\n")
    with pytest.raises(ConfigError, match=r"model\.backbone was replaced by model\.preset"):
        load_config(old)
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.backbone'.*preset"):
        load_config(DEMO, ["model.backbone=tiny"])


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.preset=atom18"], "not one of the dimp presets"),
        (["model.architecture=atom", "model.preset=superdimp", "distill.variant=B1"], "not one of the atom presets"),
        (["model.architecture=atom"], "D3 trains the target classifier"),
        (["model.architecture=atom", "distill.variant=C1"], "C1 trains the target classifier"),
        (["distill.bbe_loss=kl"], "proposal_method=gmm"),
        (["distill.tcl_loss=l2"], "distill.tcl_loss"),
        (["distill.tcl_weights.iter=-1"], "distill.tcl_weights.iter"),
        (["data.sampling.gmm_proposal_sigma=[[0.05, 0]]"], "gmm_proposal_sigma"),
    ],
)
def test_model_and_loss_choices_are_checked(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_config(DEMO, overrides)


def test_atom_variants_and_kl_with_gmm_are_accepted():
    for variant in ("A1", "B1", "B2", "B3"):
        cfg = load_config(DEMO, ["model.architecture=atom", f"distill.variant={variant}"])
        assert cfg.model.backbone == "tiny"
    cfg = load_config(DEMO, ["distill.bbe_loss=kl", "data.sampling.proposal_method=gmm"])
    assert cfg.distill.bbe_loss == "kl"


# ---------------------------------------------------------------- each Table 1 row trains at its own paper rates


@pytest.mark.parametrize("config_file", ["configs/dimp50.yaml", "configs/superdimp.yaml", "configs/cluster.yaml"])
@pytest.mark.parametrize(
    ("row", "lr_tcl", "lr_bbe"),
    [("B1", 0.0, 1e-6), ("B2", 0.0, 1e-6), ("C1", 1e-6, 0.0), ("D1", 2e-8, 1e-7), ("D3", 2e-8, 1e-7)],
)
def test_a_row_without_explicit_rates_trains_at_the_papers_rates(config_file, row, lr_tcl, lr_bbe):
    cfg = load_config(config_file, [f"distill.variant={row}"])
    assert (cfg.distill.lr_tcl, cfg.distill.lr_bbe) == (lr_tcl, lr_bbe)
    assert cfg.distill.rate_overrides() == {}


def test_an_explicit_rate_is_kept_and_reported_as_an_override_of_the_rows_rate():
    cfg = load_config(None, ["distill.variant=C1", "distill.lr_tcl=5e-6", "distill.lr_bbe=3e-3"])
    assert (cfg.distill.lr_tcl, cfg.distill.lr_bbe) == (5e-6, 3e-3)
    # lr_bbe is no override: C1 does not train the IoU-Net, so its rate is never used
    assert cfg.distill.rate_overrides() == {"lr_tcl": (5e-6, 1e-6)}
    demo = load_config("configs/demo.yaml", ["distill.lr_tcl=1e-3"])  # the demo scales D3's rates; one set by hand
    assert demo.distill.rate_overrides() == {"lr_tcl": (1e-3, 1e-4)}


def test_resolved_rates_survive_a_dump_and_reload_as_workers_do():
    cfg = load_config(None, ["distill.variant=B2"])
    again = Config.model_validate(cfg.model_dump(mode="json"))
    assert (again.distill.lr_tcl, again.distill.lr_bbe) == (0.0, 1e-6) and again == cfg


def test_a_zero_rate_for_a_module_the_row_trains_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"distill\.lr_bbe=0 but row B1 trains that module"):
        load_config(None, ["distill.variant=B1", "distill.lr_bbe=0"])
    assert load_config(None, ["distill.variant=B1", "distill.lr_tcl=0"]).distill.lr_tcl == 0.0


@pytest.mark.parametrize(
    ("row", "lr_tcl", "lr_bbe"),
    [
        ("B1", 0.0, 1e-4),
        ("B2", 0.0, 1e-4),
        ("C1", 1e-4, 0.0),
        ("D1", 2e-6, 1e-5),
        ("D3", 2e-6, 1e-5),
        ("D5", 2e-6, 1e-5),
    ],
)
def test_lr_scale_multiplies_each_rows_paper_rates(row, lr_tcl, lr_bbe):
    cfg = load_config(None, [f"distill.variant={row}", "distill.lr_scale=100"])
    # exactly the decimal product (1e-6 x 100 is 9.999999999999999e-05 in binary), so it prints and compares as such
    assert (cfg.distill.lr_tcl, cfg.distill.lr_bbe) == (lr_tcl, lr_bbe)
    assert cfg.distill.paper_rates() == {"lr_tcl": lr_tcl, "lr_bbe": lr_bbe}
    assert cfg.distill.rate_overrides() == {}  # the paper's rates, scaled: no override
    flat = cfg.to_flat_dict()  # the run's MLflow params: the scale and the effective rates
    assert (flat["distill.lr_scale"], flat["distill.lr_tcl"], flat["distill.lr_bbe"]) == (100.0, lr_tcl, lr_bbe)


def test_explicit_rates_are_not_scaled_and_are_overrides_of_the_scaled_paper_rate():
    cfg = load_config(None, ["distill.variant=D3", "distill.lr_scale=10", "distill.lr_bbe=3e-3"])
    assert (cfg.distill.lr_tcl, cfg.distill.lr_bbe) == (2e-7, 3e-3)
    assert cfg.distill.rate_overrides() == {"lr_bbe": (3e-3, 1e-6)}
    demo = load_config("configs/demo.yaml", [])  # D3's paper rates times the demo's lr_scale, no override
    assert (demo.distill.lr_scale, demo.distill.lr_tcl, demo.distill.lr_bbe) == (5000.0, 1e-4, 5e-4)
    assert demo.distill.rate_overrides() == {}


def test_scaled_rates_survive_a_dump_and_reload_unscaled_twice():
    cfg = load_config(None, ["distill.variant=C1", "distill.lr_scale=100"])
    again = Config.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg and again.distill.lr_tcl == 1e-4 and again.distill.rate_overrides() == {}


@pytest.mark.parametrize("scale", ["0", "-1"])
def test_lr_scale_must_be_positive(scale):
    with pytest.raises(ConfigError, match=r"distill\.lr_scale"):
        load_config(None, [f"distill.lr_scale={scale}"])


# ---------------------------------------------------------------- the D rows' start: merge(B3, C1), or the teacher


def test_a_d_row_names_where_it_starts():
    teacher = load_config(None, ["distill.variant=D3"]).distill
    assert (teacher.start_kind, teacher.run_label) == ("teacher", "D3 loss from the teacher")
    merged = load_config(None, ["distill.variant=D3", "distill.start.b3=b3.pt", "distill.start.c1=c1.pt"]).distill
    assert (merged.start_kind, merged.run_label) == ("merge(B3,C1)", "D3")
    assert merged.start.named() == {"distill.start.b3": "b3.pt", "distill.start.c1": "c1.pt"}
    via_b1_b2 = ["distill.start.b1=b1.pt", "distill.start.b2=b2.pt", "distill.start.c1=c1.pt"]
    assert load_config(None, ["distill.variant=D1", *via_b1_b2]).distill.run_label == "D1"
    assert load_config(None, ["distill.variant=C1"]).distill.run_label == "C1"  # C1 starts from the teacher


@pytest.mark.parametrize("row", ["B1", "B2", "C1"])
def test_a_d_start_for_a_row_that_is_not_a_d_row_is_refused_naming_the_field(row):
    with pytest.raises(
        ConfigError, match=rf"distill\.start\.b3, distill\.start\.c1 set, but distill\.variant={row} is not"
    ):
        load_config(None, [f"distill.variant={row}", "distill.start.b3=b3.pt", "distill.start.c1=c1.pt"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distill.start.b3=b3.pt"], r"distill\.start\.b3 needs distill\.start\.c1"),
        (["distill.start.c1=c1.pt"], r"distill\.start\.c1 needs distill\.start\.b3 \(or b1 and b2\)"),
        (["distill.start.b1=b1.pt", "distill.start.c1=c1.pt"], r"distill\.start\.b1 needs distill\.start\.b2"),
        (
            ["distill.start.b3=b3.pt", "distill.start.b2=b2.pt", "distill.start.c1=c1.pt"],
            r"distill\.start\.b3 and distill\.start\.b2 both name B3",
        ),
        (["distill.start.b3=", "distill.start.c1=c1.pt"], r"distill\.start\.c1 needs"),  # an empty value is unset
        (["distill.start.b4=x"], r"unknown config key 'distill\.start\.b4'"),
    ],
)
def test_an_incomplete_d_start_is_refused_naming_the_fields(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


# ---------------------------------------------------------------- D3 mixing: batch_split (the paper) or side_by_side


def test_mixing_defaults_to_the_papers_batch_split():
    assert load_config(None, []).distill.mixing == "batch_split"
    assert load_config(DEMO).distill.mixing == "batch_split"


@pytest.mark.parametrize("row", ["D3", "D4", "D5"])
def test_side_by_side_mixing_is_accepted_for_the_mix_rows(row):
    cfg = load_config(None, [f"distill.variant={row}", "distill.mixing=side_by_side"])
    assert cfg.distill.mixing == "side_by_side"
    assert Config.model_validate(cfg.model_dump(mode="json")) == cfg


@pytest.mark.parametrize("row", ["B1", "C1", "D1", "D2"])
def test_side_by_side_mixing_is_refused_for_a_row_that_does_not_mix(row):
    with pytest.raises(ConfigError, match=rf"distill\.mixing='side_by_side'.*mix rows \(D3, D4, D5\).*row {row}"):
        load_config(None, [f"distill.variant={row}", "distill.mixing=side_by_side"])
    with pytest.raises(ConfigError, match=r"distill\.mixing"):
        load_config(None, ["distill.mixing=checkerboard"])


SELECTING = ["distill.select_by=val_success", "tune.eval_root=/data/val/tir_sequences"]


def test_selecting_needs_a_validation_split():
    assert load_config(None).distill.select_by == "last"
    cfg = load_config(None, [*SELECTING, "distill.select_every=2"])
    assert (cfg.distill.select_by, cfg.distill.select_every) == ("val_success", 2)
    with pytest.raises(ConfigError, match=r"distill\.select_by=val_precision .*set tune\.eval_root"):
        load_config(None, ["distill.select_by=val_precision"])
    with pytest.raises(ConfigError, match=r"distill\.select_by"):
        load_config(None, ["distill.select_by=val_loss", "tune.eval_root=/data/val"])
    with pytest.raises(ConfigError, match="select_every"):
        load_config(None, [*SELECTING, "distill.select_every=0"])


@pytest.mark.parametrize(
    "evaluation_root",
    [
        "/data/val/tir_sequences",
        "/data/val/tir_sequences/",
        "file:///data/val/tir_sequences",
        "/data/val/./tir_sequences",
    ],
)
def test_selecting_on_the_evaluation_test_sequences_is_refused(evaluation_root):
    with pytest.raises(ConfigError, match=r"tune\.eval_root .* is evaluation\.root, the test sequences"):
        load_config(None, [*SELECTING, f"evaluation.root={evaluation_root}"])


def test_one_root_may_hold_both_splits_when_their_sequences_are_disjoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = ["distill.select_by=val_success", "tune.eval_root=data/tir", f"evaluation.root={tmp_path}/data/tir"]
    with pytest.raises(ConfigError, match=r"is evaluation\.root"):
        load_config(None, same)  # a relative and an absolute path to one folder
    with pytest.raises(ConfigError, match=r"is evaluation\.root"):
        load_config(None, [*same, "tune.eval_sequences=[a, b]", "evaluation.sequences=[b, c]"])
    cfg = load_config(None, [*same, "tune.eval_sequences=[a, b]", "evaluation.sequences=[c]"])
    assert cfg.tune.eval_sequences == ["a", "b"]
    # the sweep's own tracking objective keeps its documented behaviour (the demo tunes on its one TIR set)
    assert load_config(None, ["tune.metric=val_success", "tune.eval_root=data/tir", "evaluation.root=data/tir"])
    assert load_config(None, ["tune.eval_root=s3://b/val", "evaluation.root=s3://b/test", *SELECTING[:1]])


@pytest.mark.parametrize(
    ("setting", "terminal", "shown"),
    [(None, True, True), (None, False, False), ("true", False, True), ("false", True, False)],
)
def test_progress_bars_follow_the_terminal_unless_set(monkeypatch, setting, terminal, shown):
    class Stderr:
        def isatty(self) -> bool:
            return terminal

    monkeypatch.setattr("sys.stderr", Stderr())
    cfg = load_config(None, [] if setting is None else [f"data.progress={setting}"])
    assert cfg.data.progress == (None if setting is None else setting == "true")
    assert cfg.data.show_progress is shown
