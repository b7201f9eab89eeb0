"""MLflow model registry: log the distilled tracker, register it, set an alias, pull it back; and :func:`load_model`,
the one way to load a network from any source (registry URI, checkpoint, state dict).

A registered version is an MLflow ``python_function`` model that travels on its own and holds no pickled object:

- ``python_model`` is the code file :mod:`cmd_ray.pyfunc_model` (MLflow's models-from-code): ``predict`` takes a
  dict of named float32 arrays and returns the classifier's score maps and the IoU-Net's IoUs (see that module);
- its artifacts are ``state_dict.pt`` (the weights, a ``torch.save`` of a dict of tensors, read with
  ``weights_only=True``), ``network.json`` (:func:`network_description`: what rebuilds the network) and
  ``config.yaml`` (the resolved run config, for cmd-ray's own :func:`pull` and :func:`fetch`);
- ``code/cmd_ray_net/`` is a copy of the network code made when the model is logged
  (:mod:`cmd_ray.models.standalone`), so a process without cmd-ray installed loads the model (MLflow puts
  ``code/`` on ``sys.path``); it imports no ``cmd_ray`` module and cannot shadow an installed cmd-ray;
- ``requirements.txt`` pins the third-party packages that code imports (:data:`MODEL_REQUIREMENTS`, at the
  versions installed where the model was logged), all resolvable from a package index;
- its signature names ``predict``'s inputs and outputs with their shapes (:func:`model_signature`), and its input
  example (:func:`input_example`) is one such call at the config's crop size;
- the version's description and tags name the variant, the teacher and the training data
  (:func:`version_description`) and, for a run that selected its weights by tracking (``distill.select_by``), which
  epoch the version holds and whether it beat the teacher; an evaluation adds its scores as ``eval.*`` tags
  (:func:`tag_model_version`).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from torch import nn

import cmd_ray
from cmd_ray import mlflow_runs
from cmd_ray.config import Config, dump_config
from cmd_ray.models import standalone
from cmd_ray.models.checkpoint import load_state_dict
from cmd_ray.models.dimpnet import DiMPNet, TrackerNet, network_spec
from cmd_ray.models.loading import ModelLoadError, load_checkpoint_model, network_with_weights
from cmd_ray.vocabulary import START_D, get_variant, paper_start

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "state_dict.pt"
NETWORK_FILE = "network.json"
CODE_DIR = "code"
"""Folder of a logged model that holds the shipped network code (MLflow's ``code_paths``)."""
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
"""The models-from-code file given to MLflow as ``python_model`` (never imported by cmd-ray)."""
ARTIFACTS = {"weights": WEIGHTS_FILE, "network": NETWORK_FILE, "config": CONFIG_FILE}
"""``artifacts`` key ─▶ file of a logged model; ``weights`` and ``network`` are the keys
:mod:`cmd_ray.pyfunc_model` reads."""

MODEL_REQUIREMENTS: tuple[str, ...] = ("torch", "torchvision", "numpy")
"""Distributions the model's code imports when MLflow loads it (:mod:`cmd_ray.pyfunc_model` and the shipped
``cmd_ray_net``); MLflow adds its own pin. cmd-ray itself is not needed to load a model."""

# Run tags the training jobs set (cmd_ray.train.trainer / cmd_ray.train.teacher); read here, where train is not
# importable (it imports this module).
JOB_TAG = "cmd_ray.job"
DATA_URI_TAG = "cmd_ray.data_uri"
TEACHER_SOURCE_TAG = "cmd_ray.teacher_source"
TEACHER_RUN_TAG = "cmd_ray.teacher_run_id"
TEACHER_VERSION_TAG = "cmd_ray.teacher_model_version"
START_TAG = "cmd_ray.start"
"""Where a distill run's weights start: :data:`~cmd_ray.vocabulary.START_TEACHER` or ``START_D``."""
VARIANT_TAG = "cmd_ray.variant"
"""What ran, as :func:`cmd_ray.vocabulary.run_label` names it (``D3``, ``D3 loss from the teacher``)."""


def start_source_tags(named: dict[str, str]) -> dict[str, str]:
    """``{"cmd_ray.start_b3": URI, "cmd_ray.start_c1": URI, …}`` from ``{"distill.start.b3": URI, …}``: the
    tags that record the checkpoints a merged D start was made of."""
    return {f"cmd_ray.start_{key.rsplit('.', 1)[-1]}": uri for key, uri in named.items()}


def start_sources_text(named: dict[str, str]) -> str:
    """``"B3 <URI>, C1 <URI>"`` from ``{"distill.start.b3": URI, …}``, for logs and descriptions."""
    return ", ".join(f"{key.rsplit('.', 1)[-1].upper()} {uri}" for key, uri in named.items())


SELECT_BY_TAG = "cmd_ray.select_by"
SELECTED_EPOCH_TAG = "cmd_ray.selected_epoch"
BEAT_TEACHER_TAG = "cmd_ray.beat_teacher"
SELECTED_SCORE_TAG = "cmd_ray.selected_score"
TEACHER_SCORE_TAG = "cmd_ray.teacher_score"
SELECTION_TAGS = (SELECT_BY_TAG, SELECTED_EPOCH_TAG, BEAT_TEACHER_TAG, SELECTED_SCORE_TAG, TEACHER_SCORE_TAG)
"""Run tags (and, copied, model-version tags) of a run that selected its weights (:func:`selection_tags`)."""


def selection_tags(metric: str, epoch: int, value: float, teacher_value: float) -> dict[str, str]:
    """The tags that record a weight selection: the score ``metric``, the selected ``epoch`` (-1: the teacher's
    weights), its score ``value``, the teacher's ``teacher_value`` and whether the epoch beat the teacher."""
    return {
        SELECT_BY_TAG: metric,
        SELECTED_EPOCH_TAG: str(epoch),
        BEAT_TEACHER_TAG: "true" if epoch >= 0 else "false",
        SELECTED_SCORE_TAG: f"{value:.6g}",
        TEACHER_SCORE_TAG: f"{teacher_value:.6g}",
    }


class RegistryError(ValueError):
    """A registry URI that is malformed, or names a store, model, version or alias that does not exist; the message
    names the URI and the store (credentials masked)."""


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    alias: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def model_requirements(packages: tuple[str, ...] = MODEL_REQUIREMENTS) -> list[str]:
    """``name==version`` pins of ``packages`` at their installed versions.

    A local version label is dropped (``torch 2.14.1+cu130`` ─▶ ``torch==2.14.1``): no package index serves
    ``+cu130``, and PEP 440 lets ``==2.14.1`` match the local build.

    Raises:
        importlib.metadata.PackageNotFoundError: a package is not installed here.
    """
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in packages]


