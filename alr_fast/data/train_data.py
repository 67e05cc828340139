"""The on-disk datasets as the trainer sees them: ``reader_train_data(cfg, device) -> TrainData``.

Reads the configured dataset's train and test splits (:mod:`alr_fast.data.readers`) and returns loader
factories built by :func:`alr_fast.data.factory.build_loader`: ``train_source`` (this rank's owned rows,
shuffled, the recipe's augmentation when ``data.augment``; Clothing1M draws a class-balanced subset of
``data.subset_size`` rows per epoch), ``predict_source`` (the same owned rows, index order, eval transform)
and ``test_source`` (the clean test split; WebVision's val). With ``data.skip_unreadable`` every listed image
is checked once here and the unreadable ones are left out of every loader (and reported).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from alr_fast.data.factory import build_loader
from alr_fast.data.imagecheck import UnreadableImagesWarning, scan_images
from alr_fast.data.readers import DATASET_NAMES, read_split
from alr_fast.data.records import SampleTable
from alr_fast.data.sampling import ClassBalancedSubset
from alr_fast.data.transforms import recipe_transform

__all__ = ["reader_train_data", "TEST_SPLIT", "CLOTHING1M_DEFAULT_SUBSET"]

TEST_SPLIT = {"cifar10": "test", "cifar100": "test", "animal10n": "test", "clothing1m": "test", "webvision": "val",
              "mini-webvision": "val"}
"""The split the trainer reports test accuracy on (model selection on Clothing1M's val is a separate run)."""

CLOTHING1M_DEFAULT_SUBSET = 64_000
"""Rows per epoch when ``data.subset_size`` is 0: DivideMix's 64k (1,000 batches of 32, x2); others use up to
~190k. An assumption, like the recipes' other unpublished settings."""


def _unreadable(table: SampleTable, workers: int) -> np.ndarray:
    bad = scan_images(table, workers=workers)
    if bad:
        warnings.warn(
            f"{table.name}/{table.split}: skipping {len(bad)} unreadable image(s) of {len(table)} (first: {bad[0]}); "
            "their bank rows are never trained", UnreadableImagesWarning, stacklevel=3,
        )
    return np.array([u.index for u in bad], dtype=np.int64)


def reader_train_data(cfg, device: torch.device | str = "cpu"):
    """A :class:`alr_fast.trainer.TrainData` for ``cfg.data.dataset`` read from ``cfg.data.data_root``."""
    from alr_fast.evaluation import on_disk_eval_sets
    from alr_fast.trainer import TrainData

    d = cfg.data
    if d.dataset not in DATASET_NAMES:
        raise ValueError(f"data.dataset: no reader for {d.dataset!r}; on-disk datasets are {DATASET_NAMES}")
    if not d.data_root:
        raise ValueError(f"data.data_root: required for the on-disk dataset {d.dataset!r} (the folder holding it)")
    cifar = d.dataset in ("cifar10", "cifar100")
    if not cifar and d.noise_kind != "none":
        raise ValueError(f"data.noise_kind={d.noise_kind!r}: synthetic noise is for CIFAR; {d.dataset} has real "
                         "label noise (set data.noise_kind=none)")
    source = d.webvision_source if d.dataset == "webvision" else "google"
    noise = dict(noise_kind=d.noise_kind, noise_rate=d.noise_rate, noise_seed=d.noise_seed) if cifar else {}
    train = read_split(d.dataset, d.data_root, "train", source=source, cifar_n=d.cifar_n, label_set=d.label_set,
                       noise_file=d.noise_file, noise_key=d.noise_key, **noise)
    test = read_split(d.dataset, d.data_root, TEST_SPLIT[d.dataset], source=source)
    workers = max(1, d.workers)
    exclude_train = _unreadable(train, workers) if d.skip_unreadable else None
    exclude_test = _unreadable(test, workers) if d.skip_unreadable else None
    crop = d.image_size or None
    common = dict(backend=d.loader, device=device, crop=crop, workers=d.workers)

    def train_source(rank: int, world: int, batch_size: int, seed: int):
        subset = None
        if d.dataset == "clothing1m":
            subset = ClassBalancedSubset(train.labels, d.subset_size or CLOTHING1M_DEFAULT_SUBSET,
                                         num_classes=train.num_classes, seed=seed, exclude=exclude_train)
        return build_loader(train, train=True, augment=d.augment, batch_size=batch_size, seed=seed, rank=rank,
                            world_size=world, subset=subset, exclude=exclude_train, **common)

    def predict_source(rank: int, world: int, batch_size: int):
        return build_loader(train, train=False, batch_size=batch_size, rank=rank, world_size=world,
                            exclude=exclude_train, **common)

    def test_source(batch_size: int):
        return build_loader(test, train=False, batch_size=batch_size, exclude=exclude_test, **common)

    def rows_source(rows, batch_size: int):  # the noisy validation slice (alr_fast.evaluation)
        from alr_fast.evaluation import RemapRows, subset_table

        return RemapRows(build_loader(subset_table(train, rows), train=False, batch_size=batch_size,
                                      skip_unreadable=d.skip_unreadable, **common), rows)

    clean = train.clean_labels
    known = train.clean_known()
    spec = recipe_transform(d.dataset, train=d.augment, crop=crop)
    return TrainData(
        given_labels=train.labels,
        clean_labels=clean if clean is not None and known.any() else None,  # -1 = unknown, see alr_fast.metrics
        num_classes=train.num_classes,
        in_channels=3,
        image_size=spec.crop,
        train_source=train_source,
        test_source=test_source,
        test_labels=test.labels,
        predict_source=predict_source,
        noise_manifest=train.noise_manifest,
        eval_sets=on_disk_eval_sets(cfg, device, crop=crop),
        rows_source=rows_source,
        extra={
            "dataset": d.dataset,
            "train": {k: v for k, v in train.summary().items() if k != "class_counts"},
            "test": {"split": test.split, "count": len(test)},
            "clean_labels_known": int(known.sum()),
            "noise_rate_where_clean_known": train.noise_rate(),
            "unreadable_skipped": {"train": 0 if exclude_train is None else int(exclude_train.size),
                                   "test": 0 if exclude_test is None else int(exclude_test.size)},
        },
    )
