"""Annotation-file parsing shared by the readers: whitespace-only splitting, errors that name file and line.

Keys may contain commas (Clothing1M: ``images/2/26/3761328114,905362226.jpg``), so a line is split on
whitespace only, never on commas. Blank lines are skipped; their line numbers still count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["require_dir", "require_file", "read_keys", "read_key_labels", "read_lines"]


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: {what} not found (no such directory)")
    return path


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found (no such file)")
    return path


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of every non-blank line of a UTF-8 text file."""
    with open(path, encoding="utf-8") as f:
        return [(n, s) for n, line in enumerate(f, start=1) if (s := line.strip())]


def read_keys(path: Path) -> tuple[list[str], np.ndarray]:
    """A key list (one key per line): ``(keys, 1-based line numbers int32)``."""
    keys, lines = [], []
    for lineno, text in read_lines(path):
        parts = text.split()
        if len(parts) != 1:
            raise ValueError(f"{path}:{lineno}: expected one '<key>' per line, got {text!r}")
        keys.append(parts[0])
        lines.append(lineno)
    return keys, np.asarray(lines, dtype=np.int32)


def read_key_labels(path: Path, num_classes: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A '<key> <label>' file: ``(keys, labels int64, 1-based line numbers int32)``; labels in [0, K)."""
    keys, labels, lines = [], [], []
    for lineno, text in read_lines(path):
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<key> <label>', got {text!r}")
        key, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: label {label_text!r} is not an integer (line {text!r})") from None
        if not 0 <= label < num_classes:
            raise ValueError(f"{path}:{lineno}: label {label} outside [0, {num_classes}) (line {text!r})")
        keys.append(key)
        labels.append(label)
        lines.append(lineno)
    return keys, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int32)