def model_signature(model: nn.Module) -> ModelSignature:
    """The input/output schema of the logged model's ``predict`` (:mod:`cmd_ray.pyfunc_model`), ``-1`` marking a
    free size; ``model`` (a DiMPNet or an ATOMNet) decides whether there are ``scores``.

    Inputs (float32; one test frame per sequence): ``train_imgs`` ``[Ntr, B, 3, S, S]`` and ``test_imgs``
    ``[B, 3, S, S]`` (reference and test crops, ImageNet-normalised, S the crop side), ``train_bb`` ``[Ntr, B, 4]``
    (reference boxes ``x, y, w, h`` in crop pixels) and ``test_proposals`` ``[B, P, 4]`` (boxes to score in the
    test crops).

    Outputs (float32): for DiMP, ``scores`` ``[B, L, L]``: the target classifier's score map on the test crop with
    the final filter iterate, ``L = S/16 + (filter_size + 1) % 2``; and ``iou_pred`` ``[B, P]`` (predicted IoU of
    each proposal, trained against ``2·IoU − 1``).
    """
    f32 = np.dtype(np.float32)
    inputs = Schema(
        [
            TensorSpec(f32, (-1, -1, 3, -1, -1), "train_imgs"),
            TensorSpec(f32, (-1, 3, -1, -1), "test_imgs"),
            TensorSpec(f32, (-1, -1, 4), "train_bb"),
            TensorSpec(f32, (-1, -1, 4), "test_proposals"),
        ]
    )
    outputs = [TensorSpec(f32, (-1, -1), "iou_pred")]
    if isinstance(getattr(model, "module", model), DiMPNet):
        outputs.insert(0, TensorSpec(f32, (-1, -1, -1), "scores"))
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def network_description(cfg: Config) -> dict[str, Any]:
    """What ``network.json`` holds: :func:`~cmd_ray.models.dimpnet.network_spec` (what the shipped code's
    ``build_network`` reads) and ``image_size``, the crop side ``S`` the network was configured for."""
    return {**network_spec(cfg), "image_size": cfg.data.sampling.output_sz}


