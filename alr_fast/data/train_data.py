"""A dataset as the training loop sees it: :class:`TrainData`, built by :func:`build_train_data` from the config.

The embedded datasets (:mod:`alr_fast.data.readers.embedded`) become in-memory :class:`ArrayLoader` sources;
the on-disk ones go through ``reader_train_data(cfg, device)``.

Reads the configured dataset's train and test splits (:mod:`alr_fast.data.readers`) and returns loader
factories built by :func:`alr_fast.data.loaders.build_loader`, each given the rank's
:class:`alr_fast.loss.sharding.Sharding`: ``train_source`` (the rows it owns,
shuffled, the recipe's augmentation when ``data.augment``; Clothing1M draws a class-balanced subset of
``data.subset_size`` rows per epoch), ``predict_source`` (the same owned rows, index order, eval transform)
and ``test_source`` (the clean test split; WebVision's val). With ``data.skip_unreadable`` every listed image
is checked once here and the unreadable ones are left out of every loader (and reported).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from alr_fast.data.loaders import build_loader
from alr_fast.data.loaders.arrays import ArrayLoader
from alr_fast.data.loaders.imagecheck import UnreadableImagesWarning, scan_images
from alr_fast.data.loaders.plan import ClassBalancedSubset
from alr_fast.data.loaders.transforms import recipe_transform
from alr_fast.data.readers import DATASET_NAMES, GENERIC_NAMES, dataset_splits, read_split
from alr_fast.data.readers.noise_files import load_noise_file
from alr_fast.data.readers.webvision import read_ilsvrc_val
from alr_fast.data.readers.embedded import EMBEDDED_DATASETS, load_embedded
from alr_fast.data.readers.records import SampleTable
from alr_fast.data.loaders.wrappers import EvalSet, RemapRows, subset_table
from alr_fast.data.noise import label_hash, make_noisy_labels
from alr_fast.loss.sharding import Sharding

__all__ = ["BatchSource", "TrainData", "build_train_data", "reader_train_data", "on_disk_eval_sets", "TEST_SPLIT",
           "CLOTHING1M_DEFAULT_SUBSET", "generic_eval_splits"]


class BatchSource(Protocol):
    """What the loop needs from a loader: steps per epoch (equal on every rank) and the batches.

    Every loader here cuts its epoch by :func:`alr_fast.data.loaders.plan.batch_bounds`: steps depend only on
    the common padded shard length and the batch size (so they are equal on every rank), no batch holds a
    single row (batch size >= 2), and every owned sample is read once per epoch (index -1 = padding).
    """

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0): ...


@dataclass
class TrainData:
    """A dataset as the loop sees it: labels by global index and factories for this rank's loaders.

    ``train_source(sharding, batch_size, seed)`` must yield only indices ``sharding`` owns
    (:class:`alr_fast.loss.sharding.Sharding`, the rank's, built with :attr:`sharding_blocks` when there are
    several ranks) or -1; ``predict_source(sharding, batch_size)`` the same rows in a fixed order with the eval
    transform.
    """

    given_labels: np.ndarray
    """int64 [N]: the (noisy) labels training sees."""
    clean_labels: np.ndarray | None
    """int64 [N] when known (synthetic noise), else None."""
    num_classes: int
    in_channels: int
    image_size: int
    train_source: Callable[[Sharding, int, int], BatchSource]
    test_source: Callable[[int], BatchSource]
    test_labels: np.ndarray
    predict_source: Callable[[Sharding, int], BatchSource]
    noise_manifest: dict | None = None
    extra: dict = field(default_factory=dict)
    eval_sets: list = field(default_factory=list)
    """Evaluation sets besides the test split (alr_fast.train.evaluation.EvalSet), e.g. Clothing1M's clean val."""
    sharding_blocks: tuple[int, ...] | None = None
    """Tar shards: the first global index of each shard, then N: the bank and the loaders own whole shards
    (alr_fast.loss.sharding); None: the strided rule."""
    rows_source: Callable | None = None
    """Optional ``rows_source(rows, batch_size)``: the given global rows in index order, eval transform (the
    noisy validation slice); without it the slice is read by filtering ``predict_source``."""

    @property
    def num_train(self) -> int:
        return int(self.given_labels.shape[0])

    @classmethod
    def from_arrays(cls, train_images: torch.Tensor, given_labels, clean_labels, test_images: torch.Tensor,
                    test_labels, *, num_classes: int, mean, std, augment: bool = False, noise_manifest=None,
                    device: torch.device | str = "cpu") -> "TrainData":
        """In-memory uint8 [N, C, H, W] images (the embedded datasets, quality study folds)."""

        def train_source(sharding, batch_size, seed):
            return ArrayLoader(train_images, batch_size=batch_size, mean=mean, std=std, shuffle=True, seed=seed,
                               sharding=sharding, augment=augment, device=device)

        def predict_source(sharding, batch_size):
            return ArrayLoader(train_images, batch_size=batch_size, mean=mean, std=std, shuffle=False,
                               sharding=sharding, device=device)

        def test_source(batch_size):
            return ArrayLoader(test_images, batch_size=batch_size, mean=mean, std=std, shuffle=False, device=device)

        def rows_source(rows, batch_size):
            return RemapRows(ArrayLoader(train_images[torch.as_tensor(rows)], batch_size=batch_size, mean=mean,
                                         std=std, shuffle=False, device=device), rows)

        return cls(
            given_labels=np.asarray(given_labels, dtype=np.int64),
            clean_labels=None if clean_labels is None else np.asarray(clean_labels, dtype=np.int64),
            num_classes=num_classes, in_channels=train_images.shape[1], image_size=train_images.shape[-1],
            train_source=train_source, test_source=test_source, test_labels=np.asarray(test_labels, dtype=np.int64),
            predict_source=predict_source, noise_manifest=noise_manifest, rows_source=rows_source,
        )


