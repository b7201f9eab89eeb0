"""Which config changes a resume may make (cmd_ray.resume): pure, no Ray."""

import pytest

from cmd_ray.config import ConfigError, load_config
from cmd_ray.resume import check_resume, may_change_on_resume, resume_blockers


def tree(*overrides: str) -> dict:
    return load_config(None, list(overrides)).model_dump(mode="json")


def test_same_config_has_no_blockers():
    assert resume_blockers(tree(), tree()) == []


@pytest.mark.parametrize(
    "override",
    [
        "distill.epochs=99",
        "storage.storage_path=s3://bucket/elsewhere",
        "storage.max_failures=3",
        "storage.checkpoints_to_keep=5",
        "scaling.num_workers=2",
        "scaling.use_gpu=true",
        "scaling.cpus_per_worker=2.0",
        "data.num_actors=4",
        "data.cpus_per_actor=2.0",
        "data.progress=false",
        "data.object_store_memory_mb=512",
        "data.preserve_order=true",
        "data.label_selector={cmd-ray.role: data}",
        "mlflow.tracking_uri=http://mlflow:5000",
        "pretrain.lr_tcl=0.1",  # the distill job does not read pretrain.*
        "tune.num_samples=7",
        "tracker.net_opt_iter=3",
        "synth.num_pairs=9",
    ],
)
def test_a_distill_resume_may_change(override):
    assert resume_blockers(tree(), tree(override), "distill") == []


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("distill.lr_tcl=5e-3", "distill.lr_tcl"),
        ("distill.variant=D1", "distill.variant"),
        ("distill.start.b3=b3.pt", "distill.start.b3"),  # with c1 below: another start
        ("distill.seed=3", "distill.seed"),
        ("distill.samples_per_epoch=100", "distill.samples_per_epoch"),
        ("distill.tcl_weights.iter=1.0", "distill.tcl_weights.iter"),  # nested
        ("data.uri=s3://other/pairs", "data.uri"),
        ("data.sampling.output_sz=64", "data.sampling.output_sz"),  # nested two levels
        ("model.init_checkpoint=models:/t@candidate", "model.init_checkpoint"),
        ("mlflow.registered_model_name=other", "mlflow.registered_model_name"),
        ("mlflow.experiment=other", "mlflow.experiment"),
    ],
)
def test_a_distill_resume_may_not_change(override, key):
    extra = ["distill.start.c1=c1.pt"] if key.startswith("distill.start.") else []
    blockers = resume_blockers(tree(), tree(override, *extra), "distill")
    assert [line.split(":")[0] for line in blockers][:1] == [key]


def test_lr_scale_changes_the_rates_so_it_blocks_a_distill_resume_as_lr_tcl_does():
    blockers = resume_blockers(tree(), tree("distill.lr_scale=100"), "distill")
    # the scale and the rates it resolved (D3's paper rates x 100) both differ
    assert blockers == [
        "distill.lr_bbe: 1e-07 → 1e-05",
        "distill.lr_scale: 1.0 → 100.0",
        "distill.lr_tcl: 2e-08 → 2e-06",
    ]
    assert resume_blockers(tree(), tree("distill.lr_scale=100"), "pretrain") == []  # pretraining never reads it


def test_every_distill_key_is_classified_for_a_pretrain_resume():
    """Each ``distill.*`` key is either one pretraining does not read (may change on its resume) or a loss option it
    shares (blocks it): a new distill key must be put in one list or the other."""
    from cmd_ray.config import DistillConfig

    shared = {"tcl_loss", "tcl_weights", "hinge_threshold", "filter_reg_mu", "bbe_loss", "bbe_reg_nu"}
    for key in DistillConfig.model_fields:
        ignored = may_change_on_resume(f"distill.{key}", "pretrain")
        assert ignored != (key in shared), key
        assert not may_change_on_resume(f"distill.{key}", "distill") or key == "epochs", key


def test_blocker_names_key_with_old_and_new_value():
    assert resume_blockers(tree("distill.lr_tcl=1e-5"), tree("distill.lr_tcl=5e-3")) == [
        "distill.lr_tcl: 1e-05 → 0.005"
    ]


def test_pretrain_job_keys():
    # pretraining resumes over pretrain.epochs and ignores what only distillation reads …
    for override in ("pretrain.epochs=9", "distill.lr_tcl=5e-3", "distill.epochs=3", "model.init_checkpoint=x.pt"):
        assert resume_blockers(tree(), tree(override), "pretrain") == [], override
    d_start = tree("distill.start.b3=b3.pt", "distill.start.c1=c1.pt")
    assert resume_blockers(tree(), d_start, "pretrain") == []
    # … but not its own settings, nor the loss options it shares with distillation
    assert resume_blockers(tree(), tree("pretrain.lr_bbe=0.5"), "pretrain") == ["pretrain.lr_bbe: 0.001 → 0.5"]
    assert [b.split(":")[0] for b in resume_blockers(tree(), tree("distill.tcl_loss=squared"), "pretrain")] == [
        "distill.tcl_loss"
    ]


