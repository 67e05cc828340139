"""Exports of a run: the refined labels, the bank's soft labels and the model's probabilities, as files.

A collective step at the end of training (and optionally each epoch); see :func:`write_exports`.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from alr_fast.bank import SoftLabelBank
from alr_fast.distributed import barrier
from alr_fast.runtime import Runtime

if TYPE_CHECKING:
    from alr_fast.data.train_data import TrainData

__all__ = ["predict_probs", "write_exports"]


def _autocast(rt: Runtime):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(rt.precision)
    return torch.autocast(rt.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def predict_probs(model: torch.nn.Module, source, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(global indices [n], softmax probabilities [n, K] fp32 on the CPU) of ``model`` over ``source``."""
    model.eval()
    idxs, probs = [], []
    for x, idx in source.epoch(0):
        with _autocast(rt):
            p = torch.softmax(model(x).float(), dim=1)
        keep = idx >= 0
        idxs.append(idx[keep].cpu())
        probs.append(p[keep].cpu())
    model.train()
    if not idxs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(idxs), torch.cat(probs)


def write_exports(out: Path, engine, bank: SoftLabelBank, data: TrainData, rt: Runtime, batch_size: int) -> dict:
    """refined_labels.csv, pred_probs.npy, soft_labels.npy, labels.npy and exports.json; a collective call.

    Built to scale to full WebVision (2.4M x 1000): no N x K tensor goes through a collective or sits in
    memory. Each rank writes its own rows to ``<out>/.export_parts/`` (``--out`` is on a shared filesystem
    for multi-node runs anyway); rank 0 streams them into memory-mapped ``.npy`` files.
    """
    k, n = bank.num_classes, data.num_train
    gidx, probs = predict_probs(engine.module, data.predict_source(rt.rank, rt.world_size, batch_size), rt)
    parts = out / ".export_parts"
    if rt.is_main:
        parts.mkdir(parents=True, exist_ok=True)
    barrier()
    torch.save({"pred_index": gidx, "probs": probs, "bank_index": bank.global_index.cpu(),
                "soft": bank.soft.float().cpu()}, parts / f"part{rt.rank}.pt")
    barrier()
    info = {}
    if rt.is_main:
        given = data.given_labels.astype(np.int64)
        pred_mm = np.lib.format.open_memmap(out / "pred_probs.npy", mode="w+", dtype=np.float32, shape=(n, k))
        soft_mm = np.lib.format.open_memmap(out / "soft_labels.npy", mode="w+", dtype=np.float32, shape=(n, k))
        pred_mm[:] = 0.0  # rows never predicted (skipped unreadable images) stay 0
        refined = np.zeros(n, dtype=np.int64)
        confidence = np.zeros(n, dtype=np.float32)
        given_mass = np.zeros(n, dtype=np.float32)
        for r in range(rt.world_size):
            part = torch.load(parts / f"part{r}.pt", map_location="cpu", weights_only=True, mmap=True)
            pred_mm[part["pred_index"].numpy()] = part["probs"].numpy()
            rows, soft = part["bank_index"].numpy(), part["soft"]
            soft_mm[rows] = soft.numpy()
            refined[rows] = soft.argmax(dim=1).numpy()
            confidence[rows] = soft.max(dim=1).values.numpy()
            given_mass[rows] = soft.gather(1, torch.from_numpy(given[rows])[:, None]).squeeze(1).numpy()
        pred_mm.flush()
        soft_mm.flush()
        del pred_mm, soft_mm
        # Suspicion: soft-label mass that moved away from the given label; rank 1 = most suspect (ties by index).
        order = np.lexsort((np.arange(n), given_mass))
        suspect_rank = np.empty(n, dtype=np.int64)
        suspect_rank[order] = np.arange(1, n + 1)
        with open(out / "refined_labels.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["global_index", "given_label", "refined_label", "confidence", "suspect_rank"])
            w.writerows(zip(range(n), given.tolist(), refined.tolist(), (f"{c:.6f}" for c in confidence.tolist()),
                            suspect_rank.tolist()))
        np.save(out / "labels.npy", given)
        shutil.rmtree(parts, ignore_errors=True)
        info = {
            "num_samples": n,
            "num_classes": k,
            "num_changed": int((refined != given).sum()),
            "files": ["refined_labels.csv", "pred_probs.npy", "soft_labels.npy", "labels.npy"],
            "cleanlab": "cleanlab.filter.find_label_issues(np.load('labels.npy'), np.load('pred_probs.npy'))",
            "pred_probs_note": "in-sample probabilities of the final model (eval transform), not cross-validated; "
                               "rows of images skipped as unreadable are 0",
            "soft_labels_note": f"the bank's soft labels as float32 (stored as {str(bank.soft.dtype).replace('torch.', '')})",
        }
        (out / "exports.json").write_text(json.dumps(info, indent=2) + "\n")
    barrier()
    return info
