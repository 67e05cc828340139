"""Data helpers for a user's own loop: any map-style dataset, torch's ``DataLoader``, any number of ranks.

* :class:`WithIndex` wraps a dataset so each sample also yields its **global index** (what
  :class:`alr_fast.loss.alr.ALR` addresses its soft labels by). Index ``-1`` is padding: it yields sample 0's
  item with its tensors zeroed and index -1, which the loss ignores.
* :class:`OwnerSampler` (one index at a time, for ``DataLoader(batch_size=B)``) and :class:`OwnerBatchSampler`
  (whole batches, for ``DataLoader(batch_sampler=...)``) give rank ``r`` of ``W`` exactly the samples it owns
  under the project's owner rule (``i % W == r``; the :class:`alr_fast.loss.sharding.Sharding` they are given,
  e.g. ``alr.sharding``, else the ``torch.distributed`` group's), in a new
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
from alr_fast.loss.sharding import Sharding

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


def _sharding_of(owner: str, sharding, rank, world_size) -> Sharding:
    """The one place a user's own loop turns what it was given into a :class:`Sharding`: the object itself (e.g.
    ``alr.sharding``), or ``rank``/``world_size`` ints (strided rule), or, without either, the initialised
    ``torch.distributed`` group's (a user's loop has no runtime of the trainer's to ask), else one rank."""
    if sharding is not None:
        if not isinstance(sharding, Sharding):
            raise TypeError(f"{owner}: sharding must be an alr_fast.loss.sharding.Sharding (e.g. alr.sharding), "
                            f"got {sharding!r}")
        if rank is not None or world_size is not None:
            raise ValueError(f"{owner}: give either sharding or rank/world_size, not both")
        return sharding
    dist = torch.distributed
    live = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if live else 0
    if world_size is None:
        world_size = dist.get_world_size() if live else 1
    return Sharding(rank, world_size)


class _OwnerPlan:
    def __init__(self, num_samples, batch_size, sharding: Sharding, shuffle, seed):
        n = len(num_samples) if hasattr(num_samples, "__len__") else int(num_samples)
        self.plan = EpochPlan(n, shuffle=shuffle, seed=seed, sharding=sharding, batch_size=batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on (call it before every epoch)."""
        self.epoch = int(epoch)


class OwnerSampler(_OwnerPlan, Sampler):
    """Global indices of the samples this rank owns, shuffled per epoch, padded with -1 to
    ``ceil(N / W)`` (at least 2 when shuffled). ``num_samples``: N or the dataset.
    Whose samples: ``sharding`` (:class:`alr_fast.loss.sharding.Sharding`; pass ``alr.sharding`` and the sampler
    reads exactly the rows the ALR object's bank holds), or ``rank``/``world_size`` (the strided rule); default:
    the initialised ``torch.distributed`` group's rank and size, else one rank.
    Use with :class:`WithIndex` (which serves -1) and ``DataLoader(batch_size=B)``; the last batch may hold a
    single row (use :class:`OwnerBatchSampler` for a model with BatchNorm)."""

    def __init__(self, num_samples, *, sharding: Sharding | None = None, rank: int | None = None,
                 world_size: int | None = None, shuffle: bool = True, seed: int = 0):
        super().__init__(num_samples, None, _sharding_of("OwnerSampler", sharding, rank, world_size), shuffle, seed)

    def __len__(self) -> int:
        return self.plan.shard_len

    def __iter__(self) -> Iterator[int]:
        return iter(self.plan.shard(self.epoch).tolist())


class OwnerBatchSampler(_OwnerPlan, Sampler):
    """The trainer's batches of this rank: the :class:`OwnerSampler` order cut by the one batching rule
    (:func:`alr_fast.data.loaders.plan.batch_bounds`: batches of ``batch_size``, the last two sharing their rows
    rather than leaving one alone). The same number of batches on every rank. ``sharding``, ``rank``,
    ``world_size`` as for :class:`OwnerSampler`."""

    def __init__(self, num_samples, batch_size: int, *, sharding: Sharding | None = None, rank: int | None = None,
                 world_size: int | None = None, shuffle: bool = True, seed: int = 0):
        sharding = _sharding_of("OwnerBatchSampler", sharding, rank, world_size)
        self.sampler = OwnerSampler(num_samples, sharding=sharding, shuffle=shuffle, seed=seed)
        """The same rows one at a time (the batches, concatenated). It holds the epoch the batches follow, so
        ``set_epoch`` here or on ``loader.batch_sampler.sampler`` (where PyTorch Lightning calls it) both work."""
        super().__init__(num_samples, batch_size, sharding, shuffle, seed)

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
