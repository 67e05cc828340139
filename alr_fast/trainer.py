"""The one training loop: CE, SELC and ALR on any dataset, driving a DeepSpeed engine on 1..N ranks.

Warm-up epochs train with cross-entropy on the given labels (the bank's one-hot rows); later epochs refine
the bank and train on it (ALR; SELC when lam = 0). CE never refines.

Data parallelism: rank r reads only the samples it owns (global index i with i % W == r) and holds only their
bank rows (:mod:`alr_fast.bank`), so the per-step work is the local loss plus DeepSpeed's gradient all-reduce;
bank rows never travel during training. Once per epoch the ranks all-gather small per-sample vectors (refined
label, prediction) for the metrics; exports and re-sharding assemble the global bank.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from alr_fast.bank import SoftLabelBank
from alr_fast.checkpoint import capture_rng, find_latest, load_checkpoint, restore_rng, save_checkpoint
from alr_fast.config import Config, config_from_dict, config_to_dict, save_config
from alr_fast.data.arrays import ArrayLoader
from alr_fast.distributed import all_gather_rows, all_reduce_sum, barrier, sync_buffers
from alr_fast.functional import alr_loss
from alr_fast.metrics import label_quality, memorisation_split
from alr_fast.models import build_model
from alr_fast.precision import ds_precision_config, model_input
from alr_fast.runtime import Runtime, resolve_runtime

__all__ = ["TrainData", "train", "build_train_data", "predict_probs", "BatchSource"]


class BatchSource(Protocol):
    """What the loop needs from a loader: steps per epoch (equal on every rank) and the batches."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0): ...


@dataclass
class TrainData:
    """A dataset as the loop sees it: labels by global index and factories for this rank's loaders.

    ``train_source(rank, world, batch_size, seed)`` must yield only indices the rank owns (i % world == rank)
    or -1; ``predict_source(rank, world, batch_size)`` the same rows in a fixed order with the eval transform.
    """

    given_labels: np.ndarray
    """int64 [N]: the (noisy) labels training sees."""
    clean_labels: np.ndarray | None
    """int64 [N] when known (synthetic noise), else None."""
    num_classes: int
    in_channels: int
    image_size: int
    train_source: Callable[[int, int, int, int], BatchSource]
    test_source: Callable[[int], BatchSource]
    test_labels: np.ndarray
    predict_source: Callable[[int, int, int], BatchSource]
    noise_manifest: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_train(self) -> int:
        return int(self.given_labels.shape[0])

    @classmethod
    def from_arrays(cls, train_images: torch.Tensor, given_labels, clean_labels, test_images: torch.Tensor,
                    test_labels, *, num_classes: int, mean, std, augment: bool = False, noise_manifest=None,
                    device: torch.device | str = "cpu") -> "TrainData":
        """In-memory uint8 [N, C, H, W] images (the embedded datasets, quality study folds)."""

        def train_source(rank, world, batch_size, seed):
            return ArrayLoader(train_images, batch_size=batch_size, mean=mean, std=std, shuffle=True, seed=seed,
                               rank=rank, world_size=world, augment=augment, device=device)

        def predict_source(rank, world, batch_size):
            return ArrayLoader(train_images, batch_size=batch_size, mean=mean, std=std, shuffle=False, rank=rank,
                               world_size=world, device=device)

        def test_source(batch_size):
            return ArrayLoader(test_images, batch_size=batch_size, mean=mean, std=std, shuffle=False, device=device)

        return cls(
            given_labels=np.asarray(given_labels, dtype=np.int64),
            clean_labels=None if clean_labels is None else np.asarray(clean_labels, dtype=np.int64),
            num_classes=num_classes, in_channels=train_images.shape[1], image_size=train_images.shape[-1],
            train_source=train_source, test_source=test_source, test_labels=np.asarray(test_labels, dtype=np.int64),
            predict_source=predict_source, noise_manifest=noise_manifest,
        )


