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
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from alr_fast.util.atomic import atomic_path, os_error, write_text_atomic
from alr_fast.util.rowfiles import (  # noqa: F401  (re-exported: the trainer's export names)
    CHUNK_BYTES,
    RowPart,
    assemble_rows,
    chunk_rows,
    iter_rows,
    npy_layout,
    write_csv,
)
from alr_fast.loss.bank import SoftLabelBank
from alr_fast.loss.bank_export import assemble_bank_files, write_bank_part
from alr_fast.train.distributed import all_reduce_sum, barrier
from alr_fast.train.precision import autocast, model_input
from alr_fast.train.runtime import Runtime

if TYPE_CHECKING:
    from alr_fast.data.train_data import TrainData

__all__ = ["predict_probs", "stream_predictions", "write_exports", "RowPart", "assemble_rows", "iter_rows",
           "npy_layout", "class_names_of", "CHUNK_BYTES", "CLEANLAB_IN_MEMORY", "CLEANLAB_BATCHED",
           "add_oos_columns"]

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
        write_csv(csv_path, ["global_index", "given_label"],
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

        write_csv(csv_path, [header[i] for i in keep], columns, n, extra)


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
    error = None
    try:  # every rank writes its part files; a rank that fails (disk full) makes every rank stop, parts removed
        stream_predictions(engine.module, data.predict_source(bank.sharding, batch_size), rt,
                           parts / f"pred{rt.rank}.f32")
        write_bank_part(parts, bank, chunk_bytes=chunk_bytes)  # soft labels, refined label, given-label mass
    except OSError as e:
        error = os_error(e, parts)
    if int(all_reduce_sum(torch.tensor(int(error is not None), device=rt.device)).item()):
        if rt.is_main:
            shutil.rmtree(parts, ignore_errors=True)
        raise error or OSError(f"exports: another rank could not write its part files in {parts} (see its message)")
    info = {}
    if rt.is_main:
        try:
            info = _assemble(out, parts, bank, data, rt, n, k, chunk_bytes)
        except OSError as e:
            error = e
        finally:  # on success and on failure (a full disk): no part file is left behind
            shutil.rmtree(parts, ignore_errors=True)
    if int(all_reduce_sum(torch.tensor(int(error is not None), device=rt.device)).item()):
        raise error or OSError(f"exports: rank 0 could not write the exports in {out} (see its message)")
    return info


def _assemble(out: Path, parts: Path, bank: SoftLabelBank, data: "TrainData", rt: Runtime, n: int, k: int,
              chunk_bytes: int) -> dict:
    """Rank 0: every export from the part files, each written atomically."""
    given = data.given_labels.astype(np.int64)
    world = rt.world_size
    # Every file below appears complete or not at all (written aside, fsynced, renamed: alr_fast.util.atomic).
    with atomic_path(out / "pred_probs.npy") as tmp:
        predicted = assemble_rows(tmp, n, k, [RowPart.load(parts / f"pred{r}.f32") for r in range(world)],
                                  chunk_bytes=chunk_bytes)
    oos = _oos_columns(out, given, chunk_bytes)
    refined = assemble_bank_files(out, parts, given, k, world, extra_columns=oos,
                                  chunk_bytes=chunk_bytes)  # soft_labels.npy, labels.npy, refined_labels.csv
    names = class_names_of(data)
    write_text_atomic(out / "class_names.json", json.dumps(names) + "\n")
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
    return info
