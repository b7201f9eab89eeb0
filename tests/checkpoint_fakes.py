"""Fake checkpoints for the checkpoint tests (tests/models, tests/distill): tiny DiMP state dicts, pytracking
checkpoints written with throwaway classes registered under pytracking's module names (``ltr.admin.*``, legacy
``dlframework.common.utils.*``; removed from ``sys.modules`` before anything is loaded, as on a machine without
pytracking) and pickles whose payload would run code if unpickled unsafely.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import subprocess
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cmd_ray.models.dimpnet import build_dimpnet

LTR = "ltr.admin"


LEGACY = "dlframework.common.utils"


REF_KEY = "bb_regressor.conv3_1r.0.weight"


TEST_KEY = "bb_regressor.iou_predictor.weight"


CLF_KEY = "classifier.filter_initializer.filter_conv.weight"


TEST_PREFIXES = tuple(
    f"bb_regressor.{m}." for m in ("conv3_1t", "conv3_2t", "conv4_1t", "conv4_2t", "fc3_rt", "fc4_rt", "iou_predictor")
)


def tiny_state(seed: int, **kwargs: Any) -> dict[str, torch.Tensor]:
    """The state dict of a ``tiny`` DiMP network (one optimizer iteration) initialised from ``seed``."""
    torch.manual_seed(seed)
    return build_dimpnet("tiny", optim_iter=1, **kwargs).state_dict()


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
    """Same keys in the same order, each tensor of the same dtype and values."""
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key


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
