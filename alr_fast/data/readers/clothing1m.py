"""Clothing1M: 14 classes, 1M noisy training images, clean val/test; every on-disk layout found in the wild.

* layout ``a``: one folder with the annotation ``.txt`` files and the image folders ``0..9`` (the keys'
  ``images/`` prefix stripped, as some loaders expect);
* layout ``b``: ``annotations/*.txt`` and ``images/...`` under the root;
* layout ``c``: the release archives extracted into one folder: the ``.txt`` files and ``images/0..9/...`` in
  the root (keys resolve exactly as written).

The annotations are looked for in ``annotations/``, then in the root; the images by trying each key as written
(relative to the root), then without its ``images/`` prefix (then under ``images/`` for a key list that has no
prefix). The first of these under which the listed files exist is used; which one is reported in the table's
``extra`` (``layout``, ``image_keys``), hence by ``data check``.

Annotation files: ``category_names_eng.txt``, ``noisy_label_kv.txt`` and ``clean_label_kv.txt``
("<key> <label>" lines), ``noisy_train_key_list.txt``, ``clean_train_key_list.txt``,
``clean_val_key_list.txt``, ``clean_test_key_list.txt``. Keys such as ``images/2/26/3761328114,905362226.jpg``
contain commas: lines are split on whitespace only. Sizes are counted at load time, never assumed.

Splits: ``train`` = the noisy training images in ``noisy_train_key_list.txt`` order (its global index), noisy
labels, and clean labels where ``clean_label_kv.txt`` has the key (-1 elsewhere); ``clean-train``, ``val`` and
``test`` = the clean key lists with clean labels. Per-epoch class-balanced subsets of ``train`` are drawn by
:class:`alr_fast.data.loaders.plan.ClassBalancedSubset`, so one bank over all rows serves every epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alr_fast.data.readers.listfile import (
    read_key_labels,
    read_keys,
    read_lines,
    require_dir,
    require_file,
    resolve_keys,
)
from alr_fast.data.readers.records import UNKNOWN_LABEL, SampleTable

__all__ = ["read_clothing1m", "CLOTHING1M_CLASSES", "CLOTHING1M_STATS", "CLOTHING1M_SPLITS", "clothing1m_annotations",
           "clothing1m_images"]

CLOTHING1M_CLASSES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket",
                      "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]
"""Used when ``category_names_eng.txt`` is absent (the file's order, as released)."""
CLOTHING1M_STATS = ((0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214))
CLOTHING1M_SPLITS = {
    "train": "noisy_train_key_list.txt",
    "clean-train": "clean_train_key_list.txt",
    "val": "clean_val_key_list.txt",
    "test": "clean_test_key_list.txt",
}
_IMAGE_PREFIX = "images/"


def clothing1m_annotations(root: str | Path) -> Path:
    """The folder holding a Clothing1M root's annotation ``.txt`` files: ``annotations/`` or the root."""
    root = require_dir(Path(root), "clothing1m root")
    if (root / "annotations").is_dir():
        return root / "annotations"
    if any((root / f).is_file() for f in ("noisy_label_kv.txt", "clean_label_kv.txt", *CLOTHING1M_SPLITS.values())):
        return root
    raise FileNotFoundError(
        f"{root}: no Clothing1M annotations found: expected {root / 'annotations'}/ (layout b) or "
        f"{root / 'noisy_label_kv.txt'} and the key lists directly in the root (layouts a, c)"
    )


def clothing1m_images(root: Path, keys: list[str]) -> tuple[Path, list[str], str]:
    """``(image folder, paths relative to it, how the keys resolved)``: each key as written, then without the
    ``images/`` prefix, then under ``images/`` (a key list without the prefix)."""
    return resolve_keys(keys, [
        (root, "", f"as written ({root}/images/...)"),
        (root, _IMAGE_PREFIX, f"'{_IMAGE_PREFIX}' prefix stripped ({root}/0..9/...)"),
        (root / "images", "", f"under images/ ({root}/images/<key>)"),
    ])


def _class_names(ann: Path) -> tuple[list[str], str]:
    path = ann / "category_names_eng.txt"
    if not path.is_file():
        return list(CLOTHING1M_CLASSES), "built-in (category_names_eng.txt absent)"
    names = [text for _, text in read_lines(path)]
    if len(names) != len(CLOTHING1M_CLASSES):
        raise ValueError(f"{path}: {len(names)} class names, expected {len(CLOTHING1M_CLASSES)}")
    return names, str(path)


def _label_map(path: Path, k: int) -> dict[str, int]:
    keys, labels, _ = read_key_labels(path, k)  # a key listed twice with different labels is an error there
    return dict(zip(keys, labels.tolist()))


def read_clothing1m(root: str | Path, split: str = "train") -> SampleTable:
    if split not in CLOTHING1M_SPLITS:
        raise ValueError(f"read_clothing1m: split must be one of {sorted(CLOTHING1M_SPLITS)}, got {split!r}")
    root = Path(root)
    ann = clothing1m_annotations(root)
    class_names, names_source = _class_names(ann)
    k = len(class_names)
    list_path = require_file(ann / CLOTHING1M_SPLITS[split], f"clothing1m {split} key list")
    keys, lines = read_keys(list_path)
    if not keys:
        raise ValueError(f"{list_path}: split {split!r} is empty (no keys)")
    clean_kv_path = ann / "clean_label_kv.txt"
    if split == "train":
        kv_path = require_file(ann / "noisy_label_kv.txt", "clothing1m noisy label file")
        clean_map = _label_map(clean_kv_path, k) if clean_kv_path.is_file() else None
    else:
        kv_path = require_file(clean_kv_path, "clothing1m clean label file")
        clean_map = None
    label_map = _label_map(kv_path, k)
    labels = np.empty(len(keys), dtype=np.int64)
    for i, key in enumerate(keys):
        label = label_map.get(key)
        if label is None:
            raise ValueError(f"{list_path}:{lines[i]}: key {key!r} has no label in {kv_path}")
        labels[i] = label
    if split == "train":
        clean = None if clean_map is None else np.array(
            [clean_map.get(key, UNKNOWN_LABEL) for key in keys], dtype=np.int64)
    else:
        clean = labels.copy()
    image_root, paths, how = clothing1m_images(root, keys)
    layout = "b" if ann != root else ("a" if "stripped" in how else "c")
    mean, std = CLOTHING1M_STATS
    return SampleTable(
        name="clothing1m", split=split, root=root, labels=labels, class_names=class_names, paths=paths,
        image_root=image_root, clean_labels=clean, list_file=list_path, list_lines=lines, mean=mean, std=std,
        label_source=str(kv_path),
        extra={"layout": layout, "annotations": str(ann), "image_keys": how, "lines_in_list": len(keys),
               "class_names_from": names_source},
    )
