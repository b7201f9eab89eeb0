"""MLflow model registry: log the distilled tracker, register it, set an alias, pull it back; and :func:`load_model`,
the one way to load a network from any source (registry URI, checkpoint, state dict).

A registered version is an ``mlflow.pytorch`` model whose extra files carry
what cmd-ray needs to rebuild it without unpickling code: ``config.yaml`` (the
resolved run config) and ``state_dict.pt`` (weights, loaded with
``weights_only=True``).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
import yaml
from mlflow.entities.model_registry import ModelVersion
from torch import nn

import cmd_ray
from cmd_ray import mlflow_runs
from cmd_ray.config import Config, dump_config
from cmd_ray.models.checkpoint import load_state_dict
from cmd_ray.models.dimpnet import TrackerNet
from cmd_ray.models.loading import ModelLoadError, load_checkpoint_model, network_with_weights

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "state_dict.pt"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    alias: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def log_and_register(cfg: Config, run_id: str, model: nn.Module, name: str | None = None) -> RegisteredModel:
    """Log ``model`` to run ``run_id``, register it as ``name`` (default ``cfg.mlflow.registered_model_name``)
    and point ``cfg.mlflow.alias`` at the new version."""
    name, alias = name or cfg.mlflow.registered_model_name, cfg.mlflow.alias
    client = mlflow_runs.client(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp, CONFIG_FILE)
        config_path.write_text(mlflow_runs.redact(dump_config(cfg)))  # no secret reaches a logged file
        weights_path = Path(tmp, WEIGHTS_FILE)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights_path)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model.cpu(),
                name="model",
                extra_files=[str(config_path), str(weights_path)],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"cmd-ray=={cmd_ray.__version__}"],
                registered_model_name=name,
                # pt2 would trace forward() with an example input; the pickled flavour is for MLflow's own
                # loaders, while cmd-ray's pull() reads only config.yaml and the weights.
                serialization_format="pickle",
            )
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, alias, version)
    return RegisteredModel(name=name, version=version, alias=alias, run_id=run_id)


def pull(
    model_uri: str, out_dir: str | Path | None = None, tracking_uri: str | None = None
) -> tuple[nn.Module, Config]:
    """Fetch a registered model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) as a ready module.

    The weights are loaded into a freshly built network (no pickled code runs).
    With ``out_dir``, ``config.yaml`` and ``state_dict.pt`` are also written there.

    Returns:
        ``(model in eval mode on CPU, its run config)``.
    """
    if not model_uri.startswith("models:/"):
        raise ValueError(f"model URI {model_uri!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION")
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        config_path = _find(local, CONFIG_FILE, model_uri)
        weights_path = _find(local, WEIGHTS_FILE, model_uri)
        cfg = Config.model_validate(yaml.safe_load(config_path.read_text()))
        model = network_with_weights(cfg, load_state_dict(weights_path), model_uri)
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(config_path, out / CONFIG_FILE)
            shutil.copy(weights_path, out / WEIGHTS_FILE)
    return model, cfg


def load_model(source: str | Path, cfg: Config | None = None) -> tuple[TrackerNet, Config]:
    """A network and its config from wherever it is kept: the one way to load a model.

    Args:
        source: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (the MLflow registry at
            :func:`cmd_ray.mlflow_runs.tracking_uri` of ``cfg``); a cmd-ray checkpoint folder or its
            ``training_state.pt`` (rebuilt from the config stored with it); or a state-dict or pytracking weights
            file (built from ``cfg``). Files may be local paths, ``file://`` or ``s3://`` URIs.
        cfg: the config for sources that store none, and where the registry and S3 are (default: ``Config()``).

    Returns:
        ``(network in eval mode on CPU, the config it was built from)``.

    Raises:
        ModelLoadError: naming ``source``, when it cannot be read or its weights do not fit the network.
    """
    cfg = Config() if cfg is None else cfg
    uri = str(source)
    if uri.startswith("models:/"):
        try:
            return pull(uri, tracking_uri=mlflow_runs.tracking_uri(cfg))
        except Exception as exc:
            raise ModelLoadError(f"cannot pull {uri}: {exc}") from exc
    return load_checkpoint_model(uri, cfg)


@dataclass(frozen=True)
class ModelFiles:
    """A registered version's raw files: ``weights`` (``state_dict.pt`` bytes), its config and producing run."""

    uri: str
    run_id: str
    version: str
    config: Config
    weights: bytes


def fetch(model_uri: str, tracking_uri: str | None = None) -> ModelFiles:
    """The weights file, config and run id behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Raises:
        ValueError: not a ``models:/`` URI, or no such model, version or alias (the message names it).
    """
    uri = tracking_uri or mlflow.get_tracking_uri()
    version = model_version(model_uri, uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp, tracking_uri=uri))
        cfg = Config.model_validate(yaml.safe_load(_find(local, CONFIG_FILE, model_uri).read_text()))
        weights = _find(local, WEIGHTS_FILE, model_uri).read_bytes()
    return ModelFiles(model_uri, version.run_id, str(version.version), cfg, weights)


def model_version(model_uri: str, tracking_uri: str | None = None) -> ModelVersion:
    """The registry entry ``models:/NAME@ALIAS`` points at now (``models:/NAME/VERSION``: that version).

    Raises:
        ValueError: not a ``models:/`` URI, or no such model, version or alias (the message names it).
    """
    name, ref = _parse_model_uri(model_uri)
    uri = tracking_uri or mlflow.get_tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if ref.startswith("@"):
            return client.get_model_version_by_alias(name, ref[1:])
        return client.get_model_version(name, ref)
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"{model_uri}: no such registered model version in {uri} ({exc.message})") from None


def _parse_model_uri(model_uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` ─▶ ``(NAME, "@ALIAS")``; ``models:/NAME/VERSION`` ─▶ ``(NAME, VERSION)``."""
    body = model_uri[len("models:/") :] if model_uri.startswith("models:/") else ""
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias:
            return name, "@" + alias
    elif body.count("/") == 1:
        name, version = body.split("/")
        if name and version.isdigit():
            return name, version
    raise ValueError(f"model URI {model_uri!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION")


def _find(root: Path, file_name: str, model_uri: str) -> Path:
    matches = sorted(root.rglob(file_name))
    if not matches:
        raise FileNotFoundError(f"{model_uri} has no {file_name}: it was not logged by cmd-ray")
    return matches[0]
