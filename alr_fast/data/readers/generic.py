"""The user's own data: an ImageFolder tree or a manifest file (CSV, TSV, JSON Lines), as a :class:`SampleTable`.

**ImageFolder** (``imagefolder``): ``ROOT/<class>/**/<image>`` (torchvision's convention), or the same under
split folders ``ROOT/train/``, ``ROOT/val/``, ``ROOT/test/`` (the split layout is chosen when ``ROOT/train/`` is
a folder). Class names are the class folders' names, sorted by code point (in the split layout: those of
``train/``; a class folder of ``val/`` or ``test/`` that ``train/`` lacks is an error). An image is any file
whose extension is one of :data:`IMAGE_EXTENSIONS`, in any case, at any depth below its class folder.

*Global index* = the position of the image's POSIX path relative to the split folder (``cat/a/001.jpg``)
in code-point order of the path string (Python's ``sorted``; the same on every machine and file system, unlike
directory-listing order). Nothing else (modification times, inode order) enters it.

What the walk does with what real trees contain (``extra['skipped']`` counts each kind and names up to
:data:`MAX_EXAMPLES` of them; ``data check`` prints them): hidden entries (a name starting with ``.``, e.g.
``.DS_Store``, ``.ipynb_checkpoints/``) are skipped and counted; files with another extension are skipped and
counted (``non_image``); files directly in the split folder, outside any class folder, are skipped and
counted (``outside_class_folder``); a class folder without images is kept as a class (its index stays the
same) and listed in ``extra['empty_classes']``; a symlink (file or folder) whose target lies inside the root
is followed, one whose target lies outside is an error naming it; a folder reached twice (a symlink loop, or a
second link to a folder already walked, the first by name order) is walked once and counted
(``folder_seen_twice``); a file name that is not valid UTF-8 is an error naming it (its
bytes shown); names with spaces, commas or any Unicode character are kept as they are. A broken symlink with
an image extension stays in the table: ``data check`` reports it as unreadable, ``data.skip_unreadable`` skips it.

**Manifest** (``manifest``): ``ROOT/manifest.csv``, ``manifest.tsv`` or ``manifest.jsonl`` (or the file named by
``data.manifest``), one sample per row: ``path`` (relative to ``ROOT``) and ``label``, optionally
``clean_label`` and ``split`` (``train``, ``val`` or ``test``; without the column every row is ``train``). CSV
and TSV need a header row naming the columns (other columns are ignored and reported); CSV quoting is the
``csv`` module's, so a path with commas is written ``"a,b.jpg"``. JSON Lines: one object per line.

Labels are integer class ids or class names. With ``ROOT/class_names.json`` (a JSON list of names) both
forms are accepted and a label that is not a known class is an error naming file:line. Without it, all-integer
labels give ``num_classes = max + 1`` (names ``'0'``, ``'1'``, ...) and name labels build the class map: the
sorted distinct names over every row and split (label and clean_label), the same for every split; the trainer
writes it to the run's ``class_names.json``. A label column mixing integers and names without a class file
is an error. *Global index* = position among the split's rows in file order. The same path listed twice with
different labels is an error naming both lines; with the same label it is kept (two rows) and counted
(``extra['duplicate_paths']``).

Both forms confine image paths to the root where the table is built (:class:`SampleTable`'s check, shared
by every reader: no absolute path, no ``..``, no symlink leading out of the root, naming file:line), and
again by real path where a file is opened (:meth:`SampleTable.open_path`).
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from alr_fast.data.readers.listfile import read_text_lines, require_dir, require_file
from alr_fast.data.readers.records import UNKNOWN_LABEL, SampleTable

__all__ = ["IMAGE_EXTENSIONS", "SPLIT_NAMES", "read_imagefolder", "read_manifest", "find_manifest",
           "imagefolder_splits", "manifest_splits", "MANIFEST_NAMES", "CLASS_NAMES_FILE"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
"""File extensions taken as images (compared in lower case)."""
SPLIT_NAMES = ("train", "val", "test")
MANIFEST_NAMES = ("manifest.csv", "manifest.tsv", "manifest.jsonl")
CLASS_NAMES_FILE = "class_names.json"
MAX_EXAMPLES = 5
"""Examples kept per kind of skipped entry (the count is always complete)."""


def _check_utf8(path: str) -> None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raw = os.fsencode(path)
        raise ValueError(f"{raw!r}: file name is not valid UTF-8 (bytes shown); rename it (e.g. `convmv -f latin1 "
                         "-t utf8`): names are written to CSV/JSON exports") from None


class _Walk:
    """One split folder's walk: image paths relative to it, and what was skipped."""

    def __init__(self, root_real: str):
        self.root_real = root_real
        self.paths: list[str] = []
        self.skipped: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self.seen_dirs: set[tuple[int, int]] = set()
        """(device, inode) of every folder walked: a symlink loop is walked once."""

    def skip(self, kind: str, path: str) -> None:
        self.skipped[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(path)

    def _inside(self, entry_path: str) -> str:
        real = os.path.realpath(entry_path)
        if real != self.root_real and not real.startswith(self.root_real + os.sep):
            raise ValueError(f"{entry_path}: symlink to {real}, outside the dataset root {self.root_real}; "
                             "images must lie under the root (link the root itself to move the data)")
        return real

    def walk(self, folder: str, rel: str) -> int:
        """Add the images under ``folder`` (``rel`` = its path relative to the split folder); returns how many."""
        found = 0
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)  # which of two links to one folder is walked: by name
        for entry in entries:
            name = entry.name
            _check_utf8(entry.path)
            if name.startswith("."):
                self.skip("hidden", entry.path)
                continue
            link = entry.is_symlink()
            if entry.is_dir():  # follows symlinks
                if link:
                    self._inside(entry.path)
                st = entry.stat()
                if (st.st_dev, st.st_ino) in self.seen_dirs:  # a symlink back to a folder already walked
                    self.skip("folder_seen_twice", entry.path)
                    continue
                self.seen_dirs.add((st.st_dev, st.st_ino))
                found += self.walk(entry.path, f"{rel}/{name}")
                continue
            if link:
                self._inside(entry.path)
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                self.paths.append(f"{rel}/{name}")
                found += 1
            else:
                self.skip("non_image", entry.path)
        return found


