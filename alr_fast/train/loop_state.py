"""The training loop's own resumable state, in two components that register with the checkpoint
(:mod:`alr_fast.train.checkpoint`) beside the schedule, the evaluation plan and the bank:

* :class:`LoopState`, **shared** (the same on every rank; rank 0 writes it into ``trainer.json``): position in
  the run and the metric rows;
* :class:`EpochAccumulators`, **per rank** (each rank writes its own ``epoch_rank<r>.pt``): the running epoch's
  accumulators and the RNG states. These only mean something to the same rank of the same world size; another
  world size redoes the interrupted epoch from its start (:meth:`LoopState.restart_epoch`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["LoopState", "EpochAccumulators", "capture_rng", "restore_rng"]


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
    """Where the run is and what it logged: the same on every rank (rank 0 writes it into ``trainer.json``)."""

    epoch: int = 0
    """Epoch in progress (or the next to start when ``step_in_epoch == 0``)."""
    step_in_epoch: int = 0
    """Steps of ``epoch`` already taken (the loader resumes from here)."""
    step: int = 0
    """Steps taken since the start of the run, counted in this world size's steps per epoch."""
    rows: list[dict] = field(default_factory=list)
    """One metrics row per finished epoch (what ``metrics.jsonl`` holds)."""

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "step": self.step, "rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.step_in_epoch, self.step = state["epoch"], state["step_in_epoch"], state["step"]
        self.rows = state["rows"]

    def restart_epoch(self, steps_per_epoch: int) -> None:
        """After a resume on another world size: redo the interrupted epoch from its start (the per-rank
        accumulators of :class:`EpochAccumulators` only mean something to the world size that wrote them) and
        count steps in this world size's steps per epoch from here on."""
        self.step_in_epoch = 0
        self.step = self.epoch * steps_per_epoch


class EpochAccumulators:
    """This rank's accumulators of the running epoch (device tensors, no host sync per step) and, in a
    checkpoint, the global RNG states: what ``<name>_rank<r>.pt`` holds. Only the same rank of the same world size
    can use them; another world size starts them afresh (:meth:`load_other_world`)."""

    def __init__(self, n_local: int, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        """float64 scalar: sum over valid rows of the batch-mean loss x valid rows."""
        self.seen = torch.zeros((), dtype=torch.long, device=device)
        """int64 scalar: valid rows trained on this epoch."""
        self.train_pred = torch.full((n_local + 1,), -1, dtype=torch.long, device=device)
        """int64 [n_local + 1]: argmax of the training forward pass per local row; the last slot catches padding."""

    def reset(self) -> None:
        self.train_pred[:-1] = -1
        self.loss_sum.zero_()
        self.seen.zero_()

    def state_dict(self) -> dict:
        """With the global RNG states (captured now). ``.item()`` syncs: checkpoints only."""
        return {"rng": capture_rng(), "train_pred": self.train_pred.cpu(), "loss_sum": float(self.loss_sum.item()),
                "seen": int(self.seen.item())}

    def load_state_dict(self, state: dict) -> None:
        restore_rng(state["rng"])
        self.train_pred.copy_(state["train_pred"].to(self.train_pred.device))
        self.loss_sum.fill_(state["loss_sum"])
        self.seen.fill_(state["seen"])

    def load_other_world(self, shards) -> None:
        """A checkpoint of another world size: nothing to take (the interrupted epoch is redone); ``shards``
        (the saved ranks' parts, loaded on demand) is not read."""
