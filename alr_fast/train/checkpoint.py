"""Atomic, verified, resumable checkpoints of the engine (weights + optimizer) and of every component that
registers its state.

**Registered state** (as torchtitan's ``states=``): the trainer hands :func:`save_checkpoint` and
:func:`load_latest` two name -> component maps, and nothing is copied in or out by hand:

* ``shared``: components whose state is the same on every rank (the loop position and metric rows, the
  refinement schedule, the evaluation plan's model selection). Each has ``state_dict() -> dict`` (JSON values)
  and ``load_state_dict(dict)``; rank 0 writes them into ``trainer.json`` under their names.
* ``per_rank``: components whose state differs per rank (the bank shard, the running epoch's accumulators and
  RNG states). Each has ``state_dict()`` (tensors and plain numbers, loadable with ``weights_only=True``),
  ``load_state_dict(dict)`` (same world size: this rank's own part) and ``load_other_world(shards)`` (the
  checkpoint has another world size: ``shards()`` returns every saved rank's part, memory-mapped, e.g. for the
  bank to re-shard); each rank writes ``<name>_rank<r>.pt``.

Layout of one checkpoint, ``<out>/checkpoints/ckpt_<write sequence, 6 digits>_step_<global step, 9 digits>/``::

    engine/                 DeepSpeed's save_checkpoint (weights, optimizer; per-rank files for ZeRO >= 1)
    <name>_rank<r>.pt       rank r's part of each per-rank component (the trainer's: bank_rank<r>.pt, the bank
                            shard that any world size can re-shard; epoch_rank<r>.pt, accumulators and RNG states)
    trainer.json            each shared component's state under its name, the global step, world size, config,
                            and the manifest (sha256 + size of every other file)
    COMPLETE                written last

**Atomic.** Everything is written into ``<root>/.step_<n>.tmp`` and renamed by rank 0 once every rank reported
success, so a run killed at any moment, or a write that fails (disk full, quota, I/O error), leaves the previous
checkpoints untouched and the newest complete one loadable. A failed write stops the run with
:class:`CheckpointError` naming the file.

**Newest = most recent complete write.** The write sequence in the folder name grows with every checkpoint
written into the folder, whatever the step counter says (a run resumed with another world size counts steps
differently); :func:`complete_checkpoints` orders by it.

**Safe to load.** Everything alr_fast writes loads with ``torch.load(weights_only=True)`` (RNG states are
stored as tensors and plain numbers). DeepSpeed's own files must be unpickled in full, so before anything is
unpickled every file is checked against the manifest: a changed, truncated, missing or unlisted file refuses the
checkpoint, naming the file. :func:`load_latest` then falls back to the previous complete checkpoint with a
warning, or stops (``strict``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from alr_fast.loss.sharding import Sharding
from alr_fast.util.atomic import fsync_dir
from alr_fast.train.distributed import all_reduce_sum, barrier

__all__ = ["save_checkpoint", "complete_checkpoints", "verify_checkpoint", "load_checkpoint", "load_latest",
           "CheckpointError"]

COMPLETE = "COMPLETE"
TRAINER = "trainer.json"
_NAME = re.compile(r"^ckpt_(\d{6,})_step_(\d{9,})$")
_PART = "manifest_rank{}.json"
_HASH_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or refused to load; the message names the file."""


def _root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
        os.fsync(f.fileno())  # the bytes just hashed are the bytes on disk before the rename makes them "complete"
    return h.hexdigest()


def _data_files(folder: Path) -> list[str]:
    """Every file a checkpoint's manifest covers (all but trainer.json, COMPLETE and manifest parts), sorted."""
    skip = {TRAINER, COMPLETE}
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*")
        if not p.is_dir() and p.name not in skip and not re.fullmatch(_PART.format(r"\d+"), p.name)
    )


def _all_ok(ok: bool, device: torch.device) -> bool:
    """Collective: True when every rank's ``ok`` is True (also the barrier of each phase of a save)."""
    failed = all_reduce_sum(torch.tensor(0 if ok else 1, dtype=torch.long, device=device))
    return int(failed.item()) == 0


