"""Atomic, resumable checkpoints: engine (weights + optimizer), bank shards, RNG states, loop position.

Layout of one checkpoint, ``<out>/checkpoints/step_<global step, 9 digits>/``::

    engine/                 DeepSpeed's save_checkpoint (weights, optimizer; per-rank files for ZeRO >= 1)
    bank_rank<r>.pt         rank r's bank shard (soft, given, global_index): any world size can re-shard it
    rank<r>.pt              rank r's RNG states and the running epoch's accumulators
    trainer.json            epoch, step in epoch, global step, metrics rows so far, world size, config
    COMPLETE                written last

Everything is written into ``step_<n>.tmp`` and renamed to ``step_<n>`` by rank 0 after a barrier, so a run
killed at any moment leaves either a complete checkpoint or a ``.tmp`` folder that is ignored (and cleaned up).
The newest ``keep`` complete checkpoints are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from alr_fast.distributed import barrier
from alr_fast.loop_state import LoopState

__all__ = ["save_checkpoint", "find_latest", "load_checkpoint"]

COMPLETE = "COMPLETE"


def _root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def save_checkpoint(out: Path, engine, bank, state: LoopState, *, config: dict, rank: int, world_size: int,
                    keep: int) -> Path:
    """Collective: every rank calls it at the same ``state.step``."""
    step = state.step
    trainer_state = {**state.shared_dict(), "world_size": world_size, "config": config}
    rank_state = state.rank_dict()
    root = _root(out)
    final = root / f"step_{step:09d}"
    tmp = root / f"step_{step:09d}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    engine.save_checkpoint(str(tmp), tag="engine", save_latest=False)
    torch.save(bank.state_dict(), tmp / f"bank_rank{rank}.pt")
    torch.save(rank_state, tmp / f"rank{rank}.pt")
    barrier()
    if rank == 0:
        (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1) + "\n")
        (tmp / COMPLETE).write_text("ok\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists() and not p.name.endswith(".tmp"))
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def find_latest(out: Path) -> Path | None:
    root = _root(out)
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp") and (p / COMPLETE).exists())
    return complete[-1] if complete else None


def load_checkpoint(path: Path, engine, bank, state: LoopState, *, rank: int, world_size: int) -> dict:
    """Restore engine, bank (re-sharding if the world size changed) and ``state``; returns ``trainer.json``."""
    trainer_state = json.loads((path / "trainer.json").read_text())
    load_path, _ = engine.load_checkpoint(str(path), tag="engine", load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
    if load_path is None:
        raise FileNotFoundError(f"{path}/engine: DeepSpeed found no checkpoint to load")
    saved_world = int(trainer_state["world_size"])
    shard_files = sorted(path.glob("bank_rank*.pt"))
    if len(shard_files) != saved_world:
        raise FileNotFoundError(f"{path}: expected {saved_world} bank shards, found {len(shard_files)}")
    if saved_world == world_size:
        bank.load_state_dict(torch.load(path / f"bank_rank{rank}.pt", map_location=bank.soft.device,
                                        weights_only=True))
        rank_state = torch.load(path / f"rank{rank}.pt", weights_only=False)
    else:
        # mmap: a rank reads only the pages of the shard rows it needs.
        shards = [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in shard_files]
        bank.load_rows_from(shards)
        rank_state = None
    state.load(trainer_state, rank_state)
    return trainer_state
