"""The epoch plan of every loader: which global indices an epoch reads on each rank, in which order, cut into
which batches; and each sample's random numbers.

A plan is given the rank's :class:`alr_fast.loss.sharding.Sharding` (rank r of W ranks and the owner rule; the
trainer passes the same object its bank holds), two modes:

* ``stick_to_shard=True`` (the default, what the trainer uses): rank r reads the samples it owns - the rows
  its soft-label bank shard holds (:mod:`alr_fast.loss.bank`) - in every epoch, in a new order each epoch, seeded
  by (seed, epoch, rank);
* ``stick_to_shard=False``: a seeded permutation of all samples per epoch (seed, epoch), dealt out to the W
  ranks by the same owner rule applied to positions in the permutation, so a rank's rows move between epochs.

Every shard is padded at the end with -1 to a length common to all ranks, so every rank takes the same number
of steps; padded rows never reach the loss or the bank. Excluded rows (unreadable images) are left out (-1
padding takes their place) without changing any other index. A per-epoch subset (Clothing1M's class-balanced
draw) limits the candidates; with owned shards each rank draws its share from its own rows, so no rank ever
reads a sample whose bank row it does not hold.

Batches (:func:`batch_bounds`, the one batching rule): a shard of L rows is cut into batches of
``batch_size`` B; a last batch that would hold a single row is never made. Instead, for B >= 3 the last two
batches share their B + 1 rows (``ceil((B+1)/2)`` and ``floor((B+1)/2)``, both in [2, B]); for B = 2 the single
row joins the previous batch (3 rows). So every batch a model sees in training holds at least two rows (a
BatchNorm layer cannot train on one: "Expected more than 1 value per channel") and no sample is dropped: every
owned, readable row is read exactly once per epoch. A shuffled (training) shard is at least 2 rows long (a
rank with a single row gets one padding row). Steps per epoch depend only on (L, B), so they are equal on
every rank, as the trainer's ``BatchSource`` contract requires. B = 1 keeps batches of one (no BatchNorm
model can train with it).

:func:`sample_uniforms` gives each (seed, epoch, global index) its own random numbers (for crops and flips),
independent of batch composition, rank layout and the step an epoch is resumed at.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch

from alr_fast.loss.sharding import Sharding

__all__ = ["ClassBalancedSubset", "EpochPlan", "balanced_quotas", "batch_bounds", "sample_uniforms", "Subset"]


def batch_bounds(length: int, batch_size: int) -> np.ndarray:
    """int64 [steps + 1]: row offsets cutting a shard of ``length`` rows into batches (module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_bounds: batch_size must be >= 1, got {batch_size}")
    bounds = list(range(0, length, batch_size)) + [length]
    if length > batch_size and batch_size >= 2 and length % batch_size == 1:
        if batch_size == 2:
            del bounds[-2]  # the lone row joins the previous batch: 3 rows
        else:
            bounds[-2] = length - (batch_size + 1) // 2  # the last two batches share B + 1 rows
    return np.asarray(bounds, dtype=np.int64)


class Subset(Protocol):
    """A per-epoch subset: ``subset(epoch, sharding)`` -> int64 global indices, at most
    ``ceil(epoch_size / W)`` of them, all owned by ``sharding`` (rank r of W, the strided rule); without
    ``sharding`` (one rank): any rows, at most ``epoch_size``."""

    epoch_size: int

    def __call__(self, epoch: int, sharding: Sharding = Sharding()) -> np.ndarray: ...


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

    ``subset(epoch)`` draws ``size`` rows from all rows (seeded by (seed, epoch)); ``subset(epoch, sharding)``
    draws rank r of W's share, ``ceil(epoch_size / W)`` rows, class-balanced among the rows it owns
    (``i % W == r``; seeded by (seed, epoch, r, W)). Returns sorted int64 global indices (the loader
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

    def _classes(self, sharding: Sharding) -> list[np.ndarray]:
        key = (sharding.rank, sharding.world)
        if key not in self._by_class:
            rows = sharding.owned(self.labels.shape[0])
            rows = rows[self.keep[rows]]
            self._by_class[key] = [rows[self.labels[rows] == c] for c in range(self.num_classes)]
        return self._by_class[key]

    def __call__(self, epoch: int, sharding: Sharding = Sharding()) -> np.ndarray:
        by_class = self._classes(sharding)
        rng = np.random.default_rng([self.seed, int(epoch), sharding.rank, sharding.world, 0xC1074])
        counts = np.array([ix.size for ix in by_class], dtype=np.int64)
        quota = balanced_quotas(counts, math.ceil(self.epoch_size / sharding.world), rng)
        picks = [rng.choice(ix, size=q, replace=False) for ix, q in zip(by_class, quota.tolist()) if q]
        return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


class EpochPlan:
    """The global indices one rank reads in one epoch, and its batches (see the module docstring).

    ``batch_size`` is needed only for :meth:`batches`, :attr:`steps` and :meth:`batch_start`.
    """

    def __init__(self, num_samples: int, *, shuffle: bool, seed: int = 0, sharding: Sharding = Sharding(),
                 stick_to_shard: bool = True, subset: Subset | None = None, exclude: np.ndarray | None = None,
                 batch_size: int | None = None):
        if not isinstance(sharding, Sharding):
            raise TypeError(f"EpochPlan: sharding must be an alr_fast.loss.sharding.Sharding, got {sharding!r}")
        self.num_samples = int(num_samples)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.sharding = sharding
        """Whose rows this plan reads: rank r of W, strided or (tar shards, ``blocks``) shard-contiguous."""
        if sharding.blocks is not None and (not stick_to_shard or subset is not None):
            raise ValueError("EpochPlan: tar shards are read by the ranks owning them (stick_to_shard=True, no subset)")
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
        self.shard_len = max(self.sharding.shard_len(n), 2 if shuffle and n else 0)
        """Rows per rank per epoch, padding included (the same on every rank; >= 2 when shuffled)."""
        self.batch_size = None if batch_size is None else int(batch_size)
        self.bounds = None if batch_size is None else batch_bounds(self.shard_len, self.batch_size)
        """int64 [steps + 1]: where each batch starts in the shard (:func:`batch_bounds`); None without batch_size."""

    @property
    def steps(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return len(self._require_bounds()) - 1

    @property
    def max_batch(self) -> int:
        """The largest batch of an epoch (``batch_size``, or 3 for ``batch_size`` 2 with a merged last row)."""
        return int(np.diff(self._require_bounds()).max(initial=0))

    def _require_bounds(self) -> np.ndarray:
        if self.bounds is None:
            raise ValueError("EpochPlan: batches need the plan's batch_size")
        return self.bounds

    def batch_start(self, step: int) -> int:
        """The shard row at which batch ``step`` starts (``shard_len`` for ``step == steps``)."""
        if not 0 <= step <= self.steps:
            raise ValueError(f"EpochPlan: start_step {step} outside [0, {self.steps}]")
        return int(self.bounds[step])

    def batches(self, epoch: int, start_step: int = 0) -> list[np.ndarray]:
        """This rank's batches of ``epoch`` from batch ``start_step`` on: int64 global indices (-1 = padding)."""
        self.batch_start(start_step)
        shard, bounds = self.shard(epoch), self.bounds
        return [shard[bounds[i] : bounds[i + 1]] for i in range(start_step, self.steps)]

    def _candidates(self, epoch: int) -> np.ndarray:
        """The rows this epoch may read: owned rows (``stick_to_shard``) or all rows, subset, not excluded."""
        if self.subset is not None:
            if self.stick_to_shard:
                idx = np.asarray(self.subset(epoch, self.sharding), dtype=np.int64)
                if not self.sharding.owns(idx).all():
                    r, w = self.sharding.rank, self.sharding.world
                    raise ValueError(f"EpochPlan: the subset of epoch {epoch} gave rank {r} rows it does not "
                                     f"own (i % {w} != {r})")
                limit = self.shard_len
            else:
                idx = np.asarray(self.subset(epoch), dtype=np.int64)
                limit = self.epoch_size
            if idx.size > limit:
                raise ValueError(f"EpochPlan: the subset of epoch {epoch} has {idx.size} rows, more than the {limit} "
                                 "an epoch holds (every epoch must have the same size)")
        elif self.stick_to_shard:
            idx = self.sharding.owned(self.num_samples)
        else:
            idx = np.arange(self.num_samples, dtype=np.int64)
        return idx[self._keep[idx]]

    def shard(self, epoch: int) -> np.ndarray:
        """int64 [shard_len]: this rank's global indices for ``epoch``, padded at the end with -1."""
        cand = self._candidates(epoch)
        if self.stick_to_shard:
            if self.shuffle:
                # torch's generator, seeded as the in-memory loader always was: the embedded datasets (demo,
                # quality study) keep the exact sample order, hence the published figures, on one plan.
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch) + self.sharding.rank * 7_777_777)
                cand = cand[torch.randperm(cand.size, generator=g).numpy()]
            out = np.full(self.shard_len, -1, dtype=np.int64)
            out[: cand.size] = cand
            return out
        order = cand
        if self.shuffle:
            order = cand[np.random.default_rng([self.seed, int(epoch), 0x5EED]).permutation(cand.size)]
        padded = np.full(self.shard_len * self.sharding.world, -1, dtype=np.int64)
        padded[: order.size] = order
        return padded[self.sharding.owned(padded.size)]