def _sequence(p: Path) -> int:
    m = _NAME.match(p.name)
    return int(m.group(1)) if m else -1


def _rank_file(name: str, rank: int) -> str:
    return f"{name}_rank{rank}.pt"


def save_checkpoint(out: Path, engine, *, shared: dict, per_rank: dict, step: int, config: dict,
                    sharding: Sharding, device: torch.device, keep: int) -> Path:
    """Collective: every rank calls it at the same global ``step``, with the same component names. Raises
    :class:`CheckpointError` (on every rank) if any rank fails to write; the previous checkpoints are then
    untouched."""
    rank, world_size = sharding.rank, sharding.world
    root = _root(out)
    tmp = root / f".step_{step:09d}.tmp"
    error = None
    if rank == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(".step_*.tmp"):  # left by a run killed while writing
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            error = f"{tmp}: {e}"
    if not _all_ok(error is None, device):
        _fail(error, "creating the checkpoint folder", root, rank)

    # 1. Every rank writes its files.
    try:
        engine.save_checkpoint(str(tmp), tag="engine", save_latest=False)
        for name, component in per_rank.items():
            torch.save(component.state_dict(), tmp / _rank_file(name, rank))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError (inline_container)
        error = f"{tmp}: {e}"
    if not _all_ok(error is None, device):
        _fail(error, "writing", root, rank, tmp)

    # 2. Every rank hashes (and fsyncs) its share of the files; rank 0 merges the shares into trainer.json.
    try:
        files = _data_files(tmp)
        part = {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files[rank::world_size]}
        (tmp / _PART.format(rank)).write_text(json.dumps(part))
    except OSError as e:
        error = f"{tmp}: {e}"
    if not _all_ok(error is None, device):
        _fail(error, "hashing", root, rank, tmp)

    final = None
    if rank == 0:
        try:
            manifest = {}
            for r in range(world_size):
                manifest.update(json.loads((tmp / _PART.format(r)).read_text()))
                (tmp / _PART.format(r)).unlink()
            missing = set(files) - set(manifest)
            if missing:
                raise OSError(f"no hash for {sorted(missing)}")
            seq = max((_sequence(p) for p in root.iterdir()), default=-1) + 1
            final = root / f"ckpt_{seq:06d}_step_{step:09d}"
            trainer_state = {**{name: c.state_dict() for name, c in shared.items()}, "step": step,
                             "world_size": world_size, "write_sequence": seq, "config": config, "manifest": manifest}
            _write_synced(tmp / TRAINER, json.dumps(trainer_state, indent=1) + "\n")
            _write_synced(tmp / COMPLETE, "ok\n")
            fsync_dir(tmp)
            tmp.rename(final)
            fsync_dir(root)
        except OSError as e:
            error = f"{tmp}: {e}"
    if not _all_ok(error is None, device):
        _fail(error, "completing", root, rank, tmp)
    if rank == 0:
        for old in complete_checkpoints(out)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final if final is not None else root


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fail(error: str | None, what: str, root: Path, rank: int, tmp: Path | None = None):
    if rank == 0 and tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    newest = complete_checkpoints(root.parent)
    kept = f"the newest complete checkpoint is still {newest[0]}" if newest else "no complete checkpoint exists yet"
    detail = error or "another rank failed (see its message)"
    raise CheckpointError(f"rank {rank}: checkpoint failed while {what}: {detail}; nothing was replaced, {kept}")


