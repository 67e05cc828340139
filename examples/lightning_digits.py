"""ALR in PyTorch Lightning: a callback and a LightningModule, DDP strategy, any number of CPU ranks.

    torchrun --nproc_per_node 2 examples/lightning_digits.py --out runs/lightning_digits

The data, model and optimizer are those of examples/ddp_digits.py (scikit-learn's 8x8 digits as ``alr_fast
train --set data.dataset=digits`` reads them; needs the [demo] and [examples] extras). What ALR needs from
Lightning:

* the module calls ``alr(logits, index)`` in ``training_step`` (``WithIndex`` puts the global index in the batch);
* the loader is built with ``OwnerBatchSampler`` and the Trainer with ``use_distributed_sampler=False``, so
  Lightning does not swap in its ``DistributedSampler`` (which does not follow the owner rule). Lightning calls
  the sampler's ``set_epoch`` before each epoch but the first one it runs, whose iterator it makes earlier:
  the module's ``train_dataloader`` sets that epoch (it matters when a run resumes, ``--resume``);
* :class:`ALRCallback` closes every epoch (``alr.end_epoch()`` on every rank) and puts the soft labels of ALL
  ranks in Lightning's checkpoints: Lightning writes only rank 0's copy of a callback's state, so the callback
  gathers every rank's rows (``ALR.gather_state_dicts``) and gives them all back to ``ALR.load_state_dict``
  (which keeps the rows this rank owns, also under another number of ranks).

tests/test_examples.py checks this against the equivalent ``alr_fast train`` run.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from alr_fast import ALR, OwnerBatchSampler, WithIndex, make_noisy_labels
from alr_fast.data.readers.embedded import load_embedded


class ALRCallback(pl.Callback):
    """Closes each training epoch of the module's ``alr`` (an :class:`alr_fast.ALR`) and keeps its soft labels in
    Lightning's checkpoints."""

    def __init__(self, print_signals: bool = True):
        self.alr: ALR | None = None
        self.print_signals = print_signals

    def setup(self, trainer, pl_module, stage):
        self.alr = pl_module.alr  # before a checkpoint is restored (load_state_dict below)

    def on_train_epoch_end(self, trainer, pl_module):
        signals = self.alr.end_epoch()  # a collective: every rank runs this hook
        # The same value on every rank (end_epoch all-reduced the counts); sync_dist as Lightning asks of epoch metrics.
        pl_module.log("train_acc_given", float(signals["train_acc_given"]), sync_dist=True)
        if self.print_signals and trainer.is_global_zero:
            print(json.dumps({"epoch": trainer.current_epoch, **signals}), flush=True)

    def state_dict(self):
        # Called on every rank when a checkpoint is made; Lightning saves rank 0's return value only.
        return {"alr_states": self.alr.gather_state_dicts()}

    def load_state_dict(self, state_dict):
        self.alr.load_state_dict(state_dict["alr_states"])  # re-shards onto this run's ranks


class DigitsMLP(pl.LightningModule):
    def __init__(self, alr: ALR, loader: DataLoader, lr: float):
        super().__init__()
        self.alr, self.loader, self.lr = alr, loader, lr
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                       torch.nn.Linear(128, 10))

    def training_step(self, batch, batch_idx):
        x, _, index = batch
        return self.alr(self.net(x), index)  # cross-entropy in warm-up, then ALR; updates this rank's rows

    def train_dataloader(self):
        # Lightning makes the first epoch's iterator (the first of a resumed run too) before it calls set_epoch:
        # set the epoch here, or a resumed run would replay epoch 0's order.
        self.loader.batch_sampler.set_epoch(self.trainer.current_epoch)
        return self.loader

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-rate", type=float, default=0.4)
    p.add_argument("--labels", help="training labels by global index (.npy), e.g. a run's noisy_labels.npy")
    p.add_argument("--lam", type=float, default=0.3)
    p.add_argument("--warmup", default="auto", help="'auto' or a number of epochs")
    p.add_argument("--ramp-epochs", type=float, default=5.0)
    p.add_argument("--resume", metavar="CKPT", help="continue a run from its OUT/last.ckpt (up to --epochs)")
    args = p.parse_args()

    torch.set_num_threads(1)
    devices = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's processes (Lightning joins them)
    s = load_embedded("digits")
    if args.labels:
        labels = np.load(args.labels)
    else:
        labels = make_noisy_labels(s.train_labels, kind="sym-incl", rate=args.noise_rate, num_classes=10,
                                   seed=0)[0]
    mean = torch.tensor(s.mean).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(s.std).view(1, -1, 1, 1) * 255.0
    images = (s.train_images.float() - mean) / std
    data = WithIndex(TensorDataset(images, torch.as_tensor(labels)))  # items (image, label, global index)

    # accelerator="gpu" (NCCL) for GPUs: not run in this project's CI, which has none.
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         max_epochs=args.epochs, use_distributed_sampler=False,  # OwnerBatchSampler shards
                         gradient_clip_val=1.0, gradient_clip_algorithm="norm",  # as alr_fast train
                         callbacks=[ALRCallback()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=args.out)
    # Under torchrun the Trainer knows this process's rank from here on (it starts the process group in fit).
    rank, world = trainer.global_rank, trainer.world_size
    sampler = OwnerBatchSampler(data, args.batch_size, seed=args.seed, rank=rank, world_size=world)
    loader = DataLoader(data, batch_sampler=sampler)
    warmup = args.warmup if args.warmup == "auto" else int(args.warmup)
    alr = ALR(labels, 10, lam=args.lam, warmup=warmup, ramp_epochs=args.ramp_epochs, epochs=args.epochs,
              steps_per_epoch=len(loader), rank=rank, world_size=world, assume_unique=True)

    torch.manual_seed(args.seed)  # the same initial weights as alr_fast train's mlp with this seed
    model = DigitsMLP(alr, loader, args.lr)
    trainer.fit(model, ckpt_path=args.resume)  # ALRCallback restores the ALR state of a resumed run

    info = alr.export(args.out)  # every rank: each writes its rows, rank 0 assembles the files
    trainer.save_checkpoint(os.path.join(args.out, "last.ckpt"))  # holds every rank's soft labels (ALRCallback)
    if trainer.is_global_zero:
        torch.save(model.net.state_dict(), os.path.join(args.out, "model.pt"))
        print(json.dumps({"refine_from_epoch": alr.schedule.switch_epoch, "num_changed": info["num_changed"]}))


if __name__ == "__main__":
    main()
