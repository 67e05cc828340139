"""Which rank owns which training sample: the project's one sharding rule, written here and nowhere else.

Two rules, chosen by the dataset:

* **strided** (every dataset but tar shards; ``blocks=None``): rank ``r`` of ``W`` owns the samples whose global
  index ``i`` has ``i % W == r`` and keeps sample ``i`` at local row ``i // W``;
* **shard-contiguous** (WebDataset tar shards; ``blocks`` = the first global index of each shard, then N):
  each rank owns one contiguous run of whole shards, so it opens only its own tar files. Rank ``r``'s run starts
  at the shard boundary nearest to ``r * N / W`` (ties: the lower one; a rank may own no shard when W exceeds
  the shard count) and keeps sample ``i`` at local row ``i - start_r``.

Under both, the local rows of a rank are its owned indices in ascending order, and ownership depends only on
(N, W, blocks): a bank saved with one world size is re-sharded exactly to another by the same rule.
Everything that depends on ownership asks a :class:`Sharding`:

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
    blocks: tuple[int, ...] | None = None
    """Shard-contiguous rule: the first global index of each shard, ascending from 0, then N. None: strided."""

    def __post_init__(self):
        if isinstance(self.rank, bool) or isinstance(self.world, bool):
            raise TypeError(f"Sharding: rank and world must be ints, got {self.rank!r}, {self.world!r}")
        object.__setattr__(self, "rank", int(self.rank))
        object.__setattr__(self, "world", int(self.world))
        if self.world < 1:
            raise ValueError(f"Sharding: world must be >= 1, got {self.world}")
        if not 0 <= self.rank < self.world:
            raise ValueError(f"Sharding: rank {self.rank} outside [0, world={self.world})")
        if self.blocks is not None:
            b = np.asarray(self.blocks, dtype=np.int64)
            if b.ndim != 1 or b.size < 2 or b[0] != 0 or (np.diff(b) <= 0).any():
                raise ValueError("Sharding: blocks must ascend strictly from 0 to N (the first global index of each "
                                 f"shard, then N), got {self.blocks[:8]}...")
            object.__setattr__(self, "blocks", tuple(int(v) for v in b))
            target = np.arange(self.world + 1) * (b[-1] / self.world)
            # the nearest boundary to r * N / W (ties: lower); the ends are 0 and N
            right = np.clip(np.searchsorted(b, target, side="left"), 1, b.size - 1)
            left = right - 1
            pick = np.where(target - b[left] <= b[right] - target, left, right)
            pick[0], pick[-1] = 0, b.size - 1
            object.__setattr__(self, "_starts", b[np.maximum.accumulate(pick)])
            object.__setattr__(self, "_cache", {})

    @property
    def rank_starts(self) -> np.ndarray | None:
        """int64 [W + 1]: the first global index each rank owns, then N (shard-contiguous rule; None if strided)."""
        return None if self.blocks is None else self._starts

    def _cuts(self, device):
        """The inner rank boundaries as a tensor on ``device`` (cached: built once per device)."""
        key = str(device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self._starts[1:-1], device=device)
        return self._cache[key]

    def owner(self, index):
        """The rank owning each (non-negative) global index: the rule itself."""
        if self.blocks is None:
            return index % self.world
        if isinstance(index, torch.Tensor):
            return torch.searchsorted(self._cuts(index.device), index, right=True)
        return np.searchsorted(self._starts[1:-1], index, side="right")

    def owns(self, index):
        """bool mask: the global index is a real row (>= 0) owned by this rank."""
        return (index >= 0) & (self.owner(index) == self.rank)

    def _check_n(self, num_samples: int) -> None:
        if self.blocks is not None and int(num_samples) != self.blocks[-1]:
            raise ValueError(f"Sharding: the shards hold {self.blocks[-1]} samples, asked about {num_samples}")

    def owned(self, num_samples: int) -> np.ndarray:
        """int64 [num_owned]: the global indices this rank owns among ``num_samples``, ascending (local row order)."""
        if self.blocks is not None:
            self._check_n(num_samples)
            return np.arange(self._starts[self.rank], self._starts[self.rank + 1], dtype=np.int64)
        every = np.arange(int(num_samples), dtype=np.int64)
        return every[self.owns(every)]

    def num_owned(self, num_samples: int) -> int:
        """How many of ``num_samples`` rows this rank owns (strided: ``ceil(N / W)`` or one fewer)."""
        if self.blocks is not None:
            self._check_n(num_samples)
            return int(self._starts[self.rank + 1] - self._starts[self.rank])
        return max(0, math.ceil((int(num_samples) - self.rank) / self.world))

    def shard_len(self, num_samples: int) -> int:
        """The most rows any rank owns (strided: ``ceil(N / W)``), the common length ranks pad their shard to.
        For the shard-contiguous rule with ``num_samples`` other than N (a per-epoch subset size): the largest
        rank's share of that many rows, rounded up."""
        if self.blocks is not None:
            most = int(np.diff(self._starts).max())
            if int(num_samples) == self.blocks[-1]:
                return most
            return math.ceil(int(num_samples) * most / self.blocks[-1])
        return math.ceil(int(num_samples) / self.world)

    def local(self, index):
        """Global indices of owned rows -> local rows; padding (-1) stays -1."""
        if self.blocks is not None:
            start = int(self._starts[self.rank])
            if isinstance(index, torch.Tensor):
                return torch.where(index >= 0, index - start, index)
            index = np.asarray(index)
            return np.where(index >= 0, index - start, index)
        if self.world == 1:
            return index
        if isinstance(index, torch.Tensor):
            return torch.where(index >= 0, torch.div(index, self.world, rounding_mode="floor"), index)
        index = np.asarray(index)
        return np.where(index >= 0, index // self.world, index)

    def global_index(self, local):
        """Local rows -> global indices (the inverse of :meth:`local` on owned rows)."""
        if self.blocks is not None:
            return local + int(self._starts[self.rank])
        return local * self.world + self.rank
