"""Pieces of the training loop that need no cluster: teacher loading and the optimizer groups."""

import pytest
import torch

from cmd_ray.config import load_config
from cmd_ray.models.checkpoint import CheckpointError
from cmd_ray.models.dimpnet import apply_variant_trainability, build_model
from cmd_ray.train.loop import build_optimizer, load_teacher


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


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    cfg = load_config(None, [f"model.init_checkpoint={tmp_path / 'other.pt'}"])
    torch.save({"something.else.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt"):
        load_teacher(build_model(cfg), cfg)


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
    from cmd_ray.distill.variants import get_variant

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
