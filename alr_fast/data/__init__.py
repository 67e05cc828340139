"""Datasets: readers giving one record type (:class:`SampleTable`), loaders yielding (images, global index).

Light to import: the loaders (DALI, torchvision) and fixtures are loaded on first use of their names.
"""

from __future__ import annotations

import importlib

from alr_fast.data.records import UNKNOWN_LABEL, SampleTable

_LAZY = {
    "read_split": "readers", "DATASET_NAMES": "readers", "DATASET_SPLITS": "readers",
    "read_cifar": "cifar", "read_cifar_n": "cifar", "apply_cifar_n": "cifar", "apply_synthetic_noise": "cifar",
    "read_animal10n": "animal10n",
    "read_clothing1m": "clothing1m",
    "read_webvision": "webvision", "read_mini_webvision": "webvision", "read_ilsvrc_val": "webvision",
    "load_noise_file": "noise_files", "apply_noise_file": "noise_files",
    "ClassBalancedSubset": "sampling", "EpochPlan": "sampling",
    "TransformSpec": "transforms", "recipe_transform": "transforms",
    "DaliLoader": "dali", "dali_placement": "dali", "dali_available": "dali",
    "TorchLoader": "torch_loader",
    "make_fixture": "fixtures",
    "check_dataset": "check",
    "scan_images": "imagecheck",
    "build_loader": "factory",
    "reader_train_data": "train_data",
}

__all__ = ["SampleTable", "UNKNOWN_LABEL", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'alr_fast.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"alr_fast.data.{module}"), name)
    globals()[name] = value
    return value
