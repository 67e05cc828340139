"""Small datasets in each dataset's exact on-disk layout, with real JPEG bytes.

The pixels are patches of the two real photos that ship with scikit-learn (``load_sample_images()``: two
427 x 640 JPEGs): each image is a random crop (position, size, aspect) of one photo, possibly mirrored,
resized and written with PIL. Labels are drawn at random (they mean nothing about the pixels). Made for tests,
benchmarks, and for users to try ``data check`` and the loaders before pointing them at their own copy.

:func:`make_fixture` returns the folder to pass as ``--root`` (the dataset root).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

__all__ = ["make_fixture", "FIXTURE_DATASETS", "MANIFEST_FORMATS", "OWN_CLASSES", "CLOTHING1M_LAYOUTS", "photo_patch", "ILSVRC_LIST_NAME",
           "ILSVRC_DIR_NAME"]

FIXTURE_DATASETS = ("cifar10", "cifar100", "animal10n", "clothing1m", "webvision", "mini-webvision", "imagefolder",
                    "manifest", "webdataset")
MANIFEST_FORMATS = ("csv", "tsv", "jsonl")
OWN_CLASSES = ["cat", "dog", "guinea pig", "café, crème"]
"""Class names of the imagefolder / manifest fixtures: a space, a comma and non-ASCII letters, as real ones have."""
CLOTHING1M_LAYOUTS = ("a", "b", "c")
"""Clothing1M layouts (:mod:`alr_fast.data.readers.clothing1m`): a = .txt files and 0..9/ in the root (keys'
images/ prefix stripped); b = annotations/ + images/; c = .txt files and images/ in the root (the release
archives extracted into one folder)."""
ILSVRC_LIST_NAME = "ilsvrc2012_val_list.txt"
ILSVRC_DIR_NAME = "ilsvrc2012_val"

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

_PHOTOS: list[np.ndarray] | None = None


def _photos() -> list[np.ndarray]:
    global _PHOTOS
    if _PHOTOS is None:
        from sklearn.datasets import load_sample_images

        _PHOTOS = [np.asarray(im, dtype=np.uint8) for im in load_sample_images().images]
    return _PHOTOS


def photo_patch(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3]: a random crop of a real photo, resized (bilinear) to width x height."""
    from PIL import Image

    photo = _photos()[int(rng.integers(len(_photos())))]
    ph, pw = photo.shape[:2]
    aspect = width / height * float(np.exp(rng.uniform(-0.15, 0.15)))
    h = int(rng.integers(min(48, ph), ph + 1))
    w = min(pw, max(8, int(round(h * aspect))))
    h = min(h, max(8, int(round(w / aspect))))
    y, x = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
    patch = photo[y : y + h, x : x + w]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(patch)).resize((width, height), Image.BILINEAR))


def _write_jpeg(path: Path, pixels: np.ndarray, quality: int = 90) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def _random_size(rng: np.random.Generator, size: tuple[int, int] | None, short: tuple[int, int]) -> tuple[int, int]:
    if size is not None:
        return size
    s = int(rng.integers(short[0], short[1] + 1))
    long = int(round(s * rng.uniform(1.0, 1.5)))
    return (long, s) if rng.random() < 0.7 else (s, long)


def _balanced_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def _flip_some(rng: np.random.Generator, labels: np.ndarray, k: int, rate: float) -> np.ndarray:
    out = labels.copy()
    flip = rng.random(labels.size) < rate
    out[flip] = (labels[flip] + rng.integers(1, k, size=int(flip.sum()))) % k
    return out


