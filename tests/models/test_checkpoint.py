"""Checkpoint files: pytracking checkpoints read without running pickled code, load reports, the B3 merge.

The fake pytracking checkpoints are written with throwaway classes registered under pytracking's
module names (``ltr.admin.*``, legacy ``dlframework.common.utils.*``); those modules are removed
from ``sys.modules`` before anything is loaded, as on a machine without pytracking.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cmd_ray.distill.merge import merge_branches
from cmd_ray.models.checkpoint import load_into, load_state_dict
from cmd_ray.models.dimpnet import build_dimpnet
from cmd_ray.models.pytracking_checkpoint import (
    PytrackingCheckpoint,
    choose_backbone,
    factory_kwargs,
    load_pytracking_checkpoint,
)
from cmd_ray.models.safe_unpickler import SAFE_PICKLE, CheckpointError, PickledObject
from cmd_ray.models.training_state import load_training_state, rng_state, save_training_state

LTR = "ltr.admin"
LEGACY = "dlframework.common.utils"
REF_KEY = "bb_regressor.conv3_1r.0.weight"
TEST_KEY = "bb_regressor.iou_predictor.weight"
CLF_KEY = "classifier.filter_initializer.filter_conv.weight"
TEST_PREFIXES = tuple(
    f"bb_regressor.{m}." for m in ("conv3_1t", "conv3_2t", "conv4_1t", "conv4_2t", "fc3_rt", "fc4_rt", "iou_predictor")
)


def tiny_state(seed: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_dimpnet("tiny", optim_iter=1, **kwargs).state_dict()


@pytest.fixture(scope="module")
def state_a() -> dict[str, torch.Tensor]:
    return tiny_state(0)


@pytest.fixture(scope="module")
def state_b() -> dict[str, torch.Tensor]:
    return tiny_state(1)


@contextlib.contextmanager
def fake_pytracking(admin: str = LTR) -> Iterator[types.SimpleNamespace]:
    """pytracking-like classes in throwaway modules ``<admin>.model_constructor/settings/stats``; removed on exit."""

    class NetConstructor:
        def __init__(self, fun_name: str, fun_module: str, args: tuple, kwds: dict) -> None:
            self.fun_name, self.fun_module, self.args, self.kwds = fun_name, fun_module, args, kwds

        def get(self) -> None:  # pytracking's imports and calls the factory: must never run here
            raise AssertionError("constructor executed")

    class EnvironmentSettings:
        def __init__(self) -> None:
            self.workspace_dir = "/ws"
            self.lasot_dir = "/data/lasot"

    class Settings:
        def __init__(self) -> None:
            self.env = EnvironmentSettings()
            self.use_gpu = True
            self.search_area_factor = 6.0
            self.feature_sz = 22
            self.center_jitter_factor = {"train": 3, "test": 5.5}
            self.normalize_mean = [0.485, 0.456, 0.406]
            self.device = torch.device("cuda")

    class AverageMeter:
        def __init__(self) -> None:
            self.avg, self.val, self.sum, self.count, self.history = 0.25, 0.2, 0.5, 2, [0.3]

    classes = {
        "model_constructor": [NetConstructor],
        "settings": [Settings, EnvironmentSettings],
        "stats": [AverageMeter],
    }
    parts = admin.split(".")
    created = [".".join(parts[: i + 1]) for i in range(len(parts))] + [f"{admin}.{m}" for m in classes]
    assert not any(name in sys.modules for name in created)
    try:
        for name in created:
            sys.modules[name] = types.ModuleType(name)
        for module, members in classes.items():
            for cls in members:
                cls.__module__ = f"{admin}.{module}"
                cls.__qualname__ = cls.__name__
                setattr(sys.modules[f"{admin}.{module}"], cls.__name__, cls)
        yield types.SimpleNamespace(**{c.__name__: c for members in classes.values() for c in members})
    finally:
        for name in created:
            sys.modules.pop(name, None)


def write_pytracking(
    path: Path,
    state: dict[str, torch.Tensor],
    *,
    fun_name: str = "dimpnet50",
    kwds: dict | None = None,
    admin: str = LTR,
    legacy_format: bool = False,
    extra: dict | None = None,
    settings_attrs: dict | None = None,
) -> Path:
    """A checkpoint laid out like pytracking's ``BaseTrainer.save_checkpoint``."""
    kwds = {"filter_size": 4, "optim_iter": 1, "out_feature_dim": 64, "backbone_pretrained": True} | (kwds or {})
    with fake_pytracking(admin) as ltr:
        settings = ltr.Settings()
        for name, value in (settings_attrs or {}).items():
            setattr(settings, name, value)
        checkpoint = {
            "epoch": 7,
            "actor_type": "DiMPActor",
            "net_type": "DiMPnet",
            "net": state,
            "net_info": None,
            "constructor": ltr.NetConstructor(fun_name, "ltr.models.tracking.dimpnet", (), kwds),
            "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0, 1]}]},
            "stats": OrderedDict(train=OrderedDict({"Loss/total": ltr.AverageMeter()})),
            "settings": settings,
        } | (extra or {})
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    assert "ltr" not in sys.modules and "dlframework" not in sys.modules
    return path


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key


