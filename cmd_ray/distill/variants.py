"""Compatibility re-export of the paper's Table 1 rows, which live in :mod:`cmd_ray.vocabulary`.

Import them from :mod:`cmd_ray.vocabulary`; this module goes once the callers named below are merged.
"""

from __future__ import annotations

# re-export: remove after merging tests/test_cli_commands.py, tests/train/test_loop.py, tests/distill/test_step.py and
# tests/distill/test_distill_variants.py (they import VARIANTS, Variant, get_variant from cmd_ray.vocabulary instead)
from cmd_ray.vocabulary import VARIANTS, Variant, get_variant

__all__ = ["VARIANTS", "Variant", "get_variant"]
