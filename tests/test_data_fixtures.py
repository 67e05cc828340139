"""Shared fixture datasets for the tests/test_data_*.py modules (no tests here).

``fixture_root(name, ...)`` writes a dataset once per test session (real JPEGs cut from scikit-learn's two
sample photos) and returns its root; tests that damage files copy it first with ``fresh_copy``.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast.data.loaders.dali import dali_available
from alr_fast.data.tools.fixtures import make_fixture

needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
"""Mark a test that runs a DALI pipeline (only those: the torchvision tests run without DALI)."""
BACKENDS = [pytest.param("dali", marks=needs_dali), "torch"]
"""The loader backends, for ``pytest.mark.parametrize("backend", BACKENDS)``."""

_BASE = Path(tempfile.mkdtemp(prefix="alr_fast_data_fixtures_"))
atexit.register(shutil.rmtree, _BASE, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def fixture_root(name: str, layout: str = "a", seed: int = 0, num_train: int | None = None,
                 image_size: tuple[int, int] | None = None) -> Path:
    out = _BASE / f"{name}-{layout}-{seed}-{num_train}-{image_size}"
    return make_fixture(name, out, seed=seed, layout=layout, num_train=num_train, image_size=image_size)


def fresh_copy(name: str, dest: Path, **kwargs) -> Path:
    """A private copy of a fixture (for tests that break files)."""
    return Path(shutil.copytree(fixture_root(name, **kwargs), dest / name))


def collect(loader, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """All batches of one epoch: (images, indices, batch sizes)."""
    xs, ids, sizes = [], [], []
    for x, idx in loader.epoch(epoch):
        assert x.shape[0] == idx.shape[0]
        assert idx.dtype == torch.int64
        xs.append(x)
        ids.append(idx)
        sizes.append(int(idx.shape[0]))
    return torch.cat(xs), torch.cat(ids), sizes


def pil_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
