"""Batches from in-memory uint8 image arrays, each row carrying its global index into the bank.

Sharded by rank: every epoch a seeded permutation of the N samples is split into ``world_size`` disjoint
shards of equal length; shards are padded with index -1 rows (zero images) so every rank takes the same
number of steps. Padded rows never reach the loss (see :mod:`alr_fast.reference`).
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
        n = self.images.shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        padded = torch.full((self.shard_len * self.world_size,), -1, dtype=torch.long)
        padded[:n] = order
        return padded.view(self.shard_len, self.world_size)[:, self.rank].contiguous()

    def _shift(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # Random +-2 pixel translation (pad 2, random crop back), one offset per batch for speed.
        h, w = x.shape[-2:]
        dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
        return torch.nn.functional.pad(x, (2, 2, 2, 2))[..., dy : dy + h, dx : dx + w]

    def epoch(self, epoch: int):
        """Yield ``(images float [b, C, H, W] normalised, index int64 [b])`` for this rank."""
        idx_all = self.shard_indices(epoch).to(self.device)
        g = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
        for start in range(0, idx_all.numel(), self.batch_size):
            idx = idx_all[start : start + self.batch_size]
            x = self.images[idx.clamp_min(0)].float()
            x = (x - self.mean) / self.std
            x = x * (idx >= 0).view(-1, 1, 1, 1)
            if self.augment:
                x = self._shift(x, g)
            yield x, idx
