"""Which global indices an epoch reads on each rank, in which order, and each sample's random numbers.

Sharding (``world_size`` W ranks), two modes:

* ``stick_to_shard=True`` (the default, what the trainer uses): rank r owns the samples whose global index i
  has ``i % W == r`` - the rows its soft-label bank shard holds (:mod:`alr_fast.bank`) - in every epoch, in a
  new order each epoch, seeded by (seed, epoch, rank);
* ``stick_to_shard=False``: a seeded permutation of all samples per epoch (seed, epoch), split strided into W
  disjoint shards, so a rank's rows move between epochs.

Every shard is padded at the end with -1 to a length common to all ranks, so every rank takes the same number
of steps; padded rows never reach the loss. Excluded rows (unreadable images) are left out (-1 padding takes
their place) without changing any other index. A per-epoch subset (Clothing1M's class-balanced draw) limits
the candidates; with owned shards each rank draws its share from its own rows, so no rank ever reads a
sample whose bank row it does not hold.

:func:`sample_uniforms` gives each (seed, epoch, global index) its own random numbers (for crops and flips),
independent of batch composition, rank layout and the step an epoch is resumed at.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

__all__ = ["ClassBalancedSubset", "EpochPlan", "balanced_quotas", "sample_uniforms", "Subset"]


class Subset(Protocol):
    """A per-epoch subset: ``subset(epoch, rank, world_size)`` -> int64 global indices, at most
    ``ceil(epoch_size / world_size)`` of them, all with ``i % world_size == rank`` (for ``world_size`` 1:
    any rows, at most ``epoch_size``)."""

    epoch_size: int

    def __call__(self, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray: ...


def _splitmix64(x: np.ndarray) -> np.ndarray:
    # SplitMix64 finaliser (Steele et al. 2014): a bijective mix of 64-bit integers; uint64 wraps on overflow.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_uniforms(seed: int, epoch: int, indices: np.ndarray, count: int) -> np.ndarray:
    """float32 [n, count] in [0, 1): random numbers of each (seed, epoch, global index), counter-based."""
    idx = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(_splitmix64(np.uint64(seed & 0xFFFF_FFFF_FFFF_FFFF)) ^ np.uint64(epoch & 0xFFFF_FFFF))
        base = _splitmix64(key ^ (idx * np.uint64(0x9E3779B97F4A7C15)))
        cols = [_splitmix64(base + np.uint64(j + 1)) for j in range(count)]
    # The top 24 bits -> a float32 in [0, 1) exactly (never rounds up to 1.0).
    return (np.stack(cols, axis=1) >> np.uint64(40)).astype(np.float32) / np.float32(2**24)


def balanced_quotas(counts: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class sample counts summing to ``min(size, counts.sum())``, as equal as the class sizes allow
    (water-filling: classes smaller than their share give it all; the remainder goes to random classes)."""
    counts = np.asarray(counts, dtype=np.int64)
    size = int(min(size, counts.sum()))
    quota = np.zeros_like(counts)
    open_ = counts > 0
    while size - quota.sum() > 0 and open_.any():
        left = size - quota.sum()
        share = left // int(open_.sum())
        if share == 0:
            # Fewer samples left than open classes: one more each for `left` random open classes.
            pick = rng.choice(np.nonzero(open_)[0], size=left, replace=False)
            quota[pick] += 1
            break
        quota[open_] = np.minimum(quota[open_] + share, counts[open_])
        open_ = quota < counts
    return quota


