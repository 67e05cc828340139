"""Wrappers around a BatchSource (anything with ``epoch(epoch, start_step)`` yielding ``(images, index)``).

``ExcludeRows`` turns some global rows into padding in every train batch (the noisy validation slice);
``RemapRows`` maps a subset table's indices back to the full table's rows; ``subset_table`` builds such a
subset; ``noisy_val_rows`` draws the noisy validation slice; ``EvalSet`` describes one evaluation set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

__all__ = ["EvalSet", "ExcludeRows", "RemapRows", "fill_padding_rows", "noisy_val_rows", "subset_table"]


@dataclass
class EvalSet:
    """One evaluation set: ``source(batch_size)`` yields ``(images, index)`` and ``labels[index]`` is the label
    of a row (index -1 = padding)."""

    name: str
    role: str
    """'test' (reported, never used to select) or 'val' (may select the model)."""
    source: Callable[[int], object]
    labels: np.ndarray
    count: int
    """Rows the set holds (the accuracy's denominator)."""


def fill_padding_rows(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x`` with every row where ``valid`` is False replaced by a copy of a valid row of the same batch.

    Padding rows never reach the loss or the bank (their index is -1), but they do pass through the model, and
    BatchNorm's batch statistics would see a zero image as data. A copy of a real image of the batch moves the
    statistics far less. Device ops only (a stable sort of B flags and a gather): no host sync. A batch with no
    valid row is returned unchanged.
    """
    pos = torch.arange(valid.numel(), device=valid.device)
    first_valid = torch.argsort((~valid).to(torch.int8), stable=True)  # valid rows first, in batch order
    n_valid = valid.sum().clamp_min(1)
    src = torch.where(valid, pos, first_valid[pos % n_valid])
    return x[src.to(x.device)]


class ExcludeRows:
    """A train BatchSource with some global rows turned into padding (index -1) in every batch.

    Same steps per epoch on every rank (nothing is dropped), so data-parallel ranks stay in step. An excluded
    row's image is replaced by a copy of another training row of the batch (:func:`fill_padding_rows`), so the
    held-out image never reaches the model in training and BatchNorm sees no zero images."""

    def __init__(self, source, rows: np.ndarray, num_rows: int, device):
        self.source = source
        mask = torch.zeros(num_rows + 1, dtype=torch.bool)       # last slot: the padding index -1 maps there
        mask[torch.as_tensor(np.asarray(rows, dtype=np.int64))] = True
        self.mask = mask.to(device)
        self.num_rows = num_rows

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, start_step: int = 0):
        for x, idx in self.source.epoch(epoch, start_step=start_step):
            if self.mask.device != idx.device:  # loaders may yield indices on the host or the GPU
                self.mask = self.mask.to(idx.device)
            drop = self.mask[torch.where(idx >= 0, idx, self.num_rows)]       # on idx's device
            idx = torch.where(drop, -1, idx)
            yield fill_padding_rows(x, idx >= 0), idx


class RemapRows:
    """A BatchSource over a subset table whose indices 0..n-1 are mapped back to the full table's rows."""

    def __init__(self, source, rows: np.ndarray):
        self.source = source
        self.rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int, start_step: int = 0):
        rows = None
        for x, idx in self.source.epoch(epoch, start_step=start_step):
            if rows is None or rows.device != idx.device:
                rows = self.rows.to(idx.device)
            yield x, torch.where(idx >= 0, rows[idx.clamp_min(0)], -1)


class _KeepRows:
    """Fallback: a full-table BatchSource filtered to some rows (costs a pass over the whole table)."""

    def __init__(self, source, rows: np.ndarray, num_rows: int):
        self.source = source
        keep = torch.zeros(num_rows + 1, dtype=torch.bool)
        keep[torch.as_tensor(np.asarray(rows, dtype=np.int64))] = True
        self.keep, self.num_rows = keep, num_rows

    def epoch(self, epoch: int, start_step: int = 0):
        for x, idx in self.source.epoch(epoch, start_step=start_step):
            k = self.keep.to(idx.device)[torch.where(idx >= 0, idx, self.num_rows)]
            yield x[k], idx[k]


def subset_table(table, rows: np.ndarray):
    """A :class:`~alr_fast.data.readers.records.SampleTable` of ``table``'s rows ``rows`` (indices renumbered 0..n-1)."""
    rows = np.asarray(rows, dtype=np.int64)
    pick = lambda a: None if a is None else np.asarray(a)[rows]  # noqa: E731
    tar = None if table.tar is None else {
        **table.tar, "shard": pick(table.tar["shard"]), "offset": pick(table.tar["offset"]),
        "size": pick(table.tar["size"]), "starts": np.array([0, rows.size], dtype=np.int64)}
    return dataclasses.replace(
        table, labels=table.labels[rows], paths=None if table.paths is None else [table.paths[i] for i in rows],
        images=pick(table.images), clean_labels=pick(table.clean_labels), list_lines=pick(table.list_lines),
        noise_manifest=None, extra=dict(table.extra), tar=tar,
    )


def noisy_val_rows(given_labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted global rows of the noisy validation slice: ``round(fraction * n_c)`` rows of each given class c
    (at least one where the class has two or more rows), drawn with ``seed``."""
    given = np.asarray(given_labels, dtype=np.int64)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_fraction: must be in (0, 1) to hold out a slice, got {fraction}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(given):
        members = np.nonzero(given == c)[0]
        k = int(round(fraction * members.size))
        if k == 0 and members.size >= 2:
            k = 1
        k = min(k, members.size - 1)
        picked.append(rng.permutation(members)[:k])
    rows = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    if rows.size == 0:
        raise ValueError(f"data.val_fraction={fraction}: the slice of {given.size} rows is empty; raise it")
    return rows
