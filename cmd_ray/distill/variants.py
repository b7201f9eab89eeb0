"""The paper's Table 1 rows (A1, B1–B3, C1, D1–D5), as the distillation code names them.

The rows are data and live in :mod:`cmd_ray.vocabulary` (the bottom layer, so that ``config``, ``data`` and
``models`` can read them without importing ``distill``); this module re-exports them for ``distill`` and its
callers. See :mod:`cmd_ray.vocabulary` for what each field means.
"""

from __future__ import annotations

from cmd_ray.vocabulary import (
    LR_JOINT_BBE,
    LR_JOINT_TCL,
    LR_SINGLE,
    SUPERVISED_ATOM,
    SUPERVISED_DIMP,
    VARIANTS,
    Branch,
    Modality,
    Variant,
    get_variant,
    supervised_variant,
)

__all__ = [
    "LR_JOINT_BBE",
    "LR_JOINT_TCL",
    "LR_SINGLE",
    "SUPERVISED_ATOM",
    "SUPERVISED_DIMP",
    "VARIANTS",
    "Branch",
    "Modality",
    "Variant",
    "get_variant",
    "supervised_variant",
]
