"""Cross-fitting: out-of-sample class probabilities for every training sample, from K models of the one trainer.

    python -m alr_fast crossval --recipe demo --method alr --folds 5 --out runs/xval   # or under torchrun/deepspeed

The samples are split into K folds (seeded, stratified by the given label; ``folds.npy``). Fold f's model is
an ordinary run of :func:`alr_fast.train.trainer.train` (``<out>/fold<f>/``), data-parallel on the same N ranks,
trained on the other K-1 folds; it then predicts fold f with the eval transform. ``oos_pred_probs.npy`` [N, K]
gathers those rows, so each sample's row comes from the one model that never saw its label - the input
``cleanlab.filter.find_label_issues`` is specified for. A finished fold (``fold<f>/oos_done.json``) is never
retrained: run the same command with ``--resume`` after a failure (an interrupted fold resumes from its own
checkpoints).

How a fold trains on a subset without touching the loaders or the bank: the fold's TrainData is the full
dataset with its loaders wrapped by :class:`FoldSource`, which drops held-out rows from every batch and refills
batches from the following ones, so the model never computes on a held-out sample and every rank takes the
same number of steps. Indices stay global, so the bank's owner rule (alr_fast.loss.sharding) is unchanged; the bank rows of
held-out samples stay their one-hot given labels (a fold's per-epoch label metrics count them as unchanged).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from alr_fast.config import Config, config_to_dict, save_config
from alr_fast.train.distributed import barrier
from alr_fast.train.exports import (CLEANLAB_BATCHED, CLEANLAB_IN_MEMORY, RowPart, add_oos_columns, assemble_rows,
                              class_names_of, stream_predictions)
from alr_fast.loss.sharding import Sharding

__all__ = ["assign_folds", "FoldSource", "fold_view", "crossval"]

log = logging.getLogger("alr_fast.crossval")


def assign_folds(labels: np.ndarray, num_folds: int, seed: int) -> np.ndarray:
    """int64 [N] fold of each sample: stratified (each class is spread over the folds as evenly as its size
    allows, and fold sizes differ by at most 1) and seeded (same labels and seed, same folds)."""
    labels = np.asarray(labels, dtype=np.int64)
    if num_folds < 2:
        raise ValueError(f"crossval --folds: need at least 2 folds, got {num_folds}")
    if labels.size < num_folds:
        raise ValueError(f"crossval --folds: {num_folds} folds for only {labels.size} samples")
    rng = np.random.default_rng([seed, 0xF01D5])
    # Sort by (class, random key) and deal the sorted rows out round-robin: within each class consecutive rows
    # go to consecutive folds, and the deal continues across classes, which balances the fold sizes too.
    order = np.lexsort((rng.random(labels.size), labels))
    folds = np.empty(labels.size, dtype=np.int64)
    folds[order] = np.arange(labels.size) % num_folds
    return folds


class FoldSource:
    """A loader restricted to the rows where ``keep`` is True: rows that are not kept are dropped from each batch
    and the batch is refilled from the next ones; ``num_steps`` batches per epoch, the last ones padded with
    index -1 (zero images). Wraps any BatchSource (arrays, DALI, torchvision)."""

    def __init__(self, inner, keep: np.ndarray, batch_size: int, num_steps: int):
        self.inner, self.batch_size, self.num_steps = inner, int(batch_size), int(num_steps)
        self.keep = torch.from_numpy(np.asarray(keep, dtype=bool))

    def __len__(self) -> int:
        return self.num_steps

    def epoch(self, epoch: int, start_step: int = 0):
        xs, idxs, held, step, keep = [], [], 0, 0, None
        for x, idx in self.inner.epoch(epoch):
            if keep is None:
                keep = self.keep.to(idx.device)
            m = (idx >= 0) & keep[idx.clamp_min(0)]
            xs.append(x[m])
            idxs.append(idx[m])
            held += int(m.sum())  # a host sync per wrapped batch: cheap next to the step it feeds
            while held >= self.batch_size:
                x_all, i_all = torch.cat(xs), torch.cat(idxs)
                if step >= self.num_steps:
                    raise RuntimeError(f"FoldSource: more kept rows than {self.num_steps} steps of "
                                       f"{self.batch_size} hold")
                if step >= start_step:
                    yield x_all[: self.batch_size], i_all[: self.batch_size]
                step += 1
                xs, idxs, held = [x_all[self.batch_size:]], [i_all[self.batch_size:]], held - self.batch_size
        rest_x = torch.cat(xs) if xs else None
        rest_i = torch.cat(idxs) if idxs else None
        if step >= self.num_steps and rest_i is not None and rest_i.numel():
            raise RuntimeError(f"FoldSource: {rest_i.numel()} kept rows left over after {self.num_steps} steps")
        while step < self.num_steps:
            if rest_x is None:
                raise RuntimeError("FoldSource: the wrapped loader yielded no batch to take the image shape from")
            pad = self.batch_size - rest_i.shape[0]
            if step >= start_step:
                yield (torch.cat([rest_x, rest_x.new_zeros((pad, *rest_x.shape[1:]))]),
                       torch.cat([rest_i, rest_i.new_full((pad,), -1)]))
            step += 1
            rest_x, rest_i = rest_x[:0], rest_i[:0]


def _owned_counts(mask: np.ndarray, sharding: Sharding) -> list[int]:
    """How many rows of ``mask`` each rank of ``sharding``'s world owns (under its rule), in rank order."""
    return [int(mask[dataclasses.replace(sharding, rank=r).owned(mask.size)].sum()) for r in range(sharding.world)]


