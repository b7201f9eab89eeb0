"""Online tracking: DiMP's tracker on a DiMPNet, and running trackers over sequences (no Ray here).

``build_tracker(net, cfg.tracker, device)`` gives a :class:`Tracker`; :func:`track_sequence` runs it over a
sequence's frames from the first box. Parameters: :class:`cmd_ray.config.TrackerConfig`.
"""

from cmd_ray.tracking.base import Tracker
from cmd_ray.tracking.dimp import DiMPTracker, build_tracker
from cmd_ray.tracking.run import TrackResult, track_sequence

__all__ = [
    "DiMPTracker",
    "TrackResult",
    "Tracker",
    "build_tracker",
    "track_sequence",
]
