"""The bank's export files, written the same way by the trainer and by :meth:`alr_fast.loss.alr.ALR.export`.

``soft_labels.npy`` (float32 [N, K]), ``labels.npy`` (the given labels, int64 [N]) and ``refined_labels.csv``
(per sample: ``global_index, given_label, refined_label, confidence, suspect_rank``; suspect rank 1 is the
sample whose soft label kept the least mass on its given label). In two steps, so every rank only ever holds its
own rows: :func:`write_bank_part` (every rank: its rows, a chunk at a time, to a part file), then, after a
barrier, :func:`assemble_bank_files` (rank 0: the files, one chunk of global rows at a time).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alr_fast.loss.bank import SoftLabelBank
from alr_fast.util.atomic import atomic_path
from alr_fast.util.rowfiles import CHUNK_BYTES, RowPart, assemble_rows, chunk_rows, write_csv

__all__ = ["write_bank_part", "assemble_bank_files", "BANK_FILES"]

BANK_FILES = ("soft_labels.npy", "labels.npy", "refined_labels.csv")


def write_bank_part(parts: Path, bank: SoftLabelBank, *, chunk_bytes: int = CHUNK_BYTES) -> None:
    """This rank's bank rows, float32, a chunk at a time (a bf16 bank is never copied whole), to
    ``parts/soft<rank>.f32`` (+ its index) and its refined label, confidence and given-label mass to
    ``parts/bank<rank>.npz``."""
    parts = Path(parts)
    k, rank = bank.num_classes, bank.sharding.rank
    step = chunk_rows(k, chunk_bytes)
    refined_l, conf_l, mass_l = [], [], []
    with open(parts / f"soft{rank}.f32", "wb") as f:
        for a in range(0, bank.num_samples, step):
            soft = bank.soft[a:a + step].float()
            f.write(soft.cpu().numpy().tobytes())
            conf, ref = soft.max(dim=1)
            refined_l.append(ref.cpu())
            conf_l.append(conf.cpu())
            mass_l.append(soft.gather(1, bank.given[a:a + step, None]).squeeze(1).cpu())
    RowPart(bank.global_index.cpu().numpy().astype(np.int64), parts / f"soft{rank}.f32").save()
    cat = (lambda xs, dt: torch.cat(xs).numpy() if xs else np.zeros(0, dtype=dt))
    np.savez(parts / f"bank{rank}.npz", index=bank.global_index.cpu().numpy(),
             refined=cat(refined_l, np.int64), confidence=cat(conf_l, np.float32), given_mass=cat(mass_l, np.float32))


def assemble_bank_files(out: Path, parts: Path, given: np.ndarray, num_classes: int, world_size: int, *,
                        extra_columns=None, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """(rank 0, after every rank's :func:`write_bank_part`) Write ``BANK_FILES`` into ``out``; each appears
    complete or not at all. ``extra_columns``: ``(header, rows_of(a, b))`` appended to the CSV (the trainer's
    out-of-sample columns). Returns the refined labels, int64 [N]."""
    out, parts = Path(out), Path(parts)
    given = np.asarray(given, dtype=np.int64)
    n = given.shape[0]
    with atomic_path(out / "soft_labels.npy") as tmp:
        filled = assemble_rows(tmp, n, num_classes, [RowPart.load(parts / f"soft{r}.f32") for r in range(world_size)],
                               chunk_bytes=chunk_bytes)
    if not filled.all():
        raise ValueError(f"{out / 'soft_labels.npy'}: the {world_size} bank part(s) in {parts} cover "
                         f"{int(filled.sum())} of {n} rows")
    refined = np.zeros(n, dtype=np.int64)
    confidence = np.zeros(n, dtype=np.float32)
    given_mass = np.zeros(n, dtype=np.float32)
    for r in range(world_size):
        with np.load(parts / f"bank{r}.npz") as z:
            rows = z["index"]
            refined[rows], confidence[rows], given_mass[rows] = z["refined"], z["confidence"], z["given_mass"]
    # Suspicion: soft-label mass that moved away from the given label; rank 1 = most suspect (ties by index).
    order = np.lexsort((np.arange(n), given_mass))
    suspect_rank = np.empty(n, dtype=np.int64)
    suspect_rank[order] = np.arange(1, n + 1)
    del order
    write_csv(out / "refined_labels.csv",
              ["global_index", "given_label", "refined_label", "confidence", "suspect_rank"],
              lambda a, b: list(zip(range(a, b), given[a:b].tolist(), refined[a:b].tolist(),
                                    (f"{c:.6f}" for c in confidence[a:b].tolist()), suspect_rank[a:b].tolist())),
              n, extra_columns)
    with atomic_path(out / "labels.npy") as tmp:
        np.save(tmp, given)
    return refined