def imagefolder_splits(root: str | Path) -> tuple[str, ...]:
    """The splits an ImageFolder root has: ('train', 'val', 'test') as present, or ('train',) without split
    folders (the whole tree is the train split)."""
    root = require_dir(Path(root), "imagefolder root")
    if (root / "train").is_dir():
        return tuple(s for s in SPLIT_NAMES if (root / s).is_dir())
    return ("train",)


def _class_dirs(folder: Path, walk: _Walk) -> list[str]:
    names = []
    with os.scandir(folder) as it:
        for entry in it:
            _check_utf8(entry.path)
            if entry.name.startswith("."):
                walk.skip("hidden", entry.path)
            elif entry.is_dir():
                if entry.is_symlink():
                    walk._inside(entry.path)
                names.append(entry.name)
            else:
                walk.skip("outside_class_folder", entry.path)
    return sorted(names)


def read_imagefolder(root: str | Path, split: str = "train") -> SampleTable:
    """Split ``split`` of an ImageFolder tree (module docstring)."""
    root = Path(root)
    splits = imagefolder_splits(root)
    if split not in splits:
        layout = "split folders " + "/, ".join(splits) + "/" if (root / "train").is_dir() else "no split folders"
        raise FileNotFoundError(f"{root / split}: imagefolder split {split!r} not found ({layout} under {root}; "
                                "without split folders the whole tree is the train split)")
    split_layout = (root / "train").is_dir()
    if split_layout:
        extra_dirs = sorted(e.name for e in os.scandir(root)
                            if e.is_dir() and e.name not in SPLIT_NAMES and not e.name.startswith("."))
        if extra_dirs:
            raise ValueError(f"{root / extra_dirs[0]}: folder beside train/ in an imagefolder root; with split "
                             f"folders every class folder goes inside train/, val/ or test/ (found {extra_dirs})")
    folder = root / split if split_layout else root
    root_real = os.path.realpath(root)
    walk = _Walk(root_real)
    class_folder = root / "train" if split_layout else root
    classes = _class_dirs(class_folder, walk if folder == class_folder else _Walk(root_real))
    if not classes:
        raise ValueError(f"{class_folder}: no class folders (expected ROOT/<class>/<image>, or "
                         "ROOT/train/<class>/<image>)")
    present = classes if folder == class_folder else _class_dirs(folder, walk)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"{folder / unknown[0]}: class folder {unknown[0]!r} of split {split!r} is not a class of "
                         f"{root / 'train'} (classes: {classes[:10]}{' ...' if len(classes) > 10 else ''})")
    empty = []
    for name in present:
        st = os.stat(folder / name)
        walk.seen_dirs.add((st.st_dev, st.st_ino))
        if walk.walk(str(folder / name), name) == 0:
            empty.append(name)
    if split_layout and split != "train":
        empty += [c for c in classes if c not in present]
    paths = sorted(walk.paths)
    index = {c: i for i, c in enumerate(classes)}
    labels = np.fromiter((index[p.partition("/")[0]] for p in paths), dtype=np.int64, count=len(paths))
    if not paths:
        raise ValueError(f"{folder}: split {split!r} has no images (extensions {sorted(IMAGE_EXTENSIONS)}, any case)")
    extra = {"layout": "split folders (train/ val/ test/)" if split_layout else "class folders in the root",
             "image_root": str(folder), "index_order": "code-point order of the relative POSIX path",
             "skipped": dict(walk.skipped), "skipped_examples": walk.examples, "empty_classes": sorted(empty)}
    return SampleTable(name="imagefolder", split=split, root=root, labels=labels, class_names=classes, paths=paths,
                       image_root=folder, label_source=f"class folders of {folder}", extra=extra, confined=True)