class ClassBalancedSubset:
    """A class-balanced random subset of ``size`` training rows, redrawn every epoch.

    ``subset(epoch)`` draws ``size`` rows from all rows (seeded by (seed, epoch)); ``subset(epoch, rank, W)``
    draws this rank's share, ``ceil(epoch_size / W)`` rows, class-balanced among the rows it owns
    (``i % W == rank``; seeded by (seed, epoch, rank)). Returns sorted int64 global indices (the loader
    shuffles them). Rows in ``exclude`` (e.g. unreadable images) are never drawn.
    """

    def __init__(self, labels: np.ndarray, size: int, *, num_classes: int, seed: int = 0,
                 exclude: np.ndarray | None = None):
        labels = np.asarray(labels, dtype=np.int64)
        if size < 1:
            raise ValueError(f"ClassBalancedSubset: size must be >= 1, got {size}")
        self.labels = labels
        self.size = int(size)
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        self.keep = np.ones(labels.shape[0], dtype=bool)
        if exclude is not None:
            self.keep[np.asarray(exclude, dtype=np.int64)] = False
        self.epoch_size = int(min(self.size, self.keep.sum()))
        """Rows per epoch over all ranks (before the per-rank rounding up)."""
        self._by_class: dict[tuple[int, int], list[np.ndarray]] = {}

    def _classes(self, rank: int, world_size: int) -> list[np.ndarray]:
        key = (rank, world_size)
        if key not in self._by_class:
            rows = np.arange(rank, self.labels.shape[0], world_size)
            rows = rows[self.keep[rows]]
            self._by_class[key] = [rows[self.labels[rows] == c] for c in range(self.num_classes)]
        return self._by_class[key]

    def __call__(self, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        by_class = self._classes(rank, world_size)
        rng = np.random.default_rng([self.seed, int(epoch), rank, world_size, 0xC1074])
        counts = np.array([ix.size for ix in by_class], dtype=np.int64)
        quota = balanced_quotas(counts, math.ceil(self.epoch_size / world_size), rng)
        picks = [rng.choice(ix, size=q, replace=False) for ix, q in zip(by_class, quota.tolist()) if q]
        return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


class EpochPlan:
    """The global indices one rank reads in one epoch (see the module docstring)."""

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 stick_to_shard: bool = True, subset: Subset | None = None, exclude: np.ndarray | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochPlan: rank {rank} outside [0, world_size={world_size})")
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.stick_to_shard = stick_to_shard
        self.subset = subset
        keep = np.ones(self.num_samples, dtype=bool)
        if exclude is not None and len(exclude):
            keep[np.asarray(exclude, dtype=np.int64)] = False
        self._keep = keep
        if subset is not None:
            if not isinstance(getattr(subset, "epoch_size", None), (int, np.integer)):
                raise TypeError("EpochPlan: a subset needs an int attribute epoch_size (rows per epoch, all ranks)")
            n = int(subset.epoch_size)
        elif stick_to_shard:
            n = self.num_samples  # excluded rows become padding: every rank keeps ceil(N / W) steps' worth
        else:
            n = int(keep.sum())
        self.epoch_size = n
        """Rows per epoch over all ranks, before padding."""
        self.shard_len = math.ceil(n / self.world_size)
        """Rows per rank per epoch, padding included (the same on every rank)."""

    def _candidates(self, epoch: int) -> np.ndarray:
        """The rows this epoch may read: owned rows (``stick_to_shard``) or all rows, subset, not excluded."""
        if self.subset is not None:
            if self.stick_to_shard:
                idx = np.asarray(self.subset(epoch, self.rank, self.world_size), dtype=np.int64)
                if (idx % self.world_size != self.rank).any():
                    raise ValueError(f"EpochPlan: the subset of epoch {epoch} gave rank {self.rank} rows it does not "
                                     f"own (i % {self.world_size} != {self.rank})")
                limit = self.shard_len
            else:
                idx = np.asarray(self.subset(epoch), dtype=np.int64)
                limit = self.epoch_size
            if idx.size > limit:
                raise ValueError(f"EpochPlan: the subset of epoch {epoch} has {idx.size} rows, more than the {limit} "
                                 "an epoch holds (every epoch must have the same size)")
        elif self.stick_to_shard:
            idx = np.arange(self.rank, self.num_samples, self.world_size, dtype=np.int64)
        else:
            idx = np.arange(self.num_samples, dtype=np.int64)
        return idx[self._keep[idx]]

    def shard(self, epoch: int) -> np.ndarray:
        """int64 [shard_len]: this rank's global indices for ``epoch``, padded at the end with -1."""
        cand = self._candidates(epoch)
        if self.stick_to_shard:
            if self.shuffle:
                cand = cand[np.random.default_rng([self.seed, int(epoch), self.rank, 0x5EED]).permutation(cand.size)]
            out = np.full(self.shard_len, -1, dtype=np.int64)
            out[: cand.size] = cand
            return out
        order = cand
        if self.shuffle:
            order = cand[np.random.default_rng([self.seed, int(epoch), 0x5EED]).permutation(cand.size)]
        padded = np.full(self.shard_len * self.world_size, -1, dtype=np.int64)
        padded[: order.size] = order
        return padded.reshape(self.shard_len, self.world_size)[:, self.rank].copy()