def fold_view(data, folds: np.ndarray, fold: int):
    """The TrainData of fold ``fold``'s model: trains on the rows of the other folds; its predict source is empty
    (the held-out rows are predicted by :func:`crossval` into the out-of-sample file)."""
    train_mask = folds != fold

    def train_source(sharding, batch_size, seed):
        inner = data.train_source(sharding, batch_size, seed)
        owned = _owned_counts(train_mask, sharding)
        steps = min(len(inner), math.ceil(max(owned) / batch_size))
        return FoldSource(inner, train_mask, batch_size, steps)

    def predict_source(sharding, batch_size):
        return FoldSource(data.predict_source(sharding, batch_size), np.zeros_like(train_mask), batch_size, 0)

    return dataclasses.replace(data, train_source=train_source, predict_source=predict_source)


def _held_out_source(data, folds: np.ndarray, fold: int, sharding: Sharding, batch_size: int):
    held = folds == fold
    inner = data.predict_source(sharding, batch_size)
    return FoldSource(inner, held, batch_size, math.ceil(_owned_counts(held, sharding)[sharding.rank] / batch_size))


def crossval(cfg: Config, num_folds: int, *, fold_seed: int | None = None, data=None, runtime=None,
             keep_fold_checkpoints: bool = False) -> dict:
    """Run the K-fold cross-fit of ``cfg`` into ``cfg.train.out``; a collective call. Returns crossval.json.

    A fold's ``checkpoints/`` (bank shards and optimizer state: several N x K arrays at scale) serve only to
    resume that fold; once its held-out predictions and ``oos_done.json`` are written it is never retrained, so
    they are deleted unless ``keep_fold_checkpoints``. ``model.pt`` and the fold's logs stay.
    """
    from alr_fast.train.runtime import resolve_runtime
    from alr_fast.data.train_data import build_train_data
    from alr_fast.train.trainer import train

    rt = runtime or resolve_runtime(cfg.train.device, cfg.train.precision, cfg.method.backend)
    data = data or build_train_data(cfg, rt.device)
    out = Path(cfg.train.out)
    n, k = data.num_train, data.num_classes
    seed = cfg.train.seed if fold_seed is None else fold_seed
    folds = assign_folds(data.given_labels, num_folds, seed)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        saved = out / "folds.npy"
        if saved.exists() and not np.array_equal(np.load(saved), folds):
            raise ValueError(f"{saved}: the saved fold assignment differs from this run's (other labels, --folds or "
                             "fold seed); use a new --out")
        if not saved.exists():
            np.save(saved, folds)
            np.save(out / "labels.npy", data.given_labels.astype(np.int64))
        save_config(cfg, out / "crossval_config.json")
        (out / "class_names.json").write_text(json.dumps(class_names_of(data)) + "\n")
    barrier()
    predict_bs = max(cfg.train.batch_size, 256)
    t0 = time.perf_counter()
    fold_info = []
    for f in range(num_folds):
        fdir = out / f"fold{f}"
        done = fdir / "oos_done.json"
        if done.exists():
            if rt.is_main:
                log.info("crossval fold %d/%d: finished earlier, not retrained", f, num_folds)
            fold_info.append(json.loads(done.read_text()))
            continue
        fcfg = copy.deepcopy(cfg)
        fcfg.train.out = str(fdir)
        fcfg.train.seed = cfg.train.seed + f
        if rt.is_main:
            log.info("crossval fold %d/%d: training on %d samples, predicting %d", f, num_folds,
                     int((folds != f).sum()), int((folds == f).sum()))
        summary, model = train(fcfg, fold_view(data, folds, f), runtime=rt, return_model=True)
        held_out = _held_out_source(data, folds, f, rt.sharding(data.sharding_blocks), predict_bs)
        part = stream_predictions(model, held_out, rt, fdir / f"oos_part{rt.rank}.f32")
        if part.index.size and not (folds[part.index] == f).all():
            raise RuntimeError(f"crossval fold {f}: rank {rt.rank} predicted a row outside the held-out fold")
        barrier()
        if rt.is_main:
            (fdir / "pred_probs.npy").unlink(missing_ok=True)  # empty by construction; oos rows are in the parts
            info = {"fold": f, "train_samples": int((folds != f).sum()), "held_out": int((folds == f).sum()),
                    "epochs": fcfg.train.epochs, "world_size": rt.world_size, "peak_test_acc": summary["peak_test_acc"],
                    "last_test_acc": summary["last_test_acc"], "train_time_s": summary["train_time_s"]}
            done.write_text(json.dumps(info, indent=2) + "\n")
            fold_info.append(info)
            if not keep_fold_checkpoints:
                shutil.rmtree(fdir / "checkpoints", ignore_errors=True)
        barrier()
        del model
    result = {}
    if rt.is_main:
        parts = [RowPart.load(p) for f in range(num_folds) for p in sorted((out / f"fold{f}").glob("oos_part*.f32"))]
        filled = assemble_rows(out / "oos_pred_probs.npy", n, k, parts)
        result = {
            "complete": True,
            "folds": num_folds,
            "fold_seed": seed,
            "method": cfg.method.name,
            "num_samples": n,
            "num_classes": k,
            "num_unpredicted": int(n - filled.sum()),
            "sample_passes_trained": int(sum(i["train_samples"] * i["epochs"] for i in fold_info)),
            "world_size": rt.world_size,
            "time_s": time.perf_counter() - t0,
            "per_fold": fold_info,
            "files": {
                "oos_pred_probs.npy": {"kind": "out-of-sample", "shape": [n, k], "dtype": "float32",
                                       "what": "row i: softmax (eval transform) of the fold model that did not train "
                                               "on sample i; rows of unreadable images are 0"},
                "labels.npy": {"kind": "given", "shape": [n], "dtype": "int64"},
                "folds.npy": {"kind": "folds", "shape": [n], "dtype": "int64", "what": "fold of each sample"},
                "class_names.json": {"kind": "names", "what": "the class of each probability column"},
            },
            "cleanlab": CLEANLAB_IN_MEMORY.format(probs="oos_pred_probs.npy"),
            "cleanlab_batched": CLEANLAB_BATCHED.format(probs="oos_pred_probs.npy"),
            "config": config_to_dict(cfg),
        }
        (out / "crossval.json").write_text(json.dumps(result, indent=2) + "\n")
        add_oos_columns(out, data.given_labels.astype(np.int64))
        exports = out / "exports.json"
        info = json.loads(exports.read_text()) if exports.exists() else {"num_samples": n, "num_classes": k,
                                                                         "files": {}}
        info["files"].update(result["files"])
        info["files"]["refined_labels.csv"] = {
            "kind": ("in-sample + " if "refined_label" in info["files"].get("refined_labels.csv", {}).get("what", "")
                     else "") + "out-of-sample (oos_* columns)",
            "what": (info["files"].get("refined_labels.csv", {}).get("what", "given label per sample") +
                     "; oos_label / oos_confidence: argmax and max of oos_pred_probs; oos_given_prob: its "
                     "probability of the given label; oos_suspect_rank 1 = lowest oos_given_prob")}
        info["cleanlab"], info["cleanlab_batched"] = result["cleanlab"], result["cleanlab_batched"]
        exports.write_text(json.dumps(info, indent=2) + "\n")
        log.info("crossval: wrote %s/oos_pred_probs.npy [%d, %d] out-of-sample, %d rows unpredicted", out, n, k,
                 result["num_unpredicted"])
    barrier()
    return result