def test_several_blockers_are_all_named_sorted():
    blockers = resume_blockers(tree(), tree("distill.lr_tcl=5e-3", "data.uri=elsewhere", "distill.epochs=3"))
    assert [b.split(":")[0] for b in blockers] == ["data.uri", "distill.lr_tcl"]


def test_stored_config_without_a_newer_defaulted_key_does_not_block():
    old = tree()
    del old["data"]["preserve_order"], old["distill"]["bbe_reg_nu"]  # keys added after the run was stored
    assert resume_blockers(old, tree()) == []


def test_a_stored_config_that_no_longer_validates_still_takes_the_new_defaults():
    old = tree()
    old["data"]["removed_knob"] = 1  # a key since removed: the tree is no longer a valid Config
    del old["data"]["preserve_order"]  # and one since added
    assert resume_blockers(old, tree()) == ["data.removed_knob: 1 → (absent)"]


def test_keys_on_one_side_only_show_as_absent():
    old = {"distill": {"lr_tcl": 1.0, "gone": 2}}  # not a valid Config: compared as given
    new = {"distill": {"lr_tcl": 1.0}, "extra": {"x": [1, 2]}}
    assert resume_blockers(old, new) == ["distill.gone: 2 → (absent)", "extra.x: (absent) → [1, 2]"]


def test_tuples_and_lists_compare_equal():
    assert resume_blockers({"a": {"b": (1, 2)}}, {"a": {"b": [1, 2]}}) == []


def test_prefix_matches_whole_key_segments():
    assert may_change_on_resume("storage.run_name")
    assert may_change_on_resume("data.num_actors")
    assert not may_change_on_resume("data.num_actors_extra")
    assert not may_change_on_resume("storagex.y")
    with pytest.raises(ValueError, match="unknown training job"):
        may_change_on_resume("distill.epochs", "tune")


def test_check_resume_message_names_keys_values_and_the_way_out():
    with pytest.raises(ConfigError) as err:
        check_resume(
            tree("distill.lr_tcl=1e-5"),
            tree("distill.lr_tcl=5e-3", "distill.variant=D1", "distill.epochs=9"),
            run="storage.run_name=demo in ray_results",
        )
    message = str(err.value)
    assert "storage.run_name=demo in ray_results" in message
    assert "distill.lr_tcl: 1e-05 → 0.005" in message
    assert "distill.variant: 'D3' → 'D1'" in message
    assert "distill.epochs:" not in message
    assert "storage.run_name=<new name>" in message and "storage.storage_path" in message


def test_check_resume_pretrain_names_its_run_key_and_passes_same_config():
    check_resume(tree(), tree("pretrain.epochs=3"), "pretrain", run="r")  # no error
    with pytest.raises(ConfigError, match=r"pretrain\.run_name=<new name>"):
        check_resume(tree(), tree("pretrain.seed=1"), "pretrain", run="r")


def test_a_folder_of_the_other_job_blocks():
    with pytest.raises(ConfigError, match="job: pretrain → distill"):
        check_resume(tree(), tree(), "distill", run="r", old_job="pretrain")


SELECTING = ["distill.select_by=val_success", "tune.eval_root=/data/val/tir_sequences"]


def test_a_selecting_resume_may_not_change_what_its_scores_depend_on():
    old = tree(*SELECTING)
    for override, key in [
        ("tune.eval_root=/data/other", "tune.eval_root"),
        ("tune.eval_sequences=[a]", "tune.eval_sequences"),
        ("tracker.use_iou_net=false", "tracker.use_iou_net"),
        ("evaluation.protocol=pytracking", "evaluation.protocol"),
        ("distill.select_by=last", "distill.select_by"),
        ("distill.select_every=2", "distill.select_every"),
    ]:
        new = tree(*SELECTING, override)
        assert [line.split(":")[0] for line in resume_blockers(old, new)] == [key], override
    # parallelism and the other jobs' settings stay free
    assert resume_blockers(old, tree(*SELECTING, "tune.eval_tasks=4", "evaluation.results_dir=elsewhere")) == []


def test_without_selection_the_validation_split_never_blocks_a_resume():
    old = tree()
    assert resume_blockers(old, tree("tune.eval_root=/data/other", "tracker.use_iou_net=false")) == []
    # the pretraining job reads no distill.select_* key
    selecting = tree(*SELECTING)
    assert resume_blockers(old, selecting, job="pretrain") == []
