"""Exports of a run: the refined labels, the bank's soft labels and the model's probabilities, as files.

A collective step at the end of training (and optionally each epoch); see :func:`write_exports`.

Built to scale to full WebVision (2.4M x 1000 classes, 9.6 GB per float32 file) with bounded memory on every
rank: no N x K array goes through a collective, sits in memory or in a memory map. Each rank streams its own
rows (predictions batch by batch, bank rows chunk by chunk) to raw part files under ``<out>/.export_parts/``
(``--out`` is on a shared filesystem for multi-node runs anyway). Rank 0 then assembles each ``.npy`` in chunks
of global rows (``chunk_bytes``, 64 MiB by default) with plain reads and writes - no ``mmap`` - so its resident
memory grows by about two chunks, not by the file size. Readers of the files can use ``np.load(mmap_mode='r')``
or :func:`iter_rows` for the same bounded-memory pass.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from alr_fast.util.atomic import atomic_path, write_text_atomic
from alr_fast.loss.bank import SoftLabelBank
from alr_fast.train.distributed import barrier
from alr_fast.train.precision import autocast, model_input
from alr_fast.train.runtime import Runtime

if TYPE_CHECKING:
    from alr_fast.data.train_data import TrainData

__all__ = ["predict_probs", "stream_predictions", "write_exports", "RowPart", "assemble_rows", "iter_rows",
           "npy_layout", "class_names_of", "CHUNK_BYTES", "CLEANLAB_IN_MEMORY", "CLEANLAB_BATCHED",
           "add_oos_columns"]

CHUNK_BYTES = 64 * 2**20
"""Rows of a probability file handled at once by the assembler and the CSV writers (64 MiB of float32)."""

CLEANLAB_IN_MEMORY = ("from cleanlab.filter import find_label_issues; "
                      "issues = find_label_issues(np.load('labels.npy'), np.load('{probs}'), "
                      "return_indices_ranked_by='self_confidence')")
CLEANLAB_BATCHED = ("from cleanlab.experimental.label_issues_batched import find_label_issues_batched; "
                    "issues = find_label_issues_batched(labels_file='labels.npy', pred_probs_file='{probs}', "
                    "batch_size=100000, n_jobs=1)")


@torch.no_grad()
def _batches_of_probs(model: torch.nn.Module, source, rt: Runtime) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(global indices [b], float32 softmax [b, K]) per batch of ``source``, padding rows dropped."""
    model.eval()
    try:
        for x, idx in source.epoch(0):
            with autocast(rt.precision, rt.device):
                p = torch.softmax(model(model_input(x, model)).float(), dim=1)
            keep = idx >= 0
            yield idx[keep].cpu().numpy().astype(np.int64), p[keep].cpu().numpy().astype(np.float32, copy=False)
    finally:
        model.train()


