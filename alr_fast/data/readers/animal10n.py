"""ANIMAL-10N: ``training/`` and ``testing/`` folders of JPEGs named ``<label>_<id>.jpg``.

The label is the file-name prefix before the first ``_``; the global index is the position in the sorted list
of file names. ``root`` may hold the two folders directly or inside ``raw_image/`` (how the archive unpacks).
No clean labels exist (about 8 % of the training labels are estimated to be wrong); the test labels are what
papers evaluate on, but they are not marked clean here, so no noise rate is claimed for either split.

Normalisation: the recipe's ImageNet mean/std (an assumption; the published codebases differ).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alr_fast.data.readers.listfile import require_dir
from alr_fast.data.readers.records import SampleTable

__all__ = ["read_animal10n", "ANIMAL10N_CLASSES", "IMAGE_SUFFIXES"]

ANIMAL10N_CLASSES = ["cat", "lynx", "wolf", "coyote", "cheetah", "jaguar", "chimpanzee", "orangutan", "hamster",
                     "guinea pig"]
"""Label order of the dataset's release (five confusable pairs: (0, 1), (2, 3), ... (8, 9))."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_FOLDERS = {"train": "training", "test": "testing"}


def _base(root: Path) -> Path:
    root = require_dir(root, "animal10n root")
    for base in (root, root / "raw_image"):
        if (base / "training").is_dir() or (base / "testing").is_dir():
            return base
    raise FileNotFoundError(f"{root / 'training'}: animal10n folders training/ and testing/ not found "
                            f"(looked in {root} and {root / 'raw_image'})")


def read_animal10n(root: str | Path, split: str = "train") -> SampleTable:
    if split not in _FOLDERS:
        raise ValueError(f"read_animal10n: split must be one of {sorted(_FOLDERS)}, got {split!r}")
    folder = require_dir(_base(Path(root)) / _FOLDERS[split], f"animal10n {split} folder")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"{folder}: split {split!r} is empty (no image files)")
    k = len(ANIMAL10N_CLASSES)
    labels = np.empty(len(names), dtype=np.int64)
    for i, name in enumerate(names):
        prefix, sep, _ = name.partition("_")
        if not sep or not prefix.isdigit() or not name.lower().endswith(IMAGE_SUFFIXES):
            raise ValueError(f"{folder / name}: expected a file name '<label>_<id>.jpg'")
        label = int(prefix)
        if label >= k:
            raise ValueError(f"{folder / name}: label {label} (file-name prefix) outside [0, {k})")
        labels[i] = label
    return SampleTable(
        name="animal10n", split=split, root=Path(root), labels=labels, class_names=list(ANIMAL10N_CLASSES),
        paths=names, image_root=folder, clean_labels=None,
    )