def complete_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in ``<out>/checkpoints``, most recently written first."""
    root = _root(out)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=_sequence, reverse=True)


def verify_checkpoint(path: Path) -> tuple[dict | None, list[str]]:
    """Check every file of a checkpoint against its manifest without unpickling anything.

    Returns (trainer_state, problems); problems name each file that is missing, truncated, changed or unlisted.
    """
    try:
        trainer_state = json.loads((path / TRAINER).read_text())
        manifest = trainer_state["manifest"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, [f"{path / TRAINER}: unreadable or without a manifest ({type(e).__name__}: {e})"]
    problems = []
    on_disk = set(_data_files(path))
    for name in sorted(on_disk - set(manifest)):
        problems.append(f"{path / name}: not in the manifest (a file nobody wrote here: refused)")
    for name, want in sorted(manifest.items()):
        f = path / name
        if name not in on_disk:
            problems.append(f"{f}: missing")
            continue
        size = f.stat().st_size
        if size != want["bytes"]:
            problems.append(f"{f}: {size} bytes, the manifest says {want['bytes']} (truncated or replaced)")
        elif _sha256(f) != want["sha256"]:
            problems.append(f"{f}: sha256 differs from the manifest (corrupted or replaced)")
    return trainer_state, problems


def load_checkpoint(path: Path, trainer_state: dict, engine, *, shared: dict, per_rank: dict, sharding: Sharding,
                    device: torch.device) -> None:
    """Restore the engine and every registered component from a verified checkpoint (per-rank components of
    another world size get every saved rank's part: the bank re-shards)."""
    load_path, _ = engine.load_checkpoint(str(path), tag="engine", load_optimizer_states=True,
                                          load_lr_scheduler_states=False)
    if load_path is None:
        raise CheckpointError(f"{path}/engine: DeepSpeed found no checkpoint to load")
    for name, component in shared.items():
        if name not in trainer_state:
            raise CheckpointError(f"{path / TRAINER}: no state for {name!r} (written by another alr_fast version?)")
        component.load_state_dict(trainer_state[name])
    saved_world = int(trainer_state["world_size"])
    for name, component in per_rank.items():
        if saved_world == sharding.world:
            component.load_state_dict(torch.load(path / _rank_file(name, sharding.rank), map_location=device,
                                                 weights_only=True))
        else:
            # mmap: a rank reads only the pages of the saved rows it needs.
            component.load_other_world(lambda name=name: [
                torch.load(path / _rank_file(name, r), map_location="cpu", weights_only=True, mmap=True)
                for r in range(saved_world)])


def load_latest(out: Path, engine, *, shared: dict, per_rank: dict, sharding: Sharding, device: torch.device,
                strict: bool = False) -> tuple[Path, dict] | None:
    """Resume from the most recent complete checkpoint that verifies (collective).

    A checkpoint that fails verification is skipped with a warning naming the files (``strict``: the run stops
    with :class:`CheckpointError` instead). Returns (path, trainer_state), or None if there is no complete
    checkpoint at all; raises if there are some but none verifies.
    """
    rank = sharding.rank
    candidates = complete_checkpoints(out)  # the same list on every rank: --out is shared
    if not candidates:
        legacy = sorted(_root(out).glob("step_*/COMPLETE")) if _root(out).is_dir() else []
        if legacy and rank == 0:
            print(f"[alr_fast] WARNING: {legacy[-1].parent} was written by an older alr_fast without a manifest; "
                  "it is not loaded (its files could not be verified before unpickling)", file=sys.stderr, flush=True)
        return None
    refused = []
    for path in candidates:
        # Every rank checks every file before anything is unpickled (DeepSpeed's loader unpickles in full).
        trainer_state, problems = verify_checkpoint(path)
        if _all_ok(not problems, device):
            if refused and rank == 0:
                print(f"[alr_fast] WARNING: resuming from {path}, an older checkpoint, because newer ones were "
                      f"refused: {'; '.join(refused)}", file=sys.stderr, flush=True)
            load_checkpoint(path, trainer_state, engine, shared=shared, per_rank=per_rank, sharding=sharding,
                            device=device)
            return path, trainer_state
        reason = "; ".join(problems) or f"rank {rank} sees it intact, another rank does not"
        if strict:
            raise CheckpointError(f"--resume=strict: refusing {path}: {reason}")
        if rank == 0:
            print(f"[alr_fast] WARNING: refusing checkpoint {path}: {reason}", file=sys.stderr, flush=True)
        refused.append(f"{path.name}: {reason}")
    raise CheckpointError(f"no checkpoint in {_root(out)} passed verification: {' | '.join(refused)}")
