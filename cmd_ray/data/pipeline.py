"""Compatibility facade for ``cmd_ray.train.trainer``, which uses ``pipeline.<name>`` (being changed elsewhere).

The sample streams live in their own modules now: :mod:`cmd_ray.data.skips` (skip counting),
:mod:`cmd_ray.data.streams` (what every stream shares), :mod:`cmd_ray.data.epochs` (resuming),
:mod:`cmd_ray.data.distill_stream`, :mod:`cmd_ray.data.pretrain_stream` and :mod:`cmd_ray.data.box_precompute`.
Import from those; this module goes once ``train/trainer.py`` does.
"""

# re-export: remove after merging train/trainer.py with `from cmd_ray.data import pipeline` replaced by direct imports
from cmd_ray.data.distill_stream import list_pairs, split_pairs, training_dataset, validation_dataset
from cmd_ray.data.epochs import EpochCursor
from cmd_ray.data.pretrain_stream import pretraining_dataset
from cmd_ray.data.skips import SkipCounter, SkipReport
from cmd_ray.data.streams import ingest_config, on_driver_node

__all__ = [
    "EpochCursor",
    "SkipCounter",
    "SkipReport",
    "ingest_config",
    "list_pairs",
    "on_driver_node",
    "pretraining_dataset",
    "split_pairs",
    "training_dataset",
    "validation_dataset",
]