def input_example(cfg: Config, num_proposals: int = 4) -> dict[str, np.ndarray]:
    """One ``predict`` call at the config's crop side ``S`` (``Ntr = B = 1``): the logged model's input example.

    The crops are pseudo-random multiples of 1/8 in ``[-2, 2]`` (about the range of ImageNet-normalised pixels;
    short in the example's JSON); the reference box is a centred square of side ``S / search_area_factor`` and
    the ``num_proposals`` proposals are that box and shifted or scaled copies, in whole pixels.

    Returns:
        ``{"train_imgs": [1, 1, 3, S, S], "train_bb": [1, 1, 4], "test_imgs": [1, 3, S, S],
        "test_proposals": [1, num_proposals, 4]}``, float32.
    """
    size = cfg.data.sampling.output_sz
    rng = np.random.default_rng(0)

    def crops(*shape: int) -> np.ndarray:
        return (rng.integers(-16, 17, size=shape) / 8).astype(np.float32)

    side = round(size / cfg.data.sampling.search_area_factor)
    x = (size - side) // 2
    shift, grow = max(side // 4, 1), max(side // 8, 1)
    variants = [(0, 0, 0), (shift, 0, 0), (0, -shift, 0), (-grow, -grow, 2 * grow)]
    proposals = [[x + dx, x + dy, side + ds, side + ds] for dx, dy, ds in (variants * num_proposals)[:num_proposals]]
    return {
        "train_imgs": crops(1, 1, 3, size, size),
        "train_bb": np.array([[[x, x, side, side]]], dtype=np.float32),
        "test_imgs": crops(1, 3, size, size),
        "test_proposals": np.array([proposals], dtype=np.float32),
    }


def version_description(cfg: Config, run: Run) -> tuple[str, dict[str, str]]:
    """What a registered version is, read off its config and the training run's record.

    Returns:
        ``(description, tags)``: a few lines naming what ran (``distill.variant`` and where it started, named by
        :func:`cmd_ray.vocabulary.run_label`: ``D3``, or ``D3 loss from the teacher`` for a D row that did not start
        from merge(B3, C1); teacher pretraining has no variant), the starting weights (the teacher's source,
        registry version and producing run; or the B3 and C1 weights merged), the data (URI, pairs or sequences
        used, samples per epoch x epochs) and the network; the same facts as ``cmd_ray.*`` model-version tags; and,
        when the run carries :func:`selection_tags`, the weights' epoch and whether they beat the teacher.
    """
    tags, metrics = run.data.tags, run.data.metrics
    job = tags.get(JOB_TAG, "distill")
    start_tags: dict[str, str] = {}
    start_line = ""
    if job == "pretrain":
        variant_line = "variant: none (supervised RGB teacher pretraining, pretrain.*)"
        variant_tag = "supervised"
        data_uri, kind, section = tags.get(DATA_URI_TAG, cfg.pretrain.sequences_uri), "sequences", cfg.pretrain
        teacher: str | None = tags.get(TEACHER_SOURCE_TAG) or cfg.pretrain.init_checkpoint or "random-init"
        boxes = ""
    else:
        variant = get_variant(cfg.distill.variant)
        start, label = cfg.distill.start_kind, cfg.distill.run_label
        if label == variant.name:
            variant_line = f"variant: {label} (distill.variant): {variant.meaning}"
        else:
            variant_line = (
                f"variant: {label} (distill.variant={variant.name}, started from the {start}, not from "
                f"{paper_start(variant)} as the paper's {variant.name}): {variant.meaning}"
            )
        variant_tag = label
        data_uri, kind, section = tags.get(DATA_URI_TAG, cfg.data.uri), "pairs", cfg.distill
        start_tags = {START_TAG: start}
        if start == START_D:  # the weights were merged; the teacher they descend from is named when configured
            named = cfg.distill.start.named()
            start_line = f"start: {START_D} of {start_sources_text(named)}"
            start_tags.update(start_source_tags(named))
            teacher = tags.get(TEACHER_SOURCE_TAG) or cfg.model.init_checkpoint
        else:
            teacher = tags.get(TEACHER_SOURCE_TAG) or cfg.model.init_checkpoint or "random-init"
        boxes = f", {cfg.data.boxes} pseudo boxes"
    teacher_line = f"teacher: {teacher}" if teacher else ""
    if teacher and tags.get(TEACHER_VERSION_TAG):
        teacher_line += f" (version {tags[TEACHER_VERSION_TAG]})"
    if teacher and tags.get(TEACHER_RUN_TAG):
        teacher_line += f", MLflow run {tags[TEACHER_RUN_TAG]}"
    counts = {split: int(metrics[f"{split}_{kind}"]) for split in ("train", "val") if f"{split}_{kind}" in metrics}
    used = f" ({' / '.join(f'{n} {split}' for split, n in counts.items())} {kind})" if counts else ""
    samples = section.samples_per_epoch * section.epochs
    lines = [
        f"cmd-ray {cfg.model.architecture}/{cfg.model.preset} tracker from the {job} run {run.info.run_id}",
        variant_line,
        *filter(None, [start_line, teacher_line]),
        f"data: {data_uri}{used}; {section.samples_per_epoch} samples per epoch x {section.epochs} epochs{boxes}",
    ]
    if tags.get(SELECT_BY_TAG):
        lines.append(_selection_line(cfg, tags))
    version_tags = {
        JOB_TAG: job,
        VARIANT_TAG: variant_tag,
        **start_tags,
        **({TEACHER_SOURCE_TAG: teacher} if teacher else {}),
        DATA_URI_TAG: data_uri,
        "cmd_ray.network": f"{cfg.model.architecture}/{cfg.model.preset}",
        "cmd_ray.samples": str(samples),
        **{key: tags[key] for key in (TEACHER_RUN_TAG, TEACHER_VERSION_TAG, *SELECTION_TAGS) if tags.get(key)},
        **{f"cmd_ray.{split}_{kind}": str(n) for split, n in counts.items()},
    }
    return mlflow_runs.redact("\n".join(lines)), {
        key: str(mlflow_runs.redact(value)) for key, value in version_tags.items()
    }


def _selection_line(cfg: Config, tags: dict[str, str]) -> str:
    """The description line of a selected version: which weights, their score and the teacher's."""
    metric, epoch = tags[SELECT_BY_TAG], int(tags[SELECTED_EPOCH_TAG])
    score, teacher = tags.get(SELECTED_SCORE_TAG, "?"), tags.get(TEACHER_SCORE_TAG, "?")
    where = f"the validation sequences {cfg.tune.eval_root}"
    if epoch >= 0:
        return (
            f"weights: epoch {epoch} (0-based) of {cfg.distill.epochs}, selected by {metric} on {where}: {score}, "
            f"beat the teacher's {teacher}"
        )
    return (
        f"weights: the teacher's (epoch -1): no epoch of {cfg.distill.epochs} beat its {metric} of {teacher} on "
        f"{where} (distill.select_by); the distilled epochs are in the run's checkpoints"
    )


def log_and_register(cfg: Config, run_id: str, model: nn.Module, name: str | None = None) -> RegisteredModel:
    """Log ``model`` to run ``run_id``, register it as ``name`` (default ``cfg.mlflow.registered_model_name``)
    and point ``cfg.mlflow.alias`` at the new version.

    The logged model is a ``python_function`` model from code (:mod:`cmd_ray.pyfunc_model`) with the weights,
    :func:`network_description` and the config as artifacts; it ships the network code (``code/cmd_ray_net``),
    pins :func:`model_requirements`, carries :func:`model_signature` and :func:`input_example` (MLflow loads the
    model once and runs the example through it while logging), and its version gets :func:`version_description`
    (read off run ``run_id``: call this after the run's tags and counts are logged).
    """
    name, alias = name or cfg.mlflow.registered_model_name, cfg.mlflow.alias
    client = mlflow_runs.client(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        files = {key: Path(tmp, file_name) for key, file_name in ARTIFACTS.items()}
        files["config"].write_text(mlflow_runs.redact(dump_config(cfg)))  # no secret reaches a logged file
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, files["weights"])
        files["network"].write_text(json.dumps(network_description(cfg), indent=2) + "\n")
        code = standalone.write_standalone_package(Path(tmp, CODE_DIR), cmd_ray.__version__)
        with mlflow_runs.url_print_masked(cfg), mlflow.start_run(run_id=run_id), _leaves_no_shipped_code():
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_MODEL_FILE),  # a code file: MLflow pickles nothing
                artifacts={key: str(path) for key, path in files.items()},
                code_paths=[str(code)],
                pip_requirements=model_requirements(),
                signature=model_signature(model),
                input_example=input_example(cfg),
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    description, version_tags = version_description(cfg, client.get_run(run_id))
    client.update_model_version(name, version, description=description)
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return RegisteredModel(name=name, version=version, alias=alias, run_id=run_id)