# --- loading pytracking checkpoints -----------------------------------------------------------


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


# --- malicious pickles ------------------------------------------------------------------------


class SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ExecPayload(SystemPayload):
    def __reduce__(self):
        return (builtins.exec, (f"with open({str(self.marker)!r}, 'w') as f: f.write('pwned')",))


class SubprocessPayload(SystemPayload):
    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


PAYLOADS = [SystemPayload, ExecPayload, SubprocessPayload]


def write_malicious(tmp_path: Path, payload: type, state: dict, where: str, legacy_format: bool = False) -> Path:
    marker = tmp_path / "pwned"
    evil = payload(marker)
    kwargs: dict[str, Any] = {
        "top": {"extra": {"payload": evil}},
        "settings": {"settings_attrs": {"hook": evil}},
        "constructor": {"kwds": {"backbone_hook": evil}},
    }[where]
    return write_pytracking(tmp_path / "evil.pth.tar", state, legacy_format=legacy_format, **kwargs)


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_malicious_payload_is_live_when_loaded_unsafely(tmp_path, state_a, payload):
    """Control: the payloads below really run code under an ordinary unpickler."""
    path = tmp_path / "evil.pt"
    torch.save({"payload": payload(tmp_path / "pwned")}, path)
    torch.load(path, weights_only=False)
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("where", ["top", "settings", "constructor"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.__name__)
def test_malicious_checkpoint_runs_nothing(tmp_path, state_a, payload, where, legacy_format):
    path = write_malicious(tmp_path, payload, state_a, where, legacy_format)
    with pytest.raises(pickle.UnpicklingError):  # sanity: the weights-only loader refuses it as well
        torch.load(path, weights_only=True)

    ckpt = load_pytracking_checkpoint(path)

    assert not (tmp_path / "pwned").exists()
    assert_same_state(ckpt.state_dict, state_a)
    assert ckpt.constructor is not None and ckpt.constructor["fun_name"] == "dimpnet50"
    if where == "settings":
        assert ckpt.settings["hook"]["__class__"] in ("posix.system", "builtins.exec", "subprocess.call")
    if where == "constructor":
        assert "__args__" in ckpt.constructor["kwds"]["backbone_hook"]  # recorded, not called
    assert not (tmp_path / "pwned").exists()


def test_merge_and_load_state_dict_run_nothing(tmp_path, state_a):
    path = write_malicious(tmp_path, SystemPayload, state_a, "top")
    assert_same_state(load_state_dict(path), state_a)
    merge_branches(path, path, tmp_path / "out.pt")
    assert not (tmp_path / "pwned").exists()


def raw_pickles(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}".encode()
    return {
        "global_reduce_p0": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "inst_p0": b"(S'" + cmd + b"'\nios\nsystem\n.",
        "obj_p1": b"(cos\nsystem\nS'" + cmd + b"'\no.",
        "stack_global_p4": pickle.dumps(SystemPayload(marker), protocol=4),
        "eval_p2": pickle.dumps(ExecPayload(marker), protocol=2),
    }


@pytest.mark.parametrize("kind", list(raw_pickles(Path("x"))))
def test_every_unknown_callable_becomes_an_inert_record(tmp_path, kind):
    obj = SAFE_PICKLE.loads(raw_pickles(tmp_path / "pwned")[kind])
    assert isinstance(obj, PickledObject)
    assert obj.args and str(tmp_path / "pwned") in str(obj.args)
    assert not (tmp_path / "pwned").exists()


def test_calling_a_record_instance_is_refused(tmp_path):
    """``getattr(os, 'system')`` yields an inert record; REDUCE with it as the callable is refused."""
    data = b"cbuiltins\ngetattr\n(cos\nsystem\nS'__call__'\ntR(S'touch " + str(tmp_path / "p").encode() + b"'\ntR."
    with pytest.raises(pickle.UnpicklingError, match="refusing to call"):
        SAFE_PICKLE.loads(data)
    assert not (tmp_path / "p").exists()


class OutOfBounds:
    def __reduce__(self):
        storage = torch.zeros(2).untyped_storage()  # 8 bytes
        return (torch._utils._rebuild_tensor_v2, (storage, 0, (4096,), (1,), False, OrderedDict()))


def test_tensor_outside_its_storage_is_refused(tmp_path):
    path = tmp_path / "oob.pt"
    torch.save({"net": {"w": OutOfBounds()}}, path)
    with pytest.raises(CheckpointError, match="bytes of a 8-byte storage"):
        load_pytracking_checkpoint(path)


# --- unreadable files -------------------------------------------------------------------------


def _truncate(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


@pytest.mark.parametrize(
    "make",
    [
        lambda d, good, legacy: (d / "random.pth.tar", (d / "random.pth.tar").write_bytes(os.urandom(4096)))[0],
        lambda d, good, legacy: (d / "notes.pth.tar", (d / "notes.pth.tar").write_text("not a checkpoint\n"))[0],
        lambda d, good, legacy: (d / "empty.pth.tar", (d / "empty.pth.tar").write_bytes(b""))[0],
        lambda d, good, legacy: _truncate(good, d / "truncated_zip.pth.tar"),
        lambda d, good, legacy: _truncate(legacy, d / "truncated_legacy.pth.tar"),
        lambda d, good, legacy: d / "missing.pth.tar",
    ],
    ids=["random", "text", "empty", "truncated-zip", "truncated-legacy", "missing"],
)
def test_unreadable_file_raises_checkpoint_error_naming_it(tmp_path, state_a, make):
    good = write_pytracking(tmp_path / "good.pth.tar", state_a)
    legacy = write_pytracking(tmp_path / "good_legacy.pth.tar", state_a, legacy_format=True)
    bad = make(tmp_path, good, legacy)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_pytracking_checkpoint(bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_state_dict(bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        merge_branches(good, bad, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


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


# --- backbone choice and loading into a model -------------------------------------------------


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


def test_load_into_reports_missing_unexpected_and_mismatched(state_a, state_b):
    model = build_dimpnet("tiny", optim_iter=1)
    model.load_state_dict(state_b)
    source = dict(state_a)
    del source[CLF_KEY]
    source["classifier.extra.weight"] = torch.zeros(3)
    source[TEST_KEY] = torch.zeros(2, 5)

    report = load_into(model, source)

    assert report.missing_keys == [CLF_KEY]
    assert report.unexpected_keys == ["classifier.extra.weight"]
    assert report.shape_mismatches == {TEST_KEY: ((2, 5), tuple(state_a[TEST_KEY].shape))}
    assert not report.ok and TEST_KEY in str(report)
    loaded = model.state_dict()
    assert torch.equal(loaded[REF_KEY], state_a[REF_KEY])  # what fits was loaded
    assert torch.equal(loaded[TEST_KEY], state_b[TEST_KEY])  # mismatched and missing keys untouched
    assert torch.equal(loaded[CLF_KEY], state_b[CLF_KEY])
    assert len(report.loaded) == len(state_a) - 2


# --- merging branches (B3) --------------------------------------------------------------------


@pytest.mark.parametrize("test_kind", ["pytracking", "plain", "folder"])
def test_merge_takes_each_branch_from_its_side(tmp_path, state_a, state_b, test_kind):
    ref_dir = tmp_path / "ref_run"
    ref_dir.mkdir()
    save_training_state(ref_dir, {"model": state_a, "epoch": 3, "rng": rng_state()})
    test_path = {
        "pytracking": lambda: write_pytracking(tmp_path / "b.pth.tar", state_b),
        "plain": lambda: (torch.save(state_b, tmp_path / "b.pt"), tmp_path / "b.pt")[1],
        "folder": lambda: save_training_state(tmp_path, {"model": state_b, "epoch": 1}).parent,
    }[test_kind]()

    out = merge_branches(ref_dir, test_path, tmp_path / "merged" / "b3.pt")

    merged = torch.load(out, weights_only=True)
    assert list(merged) == list(state_a)
    for key in (REF_KEY, TEST_KEY, CLF_KEY):
        assert not torch.equal(state_a[key], state_b[key])  # the two sides differ, so the checks can fail
    assert torch.equal(merged[REF_KEY], state_a[REF_KEY])
    assert torch.equal(merged[TEST_KEY], state_b[TEST_KEY])
    assert torch.equal(merged[CLF_KEY], state_a[CLF_KEY])
    for key, value in merged.items():
        expected = state_b[key] if key.startswith(TEST_PREFIXES) else state_a[key]
        assert torch.equal(value, expected), key
    assert sum(k.startswith(TEST_PREFIXES) for k in merged) > 10


def test_merge_of_mismatched_checkpoints_raises(tmp_path, state_a):
    a = tmp_path / "a.pt"
    torch.save(state_a, a)
    wider = tmp_path / "wider.pt"
    torch.save(tiny_state(2, clf_out_dim=32), wider)
    with pytest.raises(CheckpointError, match="shapes differ"):
        merge_branches(a, wider, tmp_path / "out.pt")
    fewer = tmp_path / "fewer.pt"
    torch.save({k: v for k, v in state_a.items() if k != CLF_KEY}, fewer)
    with pytest.raises(CheckpointError, match="key sets differ"):
        merge_branches(fewer, a, tmp_path / "out.pt")
    no_iounet = tmp_path / "no_iounet.pt"
    torch.save({k: v for k, v in state_a.items() if not k.startswith("bb_regressor.")}, no_iounet)
    with pytest.raises(CheckpointError, match="IoU-Net"):
        merge_branches(no_iounet, no_iounet, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


# --- own checkpoints --------------------------------------------------------------------------


def test_own_checkpoints_stay_weights_only(tmp_path, state_a):
    path = save_training_state(tmp_path, {"model": state_a, "epoch": 2, "config": {"a": 1}, "rng": rng_state()})
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 2
    assert load_training_state(tmp_path)["config"] == {"a": 1}
    assert_same_state(load_state_dict(path), state_a)
    assert_same_state(load_state_dict(tmp_path), state_a)


def test_load_state_dict_reads_pytracking_files(tmp_path, state_a):
    assert_same_state(load_state_dict(write_pytracking(tmp_path / "p.pth.tar", state_a)), state_a)
