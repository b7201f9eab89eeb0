"""What one evaluation task needs, without Ray: the tracker's network, the tracker, the frames, one tracked sequence.

- :func:`load_network` (driver, once per tracker): ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) from the
  MLflow registry, or a checkpoint URI (local path or ``s3://``): a cmd-ray checkpoint folder or its
  ``training_state.pt`` (network rebuilt from the config stored with it), or a state-dict / pytracking weights file
  (network built from the evaluation config's ``model`` section). Weights that do not fit the network fail here,
  naming the URI and the keys.
- :func:`run_sequence` (one task): builds the network from the state dict, builds the tracker, reads and decodes
  the frames (TIR ``[H, W]``, or RGB ``[H, W, 3]`` for a benchmark's RGB twins), tracks
  (:func:`cmd_ray.tracking.track_sequence`: per-frame seconds of the tracker's calls only, frame 1's being the
  initialisation) and writes the result files atomically
  (:func:`cmd_ray.evaluation.results.write_result`), frames and results on local disk or S3 alike.
  :func:`track_frames` is the same without the files (the sweep's tracking objective scores the boxes in memory).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cmd_ray import storage
from cmd_ray.config import Config, TrackerConfig
from cmd_ray.data.images import decode_rgb, decode_tir
from cmd_ray.evaluation.results import write_result
from cmd_ray.models.loading import ModelLoadError as SourceError
from cmd_ray.models.loading import network_with_weights
from cmd_ray.vocabulary import SequenceModality as Modality

if TYPE_CHECKING:
    from cmd_ray.tracking.base import Tracker
    from cmd_ray.tracking.run import TrackResult

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class ModelLoadError(ValueError):
    """A tracker's model cannot be loaded or does not fit its network; the message names the URI."""


@dataclass(frozen=True, eq=False)
class LoadedNetwork:
    """A tracker's weights and the config its network is built from.

    Attributes:
        state_dict: CPU tensors, ready to ``ray.put``.
        model_config: the config whose ``model`` (and ``data.sampling``) sections build the network.
        source: the URI it came from.
        version: the registry version a ``models:/`` URI resolved to (None for files).
    """

    state_dict: dict[str, torch.Tensor]
    model_config: Config
    source: str
    version: str | None = None


def registry_version(uri: str, cfg: Config) -> str:
    """The version number ``models:/NAME@ALIAS`` points at now (``models:/NAME/VERSION`` gives its own)."""
    from cmd_ray import mlflow_runs, registry

    m = _MODEL_URI.match(uri)
    if m is None:
        raise ModelLoadError(f"model URI {uri!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION")
    if m["version"]:
        return m["version"]
    try:
        return str(registry.model_version(uri, mlflow_runs.tracking_uri(cfg)).version)
    except ValueError as exc:  # an unknown name or alias
        raise ModelLoadError(f"cannot resolve {uri} in the registry: {exc}") from exc


def load_network(uri: str, cfg: Config) -> LoadedNetwork:
    """Load a tracker's network on the driver (see the module docstring for the URIs).

    Raises:
        ModelLoadError: naming the URI, when it cannot be read or its weights do not fit.
    """
    version = registry_version(uri, cfg) if uri.startswith("models:/") else None
    from cmd_ray import registry

    try:
        net, model_cfg = registry.load_model(uri, cfg)  # fails on the driver, before any task starts
    except SourceError as exc:  # its message names the URI
        raise ModelLoadError(str(exc)) from exc
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return LoadedNetwork(weights, model_cfg, uri, version)


def make_tracker(
    kind: str, net: nn.Module | None = None, params: TrackerConfig | None = None, device: str = "cpu"
) -> Tracker:
    """The tracker of an evaluated tracker's ``kind``: ``static`` (baseline) or ``dimp`` (the online DiMP tracker)."""
    if kind == "static":
        from cmd_ray.tracking.baselines import StaticBoxTracker

        return StaticBoxTracker()
    if kind == "dimp":
        if net is None:
            raise ValueError("a dimp tracker needs a network")
        from cmd_ray.tracking import build_tracker

        return build_tracker(net, params if params is not None else TrackerConfig(), device=device)
    raise ValueError(f"unknown tracker kind {kind!r}; expected 'dimp' or 'static'")


