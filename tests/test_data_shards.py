"""The one sharding rule (alr_fast.loss.sharding.Sharding) and the one batching rule (plan.batch_bounds): uneven
shards and tiny last batches with odd N on 1, 2 and 3 ranks, through every loader, and a BatchNorm model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_fixtures import BACKENDS, fixture_root

from alr_fast.loss.bank import SoftLabelBank
from alr_fast.data.loaders import build_loader
from alr_fast.data.loaders.arrays import ArrayLoader
from alr_fast.data.loaders.plan import EpochPlan, batch_bounds
from alr_fast.data.readers import read_split
from alr_fast.loss.sharding import Sharding


# ------------------------------------------------------------------------------------------------ Sharding
@pytest.mark.parametrize("n, world", [(0, 1), (1, 3), (11, 1), (11, 2), (11, 3), (34, 4), (7, 8)])
def test_sharding_matches_the_rule_written_out(n, world):
    # Reference: a Python loop over every index, the rule as the docs state it.
    covered = []
    for rank in range(world):
        s = Sharding(rank, world)
        expect = [i for i in range(n) if i % world == rank]
        owned = s.owned(n)
        assert owned.dtype == np.int64 and owned.tolist() == expect
        assert s.num_owned(n) == len(expect) and s.shard_len(n) == max([0] + [len(
            [i for i in range(n) if i % world == r]) for r in range(world)])
        assert s.local(owned).tolist() == list(range(len(expect)))  # local rows: owned indices, ascending
        assert s.global_index(np.arange(len(expect))).tolist() == expect
        t = torch.arange(-1, n)
        assert s.owns(t).tolist() == [i >= 0 and i % world == rank for i in range(-1, n)]
        assert s.local(torch.tensor([-1] + expect)).tolist() == [-1] + list(range(len(expect)))
        covered += expect
    assert sorted(covered) == list(range(n))


def test_sharding_rejects_bad_ranks():
    for rank, world, match in ((2, 2, r"rank 2 outside \[0, world=2\)"), (-1, 2, "rank -1 outside"),
                               (0, 0, "world must be >= 1")):
        with pytest.raises(ValueError, match=match):
            Sharding(rank, world)
    with pytest.raises(TypeError, match="must be ints"):
        Sharding(True, 2)


def test_bank_plan_and_resharding_agree_on_ownership():
    labels = torch.randint(0, 4, (23,), generator=torch.Generator().manual_seed(0))
    for world in (1, 2, 3):
        for rank in range(world):
            bank = SoftLabelBank(labels, 4, sharding=Sharding(rank, world))
            plan = EpochPlan(23, shuffle=True, seed=1, sharding=Sharding(rank, world))
            read = plan.shard(0)
            read = np.sort(read[read >= 0])
            assert read.tolist() == bank.global_index.tolist() == Sharding(rank, world).owned(23).tolist()


# --------------------------------------------------------------------------------------------- batch rule
@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 8])
def test_batch_bounds_never_leave_a_batch_of_one(batch):
    for length in range(1, 45):
        b = batch_bounds(length, batch)
        sizes = np.diff(b)
        assert b[0] == 0 and b[-1] == length and (sizes > 0).all()  # contiguous, covers every row once
        if batch == 1:
            assert (sizes == 1).all()
            continue
        assert sizes.min() >= min(2, length), (length, batch, sizes)
        assert sizes.max() <= (3 if batch == 2 else batch)
        # Only a lone last row changes anything: otherwise plain batches of `batch`, the last one shorter.
        if length % batch != 1 or length < batch:
            assert sizes.tolist() == [batch] * (length // batch) + ([length % batch] if length % batch else [])
        else:
            assert len(sizes) == -(-length // batch) - (batch == 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        batch_bounds(5, 0)


def _array_epochs(n, world, batch, epochs=3):
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    loaders = [ArrayLoader(images, batch_size=batch, mean=(0.5,), std=(0.25,), shuffle=True, seed=4,
                           sharding=Sharding(r, world)) for r in range(world)]
    assert len({len(ld) for ld in loaders}) == 1  # steps per epoch equal on every rank
    return loaders, [[list(ld.epoch(e)) for ld in loaders] for e in range(epochs)]


@pytest.mark.parametrize("n", [33, 34, 35, 37])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("batch", [2, 3, 4])
def test_array_loader_odd_n_every_sample_every_epoch_no_batch_of_one(n, world, batch):
    loaders, epochs = _array_epochs(n, world, batch)
    for batches in epochs:
        seen = []
        for rank, rank_batches in enumerate(batches):
            assert len(rank_batches) == len(loaders[rank])
            for x, idx in rank_batches:
                assert idx.numel() >= 2 and x.shape[0] == idx.numel()
                real = idx[idx >= 0]
                assert (real % world == rank).all()
                seen += real.tolist()
        assert sorted(seen) == list(range(n))  # nothing dropped, nothing twice: every epoch


def test_array_loader_resumes_mid_epoch_with_the_merged_tail():
    # 34 rows on 2 ranks, batch 4: 17 rows a rank -> batches 4, 4, 4, 3, 2 (not 4, 4, 4, 4, 1).
    loaders, epochs = _array_epochs(34, 2, 4, epochs=1)
    assert [int(i.numel()) for _, i in epochs[0][0]] == [4, 4, 4, 3, 2]
    for start in range(len(loaders[1]) + 1):
        tail = list(loaders[1].epoch(0, start_step=start))
        assert len(tail) == len(epochs[0][1]) - start
        for (x, i), (x0, i0) in zip(tail, epochs[0][1][start:]):
            assert torch.equal(i, i0) and torch.equal(x, x0)


@pytest.mark.parametrize("n, world, batch", [(34, 2, 4), (35, 3, 2), (7, 3, 4), (2, 3, 4)])
def test_batchnorm_model_trains_on_every_batch(n, world, batch):
    # BatchNorm after global pooling sees one value per channel per image: a batch of one raises
    # "Expected more than 1 value per channel when training" (the 34-image / 2-rank / batch-4 crash).
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3)).train()
    _, epochs = _array_epochs(n, world, batch, epochs=2)
    for batches in epochs:
        for rank_batches in batches:
            for x, _ in rank_batches:
                model(x).sum().backward()


# ------------------------------------------------------------------------------------------ on-disk loaders
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2, 3])
def test_on_disk_loaders_odd_n_no_batch_of_one(backend, world):
    t = read_split("animal10n", fixture_root("animal10n"), "test")  # 28 rows
    sub_rows = np.array([i for i in range(len(t)) if i not in (4, 9, 17)])  # 25 rows left: odd
    exclude = np.setdiff1d(np.arange(len(t)), sub_rows)
    loaders = [build_loader(t, train=True, batch_size=4, backend=backend, workers=1, seed=2,
                            sharding=Sharding(r, world), exclude=exclude, crop=32) for r in range(world)]
    assert len({len(ld) for ld in loaders}) == 1
    for epoch in (0, 1):
        seen = []
        for rank, ld in enumerate(loaders):
            steps = 0
            for x, idx in ld.epoch(epoch):
                steps += 1
                assert idx.numel() >= 2 and x.shape[0] == idx.numel()
                seen += idx[idx >= 0].tolist()
            assert steps == len(ld)
        assert sorted(seen) == sub_rows.tolist()
