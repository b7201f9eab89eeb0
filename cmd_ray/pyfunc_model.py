"""The ``python_function`` model of a registered cmd-ray tracker: MLflow's models-from-code file.

:func:`cmd_ray.registry.log_and_register` gives this file's path to ``mlflow.pyfunc.log_model(python_model=…)``;
MLflow copies it into the model and runs it when the model is loaded (``mlflow.pyfunc.load_model``), after putting
the model's ``code/`` folder on ``sys.path``. cmd-ray never imports it, and it imports nothing of ``cmd_ray``: the
network code comes from the model's own ``code/cmd_ray_net`` (:mod:`cmd_ray.models.standalone`), so the model loads
where cmd-ray is not installed. Nothing is unpickled: the network is built from ``network.json`` and the weights
are read from ``state_dict.pt`` with ``torch.load(weights_only=True)``.

``predict`` takes one dict of float32 arrays (one test frame per sequence; ``S`` the crop side, a multiple of the
feature stride 16; crops ImageNet-normalised, boxes ``x, y, w, h`` in crop pixels):

- ``train_imgs`` ``[Ntr, B, 3, S, S]``: reference crops (``Ntr`` per sequence, ``B`` sequences);
- ``train_bb`` ``[Ntr, B, 4]``: the target's box in each reference crop;
- ``test_imgs`` ``[B, 3, S, S]``: one test crop per sequence;
- ``test_proposals`` ``[B, P, 4]``: boxes to score in the test crops;

and returns a dict of float32 arrays: ``scores`` ``[B, L, L]`` (DiMP only: the target classifier's score map on the
test crop with its final filter iterate, ``L = S/16 + (filter_size + 1) % 2``) and ``iou_pred`` ``[B, P]`` (the
IoU-Net's prediction for each proposal, trained against ``2·IoU − 1``). That is cmd-ray's ``DiMPNet.forward`` with
``Nte = 1``: ``scores[-1][0]`` and ``iou_pred[0]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext

WEIGHTS_ARTIFACT = "weights"
"""``context.artifacts`` key of the state dict (``state_dict.pt``)."""
NETWORK_ARTIFACT = "network"
"""``context.artifacts`` key of the network spec (``network.json``)."""
INPUT_DIMS = {"train_imgs": 5, "train_bb": 3, "test_imgs": 4, "test_proposals": 3}
"""The inputs ``predict`` reads and the number of dimensions of each."""


class TrackerModel(PythonModel):
    """A DiMP or ATOM network behind MLflow's ``predict`` (see the module docstring for the arrays)."""

    def load_context(self, context: PythonModelContext) -> None:
        """Build the network from ``network.json`` with the shipped code and load ``state_dict.pt`` into it (every
        tensor must fit: a strict load), in eval mode on the CPU."""
        from cmd_ray_net.models.dimpnet import build_network  # the model's code/, on sys.path once MLflow loads it

        spec = json.loads(Path(context.artifacts[NETWORK_ARTIFACT]).read_text())
        self.architecture: str = spec["architecture"]
        self.net = build_network(spec)
        state = torch.load(context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=True)
        self.net.load_state_dict(state, strict=True)
        self.net.eval()

    # ``model_input`` is left without a type hint on purpose: MLflow reads a hint there as a schema, and it only
    # understands list[...] hints; the model's signature (named tensors) is the schema instead.
    def predict(
        self, context: PythonModelContext, model_input, params: dict[str, Any] | None = None
    ) -> dict[str, np.ndarray]:
        """``{"scores": [B, L, L], "iou_pred": [B, P]}`` (ATOM: ``iou_pred`` only) from the four named arrays.

        Raises:
            ValueError: an input is missing, has another number of dimensions, or disagrees with the others on
                ``Ntr`` or ``B``.
        """
        arrays = _checked_inputs(model_input)
        x = {name: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for name, a in arrays.items()}
        with torch.no_grad():
            out = self.net(x["train_imgs"], x["test_imgs"][None], x["train_bb"], x["test_proposals"][None])
        if self.architecture == "atom":  # ATOMNet.forward returns the IoUs alone
            return {"iou_pred": out[0].numpy()}
        scores, iou_pred = out  # one score map [1, B, L, L] per filter iterate; [1, B, P]
        return {"scores": scores[-1][0].numpy(), "iou_pred": iou_pred[0].numpy()}


def _checked_inputs(model_input: Any) -> dict[str, np.ndarray]:
    """The four arrays of ``model_input`` (a mapping), their dimensions and shared sizes checked."""
    if not hasattr(model_input, "keys"):
        raise ValueError(f"expected a dict of arrays {', '.join(INPUT_DIMS)}, got {type(model_input).__name__}")
    missing = [name for name in INPUT_DIMS if name not in model_input]
    if missing:
        raise ValueError(f"missing input(s) {', '.join(missing)}; expected {', '.join(INPUT_DIMS)}")
    arrays = {name: np.asarray(model_input[name]) for name in INPUT_DIMS}
    for name, ndim in INPUT_DIMS.items():
        if arrays[name].ndim != ndim:
            raise ValueError(f"{name} must have {ndim} dimensions, got shape {arrays[name].shape}")
    num_train, num_seq = arrays["train_imgs"].shape[:2]
    for name, got, want in (
        ("train_bb", arrays["train_bb"].shape[:2], (num_train, num_seq)),
        ("test_imgs", arrays["test_imgs"].shape[:1], (num_seq,)),
        ("test_proposals", arrays["test_proposals"].shape[:1], (num_seq,)),
    ):
        if got != want:
            raise ValueError(
                f"{name} starts with sizes {got}; train_imgs [Ntr, B] = {(num_train, num_seq)} needs {want}"
            )
    return arrays


set_model(TrackerModel())
