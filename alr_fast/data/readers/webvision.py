"""WebVision 1.0, mini-WebVision, and ILSVRC-2012 val for the same classes.

Layout: ``info/train_filelist_{google,flickr,all}.txt`` and ``info/val_filelist.txt`` ("<path> <label>" lines);
train paths are relative to the root (``google/q0001/000000.jpg``), val images live in ``val_images_256/`` (the
resized release), ``val_images/`` (full size), or the list names the folder: the first under which the listed
files exist is used and reported (``extra['image_paths']``).
Class names come from ``info/synsets.txt`` when present ("<wnid> <words>" per line), else ``class_<i>``.

* ``webvision``: split ``train`` (``source`` = 'google', 'flickr' or 'all') and ``val``; 1,000 classes.
* ``mini-webvision``: the Google list's lines with label < 50, and the val lines with label < 50.
* ILSVRC-2012 val (:func:`read_ilsvrc_val`): an explicit "<file> <label>" list (labels in the same 1,000-class
  order), restricted to label < ``num_classes``; the image folder is given separately because the three
  layouts in the wild differ.

Global index = position among the kept lines of the chosen list, in file order.
"""

from __future__ import annotations

from pathlib import Path

from alr_fast.data.readers.listfile import read_key_labels, read_lines, require_dir, require_file, resolve_keys
from alr_fast.data.readers.records import SampleTable

__all__ = ["read_webvision", "read_mini_webvision", "read_ilsvrc_val", "WEBVISION_CLASSES", "MINI_CLASSES",
           "WEBVISION_SOURCES"]

WEBVISION_CLASSES = 1000
MINI_CLASSES = 50
WEBVISION_SOURCES = ("google", "flickr", "all")


def _class_names(root: Path, k: int) -> list[str]:
    path = root / "info" / "synsets.txt"
    if not path.is_file():
        return [f"class_{i}" for i in range(k)]
    names = [text for _, text in read_lines(path)]
    if len(names) < k:
        raise ValueError(f"{path}: {len(names)} class names, expected at least {k}")
    return names[:k]


def _read_list(list_path: Path, image_roots: list[tuple[Path, str, str]], *, name: str, split: str, root: Path,
               num_classes: int, keep_below: int, class_names: list[str]) -> SampleTable:
    # Labels are validated against the full 1,000-class space, then restricted to label < keep_below.
    paths, labels, lines = read_key_labels(list_path, num_classes)
    keep = labels < keep_below
    if not keep.any():
        raise ValueError(f"{list_path}: split {split!r} is empty (no lines with label < {keep_below})")
    kept_paths = [p for p, k in zip(paths, keep.tolist()) if k]
    image_root, kept_paths, how = resolve_keys(kept_paths, image_roots)
    labels = labels[keep]
    return SampleTable(
        name=name, split=split, root=root, labels=labels, class_names=class_names, paths=kept_paths,
        image_root=image_root, list_file=list_path, list_lines=lines[keep], label_source=str(list_path),
        extra={"lines_in_list": int(keep.size), "lines_kept": int(keep.sum()), "image_paths": how},
    )


def read_webvision(root: str | Path, split: str = "train", *, source: str = "google") -> SampleTable:
    """WebVision 1.0 ``split`` ('train' from the ``source`` list, or 'val'), 1,000 classes."""
    return _read(Path(root), split, source=source, name="webvision", keep_below=WEBVISION_CLASSES)


def read_mini_webvision(root: str | Path, split: str = "train") -> SampleTable:
    """mini-WebVision: Google train lines / val lines with label < 50."""
    return _read(Path(root), split, source="google", name="mini-webvision", keep_below=MINI_CLASSES)


def _read(root: Path, split: str, *, source: str, name: str, keep_below: int) -> SampleTable:
    if split not in ("train", "val"):
        raise ValueError(f"read_{name.replace('-', '_')}: split must be 'train' or 'val', got {split!r}")
    if source not in WEBVISION_SOURCES:
        raise ValueError(f"read_webvision: source must be one of {WEBVISION_SOURCES}, got {source!r}")
    root = require_dir(root, f"{name} root")
    info = require_dir(root / "info", f"{name} info folder")
    if split == "train":
        list_path = require_file(info / f"train_filelist_{source}.txt", f"{name} {source} train list")
        image_roots = [(root, "", f"relative to the root ({root})")]
    else:
        # The resized release has val_images_256/, the full-size one val_images/; some lists name the folder.
        list_path = require_file(info / "val_filelist.txt", f"{name} val list")
        image_roots = [(root / folder, "", f"under {folder}/") for folder in ("val_images_256", "val_images")]
        image_roots.append((root, "", f"relative to the root ({root})"))
    table = _read_list(list_path, image_roots, name=name, split=split, root=root, num_classes=WEBVISION_CLASSES,
                       keep_below=keep_below, class_names=_class_names(root, keep_below))
    if split == "train":
        table.extra["source"] = source
    else:
        # WebVision's val labels were checked by hand: treat them as clean.
        table.clean_labels = table.labels.copy()
    return table


def read_ilsvrc_val(list_file: str | Path, image_root: str | Path, *, num_classes: int = MINI_CLASSES,
                    class_names: list[str] | None = None) -> SampleTable:
    """ILSVRC-2012 val images of classes < ``num_classes`` from a "<file> <label>" list (clean labels)."""
    list_file = require_file(Path(list_file), "ILSVRC-2012 val list")
    image_root = require_dir(Path(image_root), "ILSVRC-2012 val image folder")
    names = class_names or [f"class_{i}" for i in range(num_classes)]
    table = _read_list(list_file, [(image_root, "", f"under {image_root}")], name="ilsvrc2012", split="val", root=image_root,
                       num_classes=WEBVISION_CLASSES, keep_below=num_classes, class_names=names)
    table.clean_labels = table.labels.copy()
    return table