def predict_probs(model: torch.nn.Module, source, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(global indices [n], softmax probabilities [n, K] fp32 on the CPU) of ``model`` over ``source``, in memory
    (small datasets; :func:`stream_predictions` writes them to disk batch by batch instead)."""
    idxs, probs = [], []
    for idx, p in _batches_of_probs(model, source, rt):
        idxs.append(torch.from_numpy(idx))
        probs.append(torch.from_numpy(p))
    if not idxs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(idxs), torch.cat(probs)


@dataclass
class RowPart:
    """Rows of an [N, K] float32 file held by one writer: ``index[j]`` is the global row of the j-th row stored in
    the raw (headerless, C-order) float32 file ``path``."""

    index: np.ndarray
    path: Path

    def save(self) -> None:
        np.save(self.path.with_suffix(".index.npy"), self.index)

    @classmethod
    def load(cls, path: Path) -> "RowPart":
        return cls(np.load(path.with_suffix(".index.npy")), path)


def stream_predictions(model: torch.nn.Module, source, rt: Runtime, path: Path) -> RowPart:
    """Predict ``source`` and append each batch's probabilities to the raw file ``path`` as it comes (memory:
    one batch); returns the part (its index is also saved next to it)."""
    index = []
    with open(path, "wb") as f:
        for idx, p in _batches_of_probs(model, source, rt):
            f.write(np.ascontiguousarray(p).tobytes())
            index.append(idx)
    part = RowPart(np.concatenate(index) if index else np.zeros(0, dtype=np.int64), Path(path))
    part.save()
    return part


def _read_raw_rows(f, k: int, start: int, count: int) -> np.ndarray:
    """Rows [start, start + count) of a raw float32 [*, k] file, read (not mapped)."""
    f.seek(start * k * 4)
    out = np.fromfile(f, dtype=np.float32, count=count * k)
    if out.size != count * k:
        raise ValueError(f"{f.name}: expected {count} rows of {k} float32 from row {start}, the file is short")
    return out.reshape(count, k)


def _runs(positions: np.ndarray) -> list[tuple[int, int, int]]:
    """Sorted positions -> (first position, count, offset into ``positions``) of each run of consecutive ones."""
    if positions.size == 0:
        return []
    breaks = np.nonzero(np.diff(positions) != 1)[0] + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [positions.size]])
    return [(int(positions[s]), int(e - s), int(s)) for s, e in zip(starts, ends)]


def _write_npy_header(f, shape: tuple[int, ...], dtype=np.float32) -> None:
    np.lib.format.write_array_header_1_0(
        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a C-order ``.npy`` file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran:
            raise ValueError(f"{path}: Fortran-order arrays are not supported here")
        return tuple(shape), dtype, f.tell()


def _chunk_rows(k: int, chunk_bytes: int, itemsize: int = 4) -> int:
    return max(1, chunk_bytes // max(1, k * itemsize))


def assemble_rows(out_path: Path, num_rows: int, k: int, parts: list[RowPart], *,
                  chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """Write the float32 ``.npy`` [num_rows, k] whose rows come from ``parts``, one chunk of global rows at a
    time (rows no part holds are 0). Returns the bool [num_rows] mask of rows written. A row held by two parts
    is an error."""
    order = [np.argsort(p.index, kind="stable") for p in parts]
    sorted_idx = [p.index[o] for p, o in zip(parts, order)]
    for p, s in zip(parts, sorted_idx):
        if s.size and (s[0] < 0 or s[-1] >= num_rows):
            raise ValueError(f"{p.path}: global index outside [0, {num_rows})")
        if s.size > 1 and (np.diff(s) == 0).any():
            raise ValueError(f"{p.path}: a global index appears twice")
    filled = np.zeros(num_rows, dtype=bool)
    step = _chunk_rows(k, chunk_bytes)
    files = [open(p.path, "rb") for p in parts]
    try:
        with open(out_path, "wb") as out:
            _write_npy_header(out, (num_rows, k))
            for a in range(0, num_rows, step):
                b = min(num_rows, a + step)
                buf = np.zeros((b - a, k), dtype=np.float32)
                for f, o, s in zip(files, order, sorted_idx):
                    lo, hi = np.searchsorted(s, [a, b])
                    if lo == hi:
                        continue
                    rows = s[lo:hi]
                    if filled[rows].any():
                        raise ValueError(f"rows of {out_path.name} held by two parts (first: {int(rows[filled[rows]][0])})")
                    filled[rows] = True
                    pos = o[lo:hi]
                    by_pos = np.argsort(pos, kind="stable")
                    for first, count, off in _runs(pos[by_pos]):
                        buf[rows[by_pos[off:off + count]] - a] = _read_raw_rows(f, k, first, count)
                out.write(buf.tobytes())
    finally:
        for f in files:
            f.close()
    return filled


def iter_rows(path: Path, *, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of a 2-D ``.npy`` in chunks of about ``chunk_bytes``, read without mapping the file."""
    shape, dtype, offset = npy_layout(path)
    n, k = shape
    step = _chunk_rows(k, chunk_bytes, dtype.itemsize)
    with open(path, "rb") as f:
        for a in range(0, n, step):
            b = min(n, a + step)
            f.seek(offset + a * k * dtype.itemsize)
            yield a, np.fromfile(f, dtype=dtype, count=(b - a) * k).reshape(b - a, k)


def class_names_of(data: "TrainData") -> list[str]:
    """The dataset's class names (column order of every probability file); "0".."K-1" when unknown."""
    names = data.extra.get("class_names") if data.extra else None
    if names is not None and len(names) == data.num_classes:
        return [str(c) for c in names]
    return [str(c) for c in range(data.num_classes)]


