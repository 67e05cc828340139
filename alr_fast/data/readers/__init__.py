"""Dataset readers, one module per dataset, each returning a :class:`records.SampleTable`; the formats they share
live in ``records``, ``listfile``, ``noise_files`` and ``safe_pickle``.

``read_split(name, root, split, ...)`` here picks the reader:

=================  ==============================================  ==============================
name               splits                                          reader (in this package)
=================  ==============================================  ==============================
cifar10, cifar100  train, test                                     :func:`cifar.read_cifar`
animal10n          train, test                                     :func:`animal10n.read_animal10n`
clothing1m         train (noisy), clean-train, val, test           :func:`clothing1m.read_clothing1m`
webvision          train (source google / flickr / all), val       :func:`webvision.read_webvision`
mini-webvision     train, val (labels < 50)                        :func:`webvision.read_mini_webvision`
imagefolder        train (+ val, test with split folders)          :func:`generic.read_imagefolder`
manifest           train, val, test as the ``split`` column says   :func:`generic.read_manifest`
webdataset         train (+ val, test with split folders)          :func:`tarshards.read_webdataset`
=================  ==============================================  ==============================

``imagefolder``, ``manifest`` (:mod:`.generic`) and ``webdataset`` (:mod:`.tarshards`) are the user's own data; their splits depend on what is on
disk: :func:`dataset_splits` says which exist.

ILSVRC-2012 val (same classes, explicit list) is :func:`webvision.read_ilsvrc_val`. Label
overrides for the train split, applied in this order: CIFAR-N (``cifar_n`` + ``label_set``), a noise file
(``noise_file``), or synthetic noise (CIFAR only: ``noise_kind``/``noise_rate``/``noise_seed``).
"""

from __future__ import annotations

from pathlib import Path

from alr_fast.data.readers.animal10n import read_animal10n
from alr_fast.data.readers.cifar import apply_cifar_n, read_cifar
from alr_fast.data.readers.clothing1m import CLOTHING1M_SPLITS, read_clothing1m
from alr_fast.data.readers.generic import (SPLIT_NAMES, imagefolder_splits, manifest_splits, read_imagefolder,
                                           read_manifest)
from alr_fast.data.readers.noise_files import apply_noise_file
from alr_fast.data.readers.records import SampleTable
from alr_fast.data.readers.tarshards import read_webdataset, webdataset_splits
from alr_fast.data.readers.webvision import read_mini_webvision, read_webvision

__all__ = ["DATASET_NAMES", "DATASET_SPLITS", "TRAIN_SPLIT", "GENERIC_NAMES", "read_split", "dataset_splits"]

GENERIC_NAMES = ("imagefolder", "manifest", "webdataset")
"""The user's own data forms (their splits depend on what is on disk)."""
DATASET_NAMES = ("cifar10", "cifar100", "animal10n", "clothing1m", "webvision", "mini-webvision", *GENERIC_NAMES)
DATASET_SPLITS = {
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "animal10n": ("train", "test"),
    "clothing1m": tuple(CLOTHING1M_SPLITS),
    "webvision": ("train", "val"),
    "mini-webvision": ("train", "val"),
    "imagefolder": SPLIT_NAMES,
    "manifest": SPLIT_NAMES,
    "webdataset": SPLIT_NAMES,
}
"""The splits a dataset can have (the user's own data: :func:`dataset_splits` says which it has)."""


def dataset_splits(name: str, root: str | Path, *, manifest: str | Path | None = None) -> tuple[str, ...]:
    """The splits dataset ``name`` has under ``root`` (for the benchmark datasets: all of DATASET_SPLITS)."""
    if name == "imagefolder":
        return imagefolder_splits(root)
    if name == "manifest":
        return manifest_splits(root, manifest)
    if name == "webdataset":
        return webdataset_splits(root)
    return DATASET_SPLITS[name]
TRAIN_SPLIT = "train"


def read_split(
    name: str,
    root: str | Path,
    split: str = TRAIN_SPLIT,
    *,
    source: str = "google",
    noise_kind: str = "none",
    noise_rate: float = 0.0,
    noise_seed: int = 0,
    cifar_n: str | Path | None = None,
    label_set: str | None = None,
    noise_file: str | Path | None = None,
    noise_key: str | None = None,
    manifest: str | Path | None = None,
) -> SampleTable:
    """Read ``split`` of dataset ``name`` under ``root`` (see the module docstring)."""
    if name not in DATASET_NAMES:
        raise ValueError(f"read_split: dataset must be one of {DATASET_NAMES}, got {name!r}")
    if split not in DATASET_SPLITS[name]:
        raise ValueError(f"read_split: {name} has splits {DATASET_SPLITS[name]}, got {split!r}")
    overrides = [o for o in (cifar_n, noise_file) if o is not None] + ([noise_kind] if noise_kind != "none" else [])
    if len(overrides) > 1:
        raise ValueError("read_split: give at most one of cifar_n, noise_file, noise_kind")
    if overrides and split != TRAIN_SPLIT:
        raise ValueError(f"read_split: label overrides apply to the train split, not {split!r}")
    if name in ("cifar10", "cifar100"):
        table = read_cifar(root, name, split, noise_kind=noise_kind, noise_rate=noise_rate, noise_seed=noise_seed)
    elif noise_kind != "none":
        raise ValueError(f"read_split: synthetic noise is for CIFAR; {name} has real noise (use noise_file to "
                         "import other labels)")
    elif manifest is not None and name != "manifest":
        raise ValueError(f"read_split: manifest= is for the 'manifest' dataset, not {name!r}")
    elif name == "animal10n":
        table = read_animal10n(root, split)
    elif name == "clothing1m":
        table = read_clothing1m(root, split)
    elif name == "imagefolder":
        table = read_imagefolder(root, split)
    elif name == "manifest":
        table = read_manifest(root, split, manifest=manifest)
    elif name == "webdataset":
        table = read_webdataset(root, split)
    elif name == "webvision":
        table = read_webvision(root, split, source=source)
    else:
        table = read_mini_webvision(root, split)
    if cifar_n is not None:
        if name not in ("cifar10", "cifar100") or label_set is None:
            raise ValueError("read_split: cifar_n needs a CIFAR dataset and label_set (e.g. 'aggre', 'worst')")
        table = apply_cifar_n(table, cifar_n, label_set)
    if noise_file is not None:
        table = apply_noise_file(table, noise_file, key=noise_key)
    return table
