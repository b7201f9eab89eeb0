"""Merging distilled models by module: B3 and the D rows' starting weights.

The paper's B3 row is not trained: it combines B1's reference branch with B2's test branch of the box estimator
(see :data:`cmd_ray.vocabulary.VARIANTS`); the D rows start from B3's IoU-Net with C1's classifier (§4.3).
:func:`merge_modules` takes the classifier and either IoU-Net branch from any checkpoints onto a base; ``cmd-ray
merge`` runs it.
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


MODULE_PARTS = ("tcl", "bbe_reference", "bbe_test")
"""What a merge can take from a checkpoint other than its base: the target classifier (every TCL module: feature
extractor, initializer, optimizer), or one IoU-Net branch."""


def part_prefixes(part: str) -> tuple[str, ...]:
    """State-dict prefixes of a merge part (:data:`MODULE_PARTS`)."""
    if part == "tcl":
        return ("classifier.",)
    if part in ("bbe_reference", "bbe_test"):
        return branch_prefixes(part.removeprefix("bbe_"))
    raise ValueError(f"unknown merge part {part!r}; allowed: {', '.join(MODULE_PARTS)}")


def _check_fits(base: dict[str, torch.Tensor], other: dict[str, torch.Tensor], base_path: Path, path: Path) -> None:
    only_base, only_other = sorted(set(base) - set(other)), sorted(set(other) - set(base))
    if only_base or only_other:
        raise CheckpointError(
            f"cannot merge {base_path} and {path}: key sets differ"
            f" (only in {base_path}: {only_base[:5]}{' …' if len(only_base) > 5 else ''};"
            f" only in {path}: {only_other[:5]}{' …' if len(only_other) > 5 else ''})"
        )
    shapes = [k for k in base if base[k].shape != other[k].shape]
    if shapes:
        k = shapes[0]
        raise CheckpointError(
            f"cannot merge {base_path} and {path}: {len(shapes)} shapes differ, e.g. {k}"
            f" {list(base[k].shape)} vs {list(other[k].shape)}"
        )


def merge_modules(base: str | Path, out: str | Path, **parts: str | Path | None) -> Path:
    """Weights of ``base`` with some modules taken from other checkpoints; writes a plain state dict to ``out``.

    ``parts`` names, by :data:`MODULE_PARTS`, the checkpoint each part comes from: ``tcl`` (the whole target
    classifier), ``bbe_reference`` and ``bbe_test`` (the IoU-Net's branches); a part not given (or ``None``) stays
    as in ``base``. B3 is ``merge_modules(B1, out, bbe_test=B2)``; the D rows' start (§4.3) is
    ``merge_modules(B3, out, tcl=C1)``. Inputs may be cmd-ray training checkpoints (``training_state.pt`` or its
    folder), plain state-dict files or pytracking checkpoints; ``out`` loads with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: an unreadable input, key sets or shapes that differ from ``base``'s, a part ``base`` has
            no weights for (an ATOM network has no classifier), or ``out`` naming a folder.
        ValueError: an unknown part, or no part at all.
    """
    given = {part: Path(path) for part, path in parts.items() if path is not None}
    for part in parts:
        part_prefixes(part)  # names an unknown part
    if not given:
        raise ValueError(f"merge: name at least one part to take from another checkpoint ({', '.join(MODULE_PARTS)})")
    base_path, out_path = Path(base), Path(out)
    if out_path.is_dir():
        raise CheckpointError(f"merge output {out_path} is a folder; give a file path")
    merged = {k: v.clone() for k, v in load_state_dict(base_path).items()}
    for part, path in given.items():
        prefixes = part_prefixes(part)
        if not any(k.startswith(prefixes) for k in merged):
            raise CheckpointError(f"cannot merge into {base_path}: it has no {part} weights ({prefixes[0]}…)")
        other = load_state_dict(path)
        _check_fits(merged, other, base_path, path)
        merged.update({k: v.clone() for k, v in other.items() if k.startswith(prefixes)})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(merged, out_path)
    return out_path


def merge_branches(reference: str | Path, test: str | Path, out: str | Path) -> Path:
    """Variant B3: IoU-Net reference branch and everything else from ``reference``, test branch from ``test``
    (:func:`merge_modules` with ``bbe_test=test``; both branches must exist in ``reference``)."""
    ref_state = load_state_dict(Path(reference))
    for branch in ("reference", "test"):
        if not any(k.startswith(branch_prefixes(branch)) for k in ref_state):
            raise CheckpointError(f"cannot merge {reference} and {test}: no IoU-Net {branch}-branch weights")
    return merge_modules(reference, out, bbe_test=test)