def _oos_columns(out: Path, given: np.ndarray, chunk_bytes: int) -> tuple[list[str], Iterator[list]] | None:
    """Out-of-sample columns of ``refined_labels.csv`` when a finished crossval left oos_pred_probs.npy here."""
    oos = out / "oos_pred_probs.npy"
    done = out / "crossval.json"
    if not (oos.exists() and done.exists() and json.loads(done.read_text()).get("complete")):
        return None
    shape, _, _ = npy_layout(oos)
    if shape[0] != given.shape[0]:
        raise ValueError(f"{oos}: {shape[0]} rows but this run has {given.shape[0]} samples")
    n = given.shape[0]
    label = np.zeros(n, dtype=np.int64)
    conf = np.zeros(n, dtype=np.float32)
    given_p = np.zeros(n, dtype=np.float32)
    for a, rows in iter_rows(oos, chunk_bytes=chunk_bytes):
        b = a + rows.shape[0]
        label[a:b] = rows.argmax(axis=1)
        conf[a:b] = rows.max(axis=1)
        given_p[a:b] = rows[np.arange(b - a), given[a:b]]
    order = np.lexsort((np.arange(n), given_p))  # least out-of-sample probability on the given label first
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    header = ["oos_label", "oos_confidence", "oos_given_prob", "oos_suspect_rank"]

    def rows_of(a: int, b: int) -> list:
        return list(zip(label[a:b].tolist(), (f"{c:.6f}" for c in conf[a:b].tolist()),
                        (f"{c:.6f}" for c in given_p[a:b].tolist()), rank[a:b].tolist()))

    return header, rows_of


