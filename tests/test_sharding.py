"""The owner rule's small print: types after construction and padding (-1) through local()/global_index()."""

import numpy as np
import torch

from alr_fast.loss.sharding import Sharding


def test_rank_and_world_become_python_ints():
    s = Sharding(np.int64(1), np.int64(3))  # e.g. read from a numpy array or a saved state
    assert type(s.rank) is int and type(s.world) is int
    assert (s.rank, s.world) == (1, 3)
    assert s == Sharding(1, 3) and hash(s) == hash(Sharding(1, 3))


def test_local_keeps_padding_and_dtype_numpy_and_torch():
    s = Sharding(1, 2)
    idx = np.array([-1, 1, 3, 5, -1, 9], dtype=np.int64)
    got = s.local(idx)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [-1, 0, 1, 2, -1, 4])
    t = s.local(torch.from_numpy(idx))
    assert t.dtype == torch.int64 and t.tolist() == [-1, 0, 1, 2, -1, 4]
    # and back: global_index inverts local on owned rows
    np.testing.assert_array_equal(s.global_index(got[got >= 0]), idx[idx >= 0])
    # world 1: local rows are the global indices, padding included
    np.testing.assert_array_equal(Sharding(0, 1).local(idx), idx)


def test_owned_is_int64_ascending():
    owned = Sharding(2, 3).owned(11)
    assert owned.dtype == np.int64
    np.testing.assert_array_equal(owned, [2, 5, 8])
    assert Sharding(2, 3).num_owned(11) == 3 and Sharding(0, 3).num_owned(11) == 4 and Sharding(2, 3).shard_len(11) == 4
    assert Sharding(2, 3).num_owned(2) == 0 and Sharding(1, 3).owned(1).size == 0
