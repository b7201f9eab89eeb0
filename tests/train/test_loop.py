"""Pieces of the training loop: teacher loading, the optimizer groups, the schedules (no cluster), and one validation
pass read through Ray Data."""

import io

import pytest
import torch

from cmd_ray.config import load_config
from cmd_ray.models.dimpnet import apply_variant_trainability, build_model
from cmd_ray.models.safe_unpickler import CheckpointError
from cmd_ray.schedule import schedule_for
from cmd_ray.train.loop import build_optimizer
from cmd_ray.train.teacher import load_teacher_weights, resolve_teacher


def load_teacher(model, cfg):
    return load_teacher_weights(model, resolve_teacher(cfg))


def test_teacher_weights_are_loaded_from_the_init_checkpoint(tmp_path):
    cfg = load_config(None, [f"model.init_checkpoint={tmp_path / 'teacher.pt'}"])
    torch.manual_seed(1)
    teacher = build_model(cfg)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    torch.manual_seed(2)
    student = build_model(cfg)
    report = load_teacher(student, cfg)
    assert report is not None and report.ok
    for name, tensor in student.state_dict().items():
        assert torch.equal(tensor, teacher.state_dict()[name]), name


def test_a_worker_refuses_weights_of_another_network_naming_their_source(tmp_path):
    """The workers' rule (the driver checks every start by it first, tests/train/test_refused_starts.py)."""
    from cmd_ray.train.teacher import Teacher

    cfg = load_config(None)
    state = build_model(cfg).state_dict()
    state["bb_regressor.conv3_1r.0.bias"] = torch.zeros(33)  # one layer of another size: another network
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with pytest.raises(CheckpointError, match=r"s3://b/other\.pt do not fit .*conv3_1r\.0\.bias: \[33\]") as caught:
        load_teacher_weights(build_model(cfg), Teacher("s3://b/other.pt", buffer.getvalue()))
    assert "/tmp" not in str(caught.value) and "cmd-ray-weights" not in str(caught.value)


def test_optimizer_groups_carry_the_configured_learning_rates():
    cfg = load_config(None, ["distill.variant=D3", "distill.lr_tcl=3e-6", "distill.lr_bbe=4e-5"])
    model = apply_variant_trainability(build_model(cfg), "D3")
    optimizer, scheduler = build_optimizer(model, cfg)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"tcl": pytest.approx(3e-6), "bbe": pytest.approx(4e-5)}
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    assert scheduler.step_size == cfg.distill.lr_step


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.variant=A1", "trains nothing"),
        ("distill.variant=B3", "merged"),
        ("distill.variant=D4", "data.boxes"),
    ],
)
def test_variants_that_cannot_be_distilled_as_configured_fail_before_ray(override, message):
    from cmd_ray.config import ConfigError
    from cmd_ray.train.trainer import check_trainable

    with pytest.raises(ConfigError, match=message):
        check_trainable(load_config(None, [override]))


def test_trainable_backbone_stages_get_their_own_group_and_keep_other_stats_frozen(random_batch):
    from cmd_ray.distill.step import distill_step
    from cmd_ray.vocabulary import get_variant

    cfg = load_config(None, ["model.trainable_backbone_layers=[layer3]", "distill.lr_backbone=5e-6"])
    model = apply_variant_trainability(build_model(cfg), "D3", cfg.model.trainable_backbone_layers)
    optimizer, _ = build_optimizer(model, cfg)
    backbone = next(group for group in optimizer.param_groups if group["name"] == "backbone")
    assert backbone["lr"] == pytest.approx(5e-6)
    layer3 = {id(p) for p in model.feature_extractor.layer3.parameters()}
    assert {id(p) for p in backbone["params"]} == layer3
    stem_stats = model.feature_extractor.bn1.running_mean.clone()
    layer3_stats = model.feature_extractor.layer3[0].bn1.running_mean.clone()
    model.train()
    distill_step(model, random_batch(crop=128), get_variant("D3"), 1.0)["loss"].backward()
    assert torch.equal(model.feature_extractor.bn1.running_mean, stem_stats)  # frozen stage: stats as loaded
    assert not torch.equal(model.feature_extractor.layer3[0].bn1.running_mean, layer3_stats)
    assert all(p.grad is not None for p in model.feature_extractor.layer3.parameters())
    assert all(p.grad is None for p in model.feature_extractor.layer2.parameters())


