"""The pytracking checkpoint reader: pytracking's files read without its code (zip and legacy formats, old
``dlframework`` names, DataParallel prefixes), what is not a checkpoint refused, backbone and factory inference."""

from __future__ import annotations

import pickle
import sys
import zipfile
from collections import OrderedDict

import pytest
import torch
from checkpoint_fakes import LEGACY, assert_same_state, write_pytracking
from torch import nn

from cmd_ray.models.checkpoint import load_into
from cmd_ray.models.dimpnet import build_dimpnet
from cmd_ray.models.pytracking_checkpoint import (
    PytrackingCheckpoint,
    choose_backbone,
    factory_kwargs,
    load_pytracking_checkpoint,
)
from cmd_ray.models.safe_unpickler import CheckpointError


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_pytracking_checkpoint_loads_without_ltr(tmp_path, state_a, legacy_format):
    path = write_pytracking(tmp_path / "DiMPnet_ep0007.pth.tar", state_a, legacy_format=legacy_format)
    with pytest.raises(ModuleNotFoundError):  # a plain (unsafe) load needs pytracking's code
        torch.load(path, weights_only=False)

    ckpt = load_pytracking_checkpoint(path)

    assert_same_state(ckpt.state_dict, state_a)
    assert ckpt.constructor is not None
    assert ckpt.constructor["fun_name"] == "dimpnet50"
    assert ckpt.constructor["fun_module"] == "ltr.models.tracking.dimpnet"
    assert ckpt.constructor["__class__"] == "ltr.admin.model_constructor.NetConstructor"
    assert ckpt.constructor["args"] == ()
    assert ckpt.constructor["kwds"] == {
        "filter_size": 4,
        "optim_iter": 1,
        "out_feature_dim": 64,
        "backbone_pretrained": True,
    }
    assert (ckpt.epoch, ckpt.net_type, ckpt.actor_type) == (7, "DiMPnet", "DiMPActor")
    assert ckpt.settings["__class__"] == "ltr.admin.settings.Settings"
    assert ckpt.settings["search_area_factor"] == 6.0 and ckpt.settings["feature_sz"] == 22
    assert ckpt.settings["center_jitter_factor"] == {"train": 3, "test": 5.5}
    assert ckpt.settings["env"] == {
        "__class__": "ltr.admin.settings.EnvironmentSettings",
        "workspace_dir": "/ws",
        "lasot_dir": "/data/lasot",
    }
    assert ckpt.settings["device"] == torch.device("cuda")
    assert ckpt.stats["train"]["Loss/total"]["avg"] == 0.25
    assert ckpt.dropped_keys == [] and not ckpt.stripped_prefix
    assert "ltr" not in sys.modules  # nothing was imported


def test_legacy_dlframework_names(tmp_path, state_a):
    path = write_pytracking(tmp_path / "old.pth.tar", state_a, admin=LEGACY, fun_name="atom_resnet18")
    ckpt = load_pytracking_checkpoint(path)
    assert ckpt.constructor is not None
    assert ckpt.constructor["__class__"] == "dlframework.common.utils.model_constructor.NetConstructor"
    assert ckpt.constructor["fun_name"] == "atom_resnet18"
    assert ckpt.settings["env"]["workspace_dir"] == "/ws"
    assert choose_backbone(ckpt) == "resnet18"
    assert_same_state(ckpt.state_dict, state_a)


def test_dataparallel_prefix_stripped_and_imagenet_head_dropped(tmp_path, state_a):
    wrapped = {f"module.{k}": v for k, v in state_a.items()}
    wrapped["module.feature_extractor.fc.weight"] = torch.zeros(10, 4)
    wrapped["module.feature_extractor.fc.bias"] = torch.zeros(10)
    ckpt = load_pytracking_checkpoint(write_pytracking(tmp_path / "dp.pth.tar", wrapped))
    assert_same_state(ckpt.state_dict, state_a)
    assert ckpt.stripped_prefix
    assert ckpt.dropped_keys == ["feature_extractor.fc.weight", "feature_extractor.fc.bias"]