# ------------------------------------------------------------------------------------------------ manifest
def find_manifest(root: str | Path, manifest: str | Path | None = None) -> Path:
    """The manifest file: ``manifest`` (absolute, or relative to ``root``), else the one of
    :data:`MANIFEST_NAMES` in ``root``."""
    root = require_dir(Path(root), "manifest dataset root")
    if manifest:
        path = Path(manifest)
        return require_file(path if path.is_absolute() else root / path, "manifest file (data.manifest)")
    found = [root / n for n in MANIFEST_NAMES if (root / n).is_file()]
    if len(found) != 1:
        what = "none" if not found else ", ".join(p.name for p in found)
        raise FileNotFoundError(f"{root}: expected exactly one of {', '.join(MANIFEST_NAMES)} (found {what}); or "
                                "name the file with data.manifest")
    return found[0]


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise ValueError(f"{path}: manifest format from the extension: .csv, .tsv or .jsonl, got {suffix!r}")


_CACHE: dict = {}


def _parse_manifest(path: Path) -> dict:
    """Every row of the manifest: columns as lists, line numbers, and the ignored columns. Cached per
    (path, size, mtime, and those of the class file) so reading several splits parses the file once."""
    st = path.stat()
    names = path.parent / CLASS_NAMES_FILE
    nst = names.stat() if names.is_file() else None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, nst and (nst.st_size, nst.st_mtime_ns))
    if key in _CACHE:
        return _CACHE[key]
    fmt = _format(path)
    cols: dict[str, list] = {"path": [], "label": [], "clean_label": [], "split": []}
    lines: list[int] = []
    ignored: set[str] = set()
    if fmt in ("csv", "tsv"):
        text = read_text_lines(path)
        sep = "," if fmt == "csv" else "\t"
        reader = csv.reader(text, delimiter=sep)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty manifest (no header row)")
        header = [h.strip() for h in header]
        for need in ("path", "label"):
            if need not in header:
                raise ValueError(f"{path}:1: header {header} has no {need!r} column (need path,label; optional "
                                 "clean_label, split)")
        pos = {c: header.index(c) for c in cols if c in header}
        ignored = set(header) - set(cols)
        width = len(header)
        body = text[1:]
        if not any('"' in t for t in body) and all(t.strip() for t in body):
            # Fast path (no quoting, no blank line): one split per line, straight into the columns.
            take = [(cols[c], pos[c]) for c in cols if c in pos]
            for n, t in enumerate(body):
                f = t.split(sep)
                if len(f) != width:
                    raise ValueError(f"{path}:{n + 2}: {len(f)} fields, header has {width} ({header}); quote a path "
                                     'containing the delimiter ("a,b.jpg")')
                for out, k in take:
                    out.append(f[k].strip())
            for c in cols:
                if c not in pos:
                    cols[c] = [""] * len(body)
            lines = list(range(2, len(body) + 2))
        else:
            for row in reader:
                lineno = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != width:
                    raise ValueError(f"{path}:{lineno}: {len(row)} fields, header has {width} ({header}); quote a "
                                     'path containing the delimiter ("a,b.jpg")')
                for c in cols:
                    cols[c].append(row[pos[c]].strip() if c in pos else "")
                lines.append(lineno)
    else:
        for lineno, line in enumerate(read_text_lines(path), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
            if not isinstance(obj, dict) or "path" not in obj or "label" not in obj:
                raise ValueError(f"{path}:{lineno}: expected an object with 'path' and 'label', got {line.strip()[:80]!r}")
            if not isinstance(obj["path"], str):
                raise ValueError(f"{path}:{lineno}: 'path' must be a string, got {obj['path']!r}")
            for c in cols:
                v = obj.get(c)
                if isinstance(v, bool) or (v is not None and not isinstance(v, (str, int))):
                    raise ValueError(f"{path}:{lineno}: {c!r} must be a string or an integer, got {v!r}")
                cols[c].append("" if v is None else str(v).strip())
            ignored |= set(obj) - set(cols)
            lines.append(lineno)
    if not lines:
        raise ValueError(f"{path}: empty manifest (no rows)")
    parsed = {"cols": cols, "lines": np.asarray(lines, dtype=np.int32), "ignored": sorted(ignored), "format": fmt}
    parsed.update(_class_map(path, parsed))
    _CACHE.clear()
    _CACHE[key] = parsed
    return parsed


def _is_int(s: str) -> bool:
    return s.isdigit() and s.isascii()


def _class_map(path: Path, parsed: dict) -> dict:
    """``{'class_names', 'class_names_from', 'labels', 'clean'}``: the class list and every row's ids."""
    cols, lines = parsed["cols"], parsed["lines"]
    names_file = path.parent / CLASS_NAMES_FILE
    labels_text, clean_text = cols["label"], cols["clean_label"]
    for i, s in enumerate(labels_text):
        if not s:
            raise ValueError(f"{path}:{lines[i]}: empty label (row {cols['path'][i]!r})")
    if names_file.is_file():
        try:
            names = json.loads(names_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{names_file}: not a JSON list of class names ({e})") from None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{names_file}: expected a non-empty JSON list of class-name strings")
        if len(set(names)) != len(names):
            raise ValueError(f"{names_file}: class names repeat")
        source = str(names_file)
    else:
        every = labels_text + [s for s in clean_text if s]
        ints = list(map(_is_int, every))
        if all(ints):
            names = [str(i) for i in range(max(int(s) for s in every) + 1)]
            source = "integer labels (num_classes = largest label + 1)"
        elif any(ints):
            i = ints.index(True) if not ints[0] else ints.index(False)
            raise ValueError(f"{path}: labels mix integers and class names (e.g. {every[0]!r} and {every[i]!r}); "
                             f"use one form, or give {names_file} (a JSON list of the class names)")
        else:
            names = sorted(set(every))
            source = f"built from the manifest's label names (sorted); write it as {CLASS_NAMES_FILE} to fix it"
    index = {n: i for i, n in enumerate(names)}
    k = len(names)

    def ids(texts: list[str], column: str, allow_empty: bool) -> np.ndarray:
        fast = np.fromiter((index.get(s, -2) for s in texts), dtype=np.int64, count=len(texts))
        if not (fast == -2).any():
            return fast
        out = np.empty(len(texts), dtype=np.int64)
        for i, s in enumerate(texts):
            if not s and allow_empty:
                out[i] = UNKNOWN_LABEL
                continue
            j = index.get(s)
            if j is None and _is_int(s):
                j = int(s)
                if j >= k:
                    raise ValueError(f"{path}:{lines[i]}: {column} {j} outside [0, {k}) (classes from {source})")
            if j is None:
                raise ValueError(f"{path}:{lines[i]}: {column} {s!r} is not a known class (classes from {source}: "
                                 f"{names[:10]}{' ...' if k > 10 else ''})")
            out[i] = j
        return out

    return {"class_names": names, "class_names_from": source, "labels": ids(labels_text, "label", False),
            "clean": ids(clean_text, "clean_label", True)}


def manifest_splits(root: str | Path, manifest: str | Path | None = None) -> tuple[str, ...]:
    """The splits the manifest's rows name, in ('train', 'val', 'test') order."""
    parsed = _parse_manifest(find_manifest(root, manifest))
    present = set(parsed["cols"]["split"]) or {"train"}
    return tuple(s for s in SPLIT_NAMES if s in present or (s == "train" and "" in present))


def read_manifest(root: str | Path, split: str = "train", *, manifest: str | Path | None = None) -> SampleTable:
    """Split ``split`` of a manifest dataset (module docstring)."""
    root = Path(root)
    path = find_manifest(root, manifest)
    parsed = _parse_manifest(path)
    cols, lines = parsed["cols"], parsed["lines"]
    splits = np.array([s or "train" for s in cols["split"]], dtype=object)
    bad = [i for i, s in enumerate(splits) if s not in SPLIT_NAMES]
    if bad:
        raise ValueError(f"{path}:{lines[bad[0]]}: split {splits[bad[0]]!r} must be one of {SPLIT_NAMES}")
    if split not in SPLIT_NAMES:
        raise ValueError(f"read_manifest: split must be one of {SPLIT_NAMES}, got {split!r}")
    rows = np.nonzero(splits == split)[0]
    if rows.size == 0:
        raise FileNotFoundError(f"{path}: no rows of split {split!r} (splits present: {sorted(set(splits))})")
    # Duplicate paths: different labels are an error naming both lines; the same label is kept and counted.
    first: dict[str, int] = {}
    dup = 0
    all_paths, all_labels = cols["path"], parsed["labels"]
    unique = len(set(all_paths)) == len(all_paths) and "" not in all_paths  # fast path: nothing to report
    for i, p in enumerate([] if unique else all_paths):
        if not p:
            raise ValueError(f"{path}:{lines[i]}: empty path")
        j = first.setdefault(p, i)
        if j != i:
            if all_labels[j] != all_labels[i]:
                raise ValueError(f"{path}:{lines[i]}: path {p!r} has label {all_labels[i]} here and {all_labels[j]} "
                                 f"at line {lines[j]}")
            dup += 1
    if parsed["format"] == "jsonl":
        _check_utf8_paths(path, lines, all_paths)
    paths = [all_paths[i].replace("\\", "/") if os.sep == "\\" else all_paths[i] for i in rows.tolist()]
    clean = parsed["clean"][rows]
    extra = {"manifest": str(path), "format": parsed["format"], "class_names_from": parsed["class_names_from"],
             "duplicate_paths": dup, "ignored_columns": parsed["ignored"], "rows_in_manifest": len(all_paths),
             "index_order": "position among the split's rows, in file order"}
    return SampleTable(name="manifest", split=split, root=root, labels=parsed["labels"][rows],
                       class_names=list(parsed["class_names"]), paths=paths, image_root=root,
                       clean_labels=clean if (clean >= 0).any() else None, list_file=path, list_lines=lines[rows],
                       label_source=str(path), extra=extra, confined=True)


def _check_utf8_paths(path: Path, lines: np.ndarray, paths: list[str]) -> None:
    # The manifest was decoded as UTF-8, so its strings are valid; a lone surrogate can only come from a
    # JSON escape (\ud800): refuse it, naming the line.
    for i, p in enumerate(paths):
        if not p.isascii():
            try:
                p.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{path}:{lines[i]}: path {p!r} is not valid Unicode") from None