def build_train_data(cfg, device: torch.device | str = "cpu") -> TrainData:
    """Load the configured dataset and apply the configured synthetic noise."""
    if cfg.data.dataset not in EMBEDDED_DATASETS:
        return reader_train_data(cfg, device)
    s = load_embedded(cfg.data.dataset, cfg.data.test_fraction)
    noisy, manifest = make_noisy_labels(
        s.train_labels, kind=cfg.data.noise_kind, rate=cfg.data.noise_rate, num_classes=s.num_classes,
        seed=cfg.data.noise_seed, images=s.train_images.numpy(),
    )
    if cfg.data.noise_file:  # labels made elsewhere (e.g. a run's noisy_labels.npy), by global index
        noisy = load_noise_file(cfg.data.noise_file, num_samples=len(s.train_labels), num_classes=s.num_classes,
                                key=cfg.data.noise_key)
        k = s.num_classes
        counts = np.zeros((k, k))
        np.add.at(counts, (s.train_labels, noisy), 1)
        manifest.kind, manifest.convention = "file", f"labels imported from {cfg.data.noise_file} by global index"
        manifest.actual_rate = float((noisy != s.train_labels).mean())
        manifest.noisy_hash = label_hash(noisy)
        manifest.transition_matrix = (counts / np.maximum(counts.sum(1, keepdims=True), 1)).tolist()
    return TrainData.from_arrays(
        s.train_images, noisy, s.train_labels, s.test_images, s.test_labels, num_classes=s.num_classes,
        mean=s.mean, std=s.std, augment=cfg.data.augment, noise_manifest=json.loads(manifest.to_json()),
        device=device,
    )


TEST_SPLIT = {"cifar10": "test", "cifar100": "test", "animal10n": "test", "clothing1m": "test", "webvision": "val",
              "mini-webvision": "val"}
"""The split the trainer reports test accuracy on (model selection on Clothing1M's val is a separate run). The
user's own data: :func:`generic_eval_splits`."""


