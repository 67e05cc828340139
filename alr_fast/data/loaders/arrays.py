"""Batches from in-memory uint8 image arrays, each row carrying its global index into the bank.

Sharded by rank with a fixed owner per sample: rank r of W reads exactly the samples whose global index i has
``i % W == r`` (the rows its soft-label bank shard holds, see :mod:`alr_fast.bank`), in a new seeded order
every epoch. Shards are padded with index -1 rows (zero images) to the common length ``ceil(N / W)`` so every
rank takes the same number of steps; padded rows never reach the loss (see :mod:`alr_fast.reference`).
Randomness is derived from (seed, epoch, rank, step), so an epoch can be resumed at any step.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ArrayLoader"]


class ArrayLoader:
    def __init__(
        self,
        images: torch.Tensor,
        *,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = False,
        device: torch.device | str = "cpu",
    ):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"ArrayLoader: images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"ArrayLoader: mean/std need {images.shape[1]} channels, got {len(mean)}/{len(std)}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255.0
        self.shard_len = math.ceil(images.shape[0] / world_size)

    def __len__(self) -> int:
        return math.ceil(self.shard_len / self.batch_size)

    def shard_indices(self, epoch: int) -> torch.Tensor:
        """This rank's global indices for ``epoch`` (padded with -1 to the common shard length)."""
        owned = torch.arange(self.rank, self.images.shape[0], self.world_size)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + self.rank * 7_777_777)
            owned = owned[torch.randperm(owned.numel(), generator=g)]
        padded = torch.full((self.shard_len,), -1, dtype=torch.long)
        padded[: owned.numel()] = owned
        return padded

    def _shift(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # Random +-2 pixel translation (pad 2, random crop back), one offset per batch for speed.
        h, w = x.shape[-2:]
        dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
        return torch.nn.functional.pad(x, (2, 2, 2, 2))[..., dy : dy + h, dx : dx + w]

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield ``(images float [b, C, H, W] normalised, index int64 [b])`` for this rank, from ``start_step``."""
        idx_all = self.shard_indices(epoch).to(self.device)
        for step, start in enumerate(range(0, idx_all.numel(), self.batch_size)):
            if step < start_step:
                continue
            g = torch.Generator().manual_seed(hash((self.seed, epoch, self.rank, step)) & 0x7FFF_FFFF_FFFF)
            idx = idx_all[start : start + self.batch_size]
            x = self.images[idx.clamp_min(0)].float()
            x = (x - self.mean) / self.std
            x = x * (idx >= 0).view(-1, 1, 1, 1)
            if self.augment:
                x = self._shift(x, g)
            yield x, idx