def read_frames(
    paths: Iterable[str | Path], endpoint_url: str | None = None, modality: Modality = "tir"
) -> Iterator[np.ndarray]:
    """Decode each frame (local path or ``s3://`` URI), lazily, in order: as TIR (``[H, W]`` uint8/uint16), or as
    RGB (``[H, W, 3]`` uint8) for the RGB twins of a benchmark."""
    decode = decode_tir if modality == "tir" else decode_rgb
    for p in paths:
        yield decode(storage.read_bytes(str(p), endpoint_url), str(p))


@dataclass(frozen=True)
class SequenceRun:
    """What one tracked sequence produced (the result files hold the boxes and times)."""

    tracker: str
    sequence: str
    num_frames: int
    seconds: float
    result_path: str


def track_frames(
    *,
    tracker_name: str,
    kind: str,
    frames: list[str],
    init_box: list[float],
    state_dict: Mapping[str, torch.Tensor] | None = None,
    model_config: dict[str, Any] | None = None,
    tracker_params: dict[str, Any] | None = None,
    device: str = "cpu",
    num_threads: int | None = None,
    endpoint_url: str | None = None,
    modality: Modality = "tir",
) -> TrackResult:
    """Build the tracker (``dimp``: its network from ``state_dict`` and ``model_config``), read the frames and track
    them from ``init_box``; nothing is written. Arguments as :func:`run_sequence`'s."""
    if num_threads is not None:
        torch.set_num_threads(max(1, num_threads))
    net = None
    if kind == "dimp":
        if state_dict is None or model_config is None:
            raise ValueError(f"tracker {tracker_name!r}: a dimp tracker needs weights and their config")
        try:
            net = network_with_weights(Config.model_validate(model_config), state_dict, tracker_name).to(device)
        except SourceError as exc:  # its message names the tracker and the keys that do not fit
            raise ModelLoadError(str(exc)) from exc
    params = TrackerConfig.model_validate(tracker_params or {})
    tracker = make_tracker(kind, net, params, device)
    from cmd_ray.tracking import track_sequence

    # No inference_mode here: the DiMP tracker refines boxes by gradient ascent on IoU-Net's output.
    frames_read = read_frames(frames, endpoint_url, modality)
    return track_sequence(tracker, frames_read, np.asarray(init_box, dtype=np.float64))


def run_sequence(
    *,
    tracker_name: str,
    kind: str,
    sequence: str,
    frames: list[str],
    init_box: list[float],
    out_dir: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    model_config: dict[str, Any] | None = None,
    tracker_params: dict[str, Any] | None = None,
    device: str = "cpu",
    num_threads: int | None = None,
    endpoint_url: str | None = None,
    modality: Modality = "tir",
) -> SequenceRun:
    """Track one sequence and write ``out_dir/<sequence>.txt`` and ``<sequence>_time.txt`` atomically.

    Nothing here touches the driver's disk: frames and ``out_dir`` are local paths of this node or ``s3://`` URIs.

    Args:
        frames: frame paths or URIs in order; ``init_box``: frame 1's ground truth ``x, y, w, h`` pixels.
        out_dir: the tracker's result folder (local path or ``s3://`` URI).
        state_dict, model_config: the network's weights and its config (a :class:`Config` dump); ``dimp`` only.
        tracker_params: a :class:`TrackerConfig` dump (``dimp`` only).
        num_threads: torch intra-op threads (the task's CPU share), if given.
        endpoint_url: S3 endpoint for ``s3://`` frames and results (default: ``AWS_ENDPOINT_URL``).
        modality: how the frames are decoded: ``tir`` (the benchmark) or ``rgb`` (its RGB twins).
    """
    result = track_frames(
        tracker_name=tracker_name,
        kind=kind,
        frames=frames,
        init_box=init_box,
        state_dict=state_dict,
        model_config=model_config,
        tracker_params=tracker_params,
        device=device,
        num_threads=num_threads,
        endpoint_url=endpoint_url,
        modality=modality,
    )
    boxes, times = result.boxes, result.times
    if boxes.shape[0] != len(frames):
        raise RuntimeError(f"{tracker_name}/{sequence}: tracked {boxes.shape[0]} of {len(frames)} frames")
    path = write_result(out_dir, sequence, boxes, times, endpoint_url)
    return SequenceRun(tracker_name, sequence, int(boxes.shape[0]), float(times.sum()), path)
