"""What the DALI and torchvision loaders share: the epoch plan, skipped images, output dtype, ``__len__``.

Both loaders expose the interface of :class:`alr_fast.data.loaders.arrays.ArrayLoader` (the trainer's
``BatchSource``): ``len(loader)`` steps per epoch (the same on every rank) and ``epoch(epoch, start_step=0)``
yielding ``(images float [b, C, H, W] normalised, index int64 [b])`` from batch ``start_step`` on (resuming
mid-epoch); rows whose index is -1 are padding (never a duplicated sample for the loss). A loader is given its
rank's :class:`alr_fast.loss.sharding.Sharding` (default: one rank) and by default reads only the samples that
sharding owns (the bank's rows), cut into batches by the one rule of
:func:`alr_fast.data.loaders.plan.batch_bounds` (no training batch of one row). A tar-shard table needs, on
several ranks, a Sharding built with its ``shard_blocks`` (anything else is refused).
Given the same table, seed and sharding both loaders read the same global indices in the same order,
and a sample's random crop/flip depends only on (seed, epoch, global index), so a resumed epoch repeats the
uninterrupted one exactly (DALI's random-resized crop excepted: it draws from the pipeline's stream).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from alr_fast.data.loaders.imagecheck import UnreadableImage, UnreadableImagesWarning, scan_images
from alr_fast.data.loaders.plan import EpochPlan, Subset
from alr_fast.data.loaders.transforms import TransformSpec
from alr_fast.data.readers.records import SampleTable
from alr_fast.loss.sharding import Sharding
from alr_fast.util.dtypes import choose_dtype

__all__ = ["IndexedLoader", "OUTPUT_DTYPES"]

OUTPUT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class IndexedLoader:
    def __init__(
        self,
        table: SampleTable,
        transform: TransformSpec,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        sharding: Sharding = Sharding(),
        stick_to_shard: bool = True,
        subset: Subset | None = None,
        exclude: np.ndarray | None = None,
        skip_unreadable: bool = False,
        scan_workers: int = 1,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
    ):
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        dtype = choose_dtype(dtype, OUTPUT_DTYPES, type(self).__name__)
        if table.images is not None and transform.crop_mode == "random-resized":
            raise ValueError(f"{type(self).__name__}: in-memory arrays take pad/crop/flip transforms only")
        if table.paths is not None and transform.pad:
            raise ValueError(f"{type(self).__name__}: pad is for in-memory arrays (CIFAR) only")
        if len(table) >= 2**31:
            raise ValueError(f"{type(self).__name__}: {len(table)} samples; global indices travel as int32 labels")
        self.table = table
        self.transform = transform
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        excluded = [] if exclude is None else [np.asarray(exclude, dtype=np.int64)]
        self.skipped: list[UnreadableImage] = []
        """Images left out because they are missing or do not decode (``skip_unreadable=True``)."""
        if skip_unreadable and table.paths is not None:
            self.skipped = scan_images(table, workers=scan_workers)
            if self.skipped:
                warnings.warn(
                    f"{table.name}/{table.split}: skipping {len(self.skipped)} unreadable image(s) of {len(table)} "
                    f"(first: {self.skipped[0]}); their bank rows are never trained",
                    UnreadableImagesWarning, stacklevel=2,
                )
                excluded.append(np.array([u.index for u in self.skipped], dtype=np.int64))
        self.excluded = np.unique(np.concatenate(excluded)) if excluded else np.zeros(0, dtype=np.int64)
        if sharding.world > 1 and sharding.blocks != table.shard_blocks:
            raise ValueError(
                f"{type(self).__name__}: {table.name}/{table.split} is read under "
                f"{'whole tar shards per rank' if table.shard_blocks else 'the strided owner rule'} but the "
                f"sharding given has blocks={None if sharding.blocks is None else sharding.blocks[:4]}...; pass the "
                "Sharding built with the table's shard_blocks (TrainData.sharding_blocks), as the bank's is")
        self.plan = EpochPlan(len(table), shuffle=shuffle, seed=seed, sharding=sharding,
                              stick_to_shard=stick_to_shard, subset=subset, exclude=self.excluded,
                              batch_size=self.batch_size)

    def __len__(self) -> int:
        return self.plan.steps

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        if self.transform.crop_mode == "none" and self.table.images is not None:
            h, w, c = self.table.images.shape[1:]
            return c, h, w
        return 3, self.transform.crop, self.transform.crop

    def shard(self, epoch: int) -> np.ndarray:
        """int64 [shard_len]: the global indices this rank reads in ``epoch`` (-1 = padding, at the end)."""
        return self.plan.shard(epoch)

    def shard_from(self, epoch: int, start_step: int) -> np.ndarray:
        """The part of ``shard(epoch)`` read when the epoch starts at batch ``start_step``."""
        if not 0 <= start_step <= len(self):
            raise ValueError(f"{type(self).__name__}: start_step {start_step} outside [0, {len(self)}]")
        return self.shard(epoch)[self.plan.batch_start(start_step) :]

    def _empty_batches(self, start_step: int):
        """All-padding batches (a rank with no samples this epoch): zeros and index -1."""
        for b in np.diff(self.plan.bounds[start_step:]).tolist():
            yield (torch.zeros((b, *self.sample_shape), dtype=self.dtype, device=self.device),
                   torch.full((b,), -1, dtype=torch.long, device=self.device))
