"""WebDataset tar shards (``webdataset``): ``ROOT/train/*.tar`` (and ``val/``, ``test/``), or ``ROOT/*.tar`` as the
only (train) split; each sample is ``KEY.jpg`` (or another image extension) + ``KEY.cls`` (its label as text).

A one-off ``python -m alr_fast data index --dataset webdataset --root ROOT`` reads every shard's tar headers
(no image is decoded) and writes ``ROOT/wds_index_<split>.npz``: per sample its shard, the byte offset and
size of its image member, its label and member name. Training then reads each sample by offset from its
shard, and each rank reads only its own shards: ownership is shard-contiguous for this dataset
(:class:`alr_fast.loss.sharding.Sharding` with ``blocks`` = the first global index of each shard).

*Global index* = shards in code-point order of their file names, samples in the order their key first
appears in the shard. Shard names like ``000000.tar`` ... ``000099.tar`` (``{000000..000099}.tar``) sort as
their numbers.

Members: the key is the member name up to the first ``.`` of its base name (the WebDataset convention), the
rest is the extension (compared in lower case). What the index does with what real shards contain
(``skipped`` counts each kind with up to 5 examples ``shard:member``; ``data index`` and ``data check``
print them): an image without its ``.cls`` member is skipped and counted (``no_label``); a ``.cls`` without
an image (``no_image``), other members (``.json``, ``.txt``: ``other_member``), a second image of the same
key (``extra_image``, the first is used) and non-file entries (``not_a_file``) likewise. A ``.cls`` that is
not an integer (or a name in ``ROOT/class_names.json``) is an error naming shard and member. A shard that ends
early (a header or a member's data cut off, or no end-of-archive blocks) or has a corrupt header is an error
naming the shard and the byte offset: re-fetch it. A shard whose size or modification time changed since
indexing makes the index stale: an error asking to run ``data index`` again.

Classes: ``ROOT/class_names.json`` (a JSON list) when present, else ``num_classes`` = the largest label over
every split + 1 (names ``'0'``, ``'1'``, ...).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from alr_fast.data.readers.listfile import require_dir
from alr_fast.data.readers.records import SampleTable

__all__ = ["read_webdataset", "index_webdataset", "webdataset_splits", "shard_files", "scan_tar", "INDEX_NAME",
           "TAR_IMAGE_EXTENSIONS"]

INDEX_NAME = "wds_index_{split}.npz"
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")
SPLIT_NAMES = ("train", "val", "test")
MAX_EXAMPLES = 5
_BLOCK = 512


def webdataset_splits(root: str | Path) -> tuple[str, ...]:
    """Splits with shards: the split folders holding ``*.tar``, or ('train',) for shards directly in ROOT."""
    root = require_dir(Path(root), "webdataset root")
    if (root / "train").is_dir():
        return tuple(s for s in SPLIT_NAMES if (root / s).is_dir())
    return ("train",)


def shard_files(root: str | Path, split: str) -> list[Path]:
    """The split's shards, sorted by name (code points)."""
    root = Path(root)
    folder = root / split if (root / "train").is_dir() else root
    if split not in webdataset_splits(root):
        raise FileNotFoundError(f"{root / split}: webdataset split {split!r} not found (splits: "
                                f"{webdataset_splits(root)})")
    shards = sorted((p for p in folder.iterdir() if p.name.endswith(".tar") and not p.name.startswith(".")),
                    key=lambda p: p.name)
    if not shards:
        raise FileNotFoundError(f"{folder}: no *.tar shards")
    top = os.path.realpath(root)
    for p in shards:
        real = os.path.realpath(p)
        if not real.startswith(top + os.sep):
            raise ValueError(f"{p}: symlink to {real}, outside the dataset root {top}")
    return shards


def _octal(field: bytes, shard: Path, offset: int) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ValueError(f"{shard}: corrupt tar header at byte {offset} (field {field!r}); re-fetch the shard") from None


