"""What the Ray Data streams share (data/streams.py): index blocks of whole batches."""

import numpy as np

from cmd_ray.data.streams import index_blocks


def test_index_blocks_hold_whole_batches_and_cover_every_index():
    blocks = index_blocks(np.arange(1000), batch_size=4, num_actors=2)
    assert all(len(b) == 32 for b in blocks[:-1])  # 8 batches a block
    np.testing.assert_array_equal(np.concatenate(blocks), np.arange(1000))
    small = index_blocks(np.arange(24), batch_size=3, num_actors=2)
    assert len(small) == 8  # a short stream still gives both actors work: a batch a block
    huge = index_blocks(np.arange(1_300_000), batch_size=5, num_actors=4)  # 50 epochs of the paper's 26 000
    assert len(huge) <= 2048 and all(len(b) % 5 == 0 for b in huge[:-1])
