"""Evaluation protocol: top-1 / top-5 on every evaluation set, and model selection that never looks at a test set.

Evaluation sets of a run (each has a *role*; the on-disk ones besides the test split come from
``alr_fast.data.train_data.on_disk_eval_sets``; the set and batch wrappers live in ``alr_fast.data.loaders.wrappers``):

=================  ==========================================================  ======
dataset            sets (name: role)                                           select
=================  ==========================================================  ======
embedded, CIFAR,   ``test``: test                                              noisy_val if
ANIMAL-10N                                                                     val_fraction > 0
Clothing1M         ``val``: val (the clean val split), ``test``: test          val
(mini-)WebVision   ``webvision_val``: test (what papers report), with          noisy_val if
                   ``data.ilsvrc_val_list`` also ``ilsvrc_val``: test          val_fraction > 0
any, with          ``noisy_val``: val (a held-out slice of the *noisy* train
data.val_fraction  set, scored against its given labels)
=================  ==========================================================  ======

Model selection: the ``best_*`` fields of ``summary.json`` are the metrics of the epoch with the highest top-1
on the *selection split* (the clean ``val`` when the dataset has one, else ``noisy_val``); the model of that
epoch is saved as ``model_best.pt``. Test sets are never consulted (a test-set change cannot change the
selected epoch). Without a selection split there is no ``best_*``; ``peak_test_acc`` (the highest test top-1
over epochs) is kept as a labelled *oracle*, for diagnosis only.

The noisy validation slice: ``data.val_fraction`` of the training rows, stratified by given label (seed
``data.val_seed``). Its rows stay in the bank (same global indices, noise files and exports) but every train
batch turns them into padding (index -1, zero image), so they give no loss, no gradient and no bank update:
their labels are never trained on. Their images do pass through BatchNorm's batch statistics as padding
rows do (zeroed), never with their content.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from alr_fast.data.loaders.wrappers import EvalSet, ExcludeRows, _KeepRows, noisy_val_rows
from alr_fast.loss.sharding import Sharding
from alr_fast.train.precision import model_input

__all__ = ["topk_correct", "EvalPlan"]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """int64 [len(ks)]: how many rows have their label among the k highest logits, for each k.

    Ties: ``torch.topk`` order (lowest index first among equal logits on CPU); k is capped at the number of
    classes. Rows with a label < 0 are not counted."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices                        # [b, kmax]
    hit = (top == labels[:, None]) & (labels[:, None] >= 0)      # [b, kmax], at most one True per row
    cum = hit.cumsum(dim=1)                                       # cum[:, k-1] = label within the top k
    return torch.stack([cum[:, min(k, kmax) - 1].sum() for k in ks])


def _test_set_name(dataset: str) -> str:
    return "webvision_val" if dataset in ("webvision", "mini-webvision") else "test"