def build_train_data(cfg: Config, device: torch.device | str = "cpu") -> TrainData:
    """Load the configured dataset and apply the configured synthetic noise."""
    from alr_fast.data.embedded import EMBEDDED_DATASETS, load_embedded
    from alr_fast.noise import make_noisy_labels

    if cfg.data.dataset not in EMBEDDED_DATASETS:
        from alr_fast.data.train_data import reader_train_data

        return reader_train_data(cfg, device)
    s = load_embedded(cfg.data.dataset, cfg.data.test_fraction)
    noisy, manifest = make_noisy_labels(
        s.train_labels, kind=cfg.data.noise_kind, rate=cfg.data.noise_rate, num_classes=s.num_classes,
        seed=cfg.data.noise_seed, images=s.train_images.numpy(),
    )
    return TrainData.from_arrays(
        s.train_images, noisy, s.train_labels, s.test_images, s.test_labels, num_classes=s.num_classes,
        mean=s.mean, std=s.std, augment=cfg.data.augment, noise_manifest=json.loads(manifest.to_json()),
        device=device,
    )


def _ds_config(cfg: Config, rt: Runtime) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "train_batch_size": cfg.train.batch_size * cfg.train.grad_accum * rt.world_size,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,  # DeepSpeed's per-step timers synchronise; off by default
        "zero_optimization": {"stage": cfg.train.zero_stage},
        # ZeRO 1/2 partition torch.optim.SGD/AdamW state like any other optimizer's (tests/test_rehearsal.py).
        "zero_allow_untested_optimizer": True,
        **ds_precision_config(rt.precision),
    }


def _optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(o.momentum, 0.999), weight_decay=o.weight_decay)


def _lr_at(cfg: Config, step: int, steps_per_epoch: int) -> float:
    o, total = cfg.optim, cfg.train.epochs * steps_per_epoch
    if o.schedule == "cosine":
        return o.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    if o.schedule == "step":
        epoch = step // steps_per_epoch
        return o.lr * 0.1 ** sum(epoch >= m for m in o.milestones)
    return o.lr


def _autocast(rt: Runtime):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(rt.precision)
    return torch.autocast(rt.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, source: BatchSource, labels: torch.Tensor, rt: Runtime) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=rt.device)
    for x, idx in source.epoch(0):
        with _autocast(rt):
            pred = model(model_input(x, model)).argmax(dim=1)
        correct += ((pred == labels[idx.clamp_min(0)]) & (idx >= 0)).sum()
    model.train()
    return correct.item() / labels.numel()  # .item() syncs: once per evaluation


