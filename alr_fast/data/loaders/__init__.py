"""Loaders: batches of ``(images, global index)`` for one rank, the trainer's ``BatchSource``.

``plan`` (which rows an epoch reads on each rank, in which order), ``base`` (what the table loaders share),
``dali`` and ``torch_loader`` (a :class:`SampleTable` decoded by DALI or torchvision), ``arrays`` (in-memory
uint8 arrays), ``transforms`` (the recipes' augmentation), ``imagecheck`` (which listed images decode).

``build_loader`` here: a table + the recipe's transform + a backend (DALI or torchvision) -> a loader.

The backend is decided here, once: ``"dali"``, ``"torch"``, or ``"auto"`` (DALI when it is installed).
"""

from __future__ import annotations

import torch

from alr_fast.data.loaders.plan import Subset
from alr_fast.data.loaders.transforms import recipe_transform
from alr_fast.data.readers.records import SampleTable
from alr_fast.loss.sharding import Sharding

__all__ = ["build_loader", "LOADER_BACKENDS"]

LOADER_BACKENDS = ("auto", "dali", "torch")


def build_loader(
    table: SampleTable,
    *,
    train: bool,
    batch_size: int,
    augment: bool | None = None,
    backend: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    seed: int = 0,
    sharding: Sharding = Sharding(),
    stick_to_shard: bool = True,
    subset: Subset | None = None,
    crop: int | None = None,
    resize: int | None = None,
    workers: int = 2,
    skip_unreadable: bool = False,
    exclude=None,
):
    """A loader over ``table``: ``train`` shuffles (and by default augments with the recipe's train transform);
    otherwise a fixed order with the eval transform. ``augment`` overrides the transform choice.

    ``workers`` is DALI's ``num_threads`` or the DataLoader's ``num_workers``: the same CPU budget either way
    (DALI needs at least one thread). ``sharding``: this rank's :class:`alr_fast.loss.sharding.Sharding` (default:
one rank); by default the loader reads the rows it owns (``stick_to_shard``).
    """
    from alr_fast.data.loaders.dali import DaliLoader, dali_available
    from alr_fast.data.loaders.torch_loader import TorchLoader

    if backend not in LOADER_BACKENDS:
        raise ValueError(f"build_loader: backend must be one of {LOADER_BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "dali" if dali_available() else "torch"
    augment = train if augment is None else augment
    spec = recipe_transform(table.name, train=augment, crop=crop, resize=resize, mean=table.mean, std=table.std)
    common = dict(batch_size=batch_size, shuffle=train, seed=seed, sharding=sharding,
                  stick_to_shard=stick_to_shard, subset=subset, exclude=exclude, skip_unreadable=skip_unreadable,
                  scan_workers=workers, device=device, dtype=dtype)
    if backend == "dali":
        return DaliLoader(table, spec, num_threads=max(1, workers), **common)
    return TorchLoader(table, spec, num_workers=workers, **common)
