"""The training loop's resumable state, in one object: where the loop is, what it has accumulated, what it logged.

A restart restores exactly this (plus the engine and the bank, which :mod:`alr_fast.train.checkpoint` saves beside
it), so an interrupted run continues where it stopped. Two parts:

* **shared** (the same on every rank, rank 0 writes it into ``trainer.json``): position in the run, metric rows,
  best-so-far;
* **per rank** (each rank writes its own ``rank<r>.pt``): the running epoch's accumulators and the RNG states.
  These only mean something to the same rank of the same world size; another world size redoes the
  interrupted epoch from its start.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["LoopState", "capture_rng", "restore_rng"]


def capture_rng() -> dict:
    """The torch, numpy, Python (and CUDA) RNG states as tensors and plain numbers: loadable with
    ``torch.load(weights_only=True)``, so a checkpoint never needs a full unpickler for them."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class LoopState:
    epoch: int = 0
    """Epoch in progress (or the next to start when ``step_in_epoch == 0``)."""
    step_in_epoch: int = 0
    """Steps of ``epoch`` already taken (the loader resumes from here)."""
    step: int = 0
    """Steps taken since the start of the run, counted in this world size's steps per epoch."""
    rows: list[dict] = field(default_factory=list)
    """One metrics row per finished epoch (what ``metrics.jsonl`` holds)."""
    best_acc: float = -1.0
    best_epoch: int = -1
    selection: dict = field(default_factory=dict)
    """Model selection so far (alr_fast.train.evaluation.EvalPlan.state_dict)."""
    schedule: dict = field(default_factory=dict)
    """alr_fast.loss.schedule.RefinementSchedule.state_dict(): the automatic warm-up rule's memory, collapse flags."""
    # This rank's accumulators of the running epoch (device tensors, no host sync per step).
    loss_sum: torch.Tensor | None = None
    """float64 scalar: sum over valid rows of the batch-mean loss x valid rows."""
    seen: torch.Tensor | None = None
    """int64 scalar: valid rows trained on this epoch."""
    train_pred: torch.Tensor | None = None
    """int64 [n_local + 1]: argmax of the training forward pass per local row; the last slot catches padding."""

    @classmethod
    def fresh(cls, n_local: int, device: torch.device) -> "LoopState":
        return cls(
            loss_sum=torch.zeros((), dtype=torch.float64, device=device),
            seen=torch.zeros((), dtype=torch.long, device=device),
            train_pred=torch.full((n_local + 1,), -1, dtype=torch.long, device=device),
        )

    def start_epoch(self) -> None:
        """Reset the accumulators, unless the epoch is being resumed mid-way."""
        if self.step_in_epoch == 0:
            self.train_pred[:-1] = -1
            self.loss_sum.zero_()
            self.seen.zero_()

    # --- what a checkpoint holds -------------------------------------------------------------------------------
    def shared_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step, "rows": self.rows,
                "best_acc": self.best_acc, "best_epoch": self.best_epoch, "selection": self.selection,
                "schedule": self.schedule}

    def rank_dict(self) -> dict:
        """This rank's part, with the global RNG states (captured now). ``.item()`` syncs: checkpoints only."""
        return {"rng": capture_rng(), "train_pred": self.train_pred.cpu(), "loss_sum": float(self.loss_sum.item()),
                "seen": int(self.seen.item())}

    def load(self, shared: dict, rank_part: dict | None) -> None:
        """Restore from a checkpoint; ``rank_part`` is None when it was written with another world size."""
        self.rows, self.best_acc, self.best_epoch = shared["rows"], shared["best_acc"], shared["best_epoch"]
        self.selection = shared.get("selection", {})
        self.step, self.epoch, self.step_in_epoch = shared["step"], shared["epoch"], shared["step_in_epoch"]
        self.schedule = shared.get("schedule", {})
        if rank_part is not None:
            restore_rng(rank_part["rng"])
            self.train_pred.copy_(rank_part["train_pred"].to(self.train_pred.device))
            self.loss_sum.fill_(rank_part["loss_sum"])
            self.seen.fill_(rank_part["seen"])
        elif self.step_in_epoch:
            # Another world size shards the epoch differently: redo the interrupted epoch from its start.
            self.step -= self.step_in_epoch
            self.step_in_epoch = 0