class EvalPlan:
    """Which sets a run evaluates, which one selects the model, and the running selection.

    Build it once per run with :meth:`build`; per epoch call :meth:`evaluate` then :meth:`observe`."""

    def __init__(self, sets: list[EvalSet], num_classes: int, val_rows: np.ndarray | None, num_train: int):
        names = [s.name for s in sets]
        if len(set(names)) != len(names):
            raise ValueError(f"EvalPlan: duplicate evaluation set names {names}")
        self.sets = sets
        self.ks = (1, 5) if num_classes >= 5 else (1,)
        self.val_rows = val_rows
        self.num_train = num_train
        vals = [s.name for s in sets if s.role == "val"]
        # The clean val split (Clothing1M) wins over the noisy slice when both exist.
        self.selected_by = "val" if "val" in vals else (vals[0] if vals else None)
        self.test_name = next((s.name for s in sets if s.role == "test"), None)
        self.best_epoch = -1
        self.best_score = -1.0
        self.best_row: dict = {}
        self.peak_test, self.peak_epoch = -1.0, -1

    @classmethod
    def build(cls, cfg, data, device) -> "EvalPlan":
        """The plan for ``cfg`` and its TrainData: the trainer's test split, the extra sets the data provides
        (``data.eval_sets``) and, with ``data.val_fraction > 0``, the noisy validation slice."""
        test = EvalSet(_test_set_name(cfg.data.dataset), "test", data.test_source, np.asarray(data.test_labels),
                       int(len(data.test_labels)))
        sets = [test, *getattr(data, "eval_sets", [])]
        val_rows = None
        if cfg.data.val_fraction > 0:
            val_rows = noisy_val_rows(data.given_labels, cfg.data.val_fraction, cfg.data.val_seed)
            rows_source = getattr(data, "rows_source", None)
            if rows_source is not None:
                source = lambda bs, r=val_rows: rows_source(r, bs)  # noqa: E731
            else:
                # the whole train split through one rank's eyes (Sharding(): rank 0 of 1), filtered to the slice
                source = lambda bs, r=val_rows: _KeepRows(  # noqa: E731
                    data.predict_source(Sharding(), bs), r, data.num_train)
            sets.append(EvalSet("noisy_val", "val", source, np.asarray(data.given_labels), int(val_rows.size)))
        return cls(sets, data.num_classes, val_rows, data.num_train)

    def wrap_train(self, source, device):
        """The train source with the noisy validation rows turned into padding (unchanged without a slice)."""
        if self.val_rows is None:
            return source
        return ExcludeRows(source, self.val_rows, self.num_train, device)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, device, batch_size: int,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> dict:
        """``{<set>_top1, <set>_top5 (K >= 5), ...}`` for every set, plus ``test_acc`` (the test set's top-1)."""
        was_training = model.training
        model.eval()
        out = {}
        for s in self.sets:
            labels = torch.as_tensor(s.labels, dtype=torch.long, device=device)
            hits = torch.zeros(len(self.ks), dtype=torch.long, device=device)
            seen = torch.zeros((), dtype=torch.long, device=device)
            for x, idx in s.source(batch_size).epoch(0):
                idx = idx.to(device)
                with autocast():
                    logits = model(model_input(x, model)).float()
                y = torch.where(idx >= 0, labels[idx.clamp_min(0)], -1)
                hits += topk_correct(logits, y, self.ks)
                seen += (idx >= 0).sum()
            n = int(seen.item())  # .item() syncs: once per set per evaluation
            s.count = n  # rows actually evaluated (fewer than listed when unreadable images are skipped)
            for k, h in zip(self.ks, hits.tolist()):
                out[f"{s.name}_top{k}"] = h / max(n, 1)
        model.train(was_training)
        if self.test_name is not None:
            out["test_acc"] = out[f"{self.test_name}_top1"]
        return out

    def observe(self, epoch: int, row: dict) -> bool:
        """Record an epoch's evaluation; True when it is the new selected model (save it then)."""
        if self.test_name is not None and row[f"{self.test_name}_top1"] > self.peak_test:
            self.peak_test, self.peak_epoch = row[f"{self.test_name}_top1"], epoch
        if self.selected_by is None:
            return False
        score = row[f"{self.selected_by}_top1"]
        if score > self.best_score:  # strict: the earliest epoch wins a tie
            self.best_score, self.best_epoch = score, epoch
            self.best_row = {k: v for k, v in row.items() if k.endswith(tuple(f"_top{k}" for k in self.ks))}
            return True
        return False

    def state_dict(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_score": self.best_score, "best_row": self.best_row,
                "peak_test": self.peak_test, "peak_epoch": self.peak_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]
        self.best_row, self.peak_test, self.peak_epoch = state["best_row"], state["peak_test"], state["peak_epoch"]

    def summary(self, last: dict) -> dict:
        """The summary.json fields: per set, top-1/top-5 at the last epoch and at the selected epoch."""
        rows = []
        for s in self.sets:
            r = {"set": s.name, "role": s.role, "count": s.count}
            for k in self.ks:
                r[f"last_top{k}"] = last[f"{s.name}_top{k}"]
                if self.selected_by is not None:
                    r[f"best_top{k}"] = self.best_row[f"{s.name}_top{k}"]
            rows.append(r)
        out = {
            "evaluation": rows,
            "selected_by": self.selected_by,
            "selection_note": (f"best_* = the epoch with the highest {self.selected_by} top-1 (model_best.pt); "
                               "test sets never consulted" if self.selected_by else
                               "no validation split (set data.val_fraction > 0): no best_*, report last_*"),
            "peak_test_acc": self.peak_test,
            "peak_test_epoch": self.peak_epoch,
            "peak_note": "highest test top-1 over epochs: an oracle that looks at the test set, not a selection",
        }
        for k in self.ks:
            out[f"last_test_top{k}"] = last[f"{self.test_name}_top{k}"]
        if self.selected_by is not None:
            out["best_epoch"] = self.best_epoch
            out["best_val_acc"] = self.best_score
            out["best_test_acc"] = self.best_row[f"{self.test_name}_top1"]
            for k in self.ks:
                out[f"best_test_top{k}"] = self.best_row[f"{self.test_name}_top{k}"]
        if self.val_rows is not None:
            out["noisy_val_rows"] = int(self.val_rows.size)
        return out
