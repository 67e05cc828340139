"""Batches from in-memory uint8 image arrays, each row carrying its global index into the bank.

Rows, order, padding and batches come from the same :class:`alr_fast.data.loaders.plan.EpochPlan` as the
on-disk loaders: rank r reads exactly the samples it owns (the rows its soft-label bank shard holds, see
:mod:`alr_fast.loss.sharding`), in a new seeded order every epoch, padded with index -1 rows (zero images) to a
length common to all ranks, cut by the one batching rule (no training batch of one row). Padded rows never
reach the loss (see :mod:`alr_fast.loss.reference`). The augmentation's randomness is derived from (seed, epoch,
rank, step), so an epoch can be resumed at any step.
"""

from __future__ import annotations

import torch

from alr_fast.data.loaders.plan import EpochPlan
from alr_fast.loss.sharding import Sharding

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
        sharding: Sharding = Sharding(),
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
        self.seed = seed
        self.augment = augment
        self.mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * 255.0
        self.plan = EpochPlan(images.shape[0], shuffle=shuffle, seed=seed, sharding=sharding, batch_size=batch_size)

    def __len__(self) -> int:
        return self.plan.steps

    def _shift(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        # Random +-2 pixel translation (pad 2, random crop back), one offset per batch for speed.
        h, w = x.shape[-2:]
        dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
        return torch.nn.functional.pad(x, (2, 2, 2, 2))[..., dy : dy + h, dx : dx + w]

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield ``(images float [b, C, H, W] normalised, index int64 [b])`` for this rank, from ``start_step``."""
        for step, rows in enumerate(self.plan.batches(epoch, start_step), start=start_step):
            g = torch.Generator().manual_seed(hash((self.seed, epoch, self.plan.sharding.rank, step)) & 0x7FFF_FFFF_FFFF)
            idx = torch.from_numpy(rows).to(self.device)
            x = self.images[idx.clamp_min(0)].float()
            x = (x - self.mean) / self.std
            x = x * (idx >= 0).view(-1, 1, 1, 1)
            if self.augment:
                x = self._shift(x, g)
            yield x, idx
