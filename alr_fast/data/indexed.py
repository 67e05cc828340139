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


def _group_sharding() -> Sharding:
    """The strided owner rule of the initialised ``torch.distributed`` group (one rank without one): the default
    of a user's own loop, which has no runtime of the trainer's to ask."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Sharding(dist.get_rank(), dist.get_world_size())
    return Sharding()


class _OwnerPlan:
    def __init__(self, num_samples, batch_size, sharding, shuffle, seed):
        n = len(num_samples) if hasattr(num_samples, "__len__") else int(num_samples)
        if sharding is None:
            sharding = _group_sharding()
        elif not isinstance(sharding, Sharding):
            raise TypeError(f"{type(self).__name__}: sharding must be an alr_fast.loss.sharding.Sharding (e.g. "
                            f"alr.sharding), got {sharding!r}")
        self.plan = EpochPlan(n, shuffle=shuffle, seed=seed, sharding=sharding, batch_size=batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on (call it before every epoch)."""
        self.epoch = int(epoch)


class OwnerSampler(_OwnerPlan, Sampler):
    """Global indices of the samples this rank owns, shuffled per epoch, padded with -1 to
    ``ceil(N / W)`` (at least 2 when shuffled). ``num_samples``: N or the dataset.
    ``sharding``: whose samples (:class:`alr_fast.loss.sharding.Sharding`; pass ``alr.sharding`` and the sampler
    reads exactly the rows the ALR object's bank holds); default: the initialised ``torch.distributed`` group's
    rank and size under the strided rule, else one rank.
    Use with :class:`WithIndex` (which serves -1) and ``DataLoader(batch_size=B)``; the last batch may hold a
    single row (use :class:`OwnerBatchSampler` for a model with BatchNorm)."""

    def __init__(self, num_samples, *, sharding: Sharding | None = None, shuffle: bool = True, seed: int = 0):
        super().__init__(num_samples, None, sharding, shuffle, seed)

    def __len__(self) -> int:
        return self.plan.shard_len

    def __iter__(self) -> Iterator[int]:
        return iter(self.plan.shard(self.epoch).tolist())


class OwnerBatchSampler(_OwnerPlan, Sampler):
    """The trainer's batches of this rank: the :class:`OwnerSampler` order cut by the one batching rule
    (:func:`alr_fast.data.loaders.plan.batch_bounds`: batches of ``batch_size``, the last two sharing their rows
    rather than leaving one alone). The same number of batches on every rank. ``sharding`` as for
    :class:`OwnerSampler`."""

    def __init__(self, num_samples, batch_size: int, *, sharding: Sharding | None = None, shuffle: bool = True,
                 seed: int = 0):
        super().__init__(num_samples, batch_size, sharding, shuffle, seed)

    def __len__(self) -> int:
        return self.plan.steps

    def __iter__(self) -> Iterator[list[int]]:
        return iter([b.tolist() for b in self.plan.batches(self.epoch)])
