"""``ALR``: the loss, this rank's soft-label rows and the refinement schedule, as one object for any training loop.

::

    alr = ALR(train_labels, num_classes=10)            # method 'alr', automatic warm-up, lam ramped over 5 epochs
    for epoch in range(epochs):
        for x, y, index in loader:                     # index: the samples' GLOBAL indices (alr_fast.WithIndex)
            loss = alr(model(x), index)                # cross-entropy in warm-up, then ALR; updates the rows
            loss.backward(); opt.step(); opt.zero_grad()
        alr.end_epoch()                                # decides the end of warm-up; returns the epoch's signals
    alr.export("run/")                                 # soft_labels.npy, labels.npy, refined_labels.csv, ...

The trainer (:mod:`alr_fast.train.trainer`) runs this same object; docs/own-loop.md is the reference.

**Ranks.** Under data parallelism each rank builds the object from the *same* full label vector; it keeps
only the rows the project's owner rule gives it (:class:`alr_fast.loss.sharding.Sharding`: global index ``i``
belongs to rank ``i % W``) and is called with global indices. The loader must give each rank only the samples it
owns (:class:`alr_fast.OwnerSampler` does). An index this rank does not own is refused: on the CPU at once
(``IndexError`` naming it and its owner); on CUDA without a per-step host sync: the row is sent out of range,
so the fused kernel masks it (NaN loss, bank untouched) and sets a device flag that :meth:`ALR.end_epoch` (or
:meth:`ALR.check_indices`) reads and turns into the same ``IndexError``.

**Schedule.** Epoch ``e`` refines when the schedule (:mod:`alr_fast.loss.schedule`) says so; the entropy weight
(and optionally the EMA momentum) ramps per loss call. Every call in training counts as one step; pass
``steps_per_epoch`` (``len(loader)``) if you know it, else it is learnt from the first epoch's calls.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import torch

from alr_fast.loss.bank import SoftLabelBank
from alr_fast.loss.bank_export import BANK_FILES, assemble_bank_files, write_bank_part
from alr_fast.loss.contract import ALRParamError, ALRParams
from alr_fast.loss.baselines import BASELINES, BaselineParamError, BootstrapParams, ELRParams, GCEParams, SCEParams
from alr_fast.loss.functional import (
    alr_loss,
    bootstrap_loss,
    elr_loss,
    gce_loss,
    raise_on_bad_index,
    resolve_backend,
    sce_loss,
)
from alr_fast.loss.schedule import WARMUP_DEFAULTS, AutoWarmupRule, RefinementSchedule, prediction_counts
from alr_fast.loss.sharding import Sharding
from alr_fast.util.atomic import write_text_atomic

__all__ = ["ALR", "METHODS"]

log = logging.getLogger("alr_fast")

METHODS = ("ce", "selc", "alr", *BASELINES)
BASELINE_DEFAULTS = {"elr_beta": 0.7, "elr_lam": 3.0, "gce_q": 0.7, "sce_alpha": 0.1, "sce_beta": 1.0,
                     "sce_log_zero": -4.0, "bootstrap_beta": 0.95}
"""The baselines' hyper-parameters when not given: their papers' CIFAR(-10) values (alr_fast.config.MethodConfig
documents each, with its source)."""
STATE_FORMAT = "alr_fast.ALR/1"


def _dist_world() -> tuple[int, int] | None:
    """(rank, world size) of the initialised default process group, else None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


