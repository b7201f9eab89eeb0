"""pytracking (``ltr``) checkpoints as plain data: weights, constructor, settings; the backbone and factory they need.

The file is read through the restricted unpickler (:mod:`cmd_ray.models.safe_unpickler`), so nothing it names is
imported or run; the inert records of the constructor, settings and stats become plain dicts.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmd_ray.models.safe_unpickler import CheckpointError, PickledObject, safe_torch_load, to_plain

FC_PREFIX = "feature_extractor.fc."
DATAPARALLEL_PREFIX = "module."

log = logging.getLogger(__name__)


@dataclass
class PytrackingCheckpoint:
    """What a pytracking checkpoint holds, as plain data.

    Attributes:
        state_dict: the network weights (``module.`` stripped, ``feature_extractor.fc.*`` dropped).
        constructor: ``{"__class__", "fun_name", "fun_module", "args", "kwds"}`` of the recorded
            ``NetConstructor`` (e.g. ``fun_name="dimpnet50"``, ``fun_module="ltr.models.tracking.dimpnet"``),
            or ``None`` when the file has none.
        settings: the training ``Settings`` attributes (nested objects as dicts with ``__class__``).
        stats: training statistics (``AverageMeter``/``StatValue`` records as dicts).
        epoch / net_type / actor_type / net_info: the corresponding entries, if present.
        dropped_keys: ``feature_extractor.fc.*`` keys removed (cmd-ray builds no ImageNet head).
        stripped_prefix: whether a DataParallel ``module.`` prefix was removed.
    """

    state_dict: dict[str, torch.Tensor]
    constructor: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    stats: Any = None
    epoch: int | None = None
    net_type: str | None = None
    actor_type: str | None = None
    net_info: Any = None
    dropped_keys: list[str] = field(default_factory=list)
    stripped_prefix: bool = False
    path: Path | None = None


def normalize_weights(weights: Mapping[Any, Any], path: Path) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """``module.`` stripped, ``feature_extractor.fc.*`` dropped; -> (state dict, dropped keys, stripped?)."""
    bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {path}: weights hold non-tensor entries, e.g. {bad[:3]}")
    stripped = bool(weights) and all(k.startswith(DATAPARALLEL_PREFIX) for k in weights)
    state: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in weights.items():
        name = key[len(DATAPARALLEL_PREFIX) :] if stripped else key
        if name.startswith(FC_PREFIX):
            dropped.append(name)
            continue
        state[name] = value.detach() if isinstance(value, nn.Parameter) else value
    if dropped:
        log.info("%s: dropped %d ImageNet-head keys (%s*)", path, len(dropped), FC_PREFIX)
    return state, dropped, stripped


def load_pytracking_checkpoint(path: str | Path) -> PytrackingCheckpoint:
    """Read a pytracking (``ltr``/``dlframework``) checkpoint without executing any pickled code.

    Raises :class:`CheckpointError` (naming ``path``) for a missing, truncated or garbage file, a
    TorchScript archive, a pickle that needs a refused operation, or a file without weights.
    """
    path = Path(path)
    raw = safe_torch_load(path)
    try:
        return _pytracking_from_raw(raw, path)
    except RecursionError as exc:
        raise CheckpointError(f"checkpoint {path} is nested too deeply to read") from exc


def _pytracking_from_raw(raw: Any, path: Path) -> PytrackingCheckpoint:
    if isinstance(raw, PickledObject):
        raise CheckpointError(f"checkpoint {path} holds a pickled {type(raw).qualname()}, not a checkpoint dict")
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(raw).__name__}, not a checkpoint dict")
    if all(isinstance(v, torch.Tensor) for v in raw.values()) and raw:
        weights: Any = raw  # a bare state dict
    else:
        weights = next((raw[k] for k in ("net", "model", "state_dict") if isinstance(raw.get(k), Mapping)), None)
    if weights is None:
        held = next((raw[k] for k in ("net", "model", "state_dict") if k in raw), None)
        if isinstance(held, PickledObject):  # e.g. a pickled call of os.system where the weights belong: never run
            what = f"holds a pickled {type(held).qualname()} where its state dict belongs"
        else:
            what = f"has no 'net' state dict (keys: {sorted(map(str, raw))[:10]})"
        raise CheckpointError(f"checkpoint {path} {what}")
    state, dropped, stripped = normalize_weights(weights, path)

    constructor = to_plain(raw.get("constructor"))
    if constructor is not None:
        if not isinstance(constructor, dict):
            raise CheckpointError(f"checkpoint {path}: 'constructor' is a {type(constructor).__name__}")
        constructor.setdefault("args", ())
        constructor.setdefault("kwds", {})
    settings = to_plain(raw.get("settings"))
    if settings is None:
        settings = {}
    elif not isinstance(settings, dict):
        settings = {"__value__": settings}
    epoch = raw.get("epoch")
    return PytrackingCheckpoint(
        state_dict=state,
        constructor=constructor,
        settings=settings,
        stats=to_plain(raw.get("stats")),
        epoch=epoch if type(epoch) is int else None,
        net_type=_str_or_none(raw.get("net_type")),
        actor_type=_str_or_none(raw.get("actor_type")),
        net_info=to_plain(raw.get("net_info")),
        dropped_keys=dropped,
        stripped_prefix=stripped,
        path=path,
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# Constructor function names of pytracking (ltr.models.tracking.dimpnet, ltr.models.bbreg.atom).
_FACTORY_BACKBONES: dict[str, str] = {
    "dimpnet18": "resnet18",
    "L2dimpnet18": "resnet18",
    "klcedimpnet18": "resnet18",
    "dimpnet50": "resnet50",
    "klcedimpnet50": "resnet50",  # PrDiMP-50 (SuperDiMP is built by dimpnet50)
    "atom_resnet18": "resnet18",
    "atom_resnet50": "resnet50",
}
_PRESETS = ("tiny", "resnet18", "resnet50")


def choose_backbone(ckpt: PytrackingCheckpoint | str | Path) -> str:
    """The cmd-ray ``build_dimpnet`` preset (``"resnet50"``, ``"resnet18"``, ``"tiny"``) for a pytracking checkpoint.

    Decided by the recorded constructor: a ``backbone`` keyword naming a preset, else the factory
    name (``dimpnet50``/``klcedimpnet50`` -> resnet50, ``dimpnet18``/``atom_resnet18`` -> resnet18, a
    ``…18``/``…50`` suffix likewise); without a constructor, by the backbone keys of the weights
    (Bottleneck ``conv3`` -> resnet50, two BasicBlocks and ``layer4`` -> resnet18, else tiny).
    """
    if not isinstance(ckpt, PytrackingCheckpoint):
        ckpt = load_pytracking_checkpoint(ckpt)
    where = f"checkpoint {ckpt.path}" if ckpt.path else "checkpoint"
    constructor = ckpt.constructor
    if constructor:
        kwds = constructor.get("kwds") or {}
        backbone = kwds.get("backbone") if isinstance(kwds, dict) else None
        if isinstance(backbone, str) and backbone in _PRESETS:
            return backbone
        fun_name = constructor.get("fun_name")
        if isinstance(fun_name, str):
            if fun_name in _FACTORY_BACKBONES:
                return _FACTORY_BACKBONES[fun_name]
            match = re.search(r"(18|34|50|101)(?!\d)", fun_name)
            if match and f"resnet{match.group(1)}" in _PRESETS:
                return f"resnet{match.group(1)}"
            raise CheckpointError(
                f"{where}: constructor {constructor.get('fun_module')}.{fun_name} has no cmd-ray backbone preset"
                f" (supported: {', '.join(sorted(_FACTORY_BACKBONES))})"
            )
    keys = set(ckpt.state_dict)
    if not any(k.startswith("feature_extractor.") for k in keys):
        raise CheckpointError(f"{where}: no constructor and no feature_extractor.* weights to infer the backbone from")
    if "feature_extractor.layer1.0.conv3.weight" in keys:
        return "resnet50"
    has_layer4 = any(k.startswith("feature_extractor.layer4.") for k in keys)
    if "feature_extractor.layer1.1.conv1.weight" in keys and has_layer4:
        return "resnet18"
    return "tiny"


# pytracking factory keyword -> cmd_ray.models.dimpnet.build_dimpnet keyword.
_FACTORY_KWARGS = {
    "filter_size": "filter_size",
    "optim_iter": "optim_iter",
    "optim_init_step": "optim_init_step",
    "optim_init_reg": "optim_init_reg",
    "init_gauss_sigma": "init_gauss_sigma",
    "num_dist_bins": "num_dist_bins",
    "bin_displacement": "bin_displacement",
    "mask_init_factor": "mask_init_factor",
    "clf_feat_blocks": "clf_feat_blocks",
    "out_feature_dim": "clf_out_dim",
    "feat_stride": "feature_stride",
    "iou_input_dim": "iou_pred_dim",
    "iou_inter_dim": "iou_inter_dim",
}


def factory_kwargs(ckpt: PytrackingCheckpoint) -> dict[str, Any]:
    """``build_dimpnet`` keywords from the recorded constructor keywords (those cmd-ray has; others ignored).

    ``build_dimpnet(choose_backbone(ckpt), **factory_kwargs(ckpt))`` builds the matching network.
    """
    kwds = (ckpt.constructor or {}).get("kwds") or {}
    out: dict[str, Any] = {}
    for theirs, ours in _FACTORY_KWARGS.items():
        if theirs not in kwds:
            continue
        value = kwds[theirs]
        if isinstance(value, list | tuple):
            value = tuple(int(v) for v in value)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[ours] = value
    return out
