"""The one training loop: CE, SELC and ALR on any dataset, driving a DeepSpeed engine.

Warm-up epochs train with cross-entropy on the given labels (the bank's one-hot rows); later epochs refine
the bank and train on it (ALR; SELC when lam = 0). CE never refines. The same code runs on one process or on
N data-parallel ranks (each rank sees a disjoint shard of every epoch).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alr_fast.bank import SoftLabelBank
from alr_fast.config import Config, save_config
from alr_fast.data.arrays import ArrayLoader
from alr_fast.functional import alr_loss
from alr_fast.metrics import label_quality, memorisation_split
from alr_fast.models import build_model
from alr_fast.runtime import Runtime, resolve_runtime

__all__ = ["TrainData", "train", "build_train_data"]


@dataclass
class TrainData:
    """Everything the loop needs from a dataset; arrays are addressed by global index."""

    train_images: torch.Tensor
    """uint8 [N, C, H, W]."""
    given_labels: np.ndarray
    """int64 [N]: the (noisy) labels training sees."""
    clean_labels: np.ndarray | None
    """int64 [N] when known (synthetic noise), else None."""
    test_images: torch.Tensor
    test_labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    noise_manifest: dict | None = None


def build_train_data(cfg: Config) -> TrainData:
    """Load the configured dataset and apply the configured synthetic noise."""
    from alr_fast.data.embedded import EMBEDDED_DATASETS, load_embedded
    from alr_fast.noise import make_noisy_labels

    if cfg.data.dataset not in EMBEDDED_DATASETS:
        raise NotImplementedError(
            f"data.dataset={cfg.data.dataset!r}: only the embedded datasets {EMBEDDED_DATASETS} have a reader in "
            "this version; on-disk readers (CIFAR, CIFAR-N, ANIMAL-10N, Clothing1M, WebVision) are tracked in "
            "the data-pipeline issue"
        )
    s = load_embedded(cfg.data.dataset, cfg.data.test_fraction)
    noisy, manifest = make_noisy_labels(
        s.train_labels,
        kind=cfg.data.noise_kind,
        rate=cfg.data.noise_rate,
        num_classes=s.num_classes,
        seed=cfg.data.noise_seed,
        images=s.train_images.numpy(),
    )
    return TrainData(
        train_images=s.train_images,
        given_labels=noisy,
        clean_labels=s.train_labels,
        test_images=s.test_images,
        test_labels=s.test_labels,
        num_classes=s.num_classes,
        mean=s.mean,
        std=s.std,
        noise_manifest=json.loads(manifest.to_json()),
    )


def _ds_config(cfg: Config, rt: Runtime) -> dict:
    return {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.train.batch_size * rt.world_size,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
        "zero_optimization": {"stage": 0},
        "bf16": {"enabled": rt.precision == "bf16"},
        "fp16": {"enabled": rt.precision == "fp16"},
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


@torch.no_grad()
def _evaluate(model: torch.nn.Module, loader: ArrayLoader, labels: torch.Tensor, rt: Runtime) -> float:
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=rt.device)
    for x, idx in loader.epoch(0):
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.precision == "bf16"):
            pred = model(x).argmax(dim=1)
        valid = idx >= 0
        correct += ((pred == labels[idx.clamp_min(0)]) & valid).sum()
    model.train()
    return correct.item() / labels.numel()  # .item() syncs: once per evaluation


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, mean, std, rt: Runtime) -> torch.Tensor:
    """Softmax probabilities [N, K] (fp32, on the CPU) of ``model`` in eval mode on uint8 ``images``."""
    loader = ArrayLoader(images, batch_size=512, mean=mean, std=std, shuffle=False, device=rt.device)
    model.eval()
    out = []
    for x, _ in loader.epoch(0):
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.precision == "bf16"):
            out.append(torch.softmax(model(x).float(), dim=1).cpu())
    model.train()
    return torch.cat(out) if out else torch.zeros(0)


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
        ax.legend(fontsize=8)
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(cfg: Config, data: TrainData | None = None, *, runtime: Runtime | None = None, return_model: bool = False):
    """Run one configuration end to end; returns the summary (also written to ``<out>/summary.json``), and the
    trained model too (``(summary, model)``) when ``return_model``."""
    import deepspeed

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rt = runtime or resolve_runtime(cfg.train.device, cfg.train.precision, cfg.method.backend)
    data = data or build_train_data(cfg)
    out = Path(cfg.train.out)
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")
        if data.noise_manifest is not None:
            (out / "noise.json").write_text(json.dumps(data.noise_manifest, indent=2) + "\n")

    torch.manual_seed(cfg.train.seed)
    n, k = data.train_images.shape[0], data.num_classes
    model = build_model(
        cfg.model.name,
        num_classes=k,
        in_channels=data.train_images.shape[1],
        image_size=data.train_images.shape[-1],
        width=cfg.model.width,
    ).to(rt.device)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=_optimizer(cfg, model), config=_ds_config(cfg, rt))

    bank = SoftLabelBank(torch.from_numpy(data.given_labels), k, cfg.method.bank_dtype).to(rt.device)
    given = bank.given.cpu()
    clean = torch.from_numpy(data.clean_labels) if data.clean_labels is not None else None
    train_loader = ArrayLoader(
        data.train_images, batch_size=cfg.train.batch_size, mean=data.mean, std=data.std, shuffle=True,
        seed=cfg.train.seed, rank=rt.rank, world_size=rt.world_size, augment=cfg.data.augment, device=rt.device,
    )
    test_loader = ArrayLoader(
        data.test_images, batch_size=512, mean=data.mean, std=data.std, shuffle=False, device=rt.device
    )
    test_labels = torch.from_numpy(data.test_labels).to(rt.device)
    # Per-sample argmax of the training forward pass; slot n catches padded rows so no masking sync is needed.
    train_pred = torch.full((n + 1,), -1, dtype=torch.long, device=rt.device)
    check_index = rt.device.type == "cpu"  # on CUDA the loader's indices are in range by construction

    steps_per_epoch = len(train_loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    progress = None
    if rt.is_main and cfg.train.progress:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, desc=f"{cfg.method.name}", unit="step", mininterval=1.0, leave=True)

    rows: list[dict] = []
    best_acc, best_epoch, step = -1.0, -1, 0
    metrics_file = open(out / "metrics.jsonl", "w") if rt.is_main else None
    t_run = time.perf_counter()
    alpha, lam = cfg.method.alpha, cfg.method.effective_lam
    for epoch in range(cfg.train.epochs):
        refine = cfg.method.refine_at(epoch)
        train_pred[:n] = -1
        loss_sum = torch.zeros((), dtype=torch.float64, device=rt.device)
        seen = torch.zeros((), dtype=torch.long, device=rt.device)
        data_time = step_time = 0.0
        t0 = time.perf_counter()
        t_data = t0
        for x, idx in train_loader.epoch(epoch):
            t_step = time.perf_counter()
            data_time += t_step - t_data
            lr = _lr_at(cfg, step, steps_per_epoch)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            logits = engine(x)
            loss = alr_loss(
                logits, bank.soft, idx, alpha=alpha, lam=lam, refine=refine, backend=rt.backend,
                check_index=check_index,
            )
            engine.backward(loss)
            engine.step()
            with torch.no_grad():
                n_valid = (idx >= 0).sum()
                loss_sum += loss.detach().double() * n_valid
                seen += n_valid
                train_pred[torch.where(idx >= 0, idx, n)] = logits.detach().argmax(dim=1)
            step += 1
            t_data = time.perf_counter()
            step_time += t_data - t_step
            if progress is not None:
                progress.update(1)
        epoch_time = time.perf_counter() - t0

        # Once per epoch: host syncs and CPU-side metrics.
        n_seen = int(seen.item())
        train_loss = loss_sum.item() / max(n_seen, 1)
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
            "images_per_s": n_seen * rt.world_size / epoch_time,
            "epoch_time_s": epoch_time,
            "data_time_s": data_time,
            "step_time_s": step_time,
        }
        if clean is not None:
            refined = bank.refined_labels().cpu()
            row.update(label_quality(given, refined, clean))
            row.update(memorisation_split(train_pred[:n].cpu(), given, clean))
        rows.append(row)
        if metrics_file is not None:
            metrics_file.write(json.dumps(row) + "\n")
            metrics_file.flush()
        if progress is not None:
            progress.set_postfix(
                ep=f"{epoch + 1}/{cfg.train.epochs}", loss=f"{train_loss:.3f}", test=f"{test_acc:.3f}",
                img_s=f"{row['images_per_s']:.0f}", refresh=False,
            )
    if progress is not None:
        progress.close()
    if metrics_file is not None:
        metrics_file.close()

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
    }
    for key in ("refined_label_acc", "given_label_acc", "mislabel_precision", "mislabel_recall", "mislabel_f1",
                "memo_true", "memo_given", "memo_other"):
        if key in last:
            summary[key] = last[key]
    if rt.is_main:
        torch.save(bank.state_dict(), out / "bank.pt")
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        warm = cfg.method.warmup_epochs if cfg.method.name != "ce" else None
        _plot_curves(rows, out / "curves.png", f"{cfg.method.name} on {cfg.data.dataset}", warm)
    if return_model:
        return summary, engine.module
    return summary