@contextmanager
def _leaves_no_shipped_code() -> Iterator[None]:
    """Undo what loading a logged model does to this process: MLflow validates the input example by loading the
    model here, which puts its (temporary) ``code/`` folder first on ``sys.path`` and imports ``cmd_ray_net``."""
    path = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = [entry for entry in sys.path if entry in path]
        package = standalone.STANDALONE_PACKAGE
        for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[module]


def version_from_run(cfg: Config, run_id: str, name: str | None = None) -> RegisteredModel | None:
    """The newest version of ``name`` (default ``cfg.mlflow.registered_model_name``) registered from run ``run_id``,
    or ``None``: a rerun that would register the same run's model again reuses it."""
    name = name or cfg.mlflow.registered_model_name
    versions = mlflow_runs.client(cfg).search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        return None
    latest = max(versions, key=lambda v: int(v.version))
    return RegisteredModel(name, str(latest.version), cfg.mlflow.alias, run_id)


def tag_model_version(model_uri: str, version: str, tags: dict[str, Any], tracking_uri: str) -> None:
    """Set ``tags`` on version ``version`` of the model ``model_uri`` names (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``); values are stringified.

    Raises:
        ValueError: not a ``models:/`` URI.
        mlflow.exceptions.MlflowException: no such version in the registry at ``tracking_uri``.
    """
    name, _ = _parse_model_uri(model_uri)
    client = mlflow_runs.store_client(tracking_uri)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(mlflow_runs.redact(value)))


