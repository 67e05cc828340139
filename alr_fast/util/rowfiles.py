"""Large [N, K] float32 row files written by several ranks and assembled in bounded memory; streamed CSVs.

Each writer (a rank) streams its rows to a raw part file (:class:`RowPart`: the rows' global indices beside a
headerless float32 file); :func:`assemble_rows` then writes the ``.npy`` one chunk of global rows at a time with
plain reads and writes (no ``mmap``), so memory grows by about two chunks, not by the file size. Used by the
trainer's exports (:mod:`alr_fast.train.exports`) and by :meth:`alr_fast.loss.alr.ALR.export`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from alr_fast.util.atomic import atomic_path

__all__ = ["CHUNK_BYTES", "RowPart", "assemble_rows", "iter_rows", "npy_layout", "chunk_rows", "write_csv"]

CHUNK_BYTES = 64 * 2**20
"""Rows of a probability file handled at once by the assembler and the CSV writers (64 MiB of float32)."""


@dataclass
class RowPart:
    """Rows of an [N, K] float32 file held by one writer: ``index[j]`` is the global row of the j-th row stored in
    the raw (headerless, C-order) float32 file ``path``."""

    index: np.ndarray
    path: Path

    def save(self) -> None:
        np.save(self.path.with_suffix(".index.npy"), self.index)

    @classmethod
    def load(cls, path: Path) -> "RowPart":
        return cls(np.load(path.with_suffix(".index.npy")), path)


def _read_raw_rows(f, k: int, start: int, count: int) -> np.ndarray:
    """Rows [start, start + count) of a raw float32 [*, k] file, read (not mapped)."""
    f.seek(start * k * 4)
    out = np.fromfile(f, dtype=np.float32, count=count * k)
    if out.size != count * k:
        raise ValueError(f"{f.name}: expected {count} rows of {k} float32 from row {start}, the file is short")
    return out.reshape(count, k)


def _runs(positions: np.ndarray) -> list[tuple[int, int, int]]:
    """Sorted positions -> (first position, count, offset into ``positions``) of each run of consecutive ones."""
    if positions.size == 0:
        return []
    breaks = np.nonzero(np.diff(positions) != 1)[0] + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [positions.size]])
    return [(int(positions[s]), int(e - s), int(s)) for s, e in zip(starts, ends)]


def _write_npy_header(f, shape: tuple[int, ...], dtype=np.float32) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a C-order ``.npy`` file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path}: Fortran-order arrays are not supported here")
        return tuple(shape), dtype, f.tell()


def chunk_rows(k: int, chunk_bytes: int, itemsize: int = 4) -> int:
    return max(1, chunk_bytes // max(1, k * itemsize))


def assemble_rows(out_path: Path, num_rows: int, k: int, parts: list[RowPart], *,
                  chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Write the float32 ``.npy`` [num_rows, k] whose rows come from ``parts``, one chunk of global rows at a
    time (rows no part holds are 0). Returns the bool [num_rows] mask of rows written. A row held by two parts
    is an error."""
    order = [np.argsort(p.index, kind="stable") for p in parts]
    sorted_idx = [p.index[o] for p, o in zip(parts, order)]
    for p, s in zip(parts, sorted_idx):
        if s.size and (s[0] < 0 or s[-1] >= num_rows):
            raise ValueError(f"{p.path}: global index outside [0, {num_rows})")
        if s.size > 1 and (np.diff(s) == 0).any():
            raise ValueError(f"{p.path}: a global index appears twice")
    filled = np.zeros(num_rows, dtype=bool)
    step = chunk_rows(k, chunk_bytes)
    files = [open(p.path, "rb") for p in parts]
    try:
        with open(out_path, "wb") as out:
            _write_npy_header(out, (num_rows, k))
            for a in range(0, num_rows, step):
                b = min(num_rows, a + step)
                buf = np.zeros((b - a, k), dtype=np.float32)
                for f, o, s in zip(files, order, sorted_idx):
                    lo, hi = np.searchsorted(s, [a, b])
                    if lo == hi:
                        continue
                    rows = s[lo:hi]
                    if filled[rows].any():
                        raise ValueError(f"rows of {out_path.name} held by two parts (first: {int(rows[filled[rows]][0])})")
                    filled[rows] = True
                    pos = o[lo:hi]
                    by_pos = np.argsort(pos, kind="stable")
                    for first, count, off in _runs(pos[by_pos]):
                        buf[rows[by_pos[off:off + count]] - a] = _read_raw_rows(f, k, first, count)
                out.write(buf.tobytes())
    finally:
        for f in files:
            f.close()
    return filled


def iter_rows(path: Path, *, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of a 2-D ``.npy`` in chunks of about ``chunk_bytes``, read without mapping the file."""
    shape, dtype, offset = npy_layout(path)
    n, k = shape
    step = chunk_rows(k, chunk_bytes, dtype.itemsize)
    with open(path, "rb") as f:
        for a in range(0, n, step):
            b = min(n, a + step)
            f.seek(offset + a * k * dtype.itemsize)
            yield a, np.fromfile(f, dtype=dtype, count=(b - a) * k).reshape(b - a, k)


def write_csv(path: Path, header: list[str], columns, n: int, extra=None, block: int = 65536) -> None:
    """A CSV of n rows written ``block`` rows at a time; ``columns(a, b)`` gives rows [a, b) as tuples."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header + (extra[0] if extra else []))
        for a in range(0, n, block):
            b = min(n, a + block)
            rows = columns(a, b)
            if extra:
                rows = [list(r) + list(e) for r, e in zip(rows, extra[1](a, b))]
            w.writerows(rows)
