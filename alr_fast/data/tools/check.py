"""``data check``: read every split of a dataset, check every listed image exists and decodes, summarise.

The summary is JSON-able: per split the count, number of classes, class counts, noise rate where clean labels
are known, how many images were checked and which were unreadable; a few ``index -> path -> label`` samples;
the layout found per split (``layout``: which folder held the annotations, how keys resolved to files);
and ``usable`` (true only when every required split reads and every checked image decodes) plus ``errors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alr_fast.data.loaders.imagecheck import scan_images
from alr_fast.data.readers import DATASET_NAMES, DATASET_SPLITS, GENERIC_NAMES, TRAIN_SPLIT, dataset_splits, read_split
from alr_fast.data.readers.records import SampleTable
from alr_fast.data.readers.webvision import read_ilsvrc_val

__all__ = ["check_dataset", "OPTIONAL_SPLITS", "MAX_LISTED_UNREADABLE"]

OPTIONAL_SPLITS = {("clothing1m", "clean-train")}
"""Splits whose absence does not make a dataset unusable (reported as absent)."""
MAX_LISTED_UNREADABLE = 20
LAYOUT_FACTS = ("layout", "annotations", "image_keys", "image_paths", "manifest", "format", "class_names_from",
                "skipped", "skipped_examples", "empty_classes", "duplicate_paths", "ignored_columns")
"""What a reader reports about the on-disk layout it found (e.g. Clothing1M's, with or without ``images/``)."""


def _samples(table: SampleTable, count: int) -> list[dict]:
    if not len(table) or count <= 0:
        return []
    out = []
    for i in np.unique(np.linspace(0, len(table) - 1, num=min(count, len(table))).round().astype(np.int64)):
        row = {"split": table.split, "index": int(i),
               "path": str(table.path(int(i))) if table.paths is not None else f"<array row {int(i)}>",
               "label": int(table.labels[i]), "class": table.class_names[int(table.labels[i])]}
        if table.clean_labels is not None and table.clean_labels[i] >= 0:
            row["clean_label"] = int(table.clean_labels[i])
        out.append(row)
    return out


def _check_indices(n: int, max_images: int | None) -> np.ndarray:
    if max_images is None or max_images >= n:
        return np.arange(n, dtype=np.int64)
    # An evenly spaced sample, deterministic (a partial check; the summary says so).
    return np.unique(np.linspace(0, n - 1, num=max_images).round().astype(np.int64))


def check_dataset(
    name: str,
    root: str | Path,
    *,
    splits: list[str] | None = None,
    source: str | None = None,
    ilsvrc_list: str | Path | None = None,
    ilsvrc_root: str | Path | None = None,
    cifar_n: str | Path | None = None,
    label_set: str | None = None,
    noise_file: str | Path | None = None,
    noise_key: str | None = None,
    workers: int = 1,
    max_images: int | None = None,
    samples: int = 3,
    manifest: str | Path | None = None,
) -> tuple[dict, dict[str, list[int]]]:
    """``(summary, unreadable global indices per split)``; ``summary["usable"]`` is the verdict."""
    if name not in DATASET_NAMES:
        raise ValueError(f"check_dataset: dataset must be one of {DATASET_NAMES}, got {name!r}")
    root = Path(root)
    chosen = list(splits or DATASET_SPLITS[name])
    reader_opts = {"manifest": manifest} if name == "manifest" else {}
    source = source or ("all" if name == "webvision" else "google")
    summary: dict = {"dataset": name, "root": str(root), "usable": False, "splits": {}, "samples": [],
                     "errors": []}
    if name in ("webvision", "mini-webvision"):
        summary["source"] = "google" if name == "mini-webvision" else source
    unreadable: dict[str, list[int]] = {}
    if not root.is_dir():
        summary["errors"].append(f"{root}: dataset root not found (no such directory)")
        return summary, unreadable
    if name in GENERIC_NAMES and not splits:
        try:  # the user's own data: the splits it has (a missing val/test is reported, not an error)
            chosen = list(dataset_splits(name, root, **reader_opts))
        except (FileNotFoundError, ValueError) as e:
            summary["errors"].append(str(e))
            return summary, unreadable
        summary["splits_found"] = chosen
    tables: list[SampleTable] = []
    for split in chosen:
        train_opts = {}
        if split == TRAIN_SPLIT:
            train_opts = dict(cifar_n=cifar_n, label_set=label_set, noise_file=noise_file, noise_key=noise_key)
        try:
            tables.append(read_split(name, root, split, source=source, **train_opts, **reader_opts))
        except FileNotFoundError as e:
            if (name, split) in OPTIONAL_SPLITS:
                summary["splits"][split] = {"absent": str(e)}
            else:
                summary["errors"].append(str(e))
                summary["splits"][split] = {"error": str(e)}
        except ValueError as e:
            summary["errors"].append(str(e))
            summary["splits"][split] = {"error": str(e)}
    if ilsvrc_list is not None or ilsvrc_root is not None:
        if ilsvrc_list is None or ilsvrc_root is None:
            summary["errors"].append("ILSVRC val needs both --ilsvrc-list and --ilsvrc-root")
        else:
            k = 50 if name == "mini-webvision" else 1000
            try:
                t = read_ilsvrc_val(ilsvrc_list, ilsvrc_root, num_classes=k)
                t.split = "ilsvrc-val"
                tables.append(t)
            except (FileNotFoundError, ValueError) as e:
                summary["errors"].append(str(e))
                summary["splits"]["ilsvrc-val"] = {"error": str(e)}
    for table in tables:
        info = table.summary()
        if table.num_classes <= 100:
            info["per_class"] = dict(zip(table.class_names, table.class_counts().tolist()))
        if table.paths is not None:
            idx = _check_indices(len(table), max_images)
            bad = scan_images(table, idx, workers=workers)
            info["images_checked"] = int(idx.size)
            info["images_checked_all"] = bool(idx.size == len(table))
            info["unreadable"] = len(bad)
            if bad:
                info["unreadable_examples"] = [u.to_dict() for u in bad[:MAX_LISTED_UNREADABLE]]
                unreadable[table.split] = [u.index for u in bad]
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                summary["errors"].append(f"{table.name}/{table.split}: {len(bad)} unreadable image(s): {bad[0]}{more}")
        if table.noise_manifest is not None:
            info["noise_manifest"] = {k: v for k, v in table.noise_manifest.items() if k != "transition_matrix"}
        summary["splits"][table.split] = info
        summary["samples"] += _samples(table, samples)
    layouts = {t.split: {k: t.extra[k] for k in LAYOUT_FACTS if k in t.extra} for t in tables}
    if any(layouts.values()):
        summary["layout"] = {split: facts for split, facts in layouts.items() if facts}
    if tables:
        summary["num_classes"] = tables[0].num_classes
        summary["class_names"] = tables[0].class_names[:20] + (["..."] if tables[0].num_classes > 20 else [])
    summary["usable"] = not summary["errors"] and bool(tables)
    return summary, unreadable
