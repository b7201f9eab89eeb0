"""DiMPNet assembly: shapes, pytracking key names, per-variant trainability and frozen BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmd_ray.distill.step import distill_step
from cmd_ray.models.dimpnet import DiMPNet, apply_variant_trainability, build_dimpnet, parameter_groups
from cmd_ray.vocabulary import VARIANTS

# What each (module, branch) must train, written out independently of the implementation.
TCL_PREFIXES = {
    "reference": ("classifier.feature_extractor.", "classifier.filter_initializer.", "classifier.filter_optimizer."),
    "test": ("classifier.feature_extractor.",),
    "both": ("classifier.feature_extractor.", "classifier.filter_initializer.", "classifier.filter_optimizer."),
}
_REF = ("conv3_1r", "conv4_1r", "fc3_1r", "fc34_3r", "fc34_4r")
_TEST = ("conv3_1t", "conv3_2t", "conv4_1t", "conv4_2t", "fc3_rt", "fc4_rt", "iou_predictor")
BBE_PREFIXES = {
    "reference": tuple(f"bb_regressor.{m}." for m in _REF),
    "test": tuple(f"bb_regressor.{m}." for m in _TEST),
    "both": tuple(f"bb_regressor.{m}." for m in _REF + _TEST),
}


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_dimpnet("tiny", optim_iter=2).state_dict()


def fresh_tiny(state: dict[str, torch.Tensor]) -> DiMPNet:
    model = build_dimpnet("tiny", optim_iter=2)
    model.load_state_dict(state)
    return model


def test_forward_shapes_tiny(tiny_state):
    model = fresh_tiny(tiny_state).eval()
    n_train, n_test, batch, crop, props = 2, 3, 2, 64, 5
    train_bb = torch.tensor([10.0, 12.0, 30.0, 28.0]).expand(n_train, batch, 4)
    proposals = torch.tensor([8.0, 10.0, 32.0, 30.0]).expand(n_test, batch, props, 4)
    with torch.no_grad():
        scores, iou = model(
            torch.randn(n_train, batch, 3, crop, crop), torch.randn(n_test, batch, 3, crop, crop), train_bb, proposals
        )
    assert len(scores) == 3  # optim_iter + 1 filter iterates
    side = crop // 16 + 1  # even filter (4) adds one cell
    assert all(s.shape == (n_test, batch, side, side) for s in scores)
    assert iou.shape == (n_test, batch, props)


def test_odd_filter_score_size():
    model = build_dimpnet("tiny", filter_size=3, optim_iter=1).eval()
    with torch.no_grad():
        scores, _ = model(
            torch.randn(1, 2, 3, 64, 64),
            torch.randn(1, 2, 3, 64, 64),
            torch.tensor([10.0, 12.0, 30.0, 28.0]).expand(1, 2, 4),
            torch.tensor([8.0, 10.0, 32.0, 30.0]).expand(1, 2, 3, 4),
        )
    assert scores[0].shape == (1, 2, 4, 4)


def test_state_dict_keys_follow_pytracking(tiny_state):
    keys = set(tiny_state)
    prefixes = ("feature_extractor.", "classifier.", "bb_regressor.")
    assert all(k.startswith(prefixes) for k in keys)
    for prefix in prefixes:
        assert any(k.startswith(prefix) for k in keys)
    for expected in (
        "feature_extractor.conv1.weight",
        "feature_extractor.bn1.running_mean",
        "feature_extractor.layer3.0.conv1.weight",
        "classifier.feature_extractor.0.weight",
        "classifier.filter_initializer.filter_conv.weight",
        "classifier.filter_initializer.filter_conv.bias",
        "classifier.filter_optimizer.log_step_length",
        "classifier.filter_optimizer.filter_reg",
        "classifier.filter_optimizer.label_map_predictor.weight",
        "classifier.filter_optimizer.target_mask_predictor.0.weight",
        "classifier.filter_optimizer.spatial_weight_predictor.weight",
        "bb_regressor.conv3_1r.0.weight",
        "bb_regressor.conv3_1r.1.running_var",
        "bb_regressor.fc34_4r.0.bias",
        "bb_regressor.fc3_rt.linear.weight",
        "bb_regressor.fc4_rt.bn.running_mean",
        "bb_regressor.iou_predictor.weight",
    ):
        assert expected in keys, expected
    assert not any(k.startswith("feature_extractor.layer4.") for k in keys)  # tiny has no layer4


def test_resnet50_layout_matches_dimp50():
    model = build_dimpnet("resnet50")
    state = model.state_dict()
    assert state["classifier.feature_extractor.0.weight"].shape == (512, 1024, 3, 3)
    assert state["classifier.filter_optimizer.label_map_predictor.weight"].shape == (1, 100, 1, 1)
    assert state["bb_regressor.conv3_1r.0.weight"].shape == (128, 512, 3, 3)
    assert state["bb_regressor.conv4_1t.0.weight"].shape == (256, 1024, 3, 3)
    assert state["bb_regressor.fc3_rt.linear.weight"].shape == (256, 256 * 5 * 5)
    assert "feature_extractor.layer4.2.conv3.weight" in state  # present in pytracking checkpoints
    assert not any(k.startswith("feature_extractor.fc.") for k in state)


def _expected_trained(variant_name: str) -> tuple[str, ...]:
    variant = VARIANTS[variant_name]
    prefixes: tuple[str, ...] = ()
    if variant.train_tcl:
        prefixes += TCL_PREFIXES[variant.train_tcl]
    if variant.train_bbe:
        prefixes += BBE_PREFIXES[variant.train_bbe]
    return prefixes


@pytest.mark.parametrize("name", [n for n in VARIANTS if not VARIANTS[n].is_merge])
def test_variant_trains_exactly_its_parameters(name, tiny_state, random_batch):
    model = fresh_tiny(tiny_state)
    apply_variant_trainability(model, name)
    model.train()
    out = distill_step(model, random_batch(), VARIANTS[name], loss_weight_bbe=1.0)
    prefixes = _expected_trained(name)
    if not prefixes:
        assert not out["loss"].requires_grad
        assert not any(p.requires_grad for p in model.parameters())
        return
    out["loss"].backward()
    trained = {k for k, p in model.named_parameters() if p.requires_grad}
    expected = {k for k, _ in model.named_parameters() if k.startswith(prefixes)}
    assert trained == expected
    for key, p in model.named_parameters():
        if key in expected:
            assert p.grad is not None, key
        else:
            assert p.grad is None, key
    for prefix_group in (TCL_PREFIXES, BBE_PREFIXES):
        group_keys = {k for k in expected if k.startswith(tuple(p for v in prefix_group.values() for p in v))}
        if group_keys:
            params = dict(model.named_parameters())
            assert sum(float(params[k].grad.abs().sum()) for k in group_keys) > 0
    groups = parameter_groups(model, name)
    group_ids = {id(p) for params in groups.values() for p in params}
    assert group_ids == {id(p) for k, p in model.named_parameters() if k in expected}


def test_merge_variant_is_not_trainable(tiny_state):
    model = fresh_tiny(tiny_state)
    with pytest.raises(ValueError, match=r"B3.*merge.*B1.*B2"):
        apply_variant_trainability(model, "B3")
    with pytest.raises(ValueError, match="allowed"):
        parameter_groups(model, "Z9")


def test_frozen_batchnorm_statistics_do_not_drift(tiny_state, random_batch):
    model = fresh_tiny(tiny_state)
    apply_variant_trainability(model, "B1")
    model.train()  # must not put frozen BatchNorms back into training mode
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    distill_step(model, random_batch(seed=3), "B1", 1.0)["loss"].backward()
    after = model.state_dict()
    backbone_keys = [k for k in before if k.startswith("feature_extractor.")]
    assert backbone_keys
    for key in backbone_keys:
        assert torch.equal(before[key], after[key]), key
    # Frozen test branch of the IoU-Net: unchanged too; trained reference branch: updated.
    assert torch.equal(before["bb_regressor.conv3_1t.1.running_mean"], after["bb_regressor.conv3_1t.1.running_mean"])
    assert not torch.equal(
        before["bb_regressor.conv3_1r.1.running_mean"], after["bb_regressor.conv3_1r.1.running_mean"]
    )
    assert not model.feature_extractor.bn1.training
    assert model.bb_regressor.conv3_1r[1].training


def test_backbone_frozen_forward_builds_no_graph(tiny_state):
    model = fresh_tiny(tiny_state)
    apply_variant_trainability(model, "D3")
    feats = model.extract_backbone_features(torch.randn(2, 3, 64, 64))
    assert set(feats) == {"layer2", "layer3"}
    assert feats["layer2"].shape == (2, 128, 8, 8)
    assert feats["layer3"].shape == (2, 256, 4, 4)
    assert not feats["layer3"].requires_grad


def test_parameter_groups_accept_ddp_like_wrapper(tiny_state):
    model = fresh_tiny(tiny_state)

    class Wrapper(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    groups = parameter_groups(Wrapper(model), "B2")
    assert groups["tcl"] == []
    assert len(groups["bbe"]) == len(list(model.bb_regressor.iou_predictor.parameters())) + sum(
        len(list(getattr(model.bb_regressor, m).parameters())) for m in _TEST if m != "iou_predictor"
    )


# Table 1, written out: the branch through which each trained row's classifier features
# (classifier.feature_extractor, run on both frames) may learn; None: the row does not train TCL.
SHARED_FEATURE_BRANCH = {
    "B1": None,
    "B2": None,
    "C1": "reference",
    "D1": "test",
    "D2": "reference",
    "D3": "both",
    "D4": "both",
    "D5": "both",
}


def _per_call_gradients(model: DiMPNet, batch: dict, name: str) -> tuple[torch.Tensor, list[float]]:
    """One training step's loss, and the gradient norm each call of ``classifier.feature_extractor`` (the
    reference frame's, then the test frame's) gives its parameters."""
    module = model.classifier.feature_extractor
    calls: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda _m, _inputs, output: calls.append(output))
    try:
        loss = distill_step(model, batch, VARIANTS[name], loss_weight_bbe=1.0)["loss"]
    finally:
        hook.remove()
    assert len(calls) == 2, "the classifier features run once on the reference and once on the test frame"
    params = list(module.parameters())
    norms = []
    for output in calls:
        if not output.requires_grad:  # no graph at all: nothing can reach the parameters through this frame
            norms.append(0.0)
            continue
        (upstream,) = torch.autograd.grad(loss, output, retain_graph=True)
        grads = torch.autograd.grad(output, params, upstream, retain_graph=True, allow_unused=True)
        norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads if g is not None) + torch.zeros(()))))
    return loss, norms


@pytest.mark.parametrize("name", list(SHARED_FEATURE_BRANCH))
def test_row_trains_its_modules_only_through_its_branches(name, tiny_state, random_batch):
    """Per trained row: what gets a gradient is the row's groups, and the shared classifier features learn
    through the row's TCL branch only (C1 used to learn through the RGB test frame as well)."""
    variant = VARIANTS[name]
    branch = SHARED_FEATURE_BRANCH[name]
    assert variant.trained_modules.get("classifier.feature_extractor") == branch
    model = fresh_tiny(tiny_state)
    apply_variant_trainability(model, name)
    model.train()
    loss, (reference_norm, test_norm) = _per_call_gradients(model, random_batch(seed=7), name)

    # the shared module: a gradient through each frame of the row's branch, none through the other frame
    through = {"reference": reference_norm, "test": test_norm}
    for frame, norm in through.items():
        if branch in (frame, "both"):
            assert norm > 0, (frame, through)
        else:
            assert norm == 0, (frame, through)

    # every parameter that gets a gradient is in the row's trained groups, and each of those gets one
    loss.backward()
    got = {key for key, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    groups = {id(p) for params in parameter_groups(model, name).values() for p in params}
    in_groups = {key for key, p in model.named_parameters() if id(p) in groups}
    assert in_groups == {key for key, _ in model.named_parameters() if key.startswith(_expected_trained(name))}
    assert got <= in_groups, sorted(got - in_groups)
    assert got == in_groups, sorted(in_groups - got)


def test_iounet_has_no_module_on_both_frames(tiny_state, random_batch):
    """The IoU-Net needs no detaching: each module runs once, and the reference modules see no test frame."""
    model = fresh_tiny(tiny_state).eval()
    names = [*_REF, *_TEST]
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [
        getattr(model.bb_regressor, n).register_forward_hook(lambda _m, _i, out, n=n: outputs[n].append(out))
        for n in names
    ]
    batch = random_batch(seed=8)
    other = dict(batch, rgb_test=torch.flip(batch["rgb_test"], dims=(1,)), tir_test=255 - batch["tir_test"])
    try:
        with torch.no_grad():
            distill_step(model, batch, "D3", 1.0)
            distill_step(model, other, "D3", 1.0)
    finally:
        for hook in hooks:
            hook.remove()
    assert all(len(outputs[n]) == 2 for n in names)  # once per forward
    for n in _REF:
        torch.testing.assert_close(outputs[n][0], outputs[n][1], msg=n)
    assert not torch.equal(outputs["conv3_1t"][0], outputs["conv3_1t"][1])