def _write_csv(path: Path, header: list[str], columns, n: int, extra=None, block: int = 65536) -> None:
    """A CSV of n rows written ``block`` rows at a time; ``columns(a, b)`` gives rows [a, b) as tuples."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header + (extra[0] if extra else []))
        for a in range(0, n, block):
            b = min(n, a + block)
            rows = columns(a, b)
            if extra:
                rows = [list(r) + list(e) for r, e in zip(rows, extra[1](a, b))]
            w.writerows(rows)


def add_oos_columns(out: Path, given: np.ndarray, *, chunk_bytes: int = CHUNK_BYTES) -> None:
    """(rank 0) Add the out-of-sample columns to ``<out>/refined_labels.csv`` (created with the given labels
    only when no training run wrote one here); streamed, the CSV is never held in memory."""
    out = Path(out)
    extra = _oos_columns(out, given, chunk_bytes)
    if extra is None:
        raise ValueError(f"{out}: no finished crossval (oos_pred_probs.npy + crossval.json) to add columns from")
    csv_path = out / "refined_labels.csv"
    n = given.shape[0]
    if not csv_path.exists():
        _write_csv(csv_path, ["global_index", "given_label"],
                   lambda a, b: [(i, int(g)) for i, g in zip(range(a, b), given[a:b].tolist())], n, extra)
        return
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f))
    keep = [i for i, h in enumerate(header) if not h.startswith("oos_")]
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        next(reader)

        def columns(a: int, b: int) -> list:
            rows = []
            for _ in range(b - a):
                r = next(reader)
                rows.append([r[i] for i in keep])
            return rows

        _write_csv(csv_path, [header[i] for i in keep], columns, n, extra)


def write_exports(out: Path, engine, bank: SoftLabelBank, data: "TrainData", rt: Runtime, batch_size: int, *,
                  chunk_bytes: int = CHUNK_BYTES) -> dict:
    """refined_labels.csv, pred_probs.npy, soft_labels.npy, labels.npy, class_names.json and exports.json;
    a collective call (every rank streams its rows to a part file; rank 0 assembles them chunk by chunk)."""
    out = Path(out)
    k, n = bank.num_classes, data.num_train
    parts = out / ".export_parts"
    if rt.is_main:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True, exist_ok=True)
    barrier()
    stream_predictions(engine.module, data.predict_source(rt.rank, rt.world_size, batch_size), rt,
                       parts / f"pred{rt.rank}.f32")
    # The bank's rows, float32, a chunk at a time (a bf16 bank is never copied whole).
    given_local = bank.given
    step = _chunk_rows(k, chunk_bytes)
    refined_l, conf_l, mass_l = [], [], []
    with open(parts / f"soft{rt.rank}.f32", "wb") as f:
        for a in range(0, bank.num_samples, step):
            soft = bank.soft[a:a + step].float()
            f.write(soft.cpu().numpy().tobytes())
            conf, ref = soft.max(dim=1)
            refined_l.append(ref.cpu())
            conf_l.append(conf.cpu())
            mass_l.append(soft.gather(1, given_local[a:a + step, None]).squeeze(1).cpu())
    RowPart(bank.global_index.cpu().numpy().astype(np.int64), parts / f"soft{rt.rank}.f32").save()
    cat = (lambda xs, dt: torch.cat(xs).numpy() if xs else np.zeros(0, dtype=dt))
    np.savez(parts / f"bank{rt.rank}.npz", index=bank.global_index.cpu().numpy(),
             refined=cat(refined_l, np.int64), confidence=cat(conf_l, np.float32), given_mass=cat(mass_l, np.float32))
    del refined_l, conf_l, mass_l
    barrier()
    info = {}
    if rt.is_main:
        given = data.given_labels.astype(np.int64)
        world = rt.world_size
        # Every file below appears complete or not at all (written aside, fsynced, renamed: alr_fast.util.atomic).
        with atomic_path(out / "pred_probs.npy") as tmp:
            predicted = assemble_rows(tmp, n, k, [RowPart.load(parts / f"pred{r}.f32") for r in range(world)],
                                      chunk_bytes=chunk_bytes)
        with atomic_path(out / "soft_labels.npy") as tmp:
            assemble_rows(tmp, n, k, [RowPart.load(parts / f"soft{r}.f32") for r in range(world)],
                          chunk_bytes=chunk_bytes)
        refined = np.zeros(n, dtype=np.int64)
        confidence = np.zeros(n, dtype=np.float32)
        given_mass = np.zeros(n, dtype=np.float32)
        for r in range(world):
            with np.load(parts / f"bank{r}.npz") as z:
                rows = z["index"]
                refined[rows], confidence[rows], given_mass[rows] = z["refined"], z["confidence"], z["given_mass"]
        # Suspicion: soft-label mass that moved away from the given label; rank 1 = most suspect (ties by index).
        order = np.lexsort((np.arange(n), given_mass))
        suspect_rank = np.empty(n, dtype=np.int64)
        suspect_rank[order] = np.arange(1, n + 1)
        del order
        oos = _oos_columns(out, given, chunk_bytes)
        _write_csv(out / "refined_labels.csv",
                   ["global_index", "given_label", "refined_label", "confidence", "suspect_rank"],
                   lambda a, b: list(zip(range(a, b), given[a:b].tolist(), refined[a:b].tolist(),
                                         (f"{c:.6f}" for c in confidence[a:b].tolist()), suspect_rank[a:b].tolist())),
                   n, oos)
        with atomic_path(out / "labels.npy") as tmp:
            np.save(tmp, given)
        names = class_names_of(data)
        write_text_atomic(out / "class_names.json", json.dumps(names) + "\n")
        shutil.rmtree(parts, ignore_errors=True)
        files = {
            "pred_probs.npy": {"kind": "in-sample", "shape": [n, k], "dtype": "float32",
                               "what": "softmax of the final model (eval transform) on the samples it trained on; "
                                       "NOT valid input for cleanlab.filter.find_label_issues (use a crossval's "
                                       "oos_pred_probs.npy); rows of images skipped as unreadable are 0"},
            "soft_labels.npy": {"kind": "in-sample", "shape": [n, k], "dtype": "float32",
                                "what": f"the bank's soft labels (stored as "
                                        f"{str(bank.soft.dtype).replace('torch.', '')}), one row per sample"},
            "labels.npy": {"kind": "given", "shape": [n], "dtype": "int64", "what": "the given (noisy) labels"},
            "refined_labels.csv": {"kind": "in-sample" + (" + out-of-sample (oos_* columns)" if oos else ""),
                                   "what": "per sample: given label, the bank's refined label, its mass, and the "
                                           "suspect rank (1 = least bank mass left on the given label)"},
            "class_names.json": {"kind": "names", "what": "the class of each probability column, in order"},
        }
        info = {
            "num_samples": n,
            "num_classes": k,
            "num_changed": int((refined != given).sum()),
            "num_unpredicted": int(n - predicted.sum()),
            "files": files,
        }
        if oos:
            files["oos_pred_probs.npy"] = {"kind": "out-of-sample", "what": "see crossval.json"}
            info["cleanlab"] = CLEANLAB_IN_MEMORY.format(probs="oos_pred_probs.npy")
            info["cleanlab_batched"] = CLEANLAB_BATCHED.format(probs="oos_pred_probs.npy")
        else:
            info["cleanlab"] = ("run `python -m alr_fast crossval --out <this folder> ...` for out-of-sample "
                                "probabilities, then: " + CLEANLAB_IN_MEMORY.format(probs="oos_pred_probs.npy"))
        write_text_atomic(out / "exports.json", json.dumps(info, indent=2) + "\n")
    barrier()
    return info
