"""CIFAR-10 / CIFAR-100 (python pickle version), synthetic noise, and CIFAR-10N / CIFAR-100N label files.

Layouts (docs/datasets.md): ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python/{train, test, meta}``; ``root`` may be that folder or its parent. Global index of the train
split = data_batch_1..5 concatenated (torchvision's order, used by every public noise file). Images are held
in memory as uint8 [N, 32, 32, 3].

CIFAR-N files (user-supplied; licence CC BY-NC, never shipped) are read with the numpy-only unpickler of
:mod:`alr_fast.data.readers.safe_pickle`; the label set is chosen by the authors' short name (:data:`CIFAR_N_SETS`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from alr_fast.data.readers.listfile import require_dir, require_file
from alr_fast.data.readers.records import SampleTable
from alr_fast.data.readers.safe_pickle import safe_load_numpy_pickle
from alr_fast.data.noise import make_noisy_labels

__all__ = ["read_cifar", "read_cifar_n", "apply_cifar_n", "apply_synthetic_noise", "CIFAR_N_SETS", "CIFAR_STATS"]

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276)),
}

_LAYOUT = {
    # name: (folder, train files, test files, meta file, label key, class-name key, K)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_labels", "fine_label_names", 100),
}

CIFAR_N_SETS = {
    "cifar10": {"clean": "clean_label", "aggre": "aggre_label", "worst": "worse_label",
                "rand1": "random_label1", "rand2": "random_label2", "rand3": "random_label3"},
    "cifar100": {"clean": "clean_label", "noisy100": "noisy_label", "noisy": "noisy_label"},
}
"""Short name -> key in ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt``."""


def _str_keys(d: dict, path: Path) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _folder(root: Path, name: str) -> Path:
    folder_name = _LAYOUT[name][0]
    root = require_dir(root, f"{name} root")
    if (root / folder_name).is_dir():
        return root / folder_name
    if root.name == folder_name or (root / _LAYOUT[name][3]).is_file():
        return root
    raise FileNotFoundError(f"{root / folder_name}: {name} folder not found (root must hold {folder_name}/ "
                            f"or be that folder)")


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _str_keys(safe_load_numpy_pickle(require_file(path, "CIFAR batch")), path)
    for key in ("data", label_key):
        if key not in d:
            raise ValueError(f"{path}: missing key {key!r} (has {sorted(d)})")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    # Rows are 1024 R, 1024 G, 1024 B values, each a row-major 32x32 plane -> NHWC.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar(
    root: str | Path,
    name: str = "cifar10",
    split: str = "train",
    *,
    noise_kind: str = "none",
    noise_rate: float = 0.0,
    noise_seed: int = 0,
) -> SampleTable:
    """Read CIFAR-10/100 ``split`` ('train' or 'test'); optional synthetic noise on the given labels."""
    if name not in _LAYOUT:
        raise ValueError(f"read_cifar: name must be one of {sorted(_LAYOUT)}, got {name!r}")
    if split not in ("train", "test"):
        raise ValueError(f"read_cifar: split must be 'train' or 'test', got {split!r}")
    folder_name, train_files, test_files, meta_file, label_key, names_key, k = _LAYOUT[name]
    folder = _folder(Path(root), name)
    meta_path = folder / meta_file
    meta = _str_keys(safe_load_numpy_pickle(require_file(meta_path, f"{name} meta file")), meta_path)
    if names_key not in meta:
        raise ValueError(f"{meta_path}: missing key {names_key!r} (has {sorted(meta)})")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    if len(class_names) != k:
        raise ValueError(f"{meta_path}: {len(class_names)} class names, expected {k}")
    parts = [_read_batch(folder / f, label_key) for f in (train_files if split == "train" else test_files)]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    labels = np.concatenate([p[1] for p in parts])
    if labels.size == 0:
        raise ValueError(f"{folder}: split {split!r} is empty")
    bad = np.nonzero((labels < 0) | (labels >= k))[0]
    if bad.size:
        raise ValueError(f"{folder}/{split}: label {labels[bad[0]]} of image {bad[0]} outside [0, {k})")
    mean, std = CIFAR_STATS[name]
    table = SampleTable(
        name=name, split=split, root=Path(root), labels=labels, class_names=class_names, images=images,
        clean_labels=labels.copy(), mean=mean, std=std,
        extra={"files": [str(folder / f) for f in (train_files if split == "train" else test_files)]},
    )
    if noise_kind != "none":
        table = apply_synthetic_noise(table, kind=noise_kind, rate=noise_rate, seed=noise_seed)
    return table


def apply_synthetic_noise(table: SampleTable, *, kind: str, rate: float, seed: int) -> SampleTable:
    """Corrupt the table's clean labels with :func:`alr_fast.data.noise.make_noisy_labels` (manifest attached)."""
    if table.clean_labels is None or not table.clean_known().all():
        raise ValueError(f"{table.name}/{table.split}: synthetic noise needs every clean label")
    noisy, manifest = make_noisy_labels(table.clean_labels, kind=kind, rate=rate, num_classes=table.num_classes,
                                        seed=seed, images=table.images if kind == "instance" else None)
    return table.with_labels(noisy, source=f"synthetic:{kind}", manifest=json.loads(manifest.to_json()))


def read_cifar_n(path: str | Path, label_set: str, *, name: str = "cifar10") -> tuple[np.ndarray, np.ndarray]:
    """``(noisy labels, clean labels)`` int64 [50000] from a CIFAR-N file; ``label_set`` is a short name."""
    path = Path(path)
    if name not in CIFAR_N_SETS:
        raise ValueError(f"read_cifar_n: name must be one of {sorted(CIFAR_N_SETS)}, got {name!r}")
    sets = CIFAR_N_SETS[name]
    if label_set not in sets:
        raise ValueError(f"read_cifar_n: label_set for {name} must be one of {sorted(sets)}, got {label_set!r}")
    d = _str_keys(safe_load_numpy_pickle(path), path)
    out = []
    k = _LAYOUT[name][6]
    for key in (sets[label_set], "clean_label"):
        if key not in d:
            raise ValueError(f"{path}: missing key {key!r} (has {sorted(d)})")
        arr = np.asarray(d[key])
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: {key!r} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
        bad = np.nonzero((arr < 0) | (arr >= k))[0]
        if bad.size:
            raise ValueError(f"{path}: {key}[{bad[0]}] = {arr[bad[0]]} outside [0, {k})")
        out.append(arr.astype(np.int64))
    return out[0], out[1]


def apply_cifar_n(table: SampleTable, path: str | Path, label_set: str) -> SampleTable:
    """Give the CIFAR train table the CIFAR-N label set ``label_set``; checks the file's clean labels match."""
    if table.split != "train":
        raise ValueError(f"CIFAR-N labels exist for the train split only, not {table.split!r}")
    noisy, clean = read_cifar_n(path, label_set, name=table.name)
    if noisy.shape[0] != len(table):
        raise ValueError(f"{path}: {noisy.shape[0]} labels for {len(table)} {table.name} train images")
    if table.clean_labels is not None and not np.array_equal(clean, table.clean_labels):
        first = int(np.nonzero(clean != table.clean_labels)[0][0])
        raise ValueError(
            f"{path}: clean_label differs from the dataset's labels at global index {first} "
            f"({clean[first]} vs {table.clean_labels[first]}): is this the file for {table.name} in torchvision order?"
        )
    out = table.with_labels(noisy, source=f"{path}:{label_set}")
    return dataclasses.replace(out, clean_labels=clean)