def test_plain_state_dict_and_parameters(tmp_path, state_a):
    """A bare state dict (some releases) and nn.Parameter values load too."""
    path = tmp_path / "bare.pth"
    torch.save(OrderedDict((k, nn.Parameter(v, requires_grad=False)) for k, v in state_a.items()), path)
    ckpt = load_pytracking_checkpoint(path)
    assert ckpt.constructor is None
    assert_same_state(ckpt.state_dict, state_a)
    assert not any(isinstance(v, nn.Parameter) for v in ckpt.state_dict.values())


@pytest.mark.parametrize("content", [[1, 2, 3], {"epoch": 3, "settings": None}, {"net": {"w": "text"}}])
def test_non_checkpoint_pickle_raises(tmp_path, content):
    path = tmp_path / "other.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_pytracking_checkpoint(path)


def test_torchscript_archive_refused(tmp_path, state_a):
    """torch.load hands archives with ``constants.pkl`` to torch.jit.load (no pickle_module): refused up front."""
    path = write_pytracking(tmp_path / "scripted.pt", state_a)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("scripted/constants.pkl", pickle.dumps(()))
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_pytracking_checkpoint(path)


@pytest.mark.parametrize(
    ("fun_name", "kwds", "expected"),
    [
        ("dimpnet50", {}, "resnet50"),
        ("klcedimpnet50", {}, "resnet50"),
        ("dimpnet18", {}, "resnet18"),
        ("klcedimpnet18", {}, "resnet18"),
        ("atom_resnet18", {}, "resnet18"),
        ("atom_resnet50", {}, "resnet50"),
        ("mydimp_res50", {}, "resnet50"),
        ("dimpnet50", {"backbone": "resnet18"}, "resnet18"),
    ],
)
def test_choose_backbone_from_constructor(fun_name, kwds, expected):
    ckpt = PytrackingCheckpoint(state_dict={}, constructor={"fun_name": fun_name, "fun_module": "m", "kwds": kwds})
    assert choose_backbone(ckpt) == expected


def test_choose_backbone_unknown_factory_raises():
    ckpt = PytrackingCheckpoint(state_dict={}, constructor={"fun_name": "transt_swin", "fun_module": "m", "kwds": {}})
    with pytest.raises(CheckpointError, match="transt_swin"):
        choose_backbone(ckpt)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["feature_extractor.layer1.0.conv3.weight", "feature_extractor.layer4.2.conv3.weight"], "resnet50"),
        (["feature_extractor.layer1.1.conv1.weight", "feature_extractor.layer4.1.conv2.weight"], "resnet18"),
        (["feature_extractor.layer1.0.conv1.weight", "feature_extractor.layer3.0.conv1.weight"], "tiny"),
    ],
)
def test_choose_backbone_from_weights_without_constructor(keys, expected):
    assert choose_backbone(PytrackingCheckpoint(state_dict=dict.fromkeys(keys, torch.zeros(1)))) == expected


def test_choose_backbone_and_factory_kwargs_from_file(tmp_path, state_a):
    kwds = {"iou_input_dim": [64, 64], "iou_inter_dim": (64, 64), "score_act": "relu", "init_gauss_sigma": 1.25}
    path = write_pytracking(tmp_path / "super.pth.tar", state_a, fun_name="klcedimpnet50", kwds=kwds)
    assert choose_backbone(path) == "resnet50"
    kwargs = factory_kwargs(load_pytracking_checkpoint(path))
    assert kwargs == {
        "filter_size": 4,
        "optim_iter": 1,
        "clf_out_dim": 64,
        "init_gauss_sigma": 1.25,
        "iou_pred_dim": (64, 64),
        "iou_inter_dim": (64, 64),
    }
    report = load_into(build_dimpnet("tiny", **kwargs), load_pytracking_checkpoint(path))
    assert report.ok, str(report)
