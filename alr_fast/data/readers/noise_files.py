"""Import noisy labels made by other codebases, addressed by global index.

Accepted formats (chosen by suffix):

* ``.json``: a list of N labels (position = global index), or an object whose ``key`` holds such a list;
* ``.npy``: an integer array [N] (loaded with ``allow_pickle=False``);
* ``.npz``: the integer array [N] under ``key`` (optional when the archive holds exactly one array);
* ``.csv`` / ``.txt``: a header ``global_index,label`` then one row per sample in any order (each index exactly
  once); or, without a header, rows ``<global_index>,<label>``, or one ``<label>`` per row in index order.

Every format is checked: exactly N labels, integers in [0, K), UTF-8 text. Errors name the file and the line
(CSV/text, JSON syntax) or the global index (JSON list, arrays).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from alr_fast.data.readers.listfile import read_text_lines
from alr_fast.data.readers.records import SampleTable

__all__ = ["load_noise_file", "apply_noise_file", "NOISE_FILE_SUFFIXES"]

NOISE_FILE_SUFFIXES = (".json", ".npy", ".npz", ".csv", ".txt")


def _check(labels: np.ndarray, path: Path, num_samples: int, num_classes: int) -> np.ndarray:
    if labels.ndim != 1:
        raise ValueError(f"{path}: expected a 1-D list of labels, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        whole = np.issubdtype(labels.dtype, np.floating) and np.all(np.isfinite(labels))
        if whole and np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    if labels.size != num_samples:
        raise ValueError(f"{path}: {labels.size} labels, but the split has {num_samples} samples")
    bad = np.nonzero((labels < 0) | (labels >= num_classes))[0]
    if bad.size:
        raise ValueError(f"{path}: label {labels[bad[0]]} at global index {bad[0]} outside [0, {num_classes})")
    return labels.astype(np.int64)


def _int(text: str, path: Path, lineno: int, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} {text!r} is not an integer") from None


def _label(text: str, path: Path, lineno: int, num_classes: int) -> int:
    label = _int(text, path, lineno, "label")
    if not 0 <= label < num_classes:
        raise ValueError(f"{path}:{lineno}: label {label} outside [0, {num_classes})")
    return label


def _read_csv(path: Path, num_samples: int, num_classes: int) -> np.ndarray:
    rows = [(n, row) for n, row in enumerate(csv.reader(read_text_lines(path)), start=1)
            if row and any(c.strip() for c in row)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    header = [c.strip().lower() for c in rows[0][1]]
    if not header[0].lstrip("-").isdigit():
        if "global_index" not in header or "label" not in header:
            raise ValueError(f"{path}:{rows[0][0]}: header must name 'global_index' and 'label', got {rows[0][1]!r}")
        ci, cl = header.index("global_index"), header.index("label")
        rows = rows[1:]
    else:
        ncol = len(rows[0][1])
        if ncol == 1:
            return np.array([_label(row[0], path, n, num_classes) for n, row in rows], dtype=np.int64)
        if ncol != 2:
            raise ValueError(f"{path}:{rows[0][0]}: expected '<global_index>,<label>' or '<label>', got {rows[0][1]!r}")
        ci, cl = 0, 1
    labels = np.full(num_samples, -1, dtype=np.int64)
    seen_at = np.zeros(num_samples, dtype=np.int64)
    for n, row in rows:
        if len(row) <= max(ci, cl):
            raise ValueError(f"{path}:{n}: expected {max(ci, cl) + 1} columns, got {row!r}")
        i = _int(row[ci], path, n, "global_index")
        if not 0 <= i < num_samples:
            raise ValueError(f"{path}:{n}: global_index {i} outside [0, {num_samples})")
        if seen_at[i]:
            raise ValueError(f"{path}:{n}: global_index {i} listed twice (first at line {seen_at[i]})")
        seen_at[i] = n
        labels[i] = _label(row[cl], path, n, num_classes)
    missing = np.nonzero(seen_at == 0)[0]
    if missing.size:
        raise ValueError(f"{path}: {missing.size} of {num_samples} global indices have no row (first: {missing[0]})")
    return labels


def load_noise_file(path: str | Path, *, num_samples: int, num_classes: int, key: str | None = None) -> np.ndarray:
    """int64 [num_samples] labels from a noise file (see the module docstring for formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: noise file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads("\n".join(read_text_lines(path)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if isinstance(data, dict):
            if key is None or key not in data:
                raise ValueError(f"{path}: a JSON object needs key= naming its label list (keys: {sorted(data)})")
            data = data[key]
        if not isinstance(data, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in data):
            raise ValueError(f"{path}: expected a JSON list of integer labels")
        labels = np.asarray(data, dtype=np.int64)
    elif suffix == ".npy":
        labels = np.load(path, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if key is None:
                if len(names) != 1:
                    raise ValueError(f"{path}: holds arrays {names}; pass key= to choose one")
                key = names[0]
            if key not in names:
                raise ValueError(f"{path}: no array {key!r} (has {names})")
            labels = z[key]
    elif suffix in (".csv", ".txt"):
        labels = _read_csv(path, num_samples, num_classes)
    else:
        raise ValueError(f"{path}: unknown noise-file type {suffix!r}; use one of {NOISE_FILE_SUFFIXES}")
    return _check(np.asarray(labels), path, num_samples, num_classes)


def apply_noise_file(table: SampleTable, path: str | Path, *, key: str | None = None) -> SampleTable:
    """The table with its given labels replaced by a noise file's (clean labels kept)."""
    labels = load_noise_file(path, num_samples=len(table), num_classes=table.num_classes, key=key)
    return table.with_labels(labels, source=str(path))