def test_pretraining_trains_every_head_module_and_the_listed_backbone_stages():
    from cmd_ray.schedule import schedule_for

    cfg = load_config(
        None,
        [
            "pretrain.lr_tcl=1e-4",
            "pretrain.lr_bbe=2e-3",
            "pretrain.lr_backbone=3e-5",
            "pretrain.trainable_backbone_layers=[layer2, layer3]",
        ],
    )
    schedule = schedule_for(cfg, "pretrain")
    model = apply_variant_trainability(build_model(cfg), schedule.variant, schedule.trainable_backbone_layers)
    optimizer, scheduler = build_optimizer(model, cfg, "pretrain")
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"tcl": pytest.approx(1e-4), "bbe": pytest.approx(2e-3), "backbone": pytest.approx(3e-5)}
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    backbone = model.feature_extractor
    for module in (model.classifier, model.bb_regressor, backbone.layer2, backbone.layer3):
        assert {id(p) for p in module.parameters()} <= trained
    assert not {id(p) for p in model.feature_extractor.layer1.parameters()} & trained
    assert scheduler.gamma == pytest.approx(cfg.pretrain.lr_gamma)
    assert schedule.steps_per_epoch(2) == cfg.pretrain.samples_per_epoch // (cfg.pretrain.batch_size * 2)


def test_the_pretraining_epoch_must_hold_a_global_batch():
    from cmd_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"pretrain\.samples_per_epoch"):
        load_config(None, ["pretrain.samples_per_epoch=8", "pretrain.batch_size=5", "scaling.num_workers=2"])


def test_an_unreadable_init_checkpoint_fails_before_ray_naming_it(tmp_path):
    from cmd_ray.config import ConfigError

    missing = tmp_path / "nowhere" / "teacher.pt"
    with pytest.raises(ConfigError, match=r"model\.init_checkpoint .*nowhere"):
        resolve_teacher(load_config(None, [f"model.init_checkpoint={missing}"]))


def test_a_cmd_ray_checkpoint_names_the_run_that_wrote_it(tmp_path):
    from cmd_ray.models.training_state import save_training_state

    cfg = load_config(None)
    (tmp_path / "epoch_0003").mkdir()
    save_training_state(tmp_path / "epoch_0003", {"model": build_model(cfg).state_dict(), "mlflow_run_id": "abc123"})
    teacher = resolve_teacher(load_config(None, [f"model.init_checkpoint={tmp_path / 'epoch_0003'}"]))
    assert teacher.run_id == "abc123"
    source = str(tmp_path / "epoch_0003")
    assert teacher.tags() == {"cmd_ray.teacher_source": source, "cmd_ray.teacher_run_id": "abc123"}
    student = build_model(cfg)
    assert load_teacher_weights(student, teacher).ok


@pytest.mark.e2e
def test_validation_reports_the_bbe_loss_of_a_constant_prediction(ray_session, random_batch):
    """``val_loss_bbe_chance`` is the variance of the IoU targets ``2·IoU − 1`` over the whole validation pass."""
    import ray

    from cmd_ray.train.loop import validate

    cfg = load_config(None, ["distill.batch_size=3"])
    batches = [random_batch(batch_size=4, num_proposals=5, seed=seed) for seed in (1, 2)]
    rows = [{key: value[i].numpy() for key, value in b.items()} for b in batches for i in range(4)]
    schedule = schedule_for(cfg, "distill")
    model = build_model(cfg)
    metrics = validate(model, ray.data.from_items(rows), cfg, schedule, torch.device("cpu"))
    targets = 2.0 * torch.cat([b["proposal_iou"] for b in batches]).double() - 1.0
    assert metrics["val_loss_bbe_chance"] == pytest.approx(float(targets.var(unbiased=False)))
    assert {"val_loss", "val_loss_tcl", "val_loss_bbe"} <= set(metrics)


def test_epoch_sample_metrics_name_the_set_of_samples_not_their_order():
    import numpy as np

    from cmd_ray.train.loop import epoch_sample_metrics, sample_digest

    whole = epoch_sample_metrics(torch.arange(16, 32))
    shuffled = epoch_sample_metrics(torch.tensor([31, 16, 20, 17, 18, 19, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]))
    assert whole == shuffled
    assert whole == {
        "epoch_samples": 16.0,
        "epoch_unique_samples": 16.0,
        "epoch_sample_digest": float(sample_digest(np.arange(16, 32))),
    }
    # one sample lost and another delivered twice: same count, other set
    twice = epoch_sample_metrics(torch.tensor([16, 16, *range(18, 32)]))
    assert twice["epoch_samples"] == 16.0 and twice["epoch_unique_samples"] == 15.0
    assert twice["epoch_sample_digest"] != whole["epoch_sample_digest"]
    # the next epoch's samples give another digest
    assert epoch_sample_metrics(torch.arange(32, 48))["epoch_sample_digest"] != whole["epoch_sample_digest"]
