"""Which rank owns which training sample: the project's one sharding rule, written here and nowhere else.

Rank ``r`` of ``W`` owns the samples whose global index ``i`` has ``i % W == r`` and keeps sample ``i`` at local
row ``i // W`` (so the local rows of a rank are its owned indices in ascending order). Everything that depends
on ownership asks a :class:`Sharding`:

* the soft-label bank (:mod:`alr_fast.loss.bank`): which rows a rank holds, global -> local row, re-sharding a bank
  saved with another world size;
* the epoch plan of every loader (:mod:`alr_fast.data.loaders.plan`): which rows a rank reads, so no rank ever
  reads a sample whose bank row it does not hold and no bank row travels between ranks while training.

Index ``-1`` is padding (a row that reaches neither the loss nor the bank); its local row is ``-1`` too. The
methods take numpy arrays or torch tensors and return the same kind, on the same device, with no host sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Sharding"]


@dataclass(frozen=True)
class Sharding:
    """Rank ``rank`` of ``world`` data-parallel ranks (see the module docstring for the rule)."""

    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if isinstance(self.rank, bool) or isinstance(self.world, bool):
            raise TypeError(f"Sharding: rank and world must be ints, got {self.rank!r}, {self.world!r}")
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "world", int(self.world))
        if self.world < 1:
            raise ValueError(f"Sharding: world must be >= 1, got {self.world}")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"Sharding: rank {self.rank} outside [0, world={self.world})")

    def owner(self, index):
        """The rank owning each (non-negative) global index: the rule itself."""
        return index % self.world

    def owns(self, index):
        """bool mask: the global index is a real row (>= 0) owned by this rank."""
        return (index >= 0) & (self.owner(index) == self.rank)

    def owned(self, num_samples: int) -> np.ndarray:
        """int64 [num_owned]: the global indices this rank owns among ``num_samples``, ascending (local row order)."""
        every = np.arange(int(num_samples), dtype=np.int64)
        return every[self.owns(every)]

    def num_owned(self, num_samples: int) -> int:
        """How many of ``num_samples`` rows this rank owns (``ceil(N / W)`` or one fewer)."""
        return max(0, math.ceil((int(num_samples) - self.rank) / self.world))

    def shard_len(self, num_samples: int) -> int:
        """``ceil(N / W)``: the most rows any rank owns, the common length ranks pad their shard to."""
        return math.ceil(int(num_samples) / self.world)

    def local(self, index):
        """Global indices of owned rows -> local rows; padding (-1) stays -1."""
        if self.world == 1:
            return index
        if isinstance(index, torch.Tensor):
            return torch.where(index >= 0, torch.div(index, self.world, rounding_mode="floor"), index)
        index = np.asarray(index)
        return np.where(index >= 0, index // self.world, index)

    def global_index(self, local):
        """Local rows -> global indices (the inverse of :meth:`local` on owned rows)."""
        return local * self.world + self.rank
