"""Data helpers for a user's own loop: any map-style dataset, torch's ``DataLoader``, any number of ranks.

* :class:`WithIndex` wraps a dataset so each sample also yields its **global index** (what
  :class:`alr_fast.loss.alr.ALR` addresses its soft labels by). Index ``-1`` is padding: it yields sample 0's
  item with its tensors zeroed and index -1, which the loss ignores.
* :class:`OwnerSampler` (one index at a time, for ``DataLoader(batch_size=B)``) and :class:`OwnerBatchSampler`
  (whole batches, for ``DataLoader(batch_sampler=...)``) give rank ``r`` of ``W`` exactly the samples it owns
  under the project's owner rule (``i % W == r``, :class:`alr_fast.loss.sharding.Sharding`), in a new
  deterministic order each epoch (``set_epoch``), padded with ``-1`` (never a repeated sample, whose soft label
  would be updated twice) to a length common to all ranks, so every rank takes the same number of steps -
  what DDP, FSDP and DeepSpeed need. They follow the trainer's epoch plan
  (:class:`alr_fast.data.loaders.plan.EpochPlan`): the same seed gives the same order as ``alr_fast train``,
  and :class:`OwnerBatchSampler` cuts the same batches (never a batch of one row).

torch's ``DistributedSampler`` deals samples by position in a global permutation and repeats samples to pad,
so a rank would be handed rows another rank owns; use these instead.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from alr_fast.data.loaders.plan import EpochPlan

__all__ = ["WithIndex", "OwnerSampler", "OwnerBatchSampler", "zero_like"]


def zero_like(item):
    """``item`` with every tensor / array zeroed (tuples, lists and dicts followed); other values kept."""
    if isinstance(item, torch.Tensor):
        return torch.zeros_like(item)
    if isinstance(item, np.ndarray):
        return np.zeros_like(item)
    if isinstance(item, dict):
        return {k: zero_like(v) for k, v in item.items()}
    if isinstance(item, (tuple, list)):
        return type(item)(zero_like(v) for v in item)
    return item


class WithIndex(Dataset):
    """``dataset[i]`` plus ``i``: a tuple item ``(x, y)`` becomes ``(x, y, i)``, a dict gets ``key`` (default
    ``"index"``), anything else ``x`` becomes ``(x, i)``. ``i = -1`` (a sampler's padding) gives sample 0's
    item, zeroed, with index -1."""

    def __init__(self, dataset, key: str = "index"):
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        i = int(i)
        if i < -1 or i >= len(self.dataset):
            raise IndexError(f"WithIndex: index {i} outside [0, {len(self.dataset)}) (or -1 for padding)")
        item = self.dataset[max(i, 0)]
        if i < 0:
            item = zero_like(item)
        if isinstance(item, dict):
            return {**item, self.key: i}
        if isinstance(item, tuple):
            return (*item, i)
        return item, i


def _rank_world(rank, world_size) -> tuple[int, int]:
    dist = torch.distributed
    live = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if live else 0
    if world_size is None:
        world_size = dist.get_world_size() if live else 1
    return int(rank), int(world_size)


class _OwnerPlan:
    def __init__(self, num_samples, batch_size, rank, world_size, shuffle, seed):
        n = len(num_samples) if hasattr(num_samples, "__len__") else int(num_samples)
        rank, world_size = _rank_world(rank, world_size)
        self.plan = EpochPlan(n, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                              batch_size=batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on (call it before every epoch)."""
        self.epoch = int(epoch)


class OwnerSampler(_OwnerPlan, Sampler):
    """Global indices of the samples rank ``rank`` owns, shuffled per epoch, padded with -1 to
    ``ceil(N / W)`` (at least 2 when shuffled). ``num_samples``: N or the dataset.
    ``rank``/``world_size``: default from the initialised ``torch.distributed`` group, else 0 and 1.
    Use with :class:`WithIndex` (which serves -1) and ``DataLoader(batch_size=B)``; the last batch may hold a
    single row (use :class:`OwnerBatchSampler` for a model with BatchNorm)."""

    def __init__(self, num_samples, *, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool = True, seed: int = 0):
        super().__init__(num_samples, None, rank, world_size, shuffle, seed)

    def __len__(self) -> int:
        return self.plan.shard_len

    def __iter__(self) -> Iterator[int]:
        return iter(self.plan.shard(self.epoch).tolist())


class OwnerBatchSampler(_OwnerPlan, Sampler):
    """The trainer's batches of rank ``rank``: the :class:`OwnerSampler` order cut by the one batching rule
    (:func:`alr_fast.data.loaders.plan.batch_bounds`: batches of ``batch_size``, the last two sharing their rows
    rather than leaving one alone). The same number of batches on every rank."""

    def __init__(self, num_samples, batch_size: int, *, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool = True, seed: int = 0):
        self.sampler = OwnerSampler(num_samples, rank=rank, world_size=world_size, shuffle=shuffle, seed=seed)
        """The same rows one at a time (the batches, concatenated). It holds the epoch the batches follow, so
        ``set_epoch`` here or on ``loader.batch_sampler.sampler`` (where PyTorch Lightning calls it) both work."""
        super().__init__(num_samples, batch_size, rank, world_size, shuffle, seed)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.sampler.set_epoch(value)

    def __len__(self) -> int:
        return self.plan.steps

    def __iter__(self) -> Iterator[list[int]]:
        return iter([b.tolist() for b in self.plan.batches(self.epoch)])