class ALR:
    """Adaptive Label Refinement for a user's training loop (module docstring; docs/own-loop.md).

    Args:
        labels: the given (noisy) labels of ALL training samples, ``[N]`` integers, indexed by global index
            (the same vector on every rank).
        num_classes: K (default: ``max(labels) + 1``).
        method: ``'alr'`` (EMA soft labels + entropy term), ``'selc'`` (``lam`` = 0), ``'ce'`` (never refines;
            the bank stays one-hot, so the loss is cross-entropy on the given labels), or a loss-based baseline
            (:mod:`alr_fast.loss.baselines`): ``'elr'`` (its running average of the predictions is the bank),
            ``'gce'``, ``'sce'``, ``'bootstrap'`` (no per-sample state: the bank stays at the given labels). Every
            method trains with cross-entropy on the given labels until the schedule's warm-up ends
            (``warmup=0``: from the first epoch).
        alpha: EMA momentum of the soft labels, ``t <- alpha t + (1 - alpha) p``.
        lam: weight of the entropy term (``'alr'`` only).
        warmup: ``'auto'`` (refinement starts when the training accuracy on the given labels stalls; rule and
            parameters in :mod:`alr_fast.loss.schedule`) or an int: a fixed number of warm-up epochs.
        ramp_epochs: refinement epochs over which lam rises linearly, per step (0: full lam at once).
        ramp_alpha: also ramp the EMA step (alpha from 1 to ``alpha``) over the same ramp.
        epochs: the run's planned epochs; with ``warmup='auto'`` refinement starts by ``epochs // 2`` at the
            latest (as in the trainer). Without it the latest start is epoch 10.
        warmup_rule: parameters of :class:`alr_fast.loss.schedule.AutoWarmupRule` to override.
        hparams: the baselines' hyper-parameters by their config names (``elr_beta``, ``elr_lam``, ``gce_q``,
            ``sce_alpha``, ``sce_beta``, ``sce_log_zero``, ``bootstrap_beta``); missing ones take
            :data:`BASELINE_DEFAULTS`.
        steps_per_epoch: loss calls per epoch (``len(loader)``); learnt from the first epoch when not given.
        rank, world_size: this rank and the number of data-parallel ranks (default: the initialised
            ``torch.distributed`` group, else 0 and 1).
        device: where the bank lives (default: the labels' device); :meth:`to` moves it.
        bank_dtype: ``'float32'`` or ``'bfloat16'``.
        backend: ``'auto'`` (the fused Triton kernel for CUDA logits, the torch path otherwise), ``'torch'``,
            ``'triton'``.
        assume_unique: promise that an index never repeats within a batch (true with
            :class:`alr_fast.OwnerSampler`): the fast paths skip a sort. Default False: repeats are
            handled sequentially, as :mod:`alr_fast.loss.reference` specifies.
        check_index: check indices on the host every call (default: on the CPU only; on CUDA the device flag
            checked by :meth:`end_epoch` covers out-of-range and foreign indices without a per-step sync).
        shard_blocks: tar-shard datasets only: the first global index of each shard, then N; the bank then owns
            whole shards per rank (:class:`alr_fast.loss.sharding.Sharding`); default: the strided rule.
        sharding: the owner rule as one :class:`alr_fast.loss.sharding.Sharding` (what the trainer passes, the
            same object its loaders are given), instead of ``rank``/``world_size``/``shard_blocks``.
    """

    def __init__(self, labels, num_classes: int | None = None, *, method: str = "alr", alpha: float = 0.9,
                 lam: float = 0.3, warmup: str | int = "auto", ramp_epochs: float = 5.0, ramp_alpha: bool = False,
                 epochs: int | None = None, warmup_rule: dict | None = None, steps_per_epoch: int | None = None,
                 rank: int | None = None, world_size: int | None = None, device=None,
                 bank_dtype: str | torch.dtype = "float32", backend: str = "auto", assume_unique: bool = False,
                 check_index: bool | None = None, hparams: dict | None = None,
                 shard_blocks: tuple[int, ...] | None = None, sharding: Sharding | None = None,
                 _schedule: RefinementSchedule | None = None):
        if method not in METHODS:
            raise ValueError(f"ALR: method must be one of {METHODS}, got {method!r}")
        unknown = sorted(set(hparams or {}) - set(BASELINE_DEFAULTS))
        if unknown:
            raise ValueError(f"ALR: unknown hparams {unknown}; known: {sorted(BASELINE_DEFAULTS)}")
        self.hparams = {**BASELINE_DEFAULTS, **(hparams or {})}
        self._baseline = _baseline_loss(method, self.hparams)  # checks the method's own hyper-parameters
        try:  # the loss contract's own range check of alpha and lam (the only one)
            base = ALRParams.of(float(alpha), float(lam) if method == "alr" else 0.0)
        except ALRParamError as e:
            raise ValueError(f"ALR: {e.field} {e.requirement}, got {e.value!r}") from None
        if float(ramp_epochs) < 0.0:
            raise ValueError(f"ALR: ramp_epochs must be >= 0, got {ramp_epochs}")
        labels = torch.as_tensor(labels)
        if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"ALR: labels must be a 1-D integer vector of all N training labels, got shape "
                             f"{tuple(labels.shape)} dtype {labels.dtype}")
        if labels.numel() == 0:
            raise ValueError("ALR: labels is empty")
        if num_classes is None:
            num_classes = int(labels.max()) + 1
        if sharding is not None:
            if not isinstance(sharding, Sharding):
                raise TypeError(f"ALR: sharding must be an alr_fast.loss.sharding.Sharding, got {sharding!r}")
            if rank is not None or world_size is not None or shard_blocks is not None:
                raise ValueError("ALR: give either sharding or rank/world_size/shard_blocks, not both")
            rank, world_size = sharding.rank, sharding.world
        found = _dist_world()
        if rank is None:
            rank = found[0] if found else 0
        if world_size is None:
            world_size = found[1] if found else 1
        if found and (rank, world_size) != found:
            log.warning("ALR: rank %d of %d given, but torch.distributed says rank %d of %d", rank, world_size,
                        *found)
        if sharding is None:
            sharding = Sharding(rank, world_size, shard_blocks if world_size > 1 else None)
        device = torch.device(device) if device is not None else labels.device
        self.method, self.alpha, self.lam = method, float(alpha), float(lam)
        self.backend, self.assume_unique = backend, bool(assume_unique)
        self._check_index = check_index
        self._labels_all = labels.cpu().numpy().astype(np.int64)  # the given labels by global index (exports)
        self.bank = SoftLabelBank(labels.to(device), int(num_classes), bank_dtype, sharding=sharding)
        self.sharding = self.bank.sharding
        if _schedule is not None:
            self.schedule = _schedule
        else:
            if isinstance(warmup, bool) or not (warmup == "auto" or isinstance(warmup, int)):
                raise ValueError(f"ALR: warmup must be 'auto' or a number of epochs (int), got {warmup!r}")
            if isinstance(warmup, int) and warmup < 0:
                raise ValueError(f"ALR: warmup must be >= 0 epochs, got {warmup}")
            params = dict(warmup_rule or {})
            unknown = sorted(set(params) - set(AutoWarmupRule.PARAMS))
            if unknown:
                raise ValueError(f"ALR: unknown warmup_rule parameter(s) {unknown}; known: {list(AutoWarmupRule.PARAMS)}")
            if "max_epochs" not in params:
                params["max_epochs"] = max(1, epochs // 2) if epochs else AutoWarmupRule.DEFAULT_MAX_EPOCHS
            params.setdefault("min_epochs", min(WARMUP_DEFAULTS["min_epochs"], params["max_epochs"]))
            mode = "never" if method == "ce" else ("auto" if warmup == "auto" else "fixed")
            self.schedule = RefinementSchedule(
                mode, base, warmup_epochs=warmup if isinstance(warmup, int) else 0, rule=AutoWarmupRule(**params),
                ramp_epochs=ramp_epochs, ramp_alpha=ramp_alpha, steps_per_epoch=steps_per_epoch or 1,
                label_prior_max=float(_global_prior_max(labels, int(num_classes))))
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.step = 0
        self.calls_in_epoch = 0
        n = self.bank.num_samples
        # Argmax of this epoch's training predictions per owned row (-1: not seen); row n takes what is not kept.
        self.train_pred = torch.full((n + 1,), -1, dtype=torch.long, device=device)
        self.last_signals: dict = {}

    # -- construction from the trainer's config ----------------------------------------------------------------
    @classmethod
    def from_config(cls, method_cfg, labels, num_classes: int, *, epochs: int, steps_per_epoch: int,
                    sharding: Sharding = Sharding(), device=None, backend: str = "auto",
                    assume_unique: bool = False, check_index: bool | None = None) -> "ALR":
        """From a :class:`alr_fast.config.MethodConfig` (the trainer's way: same schedule rules, same bank), for the
        rank ``sharding`` describes."""
        sched = RefinementSchedule.from_config(method_cfg, epochs, steps_per_epoch, np.asarray(labels), num_classes)
        hparams = {k: getattr(method_cfg, k) for k in BASELINE_DEFAULTS}
        return cls(labels, num_classes, method=method_cfg.name, alpha=method_cfg.alpha, lam=method_cfg.lam,
                   hparams=hparams,
                   ramp_epochs=method_cfg.ramp_epochs, ramp_alpha=method_cfg.ramp_alpha, epochs=epochs,
                   steps_per_epoch=steps_per_epoch, sharding=sharding, device=device,
                   bank_dtype=method_cfg.bank_dtype, backend=backend, assume_unique=assume_unique,
                   check_index=check_index, _schedule=sched)

    # -- properties ---------------------------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        """N: all training samples (every rank)."""
        return self.bank.total_samples

    @property
    def num_classes(self) -> int:
        return self.bank.num_classes

    @property
    def rank(self) -> int:
        return self.sharding.rank

    @property
    def world_size(self) -> int:
        return self.sharding.world

    @property
    def device(self) -> torch.device:
        return self.bank.soft.device

    @property
    def global_index(self) -> torch.Tensor:
        """The global indices of the rows held here (ascending)."""
        return self.bank.global_index

    @property
    def soft_labels(self) -> torch.Tensor:
        """This rank's soft labels ``[rows held here, K]`` (row j is sample ``global_index[j]``)."""
        return self.bank.soft

    def refined_labels(self) -> torch.Tensor:
        """This rank's refined labels (argmax of the soft labels), in ``global_index`` order."""
        return self.bank.refined_labels()

    def refine_at(self, epoch: int | None = None) -> bool:
        """Whether epoch ``epoch`` (default: the current one) refines."""
        return self.schedule.refine_at(self.epoch if epoch is None else epoch)

    def to(self, device) -> "ALR":
        """Move the bank (and the prediction record) to ``device``; returns self."""
        self.bank.to(device)
        self.train_pred = self.train_pred.to(device)
        return self

    def owns(self, index: torch.Tensor) -> torch.Tensor:
        """[B] bool: a global index this rank owns (padding, < 0, is owned by no rank: the owner rule of
        :meth:`alr_fast.loss.sharding.Sharding.owns`)."""
        return self.bank.owns(index)

    # -- the loss ------------------------------------------------------------------------------------------------
    def _local_rows(self, index: torch.Tensor, check: bool) -> torch.Tensor:
        bank = self.bank
        if check:
            bad = (index >= 0) & (~bank.owns(index) | (index >= self.num_samples))  # padding (-1) is fine
            if bool(bad.any()):  # host sync: only when checking
                i = int(index[bad][0])
                if i >= self.num_samples:
                    raise IndexError(f"ALR: index {i} is out of range for {self.num_samples} training samples")
                raise IndexError(
                    f"ALR: rank {self.rank} of {self.world_size} got global index {i}, which rank "
                    f"{int(bank.sharding.owner(np.int64(i)))} owns (owner rule: alr_fast.loss.sharding); give each "
                    "rank only its own "
                    "samples (alr_fast.OwnerSampler)")
        if self.world_size == 1:
            return index
        local = bank.local_index(index)
        if check:
            return local
        # No host sync: a foreign index gets a row past the end, which the fused kernel masks and flags.
        foreign = (index >= 0) & ~self.sharding.owns(index)
        return torch.where(foreign, torch.full_like(local, bank.num_samples), local)

    def __call__(self, logits: torch.Tensor, index: torch.Tensor, *, reduction: str = "mean",
                 step: int | None = None, epoch: int | None = None, track: bool = True,
                 n_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of a batch: cross-entropy against the given labels in warm-up, the ALR loss (which updates
        the rows of ``index`` in the bank) once refinement started.

        ``index``: ``[B]`` GLOBAL sample indices (``-1``: a padded row, ignored). ``step`` / ``epoch`` override
        the object's own counters (the trainer passes its own). ``track``: record the predictions for the
        epoch's signals (the trainer keeps its own record and passes the counts to :meth:`end_epoch`).
        ``n_valid``: ``(index >= 0).sum()`` if the caller has it (a device tensor; the trainer counts its batch's
        real rows anyway): the fused kernel's ``"mean"`` then skips its counting pre-pass (one launch forward
        with ``assume_unique``); see :func:`alr_fast.loss.functional.alr_loss`."""
        if not isinstance(index, torch.Tensor):
            index = torch.as_tensor(index)
        if index.device != logits.device:
            index = index.to(logits.device, non_blocking=True)
        if index.dtype != torch.long:
            index = index.long()
        epoch = self.epoch if epoch is None else epoch
        step = self._current_step() if step is None else step
        check = self._check_index
        p = self.schedule.params(step, epoch)  # warm-up or refinement, the lam/alpha ramp: Python floats, no sync
        baseline = self._baseline if p.refine else None
        if check is None:  # the fused kernel flags bad rows on the device; the torch path must check first
            # (baselines: their kernels raise no device flag for a bad row, so their rows are checked on the host,
            # one sync per step on CUDA)
            check = (logits.device.type == "cpu" or baseline is not None
                     or _resolved(self.backend, logits.device, logits.dtype) != "triton")
        local = self._local_rows(index, check)
        if baseline is None:
            loss = alr_loss(logits, self.bank.soft, local, alpha=p.alpha, lam=p.lam, refine=p.refine,
                            reduction=reduction, backend=self.backend, check_index=check,
                            assume_unique=self.assume_unique,
                            n_valid=None if n_valid is None else n_valid.to(logits.device, non_blocking=True))
        else:  # a baseline (fused kernel or reference: alr_fast.loss.functional), rows checked on the host above
            labels = torch.where(local >= 0, self.bank.given[local.clamp_min(0)], -1)
            # 'auto' unless 'torch' was asked for: the fused kernel where it applies (K <= its MAX_K, ELR with
            # assume_unique), else the reference, instead of refusing the call
            loss = baseline(logits, self.bank.soft, local, labels, reduction=reduction,
                            backend="torch" if self.backend == "torch" else "auto", check_index=check,
                            assume_unique=self.assume_unique)
        if track:
            with torch.no_grad():
                n = self.bank.num_samples
                self.train_pred[torch.where((local >= 0) & (local < n), local, n)] = logits.detach().argmax(dim=1)
        self.calls_in_epoch += 1
        self.step = step + 1
        return loss

    def _current_step(self) -> int:
        return self.step

    # -- per epoch -----------------------------------------------------------------------------------------------
    def check_indices(self) -> None:
        """Raise ``IndexError`` if a fused call since the last check was given an index that is out of range or
        owned by another rank (reads the device flag: one host sync; :meth:`end_epoch` calls it)."""
        try:
            raise_on_bad_index(_resolved(self.backend, self.device, None), self.device, self.bank.num_samples)
        except IndexError as e:
            raise IndexError(
                f"ALR: rank {self.rank} of {self.world_size} was given a global index it does not own or that "
                f"is out of range (>= {self.num_samples}) since the last check ({e}); those rows got a NaN loss "
                "and their bank rows were not touched. Give each rank only its own samples "
                "(alr_fast.OwnerSampler)") from None

    def end_epoch(self, metrics: dict | None = None, *, epoch: int | None = None,
                  counts: torch.Tensor | None = None) -> dict:
        """Close the epoch (call it on every rank: it all-reduces K + 2 numbers when distributed): checks the
        indices, decides the end of the warm-up, flags a collapse, and returns the epoch's signals
        (``train_acc_given``, ``pred_max_share``, ``pred_classes_eff``, ``collapse`` in refinement,
        ``refine_from_epoch``, ``phase``). ``metrics``: other numbers of the epoch (a held-out noisy
        validation accuracy under ``noisy_val_acc`` is preferred by the automatic warm-up).
        ``counts``: the all-reduced :func:`alr_fast.loss.schedule.prediction_counts`, when the caller keeps
        the predictions itself (the trainer)."""
        epoch = self.epoch if epoch is None else epoch
        self.check_indices()
        if self.steps_per_epoch is None and self.calls_in_epoch:
            self.steps_per_epoch = self.calls_in_epoch  # learnt: the ramp is measured in these steps
            self.schedule.set_steps_per_epoch(self.steps_per_epoch)
        if counts is None:
            n = self.bank.num_samples
            counts = prediction_counts(self.train_pred[:n], self.bank.given, self.num_classes)
            if _dist_world() is not None and self.world_size > 1:
                torch.distributed.all_reduce(counts)
        phase = "refine" if self.schedule.refine_at(epoch) else "warmup"
        signals = {"phase": phase, **self.schedule.end_epoch(epoch, dict(metrics or {}), counts)}
        for msg in self.schedule.messages:
            if self.rank == 0:
                log.info(msg)
        self.epoch = epoch + 1
        if self.steps_per_epoch is not None:
            self.step = self.epoch * self.steps_per_epoch
        self.calls_in_epoch = 0
        self.train_pred.fill_(-1)
        self.last_signals = signals
        return signals

    def summary(self) -> dict:
        """The schedule's decisions so far (warm-up mode, first refinement epoch and why, collapse epochs)."""
        return self.schedule.summary()

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """This rank's state (CPU tensors): its bank rows with their global indices, the schedule, the counters.
        Save one per rank; :meth:`load_state_dict` takes the list of them on any world size."""
        return {
            "format": STATE_FORMAT,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "method": self.method,
            "bank": {k: v.detach().cpu().clone() for k, v in self.bank.state_dict().items()},
            "schedule": self.schedule.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def gather_state_dicts(self) -> list[dict]:
        """Every rank's :meth:`state_dict`, in rank order, returned on every rank: a collective (every rank calls
        it) when distributed; ``[self.state_dict()]`` on one rank. For a framework that saves one rank's copy
        of the state (a Lightning callback's state, a checkpoint written by rank 0): :meth:`load_state_dict`
        takes the list back on any world size."""
        own = self.state_dict()
        if self.world_size == 1:
            return [own]
        found = _dist_world()
        if found is None or found[1] != self.world_size:
            raise RuntimeError(
                f"ALR.gather_state_dicts: this object is rank {self.rank} of {self.world_size} but "
                f"torch.distributed {'is not initialised' if found is None else f'has {found[1]} ranks'}; save "
                "each rank's state_dict() instead")
        states: list = [None] * self.world_size
        torch.distributed.all_gather_object(states, own)
        return states

    def load_state_dict(self, state) -> None:
        """Restore from :meth:`state_dict` output: one dict (saved with the same world size and rank, or with
        world size 1) or the list of every rank's dicts of a run with ANY world size (re-sharding: this rank
        takes the rows it owns under its own world size). Everything must come from a run with the same
        labels and K."""
        shards = list(state) if isinstance(state, (list, tuple)) else [state]
        if not shards:
            raise ValueError("ALR.load_state_dict: no state given")
        for sd in shards:
            if not isinstance(sd, dict) or sd.get("format") != STATE_FORMAT:
                raise ValueError(f"ALR.load_state_dict: not an ALR state dict (format {STATE_FORMAT!r} expected)")
            if (sd["num_samples"], sd["num_classes"]) != (self.num_samples, self.num_classes):
                raise ValueError(
                    f"ALR.load_state_dict: state of N={sd['num_samples']}, K={sd['num_classes']} but this object "
                    f"has N={self.num_samples}, K={self.num_classes}")
        saved_world = shards[0]["world_size"]
        ranks = sorted(sd["rank"] for sd in shards)
        if any(sd["world_size"] != saved_world for sd in shards):
            raise ValueError("ALR.load_state_dict: the states come from runs with different world sizes")
        if len(shards) == 1 and saved_world > 1 and (saved_world, ranks[0]) != (self.world_size, self.rank):
            raise ValueError(
                f"ALR.load_state_dict: one state of rank {ranks[0]} of {saved_world} cannot fill rank {self.rank} "
                f"of {self.world_size}; pass the list of all {saved_world} ranks' states to re-shard")
        self.bank.load_rows_from([sd["bank"] for sd in shards])  # checks the given labels and the coverage
        first = shards[0]
        self.schedule.load_state_dict(first["schedule"])
        self.epoch = int(first["epoch"])
        self.calls_in_epoch = 0
        self.train_pred.fill_(-1)
        if saved_world == self.world_size:
            self.step = int(first["step"])
            if self.steps_per_epoch is None and first["steps_per_epoch"] is not None:
                self.steps_per_epoch = int(first["steps_per_epoch"])
                self.schedule.set_steps_per_epoch(self.steps_per_epoch)
        else:  # another world size: another number of steps per epoch
            spe = self.steps_per_epoch
            if spe is None and first["steps_per_epoch"] is not None:
                spe = max(1, math.ceil(first["steps_per_epoch"] * saved_world / self.world_size))
                log.warning("ALR.load_state_dict: world size %d -> %d and steps_per_epoch not given; "
                            "estimated as %d (pass steps_per_epoch=len(loader) for the exact lam ramp)",
                            saved_world, self.world_size, spe)
                self.steps_per_epoch = spe
            if spe is not None:
                self.schedule.set_steps_per_epoch(spe)
                self.step = self.epoch * spe
            else:
                self.step = 0

    # -- exports -------------------------------------------------------------------------------------------------
    def export(self, out, *, class_names=None, parts_only: bool = False) -> dict:
        """Write the bank's files into folder ``out``, as the trainer does: ``soft_labels.npy`` (float32 [N, K]),
        ``labels.npy``, ``refined_labels.csv`` (global_index, given_label, refined_label, confidence,
        suspect_rank), ``class_names.json`` and ``exports.json``. A collective when distributed (every rank calls
        it; ``out`` must be a folder every rank can write, as for the trainer): each rank writes its rows, rank 0
        assembles the files, in bounded memory. Returns the summary on rank 0 (``{}`` on the others).
        ``parts_only``: only write this rank's part (for ranks simulated in one process; rank 0 then calls
        :meth:`export` normally after every other rank's part exists)."""
        out = Path(out)
        parts = out / ".export_parts"
        parts.mkdir(parents=True, exist_ok=True)
        write_bank_part(parts, self.bank)
        if parts_only:
            return {}
        if _dist_world() is not None and self.world_size > 1:
            torch.distributed.barrier()
        info: dict = {}
        if self.rank == 0:
            given = self._labels_all
            refined = assemble_bank_files(out, parts, given, self.num_classes, self.world_size)
            names = [str(c) for c in (class_names if class_names is not None else range(self.num_classes))]
            if len(names) != self.num_classes:
                raise ValueError(f"ALR.export: {len(names)} class names for {self.num_classes} classes")
            write_text_atomic(out / "class_names.json", json.dumps(names) + "\n")
            shutil.rmtree(parts, ignore_errors=True)
            info = {
                "num_samples": self.num_samples,
                "num_classes": self.num_classes,
                "num_changed": int((refined != given).sum()),
                "refine_from_epoch": self.schedule.switch_epoch,
                "files": [*BANK_FILES, "class_names.json"],
            }
            write_text_atomic(out / "exports.json", json.dumps(info, indent=2) + "\n")
        if _dist_world() is not None and self.world_size > 1:
            torch.distributed.barrier()
        return info

    def __repr__(self) -> str:
        return (f"ALR(method={self.method!r}, alpha={self.alpha}, lam={self.lam}, N={self.num_samples}, "
                f"K={self.num_classes}, rank={self.rank}/{self.world_size}, epoch={self.epoch}, "
                f"refine_from_epoch={self.schedule.switch_epoch})")


def _baseline_loss(method: str, h: dict):
    """The refinement-phase loss of a baseline as ``f(logits, bank, local_rows, labels, **kw)``, its
    hyper-parameters checked now (None for ce/selc/alr)."""
    try:
        if method == "elr":
            ELRParams(h["elr_beta"], h["elr_lam"])
            return lambda z, bank, rows, y, **kw: elr_loss(z, bank, rows, y, beta=h["elr_beta"], lam=h["elr_lam"],
                                                           **kw)
        kw_of = {"gce": (lambda: GCEParams(h["gce_q"]), gce_loss, {"q": h["gce_q"]}),
                 "sce": (lambda: SCEParams(h["sce_alpha"], h["sce_beta"], h["sce_log_zero"]), sce_loss,
                         {"alpha": h["sce_alpha"], "beta": h["sce_beta"], "log_zero": h["sce_log_zero"]}),
                 "bootstrap": (lambda: BootstrapParams(h["bootstrap_beta"]), bootstrap_loss,
                               {"beta": h["bootstrap_beta"]})}
    except BaselineParamError as e:
        raise ValueError(f"ALR: {method}_{e.field} {e.requirement}, got {e.value!r}") from None
    if method not in kw_of:
        return None
    check, fn, params = kw_of[method]
    try:
        check()
    except BaselineParamError as e:
        raise ValueError(f"ALR: {method}_{e.field} {e.requirement}, got {e.value!r}") from None
    return lambda z, bank, rows, y, *, assume_unique, **kw: fn(z, y, **params, **kw)


def _resolved(backend: str, device: torch.device, dtype: torch.dtype | None) -> str:
    return resolve_backend(backend, device, dtype)


def _global_prior_max(labels: torch.Tensor, num_classes: int) -> float:
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes)
    return float(counts.max()) / float(counts.sum())
