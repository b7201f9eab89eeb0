"""The sample stream continues where a restored checkpoint ends (the EpochCursor read when the stream starts)."""

import numpy as np
import pytest
import ray

from cmd_ray.data.epochs import EpochCursor, resume_from

pytestmark = pytest.mark.e2e


def test_rows_of_finished_epochs_are_dropped_when_the_stream_starts(ray_session):
    cursor = EpochCursor.remote()
    rows = resume_from(cursor, per_epoch=10)(ray.data.from_numpy(np.arange(40, dtype=np.int64)))
    ray.get(cursor.set.remote(2))  # after the dataset is built, before it runs: as a restarted train loop does
    assert [int(r["data"]) for r in rows.take_all()] == list(range(20, 40))
    ray.get(cursor.set.remote(0))
    assert [int(r["data"]) for r in rows.take_all()] == list(range(40))  # read again at every execution


def test_without_a_cursor_every_row_is_kept():
    assert resume_from(None, per_epoch=10) is None
