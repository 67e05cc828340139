"""Data helpers for a user's loop: WithIndex, OwnerSampler, OwnerBatchSampler (alr_fast/data/indexed.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from alr_fast.data.indexed import OwnerBatchSampler, OwnerSampler, WithIndex
from alr_fast.data.loaders.arrays import ArrayLoader
from alr_fast.loss.sharding import Sharding


@pytest.mark.parametrize("n,world", [(1, 1), (10, 1), (11, 2), (7, 3), (2, 3), (101, 4)])
def test_every_rank_reads_its_own_rows_once_with_padding_and_equal_steps(n, world):
    for epoch in (0, 1):
        seen, lengths = [], []
        for r in range(world):
            s = OwnerSampler(n, sharding=Sharding(r, world), seed=5)
            s.set_epoch(epoch)
            rows = list(s)
            lengths.append(len(rows))
            assert len(rows) == len(s)
            real = [i for i in rows if i >= 0]
            assert all(i % world == r for i in real)  # the owner rule
            assert len(real) == len(set(real))  # padding, never a repeat
            assert all(i == -1 for i in rows[len(real):])  # padding at the end
            seen += real
        assert sorted(seen) == list(range(n))  # every sample exactly once per epoch
        assert len(set(lengths)) == 1  # every rank the same number of steps


def test_order_is_deterministic_per_epoch_and_changes_between_epochs():
    a, b = OwnerSampler(50, seed=1), OwnerSampler(50, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(list(a)) == sorted(first)
    assert list(OwnerSampler(50, seed=2)) != first
    assert list(OwnerSampler(50, shuffle=False)) == list(range(50))


def test_batch_sampler_gives_the_trainers_batches():
    """Same seed and rank: the in-memory trainer loader's index batches, epoch by epoch (so a user's loop can
    be compared with `alr_fast train`), and never a batch of one row."""
    images = torch.zeros(23, 1, 2, 2, dtype=torch.uint8)
    for world in (1, 2):
        for r in range(world):
            ours = OwnerBatchSampler(23, 4, sharding=Sharding(r, world), seed=3)
            theirs = ArrayLoader(images, batch_size=4, mean=(0.0,), std=(1.0,), shuffle=True, seed=3,
                                 sharding=Sharding(r, world))
            assert len(ours) == len(theirs)
            for epoch in (0, 2):
                ours.set_epoch(epoch)
                got = list(ours)
                want = [idx.tolist() for _, idx in theirs.epoch(epoch)]
                assert got == want
                assert min(len(b) for b in got) >= 2


def test_batch_sampler_epoch_is_set_through_its_sampler_as_lightning_does():
    """PyTorch Lightning calls set_epoch on ``loader.sampler`` and ``loader.batch_sampler.sampler``, never on the
    batch sampler itself: the batches must follow ``batch_sampler.sampler``'s epoch (they did not: every epoch
    repeated epoch 0's order under Lightning)."""
    bs = OwnerBatchSampler(41, 4, rank=1, world_size=2, seed=5)
    loader = DataLoader(WithIndex(TensorDataset(torch.zeros(41))), batch_sampler=bs)
    epoch0 = list(bs)
    assert [i for b in epoch0 for i in b] == list(bs.sampler)  # the batches are the sampler's order, cut
    loader.batch_sampler.sampler.set_epoch(3)
    assert bs.epoch == 3 and list(bs) != epoch0
    assert list(bs) == [b.tolist() for b in bs.plan.batches(3)]
    bs.set_epoch(0)
    assert bs.sampler.epoch == 0 and list(bs) == epoch0
    loader.batch_sampler.sampler.set_epoch(2)  # the real Lightning path: tests/test_examples.py
    assert [idx.tolist() for _, idx in loader] == [b.tolist() for b in bs.plan.batches(2)]


def test_with_index_serves_tuples_dicts_and_padding_through_a_dataloader():
    x = torch.arange(12, dtype=torch.float32).view(6, 2) + 1
    y = torch.arange(6)
    ds = WithIndex(TensorDataset(x, y))
    loader = DataLoader(ds, batch_size=4, sampler=OwnerSampler(ds, sharding=Sharding(1, 4), shuffle=False))
    (bx, by, bi), = list(loader)
    assert bi.tolist() == [1, 5]
    torch.testing.assert_close(bx, x[[1, 5]])
    s = OwnerSampler(ds, sharding=Sharding(3, 4))  # owns only sample 3: a padding row joins it
    xs, ys, idx = next(iter(DataLoader(ds, batch_size=2, sampler=s)))
    assert sorted(idx.tolist()) == [-1, 3]
    pad = idx.tolist().index(-1)
    assert torch.all(xs[pad] == 0) and int(ys[pad]) == 0

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"pixel_values": torch.full((2,), float(i + 1)), "labels": i}

    d = WithIndex(Dicts())
    assert d[2]["index"] == 2 and d[-1]["index"] == -1 and torch.all(d[-1]["pixel_values"] == 0)
    assert WithIndex([10, 20])[1] == (20, 1)
    with pytest.raises(IndexError, match=r"index 3 outside \[0, 3\)"):
        d[3]


def test_rank_defaults_to_one_process_and_bad_rank_is_named():
    assert OwnerSampler(4).plan.sharding == Sharding(0, 1)
    with pytest.raises(ValueError, match="rank 2 outside"):
        OwnerSampler(4, sharding=Sharding(2, 2))
    with pytest.raises(TypeError, match="OwnerBatchSampler: sharding must be an alr_fast.loss.sharding.Sharding"):
        OwnerBatchSampler(4, 2, sharding=(1, 2))  # a tuple is not a Sharding: refused, not misread
    with pytest.raises(ValueError, match="OwnerSampler: give either sharding or rank/world_size, not both"):
        OwnerSampler(4, sharding=Sharding(0, 2), rank=0)
    assert OwnerBatchSampler(9, 2, rank=1, world_size=3).plan.sharding == Sharding(1, 3)  # ints: the strided rule
    assert np.all(np.diff(list(OwnerSampler(9, shuffle=False, sharding=Sharding(1, 3)))) == 3)


def test_sampler_given_the_alr_objects_sharding_reads_exactly_its_bank_rows():
    """docs/own-loop.md: ``OwnerSampler(..., sharding=alr.sharding)`` reads the rows the ALR bank holds."""
    from alr_fast import ALR

    labels = torch.arange(17) % 3
    for r in range(3):
        alr = ALR(labels, 3, rank=r, world_size=3, backend="torch")
        rows = [i for i in OwnerSampler(17, sharding=alr.sharding, seed=4) if i >= 0]
        assert sorted(rows) == alr.global_index.tolist() and len(rows) == len(set(rows))