# --------------------------------------------------------------------------------------------------- CIFAR
def _cifar(out: Path, rng: np.random.Generator, name: str, num_train: int, num_test: int) -> Path:
    import torch

    k = 10 if name == "cifar10" else 100

    def batch(n: int, label_key: str, extra: dict) -> tuple[dict, np.ndarray]:
        labels = _balanced_labels(rng, n, k)
        pixels = np.stack([photo_patch(rng, 32, 32) for _ in range(n)])
        # CIFAR rows: 1024 R, 1024 G, 1024 B values, each plane row-major.
        data = pixels.transpose(0, 3, 1, 2).reshape(n, 3072)
        d = {"batch_label": extra.pop("batch_label"), label_key: labels.tolist(), "data": data,
             "filenames": [f"fixture_{i:05d}.png" for i in range(n)], **extra}
        return d, labels

    def dump(obj, path: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)  # the official files are protocol-2 pickles

    if name == "cifar10":
        folder = out / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        if num_train < 5:
            raise ValueError(f"--num-train: CIFAR-10 is stored as 5 training batches, so at least 5, got {num_train}")
        # num_train exactly: the first num_train % 5 batches hold one image more (the official ones are equal).
        sizes = [num_train // 5 + (b < num_train % 5) for b in range(5)]
        per = sizes[0]
        train_labels = []
        for b in range(1, 6):
            d, labels = batch(sizes[b - 1], "labels", {"batch_label": f"training batch {b} of 5"})
            dump(d, folder / f"data_batch_{b}")
            train_labels.append(labels)
        d, _ = batch(num_test, "labels", {"batch_label": "testing batch 1 of 1"})
        dump(d, folder / "test_batch")
        dump({"label_names": CIFAR10_NAMES, "num_cases_per_batch": per, "num_vis": 3072}, folder / "batches.meta")
        clean = np.concatenate(train_labels)
        # A CIFAR-10N-style label file (made up here; the real one is the user's, CC BY-NC).
        human = {"clean_label": clean, "aggre_label": _flip_some(rng, clean, k, 0.09),
                 "worse_label": _flip_some(rng, clean, k, 0.40)}
        for r in (1, 2, 3):
            human[f"random_label{r}"] = _flip_some(rng, clean, k, 0.17)
        torch.save(human, out / "CIFAR-10_human.pt")
    else:
        folder = out / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        d, clean = batch(num_train, "fine_labels", {"batch_label": "training batch 1 of 1"})
        d["coarse_labels"] = (np.asarray(d["fine_labels"]) // 5).tolist()
        dump(d, folder / "train")
        d, _ = batch(num_test, "fine_labels", {"batch_label": "testing batch 1 of 1"})
        d["coarse_labels"] = (np.asarray(d["fine_labels"]) // 5).tolist()
        dump(d, folder / "test")
        dump({"fine_label_names": [f"fine_{i:02d}" for i in range(100)],
              "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)]}, folder / "meta")
        torch.save({"clean_label": clean, "noisy_label": _flip_some(rng, clean, k, 0.40),
                    "coarse_label": clean // 5}, out / "CIFAR-100_human.pt")
    return out


# ---------------------------------------------------------------------------------------------- ANIMAL-10N
def _animal10n(out: Path, rng: np.random.Generator, num_train: int, num_test: int, size) -> Path:
    w, h = size or (64, 64)
    for folder, n in (("training", num_train), ("testing", num_test)):
        labels = _balanced_labels(rng, n, 10)
        ids = rng.choice(100_000, size=n, replace=False)
        for label, i in zip(labels.tolist(), ids.tolist()):
            _write_jpeg(out / folder / f"{label}_{i:05d}.jpg", photo_patch(rng, w, h))
    return out


# ----------------------------------------------------------------------------------------------- Clothing1M
def _clothing1m(out: Path, rng: np.random.Generator, layout: str, num_train: int, num_test: int, size) -> Path:
    from alr_fast.data.readers.clothing1m import CLOTHING1M_CLASSES

    if layout not in CLOTHING1M_LAYOUTS:
        raise ValueError(f"make_fixture: clothing1m layout must be one of {CLOTHING1M_LAYOUTS}, got {layout!r}")
    k = len(CLOTHING1M_CLASSES)
    ann = out / "annotations" if layout == "b" else out
    image_root = out if layout == "a" else out / "images"  # a: the keys' images/ prefix stripped
    ann.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()

    def new_key() -> str:
        while True:
            # Real keys look like images/2/26/3761328114,905362226.jpg (note the comma).
            key = (f"images/{rng.integers(10)}/{rng.integers(100):02d}/"
                   f"{rng.integers(10**9, 10**10)},{rng.integers(10**8, 10**9)}.jpg")
            if key not in used:
                used.add(key)
                return key

    def write_images(keys: list[str]) -> None:
        for key in keys:
            w, h = _random_size(rng, size, (120, 300))
            _write_jpeg(image_root / key[len("images/"):], photo_patch(rng, w, h))

    noisy_keys = [new_key() for _ in range(num_train)]
    noisy_labels = _balanced_labels(rng, num_train, k)
    # About a third of the noisy training images also have a verified (clean) label, ~40 % of them differ.
    both = rng.random(num_train) < 0.35
    clean_of_noisy = _flip_some(rng, noisy_labels, k, 0.4)
    clean_lists = {name: [new_key() for _ in range(num_test)] for name in ("train", "val", "test")}
    clean_labels = {name: _balanced_labels(rng, num_test, k) for name in clean_lists}
    extra_noisy = [new_key() for _ in range(5)]  # in noisy_label_kv.txt but in no list, as in the real files
    write_images(noisy_keys + [key for keys in clean_lists.values() for key in keys])

    def write(name: str, lines: list[str]) -> None:
        (ann / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    write("category_names_eng.txt", CLOTHING1M_CLASSES)
    write("noisy_label_kv.txt", [f"{key} {lab}" for key, lab in zip(noisy_keys, noisy_labels.tolist())]
          + [f"{key} {rng.integers(k)}" for key in extra_noisy])
    clean_kv = [f"{key} {lab}" for key, lab, b in zip(noisy_keys, clean_of_noisy.tolist(), both.tolist()) if b]
    for name, keys in clean_lists.items():
        clean_kv += [f"{key} {lab}" for key, lab in zip(keys, clean_labels[name].tolist())]
    write("clean_label_kv.txt", [clean_kv[i] for i in rng.permutation(len(clean_kv))])
    write("noisy_train_key_list.txt", noisy_keys)
    write("clean_train_key_list.txt", clean_lists["train"])
    write("clean_val_key_list.txt", clean_lists["val"])
    write("clean_test_key_list.txt", clean_lists["test"])
    return out


# ------------------------------------------------------------------------------------------------ WebVision
def _webvision(out: Path, rng: np.random.Generator, num_train: int, num_test: int, size) -> Path:
    info = out / "info"
    info.mkdir(parents=True, exist_ok=True)
    # Mostly the first 60 classes (so mini-WebVision's label < 50 filter keeps most and drops some), plus a
    # few of the other 940.
    def labels(n: int) -> np.ndarray:
        lab = rng.integers(0, 60, size=n)
        far = rng.random(n) < 0.1
        lab[far] = rng.integers(60, 1000, size=int(far.sum()))
        return lab.astype(np.int64)

    def train_list(source: str, n: int) -> list[str]:
        lines = []
        for i, lab in enumerate(labels(n).tolist()):
            rel = f"{source}/q{lab + 1:04d}/{i:06d}.jpg"
            _write_jpeg(out / rel, photo_patch(rng, *_random_size(rng, size, (96, 160))))
            lines.append(f"{rel} {lab}")
        return lines

    google = train_list("google", num_train)
    flickr = train_list("flickr", max(1, num_train // 2))
    val = []
    for i, lab in enumerate(labels(num_test).tolist()):
        name = f"val{i + 1:06d}.jpg"
        _write_jpeg(out / "val_images_256" / name, photo_patch(rng, *_random_size(rng, size, (96, 160))))
        val.append(f"{name} {lab}")
    ilsvrc = []
    for i, lab in enumerate(labels(num_test).tolist()):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        _write_jpeg(out / ILSVRC_DIR_NAME / name, photo_patch(rng, *_random_size(rng, size, (96, 160))))
        ilsvrc.append(f"{name} {lab}")

    def write(path: Path, lines: list[str]) -> None:
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    write(info / "train_filelist_google.txt", google)
    write(info / "train_filelist_flickr.txt", flickr)
    write(info / "train_filelist_all.txt", google + flickr)
    write(info / "val_filelist.txt", val)
    write(info / "synsets.txt", [f"n{10_000_000 + i:08d} fixture class {i}" for i in range(1000)])
    write(out / ILSVRC_LIST_NAME, ilsvrc)
    return out


# ------------------------------------------------------------------------------- the user's own data forms
def _imagefolder(out: Path, rng: np.random.Generator, num_train: int, num_test: int, size) -> Path:
    """train/ and test/ split folders, one folder per class, some images one folder deeper, mixed extensions."""
    k = len(OWN_CLASSES)
    for split, n in (("train", num_train), ("test", num_test)):
        for i, label in enumerate(_balanced_labels(rng, n, k).tolist()):
            sub = "batch 2/" if i % 5 == 4 else ""
            ext = (".jpg", ".JPEG", ".png")[i % 3]
            path = out / split / OWN_CLASSES[label] / f"{sub}img {i:04d}{ext}"
            pixels = photo_patch(rng, *_random_size(rng, size, (64, 96)))
            if ext == ".png":
                from PIL import Image

                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path, format="PNG")
            else:
                _write_jpeg(path, pixels)
    return out


def _manifest(out: Path, rng: np.random.Generator, fmt: str, num_train: int, num_test: int, size) -> Path:
    """images/ + manifest.<fmt>: path, label (a class name), clean_label (the true class, ~30 % differ), split."""
    if fmt not in MANIFEST_FORMATS:
        raise ValueError(f"make_fixture: manifest format must be one of {MANIFEST_FORMATS}, got {fmt!r}")
    k = len(OWN_CLASSES)
    rows = []
    for split, n in (("train", num_train), ("val", max(2, num_test // 2)), ("test", num_test)):
        clean = _balanced_labels(rng, n, k)
        given = _flip_some(rng, clean, k, 0.3) if split == "train" else clean
        for i in range(n):
            rel = f"images/{split}/{i % 3}/photo, {i:04d}.jpg"  # a comma in every name
            _write_jpeg(out / rel, photo_patch(rng, *_random_size(rng, size, (64, 96))))
            rows.append({"path": rel, "label": OWN_CLASSES[int(given[i])], "clean_label": OWN_CLASSES[int(clean[i])],
                         "split": split})
    order = rng.permutation(len(rows))  # splits interleaved, as real manifests are
    rows = [rows[i] for i in order]
    path = out / f"manifest.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["path", "label", "clean_label", "split"],
                               delimiter="," if fmt == "csv" else "\t")
            w.writeheader()
            w.writerows(rows)
    return out


def _webdataset(out: Path, rng: np.random.Generator, num_train: int, num_test: int, size) -> Path:
    """train/ and test/ folders of tar shards 000000.tar, ... of unequal sizes (KEY.jpg + KEY.cls, KEY.json
    metadata beside), class_names.json in the root."""
    import io
    import tarfile

    k = len(OWN_CLASSES)
    (out).mkdir(parents=True, exist_ok=True)
    (out / "class_names.json").write_text(json.dumps(OWN_CLASSES, ensure_ascii=False) + "\n", encoding="utf-8")

    def member(tar, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    for split, n in (("train", num_train), ("test", num_test)):
        labels = _balanced_labels(rng, n, k)
        # shard sizes vary (as the tail shard of a real export): cut points drawn at random, at least 1 per shard
        shards = max(1, min(5, n // 2)) if split == "train" else 1
        cuts = np.sort(rng.choice(np.arange(1, n), size=shards - 1, replace=False)) if shards > 1 else []
        bounds = [0, *[int(c) for c in cuts], n]
        (out / split).mkdir(parents=True, exist_ok=True)
        for s in range(len(bounds) - 1):
            with tarfile.open(out / split / f"{s:06d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
                for i in range(bounds[s], bounds[s + 1]):
                    buf = io.BytesIO()
                    from PIL import Image

                    Image.fromarray(photo_patch(rng, *_random_size(rng, size, (64, 96)))).save(buf, format="JPEG",
                                                                                              quality=90)
                    key = f"sample{i:06d}"
                    member(tar, f"{key}.jpg", buf.getvalue())
                    member(tar, f"{key}.cls", str(int(labels[i])).encode())
                    member(tar, f"{key}.json", json.dumps({"index": i}).encode())
    return out


def make_fixture(
    name: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    layout: str = "a",
    num_train: int | None = None,
    num_test: int | None = None,
    image_size: tuple[int, int] | None = None,
    manifest_format: str = "csv",
) -> Path:
    """Write a small ``name`` dataset under ``out_dir`` and return its root.

    ``layout`` picks Clothing1M's layout (:data:`CLOTHING1M_LAYOUTS`); ``num_train`` / ``num_test`` size the splits (small
    defaults: tens of images); ``image_size`` = (width, height) fixes every file image's size (default:
    varied sizes in the dataset's usual range, 64 x 64 for ANIMAL-10N). webvision and mini-webvision write the
    same root (mini-WebVision is a view of WebVision), plus ILSVRC-2012 val images and their list
    (``ilsvrc2012_val/`` and ``ilsvrc2012_val_list.txt`` in the root). ``imagefolder``: ``train/`` and
    ``test/`` class folders (:data:`OWN_CLASSES`); ``manifest``: ``images/`` and ``manifest.<manifest_format>``
    with train, val and test rows (noisy train labels, clean labels in ``clean_label``).
    """
    if name not in FIXTURE_DATASETS:
        raise ValueError(f"make_fixture: name must be one of {FIXTURE_DATASETS}, got {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if name in ("cifar10", "cifar100"):
        root = _cifar(out, rng, name, num_train or (100 if name == "cifar10" else 200), num_test or 40)
    elif name == "animal10n":
        root = _animal10n(out, rng, num_train or 60, num_test or 20, image_size)
    elif name == "clothing1m":
        root = _clothing1m(out, rng, layout, num_train or 70, num_test or 28, image_size)
    elif name == "imagefolder":
        root = _imagefolder(out, rng, num_train or 40, num_test or 12, image_size)
    elif name == "manifest":
        root = _manifest(out, rng, manifest_format, num_train or 40, num_test or 12, image_size)
    elif name == "webdataset":
        root = _webdataset(out, rng, num_train or 40, num_test or 12, image_size)
    else:
        root = _webvision(out, rng, num_train or 60, num_test or 24, image_size)
    (out / "FIXTURE.json").write_text(json.dumps({
        "dataset": name, "seed": seed, "layout": layout if name == "clothing1m" else None,
        **({"format": manifest_format} if name == "manifest" else {}),
        "note": "synthetic fixture: patches of scikit-learn's two sample photos, random labels",
    }, indent=2) + "\n")
    return root