def scan_tar(shard: Path):
    """Yield ``(member name, data offset, size, kind)`` for each entry of a tar file (ustar, GNU long names,
    pax ``path``); ``kind`` is 'file' or 'other'. Raises naming the shard and offset when it ends early."""
    size_on_disk = os.path.getsize(shard)
    with open(shard, "rb") as f:
        pos = 0
        long_name = None
        while True:
            hdr = f.read(_BLOCK)
            if len(hdr) == 0:
                raise ValueError(f"{shard}: ends at byte {pos} without the end-of-archive blocks (the shard was cut "
                                 "short); re-fetch it")
            if len(hdr) < _BLOCK:
                raise ValueError(f"{shard}: ends early, inside a tar header at byte {pos}; re-fetch it")
            if hdr == b"\0" * _BLOCK:
                return
            chk = _octal(hdr[148:156], shard, pos)
            if chk != sum(hdr[:148]) + 8 * 32 + sum(hdr[156:]):
                raise ValueError(f"{shard}: corrupt tar header at byte {pos} (checksum); re-fetch the shard")
            size = _octal(hdr[124:136], shard, pos)
            kind = hdr[156:157]
            data = pos + _BLOCK
            if data + size > size_on_disk:
                raise ValueError(f"{shard}: ends early: the member at byte {pos} needs {size} bytes, the file stops "
                                 f"{size_on_disk - data} bytes in; re-fetch it")
            pos = data + (size + _BLOCK - 1) // _BLOCK * _BLOCK
            if kind in (b"L", b"x"):
                payload = f.read(size)
                if kind == b"L":
                    long_name = payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                else:
                    for rec in payload.split(b"\n"):
                        if b" path=" in rec:
                            long_name = rec.split(b" path=", 1)[1].decode("utf-8", "surrogateescape")
                f.seek(pos)
                continue
            name = long_name
            long_name = None
            if name is None:
                name = hdr[0:100].split(b"\0", 1)[0]
                if hdr[257:262] == b"ustar" and hdr[345:346] != b"\0":
                    name = hdr[345:500].split(b"\0", 1)[0] + b"/" + name
                name = name.decode("utf-8", "surrogateescape")
            if kind == b"g":
                f.seek(pos)
                continue
            is_file = kind in (b"0", b"\0", b"7")
            if is_file and name.endswith(".cls") and size < 4096:
                yield name, data, size, f.read(size)
            else:
                yield name, data, size, None if is_file else "other"
            f.seek(pos)


