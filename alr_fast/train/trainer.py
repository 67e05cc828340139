"""The one training loop: CE, SELC, ALR and the loss-based baselines (ELR, GCE, SCE, soft bootstrapping) on any
dataset, driving a DeepSpeed engine on 1..N ranks.

Warm-up epochs train with cross-entropy on the given labels (the bank's one-hot rows); later epochs refine
the bank and train on it (ALR; SELC when lam = 0), or train with the baseline's loss (ELR keeps its running
average of the predictions in the bank; GCE, SCE and bootstrapping leave the bank at the given labels). CE
never refines. The loss of every method is :class:`alr_fast.loss.alr.ALR`'s.

Data parallelism: rank r reads only the samples it owns (global index i with i % W == r; for tar shards, whole
shards: alr_fast.loss.sharding; the runtime's rank and world size become one Sharding, ``Runtime.sharding``, given
to the loaders and the bank alike) and holds only their bank rows (:mod:`alr_fast.loss.bank`), so the per-step
work is the local loss plus DeepSpeed's gradient all-reduce;
bank rows never travel during training. Once per epoch the ranks all-gather small per-sample vectors (refined
label, prediction) for the metrics; exports and re-sharding assemble the global bank.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from alr_fast.loss.alr import ALR
from alr_fast.loss.bank import SoftLabelBank
from alr_fast.util.atomic import atomic_path, torch_save, write_text_atomic
from alr_fast.util.logs import file_only, run_log
from alr_fast.train.checkpoint import complete_checkpoints, load_latest, save_checkpoint, saved_config
from alr_fast.config import Config, config_to_dict, provenance, resume_differences, save_config
from alr_fast.data.train_data import TrainData, build_train_data
from alr_fast.train.distributed import all_gather_rows, all_reduce_min, all_reduce_sum, barrier, sync_buffers
from alr_fast.train.evaluation import EvalPlan
from alr_fast.train.exports import predict_probs, write_exports
from alr_fast.train.loop_state import EpochAccumulators, LoopState
from alr_fast.train.metrics import label_quality, memorisation_split, refinement_note
from alr_fast.train.models import build_model
from alr_fast.train import faults
from alr_fast.train.plots import plot_curves
from alr_fast.train.precision import autocast, ds_precision_config, model_input
from alr_fast.train.runtime import (EXIT_PREEMPTED, PeerLost, Preempted, Runtime, StopSignals,
                                    apply_collective_timeout, deepspeed_log_level, is_collective_failure,
                                    quiet_deepspeed_import, report_exit_status, resolve_runtime)
from alr_fast.loss.schedule import prediction_counts

__all__ = ["train", "predict_probs"]

log = logging.getLogger("alr_fast.train")


def _ds_config(cfg: Config, rt: Runtime) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "train_batch_size": cfg.train.batch_size * cfg.train.grad_accum * rt.world_size,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,  # DeepSpeed's per-step timers synchronise; off by default
        "zero_optimization": {"stage": cfg.train.zero_stage},
        # DeepSpeed's default, written out: every step clips the gradients' global L2 norm to 1.0.
        "gradient_clipping": 1.0,
        # ZeRO 1/2 partition torch.optim.SGD/AdamW state like any other optimizer's (tests/test_rehearsal.py).
        "zero_allow_untested_optimizer": True,
        # DeepSpeed's logger: errors only at the default verbosity (-v: its warnings, -vv: its info).
        "log_level": deepspeed_log_level(),
        **ds_precision_config(rt.precision),
    }


def _optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.momentum, 0.999), weight_decay=o.weight_decay)


def _lr_at(cfg: Config, epoch: int, step_in_epoch: int, steps_per_epoch: int) -> float:
    """The schedule at ``epoch + step_in_epoch / steps_per_epoch`` epochs of progress: a position that means the
    same with any world size (a run resumed on another number of ranks continues the curve where it was)."""
    o = cfg.optim
    if o.schedule == "cosine":
        step, total = epoch * steps_per_epoch + step_in_epoch, cfg.train.epochs * steps_per_epoch
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    if o.schedule == "step":
        return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)
    return o.lr


def _gather_global(local_values: torch.Tensor, bank: SoftLabelBank, fill) -> torch.Tensor:
    """Assemble an [N, ...] tensor from every rank's rows (addressed by the bank's global_index)."""
    parts = all_gather_rows(local_values)
    gidx = all_gather_rows(bank.global_index)
    full = torch.full((bank.total_samples, *local_values.shape[1:]), fill, dtype=local_values.dtype,
                      device=local_values.device)
    for g, v in zip(gidx, parts):
        full[g] = v
    return full


_NO_BAD_STEP = 2**62


class _Loop:
    """One run: what set-up builds (``cfg``, runtime, data, engine, bank, loaders, sinks) and the ``LoopState``.

    ``train`` reads as the loop itself; each method here is one phase of it.
    """

    def __init__(self, cfg: Config, data: TrainData | None, runtime: Runtime | None,
                 stack: contextlib.ExitStack | None = None):
        """``stack`` holds ``<out>/train.log``'s handler until :func:`train` ends; a loop built without one (a
        test's probe) writes no train.log."""
        quiet_deepspeed_import()  # DeepSpeed's start-up warnings off at the default verbosity
        import deepspeed

        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        rt = runtime or resolve_runtime(cfg.train.device, cfg.train.precision, cfg.method.backend,
                                        cfg.train.collective_timeout_s)
        implied = cfg.train.batch_size * cfg.train.grad_accum * rt.world_size
        if cfg.train.global_batch_size and cfg.train.global_batch_size != implied:
            raise ValueError(
                f"config train.global_batch_size={cfg.train.global_batch_size} but train.batch_size "
                f"({cfg.train.batch_size}) x train.grad_accum ({cfg.train.grad_accum}) x world size "
                f"({rt.world_size}) = {implied}; change one of them"
            )
        self.cfg, self.rt = cfg, rt
        self.data = data = data or build_train_data(cfg, rt.device)
        self.plan = EvalPlan.build(cfg, data, rt.device)  # evaluation sets, noisy validation slice, selection
        self.out = out = Path(cfg.train.out)
        if cfg.train.resume:  # before anything is written: the run folder keeps describing its checkpoints
            self.check_resume_config()
        error = None
        if rt.is_main:
            try:  # each file whole or absent (alr_fast.util.atomic); a full disk is named with the path
                out.mkdir(parents=True, exist_ok=True)
                save_config(cfg, out / "config.json")
                if data.noise_manifest is not None:
                    write_text_atomic(out / "noise.json", json.dumps(data.noise_manifest, indent=2) + "\n")
                # The exact training labels by global index: re-usable as data.noise_file (with data.noise_kind=none).
                with atomic_path(out / "noisy_labels.npy") as tmp:
                    np.save(tmp, np.asarray(data.given_labels, dtype=np.int64))
                write_text_atomic(out / "provenance.json", json.dumps(provenance(), indent=2) + "\n")
                # The run's messages, with timestamps, for as long as train() runs (appended on --resume).
                if stack is not None:
                    stack.enter_context(run_log(out / "train.log", lambda e: logging.WARNING
                                                if isinstance(e, Preempted) else logging.ERROR))
            except OSError as e:
                error = e
        if int(all_reduce_sum(torch.tensor(int(error is not None), device=rt.device)).item()):
            raise error or OSError(f"rank 0 could not write the run folder {out} (see its message)")
        if rt.is_main:
            from alr_fast import __version__

            log.info("run %s: alr_fast %s, method %s, recipe %s, dataset %s, %d epochs, world size %d, device %s, "
                     "precision %s, loss backend %s", out, __version__, cfg.method.name, cfg.recipe,
                     cfg.data.dataset, cfg.train.epochs, rt.world_size, rt.device, rt.precision, rt.backend)

        torch.manual_seed(cfg.train.seed)
        k = data.num_classes
        model = build_model(cfg.model.name, num_classes=k, in_channels=data.in_channels, image_size=data.image_size,
                            width=cfg.model.width, pretrained=cfg.model.pretrained).to(rt.device)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=_optimizer(cfg, model),
                                                    config=_ds_config(cfg, rt))
        apply_collective_timeout(rt.device, cfg.train.collective_timeout_s)  # DeepSpeed's own groups too
        self.given = torch.from_numpy(data.given_labels)
        self.clean = torch.from_numpy(data.clean_labels) if data.clean_labels is not None else None
        # The owner rule of this rank, one object: the bank and every loader are given this same Sharding.
        self.sharding = rt.sharding(data.sharding_blocks)
        self.train_loader = self.plan.wrap_train(
            data.train_source(self.sharding, cfg.train.batch_size, cfg.train.seed), rt.device)
        self.steps_per_epoch = len(self.train_loader)
        # Host syncs; on CUDA the loaders' indices are in range by construction.
        self.check_index = rt.device.type == "cpu"
        # The public ALR object (alr_fast/loss/alr.py) is the loss, this rank's bank rows and the schedule (when
        # refinement starts, fixed or automatic, and the lam/alpha ramp: alr_fast/loss/schedule.py). assume_unique:
        # every loader yields a permutation of the rank's rows (padding is -1), so an index never repeats within a
        # batch and the fused kernel can skip its duplicate-ordering sort.
        self.alr = ALR.from_config(cfg.method, torch.from_numpy(data.given_labels), k, epochs=cfg.train.epochs,
                                   steps_per_epoch=self.steps_per_epoch, sharding=self.sharding,
                                   device=rt.device, backend=rt.backend, assume_unique=True,
                                   check_index=self.check_index)
        self.bank, self.sched = self.alr.bank, self.alr.schedule
        self.faults = faults.from_env(rt.rank)  # None unless a reliability test asks (alr_fast/train/faults.py)
        self.signals = StopSignals(rt.rank)
        self.stopping = False
        # Smallest global step whose loss was non-finite (_NO_BAD_STEP: none); read every nan_check_every steps.
        self.bad_step = torch.full((), _NO_BAD_STEP, dtype=torch.long, device=rt.device)
        self.state = LoopState()
        self.acc = EpochAccumulators(self.bank.num_samples, rt.device)
        # Everything a checkpoint holds besides the engine: each component saves and restores itself.
        self.shared_states = {"loop": self.state, "schedule": self.sched, "selection": self.plan}
        self.rank_states = {"bank": self.bank, "epoch": self.acc}
        if cfg.train.resume:
            self.resume()
        self._open_sinks()
        self.t_run = time.perf_counter()

    def check_resume_config(self) -> None:
        """--resume with a config that differs (beyond train.*) from the newest checkpoint's: refused, naming the
        fields, before the run folder is touched."""
        newest = complete_checkpoints(self.out)
        saved = saved_config(newest[0]) if newest else None
        diffs = resume_differences(saved, self.cfg) if saved is not None else []
        if diffs:
            raise ValueError(f"{newest[0]}/trainer.json: the checkpoint was written with a different config "
                             f"(only train.* fields may change on resume): {'; '.join(diffs)}")

    def resume(self) -> None:
        cfg, rt = self.cfg, self.rt
        found = load_latest(self.out, self.engine, shared=self.shared_states, per_rank=self.rank_states,
                            sharding=self.bank.sharding, device=rt.device, strict=cfg.train.resume_strict)
        if found is None:
            if rt.is_main:
                log.info("--resume: no complete checkpoint in %s/checkpoints, starting fresh", self.out)
            return
        latest, saved = found
        if saved["world_size"] != rt.world_size:
            self.state.restart_epoch(self.steps_per_epoch)
        diffs = resume_differences(saved["config"], cfg)
        if diffs:
            raise ValueError(f"{latest}/trainer.json: the checkpoint was written with a different config "
                             f"(only train.* fields may change on resume): {'; '.join(diffs)}")
        if rt.is_main:
            s = self.state
            log.info("resumed from %s (epoch %d, step %d of the epoch, global step %d, world size %d -> %d)", latest,
                     s.epoch, s.step_in_epoch, s.step, saved["world_size"], rt.world_size)

    def save(self) -> None:
        """Checkpoint the engine, the bank and the loop state (a collective: every rank calls it). Callers have
        just run :meth:`agree_to_stop`, so a checkpoint never holds a step with a non-finite loss; and weights,
        buffers or bank rows that are not finite (an update that overflowed after a finite loss) stop the run
        instead of being checkpointed."""
        sync_buffers(self.engine.module)  # the engine saves rank 0's module: make it every rank's
        finite = all(bool(torch.isfinite(t).all()) for t in (*self.engine.module.state_dict().values(),
                                                               self.bank.soft) if t.is_floating_point())
        if int(all_reduce_sum(torch.tensor(int(not finite), device=self.rt.device)).item()):
            s, newest = self.state, complete_checkpoints(self.out)
            raise FloatingPointError(
                f"non-finite weights or soft labels after global step {s.step} (epoch {s.epoch}); stopping without "
                f"a checkpoint: the newest complete checkpoint, {newest[0] if newest else 'none'}, was written "
                "before them. Lower optim.lr or check the input data")
        save_checkpoint(self.out, self.engine, shared=self.shared_states, per_rank=self.rank_states,
                        step=self.state.step, config=config_to_dict(self.cfg), sharding=self.bank.sharding,
                        device=self.rt.device, keep=self.cfg.train.keep_checkpoints)

    def _open_sinks(self) -> None:
        cfg = self.cfg
        self.progress = self.tb = self.metrics_file = None
        if not self.rt.is_main:
            return
        # A bar only where a person watches (stderr a terminal); a batch job's log gets one line per epoch.
        if cfg.train.progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(total=cfg.train.epochs * self.steps_per_epoch, initial=self.state.step,
                                 desc=cfg.method.name, unit="step", mininterval=1.0)
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))
        # metrics.jsonl is rewritten whole (atomically) after every epoch: a resumed run's file matches an
        # uninterrupted run's, and a crash or a full disk leaves the previous complete version.
        self.metrics_file = self.out / "metrics.jsonl"
        self._write_metrics()

    def _write_metrics(self) -> None:
        write_text_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in self.state.rows))

    def run_epoch(self, epoch: int) -> dict:
        """Train one epoch (from ``state.step_in_epoch`` when resumed mid-way); returns its timings and last LR."""
        cfg, engine, bank, s, acc = self.cfg, self.engine, self.bank, self.state, self.acc
        n_local = bank.num_samples
        s.epoch = epoch
        if s.step_in_epoch == 0:  # not an epoch resumed mid-way
            acc.reset()
        data_time = step_time = 0.0
        lr = float("nan")
        t0 = t_data = time.perf_counter()
        for i, (x, idx) in enumerate(self.train_loader.epoch(epoch, start_step=s.step_in_epoch),
                                     start=s.step_in_epoch):
            t_step = time.perf_counter()
            data_time += t_step - t_data
            lr = _lr_at(cfg, epoch, i, self.steps_per_epoch)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            local = bank.local_index(idx)
            if self.faults is not None:
                x = self.faults.batch(s.step + 1, x)
            logits = engine(model_input(x, engine.module))
            # The batch's real rows (padding: -1), on the device: the fused "mean" takes this count instead of
            # counting them in a pre-pass (one launch forward), and the epoch's mean loss weighs by it.
            n_valid = (idx >= 0).sum()
            # Global indices; refuses one this rank does not own. Warm-up end and lam/alpha ramp: no sync.
            loss = self.alr(logits, idx, step=s.step, epoch=epoch, track=False, n_valid=n_valid)
            engine.backward(loss)
            engine.step()
            s.step += 1
            s.step_in_epoch = i + 1
            with torch.no_grad():
                acc.loss_sum += loss.detach().double() * n_valid
                acc.seen += n_valid
                acc.train_pred[torch.where(local >= 0, local, n_local)] = logits.detach().argmax(dim=1)
                # No host sync: remember the first non-finite step on the device; agree_to_stop reads it.
                self.bad_step = torch.minimum(self.bad_step,
                                              torch.where(torch.isfinite(loss.detach()), _NO_BAD_STEP, s.step))
            t_data = time.perf_counter()
            step_time += t_data - t_step
            if self.progress is not None:
                self.progress.update(1)
            if self.faults is not None:
                self.faults.after_step(s.step, "signal")
            last = i + 1 == self.steps_per_epoch
            save_due = bool(cfg.train.save_every) and s.step % cfg.train.save_every == 0 and not last
            self.stopping = self.agree_to_stop(force=save_due or last)
            self.signals.decided = self.stopping
            if (save_due or self.stopping) and not last:
                self.save()
            if self.faults is not None:
                self.faults.after_step(s.step, "kill")
            if self.stopping and not last:
                raise self.preempted()
        return {"lr": lr, "epoch_time": time.perf_counter() - t0, "data_time": data_time, "step_time": step_time}

    def end_epoch(self, epoch: int, timing: dict) -> None:
        """Once per epoch: host syncs, collectives, CPU-side metrics, logging, exports, checkpoint."""
        sync_buffers(self.engine.module)  # BatchNorm statistics: one set on every rank before eval and checkpoint
        cfg, s, bank = self.cfg, self.state, self.bank
        totals = all_reduce_sum(torch.stack([self.acc.loss_sum, self.acc.seen.double()]))
        self.alr.check_indices()  # names a masked index (>= N or another rank's) of the fused kernel
        n_seen = int(totals[1].item())
        train_loss = totals[0].item() / max(n_seen, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"epoch {epoch}: training loss is {train_loss} (non-finite logits; see alr_fast.loss.reference for how "
                "the loss treats them) - lower optim.lr or check the input data"
            )
        evals = self.plan.evaluate(self.engine.module, self.rt.device, max(cfg.train.batch_size, 256),
                                   lambda: autocast(self.rt.precision, self.rt.device))
        if self.plan.observe(epoch, evals) and self.rt.is_main:
            with atomic_path(self.out / "model_best.pt") as tmp:  # selected on validation
                torch_save(self.engine.module.state_dict(), tmp)
        row = {
            "epoch": epoch,
            "phase": "refine" if self.sched.refine_at(epoch) else "warmup",
            "lr": timing["lr"],
            "train_loss": train_loss,
            **evals,
            "images_per_s": n_seen / timing["epoch_time"],
            "epoch_time_s": timing["epoch_time"],
            "data_time_s": timing["data_time"],
            "step_time_s": timing["step_time"],
        }
        # Automatic end of warm-up and collapse guard: K + 2 numbers reduced once per epoch.
        counts = all_reduce_sum(prediction_counts(self.acc.train_pred[: bank.num_samples], bank.given,
                                                  bank.num_classes))
        row.update(self.alr.end_epoch(row, epoch=epoch, counts=counts))  # logs the schedule's messages (rank 0)
        if self.clean is not None:
            refined = _gather_global(bank.refined_labels(), bank, -1).cpu()
            preds = _gather_global(self.acc.train_pred[: bank.num_samples], bank, -1).cpu()
            row.update(label_quality(self.given, refined, self.clean))
            row.update(memorisation_split(preds, self.given, self.clean))
        s.rows.append(row)
        self._log(epoch, row)
        if cfg.train.export_every_epoch:
            write_exports(self.out, self.engine, bank, self.data, self.rt, max(cfg.train.batch_size, 256))
        s.epoch, s.step_in_epoch = epoch + 1, 0
        if cfg.train.save_every_epoch or cfg.train.save_every or self.stopping:
            self.save()
        if self.stopping:
            raise self.preempted()

    def agree_to_stop(self, force: bool = False) -> bool:
        """Every ``train.nan_check_every`` steps (and when ``force``): one all-reduce of two numbers and one host
        sync. Raises if any rank saw a non-finite loss since the last check; returns True when any rank got
        SIGTERM/SIGINT, so that all ranks stop after the same step. One rank alone stops right after the step
        in which the signal arrived (no peer to agree with; a Python flag, no sync)."""
        s, rt = self.state, self.rt
        local_stop = bool(self.signals.requested)
        if not (force or s.step % self.cfg.train.nan_check_every == 0 or (local_stop and rt.world_size == 1)):
            return False
        flags = torch.stack([torch.tensor(-int(local_stop), device=rt.device), self.bad_step])
        stop, bad = all_reduce_min(flags).tolist()  # host sync: once per check
        if bad != _NO_BAD_STEP:
            newest = complete_checkpoints(self.out)
            raise FloatingPointError(
                f"non-finite training loss at global step {bad} (epoch {s.epoch}; detected at step {s.step}, checks "
                f"every train.nan_check_every={self.cfg.train.nan_check_every} steps); stopping without a "
                f"checkpoint: the newest, {newest[0] if newest else 'none'}, is from before it. Lower optim.lr or "
                "check the input data (alr_fast.loss.reference: non-finite logits give a NaN loss)"
            )
        return stop < 0

    def preempted(self) -> Preempted:
        """The stop checkpoint is complete: report status 75 to a launcher wrapper now (it may be killed on its
        way out), and return the exception that ends the run."""
        s = self.state
        report_exit_status(EXIT_PREEMPTED)
        newest = complete_checkpoints(self.out)
        return Preempted(f"rank {self.rt.rank}: stopped on a signal after global step {s.step} (epoch {s.epoch}, "
                         f"step {s.step_in_epoch} of the epoch); checkpoint {newest[0] if newest else 'none'}; "
                         "run again with --resume to continue")

    @contextlib.contextmanager
    def guard(self):
        """Around the loop: SIGTERM/SIGINT become a stop request; a failed collective names the step."""
        with self.signals:
            try:
                yield
            except RuntimeError as e:
                if self.rt.world_size == 1 or not is_collective_failure(e):
                    raise
                s = self.state
                raise PeerLost(
                    f"rank {self.rt.rank}: a collective failed during global step {s.step + 1} (epoch {s.epoch}, "
                    f"step {s.step_in_epoch + 1} of the epoch): {str(e).splitlines()[0][:300]}. Another rank "
                    f"probably died or hangs (train.collective_timeout_s={self.cfg.train.collective_timeout_s:g}); "
                    "run again with --resume to continue from the newest checkpoint"
                ) from e

    def _log(self, epoch: int, row: dict) -> None:
        if self.rt.is_main:
            # One plain line per epoch: on stderr when no progress bar shows these numbers, always in train.log.
            test = row.get("test_acc")
            log.info("epoch %d (%d of %d, %s): train loss %.4f, test acc %s, %.1f s, %.0f images/s", epoch,
                     epoch + 1, self.cfg.train.epochs, row["phase"], row["train_loss"],
                     "-" if test is None else f"{100 * test:.2f} %", row["epoch_time_s"], row["images_per_s"],
                     extra=file_only() if self.progress is not None else None)
        if self.metrics_file is not None:
            self._write_metrics()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tb.add_scalar(key, value, epoch)
            self.tb.flush()
        if self.progress is not None:
            self.progress.set_postfix(ep=f"{epoch + 1}/{self.cfg.train.epochs}", loss=f"{row['train_loss']:.3f}",
                                      test=f"{row['test_acc']:.3f}", img_s=f"{row['images_per_s']:.0f}",
                                      refresh=False)

    def close_sinks(self) -> None:
        for sink in (self.progress, self.tb):
            if sink is not None:
                sink.close()

    def finish(self) -> dict:
        """Exports, the cross-rank weight check, model.pt, summary.json and the curves; returns the summary."""
        cfg, rt, engine, s = self.cfg, self.rt, self.engine, self.state
        self.close_sinks()
        exports = write_exports(self.out, engine, self.bank, self.data, rt, max(cfg.train.batch_size, 256))
        # Data parallelism must leave every rank with the same weights and buffers: check it, cheaply, once.
        digest = hashlib.sha256()
        for p in engine.module.state_dict().values():
            digest.update(p.detach().float().cpu().numpy().tobytes())
        code = torch.tensor(list(digest.digest()[:8]), dtype=torch.long, device=rt.device)
        rank_codes = [bytes(c[0].tolist()).hex() for c in all_gather_rows(code[None])] if rt.world_size > 1 else []
        if rank_codes and len(set(rank_codes)) != 1:
            raise RuntimeError(f"model weights differ across ranks at the end of training: {rank_codes}")
        rows, last = s.rows, s.rows[-1]
        summary = {
            "method": cfg.method.name,
            "last_test_acc": last["test_acc"],
            **self.plan.summary(last),
            "epochs": cfg.train.epochs,
            "train_time_s": time.perf_counter() - self.t_run,
            "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows),
            "world_size": rt.world_size,
            "device": str(rt.device),
            "loss_backend": rt.backend,
            "sample_passes": int(cfg.train.epochs * self.data.num_train),
            **self.sched.summary(),
            "weights_sha256_prefix": digest.hexdigest()[:16],
            "rank_weight_digests": rank_codes,
        }
        for key in ("refined_label_acc", "given_label_acc", "mislabel_precision", "mislabel_recall", "mislabel_f1",
                    "memo_true", "memo_given", "memo_other"):
            if key in last:
                summary[key] = last[key]
        if rt.is_main:
            summary["num_changed"] = exports.get("num_changed")
            # Short runs: say that the refined labels are the given ones instead of letting 0 % F1 speak.
            summary["refinement_note"] = refinement_note(cfg.method.name, summary.get("refine_from_epoch"),
                                                         cfg.train.epochs, summary["num_changed"])
            if summary["refinement_note"]:
                log.warning("%s", summary["refinement_note"])
            with atomic_path(self.out / "model.pt") as tmp:
                torch_save(engine.module.state_dict(), tmp)
            write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
            warm = self.sched.switch_epoch if cfg.method.name != "ce" else None
            plot_curves(rows, self.out / "curves.png", f"{cfg.method.name} on {cfg.data.dataset}", warm)
        barrier()
        return summary


def train(cfg: Config, data: TrainData | None = None, *, runtime: Runtime | None = None, return_model: bool = False):
    """Run one configuration end to end; returns the summary (also written to ``<out>/summary.json``), and the
    trained model too (``(summary, model)``) when ``return_model``."""
    # The stack holds <out>/train.log's handler (rank 0) for the whole run; an exception that ends the run is
    # written there too.
    with contextlib.ExitStack() as stack:
        loop = _Loop(cfg, data, runtime, stack)  # set-up, and the LoopState (restored with --resume)
        with loop.guard():  # SIGTERM/SIGINT: checkpoint and raise Preempted; a dead peer: PeerLost naming the step
            for epoch in range(loop.state.epoch, cfg.train.epochs):
                timing = loop.run_epoch(epoch)
                loop.end_epoch(epoch, timing)
            summary = loop.finish()
        if loop.rt.is_main:
            log.info("finished: %s/summary.json", cfg.train.out)
    return (summary, loop.engine.module) if return_model else summary
