"""One record type for every dataset split: where each sample is, its labels, and its global index.

A :class:`SampleTable` holds either image files (``paths`` relative to ``image_root``) or an in-memory array
(``images``, CIFAR). Row ``i`` of every array is the sample with global index ``i``: the position in the
dataset's documented order (docs/datasets.md), which addresses the soft-label bank, noise files and
exports. Readers never reorder or drop rows; loaders skip rows (unreadable images, a per-epoch subset) by
leaving their indices out of an epoch, so the index of every other sample stays the same.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["SampleTable", "UNKNOWN_LABEL"]

_SHARDS: dict = {}
"""Open tar shards of this process: {path: file}, reopened after a fork (the pid is part of the key)."""


def _open_shard(path: Path):
    import os

    key = (os.getpid(), str(path))
    f = _SHARDS.get(key)
    if f is None:
        if len(_SHARDS) >= 64:
            for old in list(_SHARDS)[:32]:
                _SHARDS.pop(old).close()
        if not _SHARDS:
            import atexit

            atexit.register(_close_shards)
        # Unbuffered: a member is one read of its exact bytes (a buffer would only hold bytes of other members).
        f = _SHARDS[key] = open(path, "rb", buffering=0)
    return f


def _close_shards() -> None:
    while _SHARDS:
        _SHARDS.popitem()[1].close()

UNKNOWN_LABEL = -1
"""Value of ``clean_labels[i]`` when sample i's clean label is not known (e.g. most of Clothing1M's train)."""


@dataclass
class SampleTable:
    """One split of one dataset, row ``i`` = global index ``i``."""

    name: str
    """Dataset name ('cifar10', 'clothing1m', ...)."""
    split: str
    """Split name ('train', 'test', 'val', 'clean-train', 'ilsvrc-val', ...)."""
    root: Path
    """The dataset root the reader was given."""
    labels: np.ndarray
    """int64 [N]: the labels training sees (noisy / given), all in [0, num_classes)."""
    class_names: list[str]
    """K names; ``num_classes = len(class_names)``."""
    paths: list[str] | None = None
    """N file paths relative to ``image_root`` (None for in-memory datasets)."""
    image_root: Path | None = None
    """Folder the ``paths`` are relative to."""
    images: np.ndarray | None = None
    """uint8 [N, H, W, C] for in-memory datasets (CIFAR), else None."""
    clean_labels: np.ndarray | None = None
    """int64 [N] clean labels, ``UNKNOWN_LABEL`` (-1) where unknown; None when none are known."""
    list_file: Path | None = None
    """The annotation file that lists the samples (for error messages), if any."""
    list_lines: np.ndarray | None = None
    """int32 [N]: 1-based line of each sample in ``list_file`` (for error messages), if any."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel normalisation mean (on [0, 1] pixels) of this dataset's recipe."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel normalisation std."""
    label_source: str = "dataset"
    """Where ``labels`` came from: 'dataset', a noise kind, or a noise file's path."""
    noise_manifest: dict | None = None
    """The synthetic-noise manifest (alr_fast.data.noise) when labels were corrupted on load."""
    extra: dict = field(default_factory=dict)
    """Dataset-specific facts worth reporting (e.g. Clothing1M's layout, list line counts)."""
    tar: dict | None = None
    """Tar-shard storage (webdataset): ``shards`` (file names relative to ``image_root``), per-row ``shard``
    (int32), ``offset`` and ``size`` (int64) of the image member, ``starts`` (int64 [S + 1], the first row of
    each shard, then N). ``paths`` then hold ``'<shard>:<member>'`` and :meth:`read_bytes` reads a row."""
    confined: bool = False
    """Whether :meth:`open_path` also refuses a file whose real path (symlinks resolved) leaves ``image_root``
    (the user's own datasets: imagefolder, manifest). The benchmark readers keep the lexical check only, so a
    symlinked image folder pointing elsewhere keeps working for them."""

    def __post_init__(self):
        self.root = Path(self.root)
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int64)
        n = self.labels.shape[0]
        if self.labels.ndim != 1:
            raise ValueError(f"{self.name}/{self.split}: labels must be 1-D, got shape {self.labels.shape}")
        if (self.paths is None) == (self.images is None):
            raise ValueError(f"{self.name}/{self.split}: exactly one of paths / images must be given")
        if self.paths is not None and len(self.paths) != n:
            raise ValueError(f"{self.name}/{self.split}: {len(self.paths)} paths but {n} labels")
        if self.paths is not None:
            self._check_paths_stay_under_root()
        if self.images is not None and (self.images.dtype != np.uint8 or self.images.ndim != 4
                                        or self.images.shape[0] != n):
            raise ValueError(
                f"{self.name}/{self.split}: images must be uint8 [N, H, W, C] with N={n}, "
                f"got {self.images.dtype} {self.images.shape}"
            )
        if self.clean_labels is not None:
            self.clean_labels = np.ascontiguousarray(self.clean_labels, dtype=np.int64)
            if self.clean_labels.shape != (n,):
                raise ValueError(f"{self.name}/{self.split}: clean_labels shape {self.clean_labels.shape} != ({n},)")
        k = len(self.class_names)
        if n and (self.labels.min() < 0 or self.labels.max() >= k):
            bad = int(np.nonzero((self.labels < 0) | (self.labels >= k))[0][0])
            raise ValueError(f"{self.where(bad)}: label {self.labels[bad]} outside [0, {k})")

    def _check_paths_stay_under_root(self) -> None:
        """A listed path must name a file under ``image_root``: relative, without ``..``, and, resolved
        (``realpath``: symbolic links followed), still under ``realpath(image_root)``, so a hostile or broken list
        file, or a link inside the dataset, cannot make the loaders read, or ``data check`` probe, files elsewhere.
        ``image_root`` itself may be a link (an image folder kept on another disk); links below it must point
        inside it. Costs one ``realpath`` per listed folder and one ``lstat`` per listed file."""
        import re

        joined = "\n".join(self.paths)
        if ".." in joined or re.search(r"(?m)^(?:[/\\~]|.?:)", joined):  # else: nothing suspicious anywhere
            self._check_paths_lexically()
        if self.tar is not None:
            return  # tar members are not files: the shards were checked (readers/tarshards.py:shard_files)
        self._check_paths_resolved()

    def _check_paths_lexically(self) -> None:
        for i, p in enumerate(self.paths):
            # Fast path: nearly every path has no '..', no leading separator and no drive letter.
            if ".." not in p and not p.startswith(("/", "\\", "~")) and ":" not in p[:2]:
                continue
            parts = p.replace("\\", "/").split("/")
            if p.startswith(("/", "\\", "~")) or ":" in p[:2]:
                why = "is absolute"
            elif ".." in parts:
                why = "contains '..'"
            else:
                continue
            raise ValueError(f"{self.where(i)}: path {p!r} {why}; listed paths must stay under the dataset root "
                             f"{self.image_root}")

    def _check_paths_resolved(self) -> None:
        if self.image_root is None or not Path(self.image_root).is_dir():
            return
        base = os.path.realpath(self.image_root)
        inside = lambda q: q == base or q.startswith(base.rstrip(os.sep) + os.sep)  # noqa: E731
        folders: dict[str, bool] = {}
        for i, p in enumerate(self.paths):
            folder, _, _ = p.rpartition("/")
            ok = folders.get(folder)
            if ok is None:
                ok = folders[folder] = inside(os.path.realpath(os.path.join(self.image_root, folder)))
            full = os.path.join(self.image_root, p)
            if ok and not os.path.islink(full):
                continue
            if not ok or not inside(os.path.realpath(full)):
                raise ValueError(f"{self.where(i)}: path {p!r} leads outside the dataset root through a symbolic "
                                 f"link (to {os.path.realpath(full)}); listed paths must stay under {base}")

    # ----------------------------------------------------------------------------------------------- views
    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def global_index(self) -> np.ndarray:
        """int64 [N]: ``arange(N)``; row i of this table is global index i."""
        return np.arange(len(self), dtype=np.int64)

    def path(self, index: int) -> Path:
        """Absolute path of sample ``index`` (file-backed tables only)."""
        if self.paths is None or self.image_root is None:
            raise TypeError(f"{self.name}/{self.split} is held in memory; it has no image paths")
        return self.image_root / self.paths[index]

    @property
    def shard_blocks(self) -> tuple[int, ...] | None:
        """For tar shards: the first row of each non-empty shard, then N (the shard-contiguous ownership of
        :class:`alr_fast.loss.sharding.Sharding`); None for every other table."""
        if self.tar is None:
            return None
        return tuple(int(v) for v in np.unique(np.asarray(self.tar["starts"], dtype=np.int64)))

    def read_bytes(self, index: int) -> bytes:
        """The encoded image of sample ``index``: its file, or its member of a tar shard (read by offset; each
        process keeps the shards it opened open)."""
        if self.tar is None:
            return self.open_path(index).read_bytes()
        shard = self.image_root / self.tar["shards"][int(self.tar["shard"][index])]
        f = _open_shard(shard)
        f.seek(int(self.tar["offset"][index]))
        size = int(self.tar["size"][index])
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"{shard}: member {self.paths[index].rsplit(':', 1)[-1]} (global index {index}) is cut "
                          "short; the shard changed since `data index`: run it again")
        return data

    def open_path(self, index: int) -> Path:
        """The path a loader or checker opens for sample ``index``: :meth:`path`, and for a ``confined`` table
        only if its real path lies under the real ``image_root`` (else a ValueError naming the file)."""
        path = self.path(index)
        if self.confined:
            import os

            real, top = os.path.realpath(path), os.path.realpath(self.image_root)
            if not real.startswith(top.rstrip(os.sep) + os.sep):
                raise ValueError(f"{self.where(index)}: {path} resolves to {real}, outside the dataset root {top} "
                                 "(a symlink leading out of the root is refused)")
        return path

    def where(self, index: int) -> str:
        """'file:line' (or 'name/split[index]') describing where sample ``index`` was listed."""
        if self.list_file is not None and self.list_lines is not None:
            return f"{self.list_file}:{int(self.list_lines[index])}"
        if self.paths is not None and self.image_root is not None:
            return str(self.image_root / self.paths[index])
        return f"{self.name}/{self.split}[{index}]"

    def clean_known(self) -> np.ndarray:
        """bool [N]: where the clean label is known."""
        if self.clean_labels is None:
            return np.zeros(len(self), dtype=bool)
        return self.clean_labels != -1

    def noise_rate(self) -> float | None:
        """Share of samples whose given label differs from the clean one, over samples with a known clean
        label; None when no clean label is known."""
        known = self.clean_known()
        if not known.any():
            return None
        return float((self.labels[known] != self.clean_labels[known]).mean())

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def with_labels(self, labels: np.ndarray, *, source: str, manifest: dict | None = None) -> SampleTable:
        """The same samples with other given labels (e.g. an imported noise file); clean labels are kept."""
        labels = np.asarray(labels)
        if labels.shape != (len(self),):
            raise ValueError(f"{source}: {labels.shape[0] if labels.ndim else 0} labels for {len(self)} samples "
                             f"of {self.name}/{self.split}")
        return dataclasses.replace(self, labels=labels, label_source=source, noise_manifest=manifest)

    def _class_count_summary(self) -> dict:
        counts = self.class_counts()
        if counts.size <= 20:
            return {"class_counts": counts.tolist()}
        return {"class_counts_min_max": [int(counts.min()), int(counts.max())],
                "classes_present": int((counts > 0).sum())}

    def summary(self) -> dict:
        """Counts and label facts as plain JSON-able values."""
        known = self.clean_known()
        return {
            "count": len(self),
            "num_classes": self.num_classes,
            "storage": "files" if self.paths is not None else "array",
            "list_file": None if self.list_file is None else str(self.list_file),
            "label_source": self.label_source,
            "clean_labels_known": int(known.sum()),
            "noise_rate": self.noise_rate(),
            **self._class_count_summary(),
            **({"extra": self.extra} if self.extra else {}),
        }