class _Skips:
    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, where: str) -> None:
        self.counts[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < MAX_EXAMPLES:
            ex.append(where)


def _index_split(root: Path, split: str, names: list[str] | None):
    shards = shard_files(root, split)
    skips = _Skips()
    cols = {"shard": [], "offset": [], "size": [], "label": [], "member": []}
    starts = [0]
    index = {n: i for i, n in enumerate(names)} if names else None
    for s, shard in enumerate(shards):
        samples: dict[str, dict] = {}  # insertion order = the order keys first appear in the shard
        for name, off, size, payload in scan_tar(shard):
            where = f"{shard.name}:{name}"
            if payload == "other":
                skips.add("not_a_file", where)
                continue
            base = name.rsplit("/", 1)[-1]
            dot = base.find(".")
            if dot <= 0:
                skips.add("other_member", where)
                continue
            key = name[: len(name) - len(base) + dot]
            ext = base[dot + 1:].lower()
            entry = samples.setdefault(key, {})
            if ext == "cls":
                text = payload.decode("utf-8", "replace").strip() if payload is not None else ""
                if text.isdigit() and text.isascii():
                    label = int(text)
                elif index is not None and text in index:
                    label = index[text]
                else:
                    raise ValueError(f"{shard}: member {name}: label {text[:40]!r} is not an integer"
                                     f"{' or a name in class_names.json' if index else ''}")
                entry["label"] = label
            elif ext in TAR_IMAGE_EXTENSIONS:
                if "image" in entry:
                    skips.add("extra_image", where)
                else:
                    entry["image"] = (name, off, size)
            else:
                skips.add("other_member", where)
        count = 0
        for key, entry in samples.items():
            if "image" not in entry:
                skips.add("no_image", f"{shard.name}:{key}.cls")
                continue
            if "label" not in entry:
                skips.add("no_label", f"{shard.name}:{entry['image'][0]}")
                continue
            name, off, size = entry["image"]
            cols["shard"].append(s)
            cols["offset"].append(off)
            cols["size"].append(size)
            cols["label"].append(entry["label"])
            cols["member"].append(name)
            count += 1
        starts.append(starts[-1] + count)
    return shards, cols, starts, skips


def index_webdataset(root: str | Path) -> dict:
    """Index every split's shards; writes ``ROOT/wds_index_<split>.npz``; returns a JSON-able summary."""
    root = require_dir(Path(root), "webdataset root")
    names_file = root / "class_names.json"
    names = json.loads(names_file.read_text(encoding="utf-8")) if names_file.is_file() else None
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"{names_file}: expected a JSON list of class-name strings")
    done = {}
    for split in webdataset_splits(root):
        done[split] = _index_split(root, split, names)
    k = len(names) if names else 1 + max((max(c["label"], default=-1) for _, c, _, _ in done.values()), default=0)
    summary = {"root": str(root), "num_classes": k, "splits": {}}
    for split, (shards, cols, starts, skips) in done.items():
        n = len(cols["label"])
        if n == 0:
            raise ValueError(f"{root}: split {split!r} has no labelled samples in {len(shards)} shard(s) "
                             f"(skipped: {dict(skips.counts)})")
        stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in shards]
        meta = {"split": split, "num_classes": k, "class_names": names or [str(i) for i in range(k)],
                "skipped": dict(skips.counts), "skipped_examples": skips.examples}
        path = root / INDEX_NAME.format(split=split)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, shards=np.array([str(p.relative_to(root)) for p in shards]),
                 shard_stat=np.array(stats, dtype=np.int64), shard=np.array(cols["shard"], dtype=np.int32),
                 offset=np.array(cols["offset"], dtype=np.int64), size=np.array(cols["size"], dtype=np.int64),
                 label=np.array(cols["label"], dtype=np.int64), member=np.array(cols["member"]),
                 starts=np.array(starts, dtype=np.int64), meta=np.array(json.dumps(meta)))
        os.replace(tmp, path)
        summary["splits"][split] = {"samples": n, "shards": len(shards), "index": str(path),
                                    "skipped": dict(skips.counts), "skipped_examples": skips.examples}
    return summary


def read_webdataset(root: str | Path, split: str = "train") -> SampleTable:
    """Split ``split`` from its index (``data index`` first); the table's rows are the shards' samples."""
    root = Path(root)
    path = root / INDEX_NAME.format(split=split)
    if split not in webdataset_splits(root):
        raise FileNotFoundError(f"{root / split}: webdataset split {split!r} not found")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no index for split {split!r}; run `python -m alr_fast data index "
                                f"--dataset webdataset --root {root}` once")
    with np.load(path, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    meta = json.loads(str(d["meta"]))
    shards = [str(s) for s in d["shards"]]
    for rel, (size, mtime) in zip(shards, d["shard_stat"].tolist()):
        p = root / rel
        if not p.is_file() or (p.stat().st_size, p.stat().st_mtime_ns) != (size, mtime):
            raise ValueError(f"{p}: changed (or gone) since {path} was written; run `python -m alr_fast data index "
                             f"--dataset webdataset --root {root}` again")
    members = d["member"].tolist()
    shard_of = d["shard"]
    paths = [f"{shards[s]}:{m}" for s, m in zip(shard_of.tolist(), members)]
    tar = {"shards": shards, "shard": shard_of, "offset": d["offset"], "size": d["size"], "starts": d["starts"]}
    extra = {"layout": "tar shards", "index": str(path), "shards": len(shards), "skipped": meta["skipped"],
             "skipped_examples": meta["skipped_examples"],
             "index_order": "shards by name, then the order of the image members in each shard"}
    return SampleTable(name="webdataset", split=split, root=root, labels=d["label"], class_names=meta["class_names"],
                       paths=paths, image_root=root, label_source=str(path), extra=extra, tar=tar)