def generic_eval_splits(cfg) -> tuple[str, str | None]:
    """``(test split, clean val split or None)`` of an imagefolder / manifest dataset: ``test`` is reported
    (``val`` when there is no ``test``); ``val``, when there is also a ``test``, selects the model. A dataset
    with neither is refused (accuracy must be reported on held-out images)."""
    d = cfg.data
    splits = dataset_splits(d.dataset, d.data_root, manifest=d.manifest)
    if "test" in splits:
        return "test", ("val" if "val" in splits else None)
    if "val" in splits:
        return "val", None
    where = ("a test/ (or val/) folder beside train/" if d.dataset == "imagefolder"
             else "rows with split=test (or val) in the manifest")
    raise ValueError(f"data.dataset={d.dataset}: {d.data_root} has only a train split; training reports accuracy on "
                     f"held-out images: add {where} (docs/data.md)")

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
    """A :class:`TrainData` for ``cfg.data.dataset`` read from ``cfg.data.data_root``."""

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
    if d.dataset == "manifest":
        noise["manifest"] = d.manifest
    test_split = generic_eval_splits(cfg)[0] if d.dataset in GENERIC_NAMES else TEST_SPLIT[d.dataset]
    train = read_split(d.dataset, d.data_root, "train", source=source, cifar_n=d.cifar_n, label_set=d.label_set,
                       noise_file=d.noise_file, noise_key=d.noise_key, **noise)
    test = read_split(d.dataset, d.data_root, test_split, source=source,
                      **({"manifest": d.manifest} if d.dataset == "manifest" else {}))
    workers = max(1, d.workers)
    exclude_train = _unreadable(train, workers) if d.skip_unreadable else None
    exclude_test = _unreadable(test, workers) if d.skip_unreadable else None
    crop = d.image_size or None
    common = dict(backend=d.loader, device=device, crop=crop, workers=d.workers)

    def train_source(sharding: Sharding, batch_size: int, seed: int):
        subset = None
        if d.dataset == "clothing1m":
            subset = ClassBalancedSubset(train.labels, d.subset_size or CLOTHING1M_DEFAULT_SUBSET,
                                         num_classes=train.num_classes, seed=seed, exclude=exclude_train)
        return build_loader(train, train=True, augment=d.augment, batch_size=batch_size, seed=seed,
                            sharding=sharding, subset=subset, exclude=exclude_train, **common)

    def predict_source(sharding: Sharding, batch_size: int):
        return build_loader(train, train=False, batch_size=batch_size, sharding=sharding, exclude=exclude_train,
                            **common)

    def test_source(batch_size: int):
        return build_loader(test, train=False, batch_size=batch_size, exclude=exclude_test, **common)

    def rows_source(rows, batch_size: int):  # the noisy validation slice (alr_fast.train.evaluation)
        return RemapRows(build_loader(subset_table(train, rows), train=False, batch_size=batch_size,
                                      skip_unreadable=d.skip_unreadable, **common), rows)

    clean = train.clean_labels
    known = train.clean_known()
    spec = recipe_transform(d.dataset, train=d.augment, crop=crop)
    return TrainData(
        given_labels=train.labels,
        clean_labels=clean if clean is not None and known.any() else None,  # -1 = unknown, see alr_fast.train.metrics
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
        sharding_blocks=train.shard_blocks,
        extra={
            "dataset": d.dataset,
            "class_names": list(train.class_names),
            "train": {k: v for k, v in train.summary().items() if k != "class_counts"},
            "test": {"split": test.split, "count": len(test)},
            "clean_labels_known": int(known.sum()),
            "noise_rate_where_clean_known": train.noise_rate(),
            "unreadable_skipped": {"train": 0 if exclude_train is None else int(exclude_train.size),
                                   "test": 0 if exclude_test is None else int(exclude_test.size)},
        },
    )


def on_disk_eval_sets(cfg, device, *, crop: int | None) -> list[EvalSet]:
    """The evaluation sets read from disk besides the test split: Clothing1M's clean val, and the val split of
    an imagefolder / manifest dataset that also has a test split (role 'val': it selects the model) and ILSVRC-2012 val (``data.ilsvrc_val_list``, role 'test')."""
    d = cfg.data
    common = dict(train=False, backend=d.loader, device=device, crop=crop, workers=d.workers,
                  skip_unreadable=d.skip_unreadable)
    sets = []
    if d.dataset == "clothing1m" or (d.dataset in GENERIC_NAMES and generic_eval_splits(cfg)[1] == "val"):
        table = read_split(d.dataset, d.data_root, "val",
                           **({"manifest": d.manifest} if d.dataset == "manifest" else {}))
        sets.append(EvalSet("val", "val", lambda bs, t=table: build_loader(t, batch_size=bs, **common),
                            table.labels, len(table)))
    if d.ilsvrc_val_list:
        if d.dataset not in ("webvision", "mini-webvision"):
            raise ValueError(f"data.ilsvrc_val_list: ILSVRC-2012 val is an evaluation set of WebVision runs, not "
                             f"of {d.dataset!r}")
        classes = 50 if d.dataset == "mini-webvision" else 1000
        table = read_ilsvrc_val(d.ilsvrc_val_list, d.ilsvrc_root, num_classes=classes)
        sets.append(EvalSet("ilsvrc_val", "test", lambda bs, t=table: build_loader(t, batch_size=bs, **common),
                            table.labels, len(table)))
    return sets