def pull(
    model_uri: str, out_dir: str | Path | None = None, tracking_uri: str | None = None
) -> tuple[nn.Module, Config]:
    """Fetch a registered model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) as a ready module.

    ``tracking_uri`` names the store (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``); the entry is
    looked up before anything is downloaded or written, and a ``sqlite:///`` store that does not exist is not
    created. The weights are loaded into a freshly built network (no pickled code runs).
    With ``out_dir``, ``config.yaml`` and ``state_dict.pt`` are also written there.

    Returns:
        ``(model in eval mode on CPU, its run config)``.

    Raises:
        RegistryError: a malformed URI, a store that does not exist, or no such model, version or alias.
    """
    uri = mlflow_runs.resolve_store(tracking_uri)
    model_version(model_uri, uri)  # a missing store or entry fails here, naming it, before any download
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp, tracking_uri=uri))
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
        RegistryError: not a ``models:/`` URI, or no such store, model, version or alias (the message names it).
    """
    uri = mlflow_runs.resolve_store(tracking_uri)
    version = model_version(model_uri, uri)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp, tracking_uri=uri))
        cfg = Config.model_validate(yaml.safe_load(_find(local, CONFIG_FILE, model_uri).read_text()))
        weights = _find(local, WEIGHTS_FILE, model_uri).read_bytes()
    return ModelFiles(model_uri, version.run_id, str(version.version), cfg, weights)


def model_version(model_uri: str, tracking_uri: str | None = None) -> ModelVersion:
    """The registry entry ``models:/NAME@ALIAS`` points at now (``models:/NAME/VERSION``: that version).

    ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; a ``sqlite:///`` store that
    does not exist is reported, not created.

    Raises:
        RegistryError: not a ``models:/`` URI, or no such store, model, version or alias (the message names the
            URI and the store, credentials masked).
    """
    name, ref = _parse_model_uri(model_uri)
    uri = mlflow_runs.resolve_store(tracking_uri)
    try:
        mlflow_runs.check_store_exists(uri)
    except mlflow_runs.MissingStoreError as exc:
        raise RegistryError(f"{model_uri}: {mlflow_runs.redact(str(exc))}") from None
    store = mlflow_runs.redact(uri)
    try:
        client = mlflow_runs.store_client(uri)
        if ref.startswith("@"):
            return client.get_model_version_by_alias(name, ref[1:])
        return client.get_model_version(name, ref)
    except mlflow.exceptions.MlflowException as exc:
        first_line = _first_line(exc.message)
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in first_line:
            raise RegistryError(f"{model_uri}: cannot read the MLflow store {store} ({first_line})") from None
        raise RegistryError(
            f"{model_uri}: no such registered model version in the MLflow store {store} ({first_line})"
        ) from None
    except Exception as exc:  # the store cannot be opened at all: no driver for its scheme, unreachable, …
        raise RegistryError(
            f"{model_uri}: cannot open the MLflow store {store} ({type(exc).__name__}: {_first_line(str(exc))})"
        ) from None


def _first_line(text: str) -> str:
    """The first line of an error message, secrets masked."""
    lines = str(mlflow_runs.redact(text)).strip().splitlines()
    return lines[0] if lines else ""


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
    raise RegistryError(f"model URI {model_uri!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION")


def _find(root: Path, file_name: str, model_uri: str) -> Path:
    matches = sorted(root.rglob(file_name))
    if not matches:
        raise FileNotFoundError(f"{model_uri} has no {file_name}: it was not logged by cmd-ray")
    return matches[0]
