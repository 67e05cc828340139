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
    zero_full_state.pt      ZeRO 1/2 only: every parameter's whole fp32 master weight and optimizer state
                            (momentum, Adam moments, step), gathered from the partitions: any world size loads it
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

**Authenticated.** A manifest only proves that files were not changed *after* it was written; a whole planted
folder brings its own consistent manifest. So ``trainer.json`` carries an HMAC-SHA256 of its content under a
secret key that lives outside the run folder (:func:`checkpoint_key_path`: ``$ALR_FAST_CHECKPOINT_KEY``, else
``~/.config/alr_fast/checkpoint.key``, created with mode 0600 on the first checkpoint). Rank 0 checks it before
anything is unpickled; a checkpoint without it, or signed with another key, is refused like a corrupt one. Someone
who can write the run folder but not read the key cannot make alr_fast unpickle their files; someone who can read
the key (the same user) can, as they could run code anyway. The key must be the same for the writer and the
resumer (a job on another machine: copy it, or point ``ALR_FAST_CHECKPOINT_KEY`` at a shared copy).

**Any world size.** The bank shards are re-sharded by the owner rule. ZeRO 0 engine files hold the whole
optimizer state. ZeRO 1/2 engine files hold it partitioned over the ranks that wrote them, which DeepSpeed's
loader refuses on another number of ranks; so those checkpoints also hold ``zero_full_state.pt`` (plain tensors,
gathered with DeepSpeed's ``safe_get_full_fp32_param`` / ``safe_get_full_optimizer_state``), and a resume on
another number of ranks loads the module weights from ``engine/`` and every parameter's fp32 master weight and
optimizer state from that file into the new partitions: the same values, bit for bit. On the same number of
ranks DeepSpeed's own files are loaded, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import re
import shutil
from pathlib import Path

import torch

from alr_fast.loss.sharding import Sharding
from alr_fast.util.atomic import fsync_dir, torch_save
from alr_fast.train.distributed import all_reduce_sum, barrier

__all__ = ["save_checkpoint", "full_optimizer_state", "load_full_optimizer_state", "complete_checkpoints", "verify_checkpoint", "load_checkpoint", "load_latest",
           "CheckpointError", "saved_config", "REFUSED", "checkpoint_key_path"]

log = logging.getLogger("alr_fast.train")

COMPLETE = "COMPLETE"
FULL_STATE = "zero_full_state.pt"
TRAINER = "trainer.json"
_NAME = re.compile(r"^ckpt_(\d{6,})_step_(\d{9,})$")
_PART = "manifest_rank{}.json"
_HASH_CHUNK = 1 << 20
REFUSED = "refused"
"""Sub-folder of ``<out>/checkpoints`` where a checkpoint that failed verification is moved when ``--resume``
falls back past it: kept for inspection, never counted as a checkpoint, never loaded, never deleted by retention
(so retention cannot delete the good checkpoint the run resumed from in favour of a corrupt newer one)."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or refused to load; the message names the file."""


def checkpoint_key_path() -> Path:
    """Where the key that signs checkpoint manifests lives: ``$ALR_FAST_CHECKPOINT_KEY``, else
    ``$XDG_CONFIG_HOME/alr_fast/checkpoint.key`` (``~/.config/...``)."""
    if os.environ.get("ALR_FAST_CHECKPOINT_KEY"):
        return Path(os.environ["ALR_FAST_CHECKPOINT_KEY"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "alr_fast" / "checkpoint.key"


def _checkpoint_key(create: bool) -> bytes | None:
    """The signing key (created, 32 random bytes, mode 0600, when ``create`` and absent); None if absent."""
    path = checkpoint_key_path()
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
    try:
        key = path.read_text().strip()
    except OSError:
        return None
    return key.encode() if key else None


def _mac(key: bytes, trainer_state: dict) -> str:
    body = {k: v for k, v in trainer_state.items() if k != "mac"}
    return hmac.new(key, json.dumps(body, sort_keys=True, separators=(",", ":")).encode(), hashlib.sha256).hexdigest()


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
    m = _NAME.match(p.name.rstrip("_"))
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
    except (OSError, RuntimeError) as e:  # torch.save (inside DeepSpeed) reports a full disk as a RuntimeError
        error = f"{tmp}/engine: {_describe_write_error(e, tmp)}"
    full = None
    # ZeRO 1/2: collective gathers (every rank takes part, rank 0 writes), only if every rank's engine files were
    # written. The same answer on every rank: the engine's config is.
    if _zero_partitions(engine) is not None and _all_ok(error is None, device):
        full = full_optimizer_state(engine)
    try:
        if error is None and full is not None and rank == 0:
            torch_save(full, tmp / FULL_STATE)
        if error is None:
            for name, component in per_rank.items():
                torch_save(component.state_dict(), tmp / _rank_file(name, rank))
    except OSError as e:  # torch_save names the file and says "No space left on device" for a full disk
        error = str(e)
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
            refused = list((root / REFUSED).iterdir()) if (root / REFUSED).is_dir() else []
            seq = max((_sequence(p) for p in (*root.iterdir(), *refused)), default=-1) + 1  # never reused
            final = root / f"ckpt_{seq:06d}_step_{step:09d}"
            trainer_state = {**{name: c.state_dict() for name, c in shared.items()}, "step": step,
                             "world_size": world_size, "write_sequence": seq, "config": config, "manifest": manifest}
            key = _checkpoint_key(create=True)
            if key is None:
                raise OSError(f"cannot create or read the checkpoint key {checkpoint_key_path()}")
            trainer_state["mac"] = _mac(key, trainer_state)
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
        # Retention: only complete checkpoints count; refused ones were moved to checkpoints/refused by the resume
        # that fell back past them, so the newest good checkpoints are the ones kept.
        for old in complete_checkpoints(out)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final if final is not None else root


def _describe_write_error(e: Exception, folder: Path) -> str:
    """A write error, with "No space left on device" when that is what it was (torch.save only reports an
    internal assertion, ``enforce fail at inline_container.cc``, for a full disk)."""
    import errno

    if isinstance(e, OSError):
        return str(e)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    if free is not None and free < (1 << 20):
        return f"No space left on device ({os.strerror(errno.ENOSPC)}: {free} bytes free on {folder}; {first})"
    return first


def saved_config(path: Path) -> dict | None:
    """The config dict in a checkpoint's trainer.json (plain JSON, nothing unpickled); None if unreadable."""
    try:
        config = json.loads((Path(path) / TRAINER).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return config if isinstance(config, dict) else None


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


def verify_checkpoint(path: Path, *, authenticate: bool = True) -> tuple[dict | None, list[str]]:
    """Check every file of a checkpoint against its manifest without unpickling anything, and (``authenticate``)
    the manifest's signature against this user's checkpoint key.

    Returns (trainer_state, problems); problems name each file that is missing, truncated, changed or unlisted,
    and a trainer.json that is unsigned or signed with another key.
    """
    try:
        trainer_state = json.loads((path / TRAINER).read_text())
        manifest = trainer_state["manifest"]
        if not isinstance(manifest, dict):
            raise TypeError("the manifest is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, [f"{path / TRAINER}: unreadable or without a manifest ({type(e).__name__}: {e})"]
    if authenticate:
        key = _checkpoint_key(create=False)
        if key is None:
            return trainer_state, [f"{path / TRAINER}: cannot be authenticated: no checkpoint key at "
                                   f"{checkpoint_key_path()} (the key of whoever wrote it; see "
                                   "alr_fast/train/checkpoint.py)"]
        mac = trainer_state.get("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(key, trainer_state)):
            what = "not signed" if mac is None else "signed with another key, or edited after signing"
            return trainer_state, [f"{path / TRAINER}: {what} (checkpoint key {checkpoint_key_path()}): a checkpoint "
                                   "this user's alr_fast did not write; refused before anything is unpickled"]
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
    another world size get every saved rank's part: the bank re-shards).

    A ZeRO 1/2 checkpoint holds DeepSpeed's optimizer files partitioned over the ranks that wrote it, which
    DeepSpeed loads only on that many ranks; on another number of ranks the module weights come from ``engine/``
    and the fp32 master weights and optimizer state from ``zero_full_state.pt``, re-partitioned here."""
    saved_world = int(trainer_state["world_size"])
    saved_stage = int(((trainer_state.get("config") or {}).get("train") or {}).get("zero_stage", 0))
    world_size = sharding.world
    repartition = saved_world != world_size and saved_stage >= 1
    if repartition and FULL_STATE not in (trainer_state.get("manifest") or {}):
        raise CheckpointError(
            f"{path}: written by {saved_world} ranks with ZeRO stage {saved_stage} by an older alr_fast, without "
            f"{FULL_STATE}; its optimizer state is partitioned over those ranks, so it resumes only on "
            f"{saved_world} ranks, not {world_size}")
    load_path, _ = engine.load_checkpoint(str(path), tag="engine", load_optimizer_states=not repartition,
                                          load_lr_scheduler_states=False, load_module_only=repartition)
    if load_path is None:
        raise CheckpointError(f"{path}/engine: DeepSpeed found no checkpoint to load")
    if repartition:
        full = torch.load(path / FULL_STATE, map_location="cpu", weights_only=True)
        load_full_optimizer_state(engine, full, source=path / FULL_STATE)
    for name, component in shared.items():
        if name not in trainer_state:
            raise CheckpointError(f"{path / TRAINER}: no state for {name!r} (written by another alr_fast version?)")
        component.load_state_dict(trainer_state[name])
    for name, component in per_rank.items():
        if saved_world == sharding.world:
            component.load_state_dict(torch.load(path / _rank_file(name, sharding.rank), map_location=device,
                                                 weights_only=True))
        else:
            # mmap: a rank reads only the pages of the saved rows it needs.
            component.load_other_world(lambda name=name: [
                torch.load(path / _rank_file(name, r), map_location="cpu", weights_only=True, mmap=True)
                for r in range(saved_world)])


_SCALER_FIELDS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


def _zero_partitions(engine):
    """(DeepSpeed's optimizer, the torch optimizer inside it, the model's parameters per group, the flat fp32
    partition of each group on this rank) for a ZeRO 1/2 engine; None for anything else."""
    stage = getattr(engine, "zero_optimization_stage", None)
    if stage is None or stage() not in (1, 2):
        return None
    opt = engine.optimizer
    for groups, flats in (("bit16_groups", "single_partition_of_fp32_groups"),  # DeepSpeedZeroOptimizer
                          ("bf16_groups", "fp32_groups_flat_partition")):  # BF16_Optimizer (ZeRO 1, fp32 grads)
        if hasattr(opt, groups) and hasattr(opt, flats):
            return opt, opt.optimizer, getattr(opt, groups), getattr(opt, flats)
    raise CheckpointError(f"ZeRO stage {stage()}: DeepSpeed optimizer {type(opt).__name__} has no fp32 partitions "
                          "alr_fast knows how to gather")


def _link_state(groups, flats, base) -> None:
    """Point every parameter's fragment mapping at the current optimizer state tensors (DeepSpeed links them
    once, after the first step; a loaded state_dict replaces the tensors)."""
    from deepspeed.utils import lazy_init_hp_params_optimizer_state

    for lp_group, flat in zip(groups, flats):
        lazy_init_hp_params_optimizer_state(lp_group, flat, base.state)


def full_optimizer_state(engine) -> dict | None:
    """Collective (every rank calls it): the whole fp32 master weight and optimizer state of every parameter of
    a ZeRO 1/2 engine, gathered from the ranks' partitions, as plain CPU tensors keyed by parameter name; None
    for other engines. A form that does not depend on the number of ranks (see :func:`load_full_optimizer_state`)."""
    found = _zero_partitions(engine)
    if found is None:
        return None
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    opt, base, groups, flats = found
    names = {id(p): n for n, p in engine.module.named_parameters()}
    _link_state(groups, flats, base)
    out = {"groups": []}
    for lp_group, flat in zip(groups, flats):
        state = base.state.get(flat, {})
        # The partition-shaped entries (momentum_buffer; exp_avg, exp_avg_sq): the same keys on every rank.
        keys = sorted(k for k, v in state.items() if torch.is_tensor(v) and v.shape == flat.shape)
        group = {"names": [names[id(p)] for p in lp_group], "fp32": {}, "state": {k: {} for k in keys}}
        if "step" in state:
            group["step"] = torch.as_tensor(state["step"]).detach().to("cpu", copy=True)
        for p, name in zip(lp_group, group["names"]):
            group["fp32"][name] = safe_get_full_fp32_param(p).detach().to("cpu", copy=True)
            for k in keys:
                group["state"][k][name] = safe_get_full_optimizer_state(p, k).detach().to("cpu", copy=True)
        out["groups"].append(group)
    scaler = getattr(opt, "loss_scaler", None)  # fp16's dynamic loss scale; bf16 and fp32 have a constant 1
    out["loss_scaler"] = {f: float(getattr(scaler, f)) for f in _SCALER_FIELDS
                          if isinstance(getattr(scaler, f, None), (int, float))}
    return out


def load_full_optimizer_state(engine, full: dict, *, source) -> None:
    """Put a :func:`full_optimizer_state` (written by any number of ranks) into this ZeRO 1/2 engine: each rank
    copies its partition's fragment of every fp32 master weight and optimizer state, and the model's
    low-precision weights become the masters cast to their dtype, as after a DeepSpeed step. Exact (copies)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    found = _zero_partitions(engine)
    if found is None:
        raise CheckpointError(f"{source}: a ZeRO 1/2 optimizer state, but this run's engine is not ZeRO 1/2")
    opt, base, groups, flats = found
    names = {id(p): n for n, p in engine.module.named_parameters()}
    saved = full.get("groups", [])
    if len(saved) != len(groups):
        raise CheckpointError(f"{source}: {len(saved)} parameter groups, this model's optimizer has {len(groups)}")
    for group, lp_group, flat in zip(saved, groups, flats):
        want = [names[id(p)] for p in lp_group]
        if group["names"] != want:
            raise CheckpointError(f"{source}: parameters {group['names'][:5]}... differ from this model's "
                                  f"{want[:5]}...")
        state = base.state[flat]
        for k in group["state"]:  # a fresh engine has no state yet (torch creates it at the first step)
            if not (torch.is_tensor(state.get(k)) and state[k].shape == flat.shape):
                state[k] = torch.zeros_like(flat)
        if "step" in group:
            old = state.get("step")
            state["step"] = group["step"].to(old.device if torch.is_tensor(old) else "cpu", copy=True)
    _link_state(groups, flats, base)
    opt._hp_optimizer_states_linked = True  # linked above, to these tensors; DeepSpeed would relink at step 1
    with torch.no_grad():
        for group, lp_group, flat in zip(saved, groups, flats):
            for p, name in zip(lp_group, group["names"]):
                master = group["fp32"][name]
                if master.shape != p.shape:
                    raise CheckpointError(f"{source}: {name} has shape {tuple(master.shape)}, this model's "
                                          f"{tuple(p.shape)}")
                master = master.to(flat.device)
                safe_set_full_fp32_param(p, master)
                p.data.copy_(master.to(p.dtype))
                for k, values in group["state"].items():
                    safe_set_full_optimizer_state(p, values[name].to(flat.device), k)
    scaler = getattr(opt, "loss_scaler", None)
    for f, v in full.get("loss_scaler", {}).items():
        if isinstance(getattr(scaler, f, None), (int, float)):
            setattr(scaler, f, type(getattr(scaler, f))(v))


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
            log.warning("%s was written by an older alr_fast without a manifest; it is not loaded (its files could "
                        "not be verified before unpickling)", legacy[-1].parent)
        return None
    refused = []
    for path in candidates:
        # Every rank checks every file before anything is unpickled (DeepSpeed's loader unpickles in full).
        # The signature is checked by rank 0 (the key may exist only where the job was started).
        trainer_state, problems = verify_checkpoint(path, authenticate=rank == 0)
        if _all_ok(not problems, device):
            if refused and rank == 0:
                aside = _root(out) / REFUSED
                for bad, _ in refused:  # out of retention's way (it keeps the newest *complete* checkpoints)
                    aside.mkdir(exist_ok=True)
                    target = aside / bad.name
                    while target.exists():
                        target = target.with_name(target.name + "_")
                    bad.rename(target)
                log.warning("resuming from %s, an older checkpoint, because newer ones were refused (moved to %s): %s",
                            path, aside, "; ".join(r for _, r in refused))
            barrier()
            load_checkpoint(path, trainer_state, engine, shared=shared, per_rank=per_rank, sharding=sharding,
                            device=device)
            return path, trainer_state
        reason = "; ".join(problems) or f"rank {rank} sees it intact, another rank does not"
        if strict:
            raise CheckpointError(f"--resume=strict: refusing {path}: {reason}")
        if rank == 0:
            log.warning("refusing checkpoint %s: %s", path, reason)
        refused.append((path, f"{path.name}: {reason}"))
    raise CheckpointError(f"no checkpoint in {_root(out)} passed verification: {' | '.join(r for _, r in refused)}")
