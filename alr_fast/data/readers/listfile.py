"""Annotation-file parsing shared by the readers: whitespace-only splitting, errors that name file and line.

Keys may contain commas (Clothing1M: ``images/2/26/3761328114,905362226.jpg``), so a line is split on
whitespace only, never on commas. Blank lines are skipped; their line numbers still count. Lines end at
``\n`` (a ``\r`` before it is dropped) and at nothing else, so line numbers are the ones editors show (a form
feed or U+2028 inside a line does not start a new one). Files are UTF-8 (a leading byte-order mark, as Windows
editors write, is accepted); a line that does not decode is an error naming the file and line. Labels are
ASCII decimal integers (``+3``, ``1_2``, ``٣`` or ``５`` are refused). A key listed twice is an error naming
both lines, whatever its labels (it would silently become two samples). A key longer than
:data:`MAX_KEY_CHARS` is an error (no file system has such paths).

Listed image paths are checked where every reader's table is built (:class:`records.SampleTable`): relative,
no ``..``, so no list file reaches outside the dataset root. :func:`resolve_keys` picks, among the layouts
users actually have, the image folder and key form under which the listed files exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["require_dir", "require_file", "read_keys", "read_key_labels", "read_lines", "read_text_lines",
           "resolve_keys"]

MAX_KEY_CHARS = 4096
"""Longest key accepted (PATH_MAX on Linux)."""

_LABEL = re.compile(r"-?[0-9]+")

PROBE_KEYS = 32
"""Listed keys probed (spread over the list) to find the layout under which the images exist."""


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


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (BOM dropped); a line that is not UTF-8 is an error naming file:line."""
    raw = Path(path).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {column}); save the "
                         "file as UTF-8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def show(text: str, n: int = 120) -> str:
    """``repr(text)``, cut to about ``n`` characters (a hostile line can be megabytes long)."""
    return repr(text) if len(text) <= n else f"{text[:n]!r}... ({len(text)} characters)"


def _check_key(path: Path, lineno: int, key: str, first: dict, label: int | None = None) -> None:
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(f"{path}:{lineno}: key of {len(key)} characters (at most {MAX_KEY_CHARS}): {show(key, 60)}")
    seen_label, seen = first.setdefault(key, (label, lineno))
    if seen_label != label:
        raise ValueError(f"{path}:{lineno}: key {show(key)} has label {label} here and {seen_label} at line {seen}")
    if seen != lineno:
        raise ValueError(f"{path}:{lineno}: key {show(key)} is listed twice (also at line {seen}); each sample "
                         "must be listed once")


def read_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, stripped text)`` of every non-blank line of a UTF-8 text file."""
    return [(n, s) for n, line in enumerate(read_text_lines(path), start=1) if (s := line.strip())]


def read_keys(path: Path) -> tuple[list[str], np.ndarray]:
    """A key list (one key per line): ``(keys, 1-based line numbers int32)``."""
    keys, lines = [], []
    first: dict[str, tuple] = {}
    for lineno, text in read_lines(path):
        parts = text.split()
        if len(parts) != 1:
            raise ValueError(f"{path}:{lineno}: expected one '<key>' per line, got {show(text)}")
        _check_key(path, lineno, parts[0], first)
        keys.append(parts[0])
        lines.append(lineno)
    return keys, np.asarray(lines, dtype=np.int32)


def read_key_labels(path: Path, num_classes: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A '<key> <label>' file: ``(keys, labels int64, 1-based line numbers int32)``; labels in [0, K)."""
    keys, labels, lines = [], [], []
    first: dict[str, tuple] = {}
    for lineno, text in read_lines(path):
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<key> <label>', got {show(text)}")
        key, label_text = parts
        if not _LABEL.fullmatch(label_text) or len(label_text) > 18:
            raise ValueError(f"{path}:{lineno}: label {show(label_text, 40)} is not an integer written with the "
                             f"digits 0-9 (line {show(text)})")
        label = int(label_text)
        if not 0 <= label < num_classes:
            raise ValueError(f"{path}:{lineno}: label {label} outside [0, {num_classes}) (line {show(text)})")
        _check_key(path, lineno, key, first, label)
        keys.append(key)
        labels.append(label)
        lines.append(lineno)
    return keys, np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int32)


def resolve_keys(keys: list[str], candidates: list[tuple[Path, str, str]]) -> tuple[Path, list[str], str]:
    """Pick how listed keys map to files: ``candidates`` are ``(image folder, prefix to strip, description)``
    in order of preference; the first under which most of up to :data:`PROBE_KEYS` probed keys exist wins.
    Returns ``(image folder, keys with that prefix stripped where present, description)``. When no probed
    file exists anywhere the first candidate whose folder exists is kept (``data check`` then lists the
    missing files)."""
    if not keys:
        return candidates[0][0], list(keys), candidates[0][2]
    probe = sorted(set(np.linspace(0, len(keys) - 1, num=min(PROBE_KEYS, len(keys))).round().astype(int).tolist()))

    def strip(key: str, prefix: str) -> str:
        return key[len(prefix):] if prefix and key.startswith(prefix) else key

    hits = [sum((folder / strip(keys[i], prefix)).is_file() for i in probe) for folder, prefix, _ in candidates]
    best = int(np.argmax(hits))
    if hits[best] == 0:
        best = next((j for j, (folder, _, _) in enumerate(candidates) if folder.is_dir()), 0)
    folder, prefix, how = candidates[best]
    if hits[best] < len(probe):
        how += f" ({hits[best]} of {len(probe)} probed images found)"
    return folder, [strip(k, prefix) for k in keys], how