@torch.no_grad()
def predict_probs(model: torch.nn.Module, source: BatchSource, num_samples: int, rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(global indices [n], softmax probabilities [n, K] fp32 on the CPU) of ``model`` over ``source``."""
    model.eval()
    idxs, probs = [], []
    for x, idx in source.epoch(0):
        with _autocast(rt):
            p = torch.softmax(model(model_input(x, model)).float(), dim=1)
        keep = idx >= 0
        idxs.append(idx[keep].cpu())
        probs.append(p[keep].cpu())
    model.train()
    if not idxs:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return torch.cat(idxs), torch.cat(probs)


def _gather_global(local_values: torch.Tensor, bank: SoftLabelBank, fill) -> torch.Tensor:
    """Assemble an [N, ...] tensor from every rank's rows (addressed by the bank's global_index)."""
    parts = all_gather_rows(local_values)
    gidx = all_gather_rows(bank.global_index)
    full = torch.full((bank.total_samples, *local_values.shape[1:]), fill, dtype=local_values.dtype,
                      device=local_values.device)
    for g, v in zip(gidx, parts):
        full[g] = v
    return full


def _plot_curves(rows: list[dict], path: Path, title: str, warmup: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(ep, [r["test_acc"] for r in rows], label="test acc")
    if "refined_label_acc" in rows[0]:
        axes[0].plot(ep, [r["refined_label_acc"] for r in rows], label="refined-label acc")
        axes[0].plot(ep, [r["mislabel_f1"] for r in rows], label="mislabel F1")
        for key, lab in (("memo_true", "true"), ("memo_given", "given (memorised)"), ("memo_other", "other")):
            axes[1].plot(ep, [r[key] for r in rows], label=lab)
        axes[1].set_title("predictions on mislabelled samples")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if warmup:
            ax.axvline(warmup - 0.5, color="grey", ls="--", lw=0.8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if "refined_label_acc" not in rows[0]:
        axes[1].set_title("clean labels unknown: no memorisation split")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_exports(out: Path, engine, bank: SoftLabelBank, data: TrainData, rt: Runtime, batch_size: int) -> dict:
    """refined_labels.csv, pred_probs.npy, soft_labels.npy, labels.npy and exports.json; a collective call.

    Built to scale to full WebVision (2.4M x 1000): no N x K tensor goes through a collective or sits in
    memory. Each rank writes its own rows to ``<out>/.export_parts/`` (``--out`` is on a shared filesystem
    for multi-node runs anyway); rank 0 streams them into memory-mapped ``.npy`` files.
    """
    k, n = bank.num_classes, data.num_train
    gidx, probs = predict_probs(engine.module, data.predict_source(rt.rank, rt.world_size, batch_size), n, rt)
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


def train(cfg: Config, data: TrainData | None = None, *, runtime: Runtime | None = None, return_model: bool = False):
    """Run one configuration end to end; returns the summary (also written to ``<out>/summary.json``), and the
    trained model too (``(summary, model)``) when ``return_model``."""
    import deepspeed

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rt = runtime or resolve_runtime(cfg.train.device, cfg.train.precision, cfg.method.backend)
    implied = cfg.train.batch_size * cfg.train.grad_accum * rt.world_size
    if cfg.train.global_batch_size and cfg.train.global_batch_size != implied:
        raise ValueError(
            f"config train.global_batch_size={cfg.train.global_batch_size} but train.batch_size "
            f"({cfg.train.batch_size}) x train.grad_accum ({cfg.train.grad_accum}) x world size ({rt.world_size}) "
            f"= {implied}; change one of them"
        )
    data = data or build_train_data(cfg, rt.device)
    out = Path(cfg.train.out)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")
        if data.noise_manifest is not None:
            (out / "noise.json").write_text(json.dumps(data.noise_manifest, indent=2) + "\n")
    barrier()

    torch.manual_seed(cfg.train.seed)
    n, k = data.num_train, data.num_classes
    model = build_model(cfg.model.name, num_classes=k, in_channels=data.in_channels, image_size=data.image_size,
                        width=cfg.model.width).to(rt.device)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=_optimizer(cfg, model), config=_ds_config(cfg, rt))

    bank = SoftLabelBank(torch.from_numpy(data.given_labels), k, cfg.method.bank_dtype, rank=rt.rank,
                         world_size=rt.world_size).to(rt.device)
    given = torch.from_numpy(data.given_labels)
    clean = torch.from_numpy(data.clean_labels) if data.clean_labels is not None else None
    train_loader = data.train_source(rt.rank, rt.world_size, cfg.train.batch_size, cfg.train.seed)
    test_loader = data.test_source(max(cfg.train.batch_size, 256))
    test_labels = torch.from_numpy(data.test_labels).to(rt.device)
    n_local = bank.num_samples
    # Per-sample argmax of the training forward pass (local rows); slot n_local catches padded rows.
    train_pred = torch.full((n_local + 1,), -1, dtype=torch.long, device=rt.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
    seen = torch.zeros((), dtype=torch.long, device=rt.device)
    check_index = rt.device.type == "cpu"  # host syncs; on CUDA the loaders' indices are in range by construction

    steps_per_epoch = len(train_loader)
    rows: list[dict] = []
    best_acc, best_epoch, step, start_epoch, start_step = -1.0, -1, 0, 0, 0
    if cfg.train.resume:
        latest = find_latest(out)
        if latest is not None:
            state, rank_state = load_checkpoint(latest, engine, bank, rank=rt.rank, world_size=rt.world_size)
            saved = config_to_dict(config_from_dict(state["config"]))
            if {k: v for k, v in saved.items() if k != "train"} != {
                k: v for k, v in config_to_dict(cfg).items() if k != "train"
            }:
                raise ValueError(f"{latest}/trainer.json: the checkpoint was written with a different config "
                                 "(only train.* fields may change on resume)")
            rows, best_acc, best_epoch = state["rows"], state["best_acc"], state["best_epoch"]
            step, start_epoch, start_step = state["step"], state["epoch"], state["step_in_epoch"]
            if rank_state is not None:
                restore_rng(rank_state["rng"])
                train_pred.copy_(rank_state["train_pred"].to(rt.device))
                loss_sum.fill_(rank_state["loss_sum"])
                seen.fill_(rank_state["seen"])
            elif start_step:
                # Another world size shards the epoch differently: redo the interrupted epoch from its start.
                step -= start_step
                start_step = 0
            if rt.is_main:
                print(f"[alr_fast] resumed from {latest} (epoch {start_epoch}, step {start_step} of the epoch, "
                      f"global step {step}, world size {state['world_size']} -> {rt.world_size})", flush=True)
        elif rt.is_main:
            print(f"[alr_fast] --resume: no complete checkpoint in {out}/checkpoints, starting fresh", flush=True)

    def checkpoint(epoch: int, step_in_epoch: int) -> None:
        sync_buffers(engine.module)  # the engine saves rank 0's module: make it every rank's
        trainer_state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "step": step, "rows": rows,
                         "best_acc": best_acc, "best_epoch": best_epoch, "world_size": rt.world_size,
                         "config": config_to_dict(cfg)}
        rank_state = {"rng": capture_rng(), "train_pred": train_pred.cpu(), "loss_sum": float(loss_sum.item()),
                      "seen": int(seen.item())}
        save_checkpoint(out, step, engine, bank, trainer_state, rank_state, rank=rt.rank,
                        keep=cfg.train.keep_checkpoints)

    progress = tb = metrics_file = None
    if rt.is_main:
        if cfg.train.progress:
            from tqdm import tqdm

            progress = tqdm(total=cfg.train.epochs * steps_per_epoch, initial=step, desc=cfg.method.name,
                            unit="step", mininterval=1.0)
        if cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(out / "tb"))
        metrics_file = open(out / "metrics.jsonl", "w")
        for r in rows:  # rewrite what a resumed run already logged, so the file matches an uninterrupted run
            metrics_file.write(json.dumps(r) + "\n")
    t_run = time.perf_counter()
    alpha, lam = cfg.method.alpha, cfg.method.effective_lam
    # Testing hook: ALR_FAST_FAULT_AT_STEP=N kills this process (SIGKILL) right after global step N.
    fault_at_step = int(os.environ.get("ALR_FAST_FAULT_AT_STEP", "-1"))
    for epoch in range(start_epoch, cfg.train.epochs):
        refine = cfg.method.refine_at(epoch)
        if start_step == 0:
            train_pred[:n_local] = -1
            loss_sum.zero_()
            seen.zero_()
        data_time = step_time = 0.0
        t0 = t_data = time.perf_counter()
        for i, (x, idx) in enumerate(train_loader.epoch(epoch, start_step=start_step), start=start_step):
            t_step = time.perf_counter()
            data_time += t_step - t_data
            lr = _lr_at(cfg, step, steps_per_epoch)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            if check_index and not bool(bank.owns(idx).all()):
                raise RuntimeError(f"rank {rt.rank}: the loader yielded an index this rank does not own")
            local = bank.local_index(idx)
            logits = engine(model_input(x, engine.module))
            # assume_unique: every loader yields a permutation of the rank's rows (padding is -1), so an index
            # never repeats within a batch and the fused kernel can skip its duplicate-ordering sort.
            loss = alr_loss(logits, bank.soft, local, alpha=alpha, lam=lam, refine=refine, backend=rt.backend,
                            check_index=check_index, assume_unique=True)
            engine.backward(loss)
            engine.step()
            with torch.no_grad():
                n_valid = (idx >= 0).sum()
                loss_sum += loss.detach().double() * n_valid
                seen += n_valid
                train_pred[torch.where(local >= 0, local, n_local)] = logits.detach().argmax(dim=1)
            step += 1
            t_data = time.perf_counter()
            step_time += t_data - t_step
            if progress is not None:
                progress.update(1)
            if cfg.train.save_every and step % cfg.train.save_every == 0 and i + 1 < steps_per_epoch:
                checkpoint(epoch, i + 1)
            if fault_at_step == step:
                os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume tests
        start_step = 0
        epoch_time = time.perf_counter() - t0

        # Once per epoch: host syncs, collectives and CPU-side metrics.
        sync_buffers(engine.module)  # BatchNorm statistics: one set on every rank before eval and checkpoint
        totals = all_reduce_sum(torch.stack([loss_sum, seen.double()]))
        n_seen = int(totals[1].item())
        train_loss = totals[0].item() / max(n_seen, 1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"epoch {epoch}: training loss is {train_loss} (non-finite logits; see alr_fast.reference for how "
                "the loss treats them) - lower optim.lr or check the input data"
            )
        test_acc = _evaluate(engine.module, test_loader, test_labels, rt)
        if test_acc > best_acc:
            best_acc, best_epoch = test_acc, epoch
        row = {
            "epoch": epoch,
            "phase": "refine" if refine else "warmup",
            "lr": lr,
            "train_loss": train_loss,
            "test_acc": test_acc,
            "best_test_acc": best_acc,
            "images_per_s": n_seen / epoch_time,
            "epoch_time_s": epoch_time,
            "data_time_s": data_time,
            "step_time_s": step_time,
        }
        if clean is not None:
            refined = _gather_global(bank.refined_labels(), bank, -1).cpu()
            preds = _gather_global(train_pred[:n_local], bank, -1).cpu()
            row.update(label_quality(given, refined, clean))
            row.update(memorisation_split(preds, given, clean))
        rows.append(row)
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
        if tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    tb.add_scalar(key, value, epoch)
            tb.flush()
        if progress is not None:
            progress.set_postfix(ep=f"{epoch + 1}/{cfg.train.epochs}", loss=f"{train_loss:.3f}",
                                 test=f"{test_acc:.3f}", img_s=f"{row['images_per_s']:.0f}", refresh=False)
        if cfg.train.export_every_epoch:
            write_exports(out, engine, bank, data, rt, max(cfg.train.batch_size, 256))
        if cfg.train.save_every_epoch or cfg.train.save_every:
            checkpoint(epoch + 1, 0)
    if progress is not None:
        progress.close()
    if metrics_file is not None:
        metrics_file.close()
    if tb is not None:
        tb.close()

    exports = write_exports(out, engine, bank, data, rt, max(cfg.train.batch_size, 256))
    # Data parallelism must leave every rank with the same weights and buffers: check it, cheaply, once.
    digest = hashlib.sha256()
    for p in engine.module.state_dict().values():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    code = torch.tensor(list(digest.digest()[:8]), dtype=torch.long, device=rt.device)
    rank_codes = [bytes(c[0].tolist()).hex() for c in all_gather_rows(code[None])] if rt.world_size > 1 else []
    if rank_codes and len(set(rank_codes)) != 1:
        raise RuntimeError(f"model weights differ across ranks at the end of training: {rank_codes}")
    last = rows[-1]
    summary = {
        "method": cfg.method.name,
        "last_test_acc": last["test_acc"],
        "best_test_acc": best_acc,
        "best_epoch": best_epoch,
        "epochs": cfg.train.epochs,
        "train_time_s": time.perf_counter() - t_run,
        "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows),
        "world_size": rt.world_size,
        "device": str(rt.device),
        "loss_backend": rt.backend,
        "sample_passes": int(cfg.train.epochs * n),
        "weights_sha256_prefix": digest.hexdigest()[:16],
        "rank_weight_digests": rank_codes,
    }
    for key in ("refined_label_acc", "given_label_acc", "mislabel_precision", "mislabel_recall", "mislabel_f1",
                "memo_true", "memo_given", "memo_other"):
        if key in last:
            summary[key] = last[key]
    if rt.is_main:
        summary["num_changed"] = exports.get("num_changed")
        torch.save(engine.module.state_dict(), out / "model.pt")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        warm = cfg.method.warmup_epochs if cfg.method.name != "ce" else None
        _plot_curves(rows, out / "curves.png", f"{cfg.method.name} on {cfg.data.dataset}", warm)
    barrier()
    if return_model:
        return summary, engine.module
    return summary
