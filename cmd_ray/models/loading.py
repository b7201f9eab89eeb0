"""A network and its config from a checkpoint or weights file, local or on S3 (the file half of ``load_model``).

:func:`cmd_ray.registry.load_model` is the one way to load a model: it pulls ``models:/…`` URIs from the MLflow
registry and hands every other source to :func:`load_checkpoint_model` here. Sources:

- a cmd-ray checkpoint folder or its ``training_state.pt``: the network is rebuilt from the config stored with it;
- a state-dict file or a pytracking checkpoint: the network is built from the caller's config.

Every file is read without running pickled code (:mod:`cmd_ray.models.checkpoint`), and the weights must fit the
network exactly (:func:`network_with_weights`).
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pyarrow import fs as pafs

from cmd_ray import storage
from cmd_ray.config import Config
from cmd_ray.models.checkpoint import load_into, load_state_dict
from cmd_ray.models.dimpnet import TrackerNet, build_network, network_spec
from cmd_ray.models.training_state import TRAINING_STATE_FILE


class ModelLoadError(ValueError):
    """A model cannot be loaded or does not fit its network; the message names the source."""


def checkpoint_file(uri: str, endpoint_url: str | None = None) -> str:
    """A cmd-ray checkpoint folder ─▶ its ``training_state.pt``; a file URI (or a missing one) passes through."""
    filesystem, path = storage.resolve(uri, endpoint_url)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        return storage.join(uri.rstrip("/"), TRAINING_STATE_FILE)
    return uri


def weights_stamp(uri: str, endpoint_url: str | None = None) -> dict[str, Any] | None:
    """What identifies the weights file ``uri`` names as stored now, without reading it: ``{"file": its URI (a
    checkpoint folder's ``training_state.pt``), "size": bytes, "mtime_ns": last modification, ns since the epoch}``;
    None when there is no such file.

    A file rewritten in place (a merge rebuilt, a checkpoint written again) gets a new stamp; reading the file to
    hash it would cost a download of every model on S3.
    """
    file_uri = checkpoint_file(uri, endpoint_url)
    filesystem, path = storage.resolve(file_uri, endpoint_url)
    info = filesystem.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return {"file": file_uri, "size": int(info.size), "mtime_ns": int(info.mtime_ns) if info.mtime_ns else None}


def stored_config(path: str | Path) -> Config | None:
    """The run config a cmd-ray training checkpoint holds (None for a plain state dict or a pytracking file)."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not weights-only loadable: a pytracking file, read by load_state_dict
        return None
    if isinstance(raw, Mapping) and isinstance(raw.get("config"), Mapping) and "model" in raw:
        try:
            return Config.model_validate(raw["config"])
        except ValueError as exc:
            raise ModelLoadError(f"{path}: the config stored with the checkpoint is not valid: {exc}") from exc
    return None


@functools.lru_cache(maxsize=4)
def _network_template(spec_json: str) -> TrackerNet:
    """One randomly initialised network per :func:`network_spec` and process: building one runs every initialiser
    (on the tiny preset, as long as tracking four frames), and a tracker process builds one per sequence."""
    return build_network(json.loads(spec_json))


def network_with_weights(config: Config, state_dict: Mapping[str, torch.Tensor], source: str = "") -> TrackerNet:
    """The network of ``config`` with ``state_dict`` loaded, in eval mode on CPU; every key must fit.

    Raises:
        ModelLoadError: naming ``source`` and the keys that do not fit.
    """
    net = copy.deepcopy(_network_template(json.dumps(network_spec(config), sort_keys=True)))
    report = load_into(net, state_dict)
    if not report.ok:
        raise ModelLoadError(
            f"weights of {source or 'the model'} do not fit the {config.model.architecture}/"
            f"{config.model.preset} network:\n{report}"
        )
    return net.eval()


def load_checkpoint_model(source: str | Path, cfg: Config) -> tuple[TrackerNet, Config]:
    """The network in ``source`` (a checkpoint folder, ``training_state.pt``, state-dict or pytracking file).

    Args:
        source: a local path, ``file://`` or ``s3://`` URI.
        cfg: builds the network when the file stores no config; its ``storage.s3_endpoint_url`` reads S3.

    Returns:
        ``(network in eval mode on CPU, the config it was built from)``: the stored config, else ``cfg`` itself.

    Raises:
        ModelLoadError: naming ``source``, when it cannot be read or its weights do not fit.
    """
    uri = str(source)
    endpoint = cfg.storage.s3_endpoint_url
    with tempfile.TemporaryDirectory(prefix="cmd-ray-model-") as tmp:
        try:
            file_uri = checkpoint_file(uri, endpoint)
            if storage.is_s3(file_uri):
                path = Path(tmp) / Path(file_uri).name
                path.write_bytes(storage.read_bytes(file_uri, endpoint))
            else:
                path = Path(storage.resolve(file_uri)[1])
            if not path.is_file():
                raise ModelLoadError(f"model {uri}: no such file (a checkpoint folder must hold {TRAINING_STATE_FILE})")
            model_cfg = stored_config(path) or cfg
            weights = load_state_dict(path)
        except ModelLoadError:
            raise
        except (OSError, ValueError) as exc:  # StorageError, CheckpointError
            raise ModelLoadError(f"cannot load model {uri}: {exc}") from exc
    return network_with_weights(model_cfg, weights, uri), model_cfg
