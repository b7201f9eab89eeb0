"""Variant B3: merge the IoU-Net reference branch of one distilled model (B1) with the test branch of another (B2).

The paper's B3 row is not trained: it combines B1's reference branch with B2's test branch of the box estimator
(see :data:`cmd_ray.vocabulary.VARIANTS`). ``cmd-ray merge`` runs :func:`merge_branches`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cmd_ray.models.checkpoint import load_state_dict
from cmd_ray.models.iounet import AtomIoUNet
from cmd_ray.models.safe_unpickler import CheckpointError


def branch_prefixes(branch: str) -> tuple[str, ...]:
    """State-dict prefixes of an IoU-Net branch (``"reference"`` or ``"test"``)."""
    modules = {"reference": AtomIoUNet.REFERENCE_MODULES, "test": AtomIoUNet.TEST_MODULES}[branch]
    return tuple(f"bb_regressor.{m}." for m in modules)


def merge_branches(reference: str | Path, test: str | Path, out: str | Path) -> Path:
    """Variant B3: IoU-Net reference branch and everything else from ``reference``, test branch from ``test``.

    Inputs may be cmd-ray training checkpoints (``training_state.pt`` or its folder), plain state-dict
    files or pytracking checkpoints. Writes a plain state dict to ``out`` (``torch.load(weights_only=True)``
    loadable) and returns its path. Raises :class:`CheckpointError` when an input is unreadable, the two
    key sets or shapes differ, or the weights have no IoU-Net branches.
    """
    ref_path, test_path, out_path = Path(reference), Path(test), Path(out)
    ref_state, test_state = load_state_dict(ref_path), load_state_dict(test_path)
    only_ref, only_test = sorted(set(ref_state) - set(test_state)), sorted(set(test_state) - set(ref_state))
    if only_ref or only_test:
        raise CheckpointError(
            f"cannot merge {ref_path} and {test_path}: key sets differ"
            f" (only in reference: {only_ref[:5]}{' …' if len(only_ref) > 5 else ''};"
            f" only in test: {only_test[:5]}{' …' if len(only_test) > 5 else ''})"
        )
    shapes = [k for k in ref_state if ref_state[k].shape != test_state[k].shape]
    if shapes:
        k = shapes[0]
        raise CheckpointError(
            f"cannot merge {ref_path} and {test_path}: {len(shapes)} shapes differ, e.g. {k}"
            f" {list(ref_state[k].shape)} vs {list(test_state[k].shape)}"
        )
    test_prefixes = branch_prefixes("test")
    for branch, prefixes in (("reference", branch_prefixes("reference")), ("test", test_prefixes)):
        if not any(k.startswith(prefixes) for k in ref_state):
            raise CheckpointError(f"cannot merge {ref_path} and {test_path}: no IoU-Net {branch}-branch weights")
    merged = {k: (test_state[k] if k.startswith(test_prefixes) else v).clone() for k, v in ref_state.items()}
    if out_path.is_dir():
        raise CheckpointError(f"merge output {out_path} is a folder; give a file path")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(merged, out_path)
    return out_path
