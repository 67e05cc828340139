"""ALR in a Hugging Face ``Trainer`` (image classification): a ``compute_loss`` override, CPU ranks under torchrun.

    torchrun --nproc_per_node 2 examples/hf_trainer_digits.py --out runs/hf_digits

The data, model and optimizer are those of examples/ddp_digits.py (scikit-learn's 8x8 digits as ``alr_fast
train --set data.dataset=digits`` reads them; needs the [demo] and [examples] extras). What ALR needs from the
``Trainer``:

* the batch carries the samples' global indices: ``WithIndex`` adds an ``"index"`` key to each dict item, and
  ``remove_unused_columns=False`` keeps it (the Trainer would drop keys the model's ``forward`` does not take);
* ``compute_loss`` calls ``alr(logits, inputs["index"])``;
* ``get_train_dataloader`` returns a loader over ``OwnerBatchSampler`` (this rank's samples, padded with -1, the
  same number of steps on every rank). The Trainer's own loader would not do: its sampler deals samples by
  position and ``accelerator.prepare`` then splits its batches between the ranks, so a rank would be handed
  rows another rank owns. The loader's ``set_epoch`` (called by the Trainer before every epoch) reaches the
  sampler;
* a ``TrainerCallback`` closes every epoch (``alr.end_epoch()`` on every rank) and, with ``--save``, writes
  every rank's ALR state (``ALR.gather_state_dicts``) into each of the Trainer's checkpoints; ``--resume
  CHECKPOINT`` loads it back before the Trainer resumes from that checkpoint.

tests/test_examples.py checks this against the equivalent ``alr_fast train`` run.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from alr_fast import ALR, OwnerBatchSampler, WithIndex, make_noisy_labels
from alr_fast.data.readers.embedded import load_embedded


class ImageDataset(Dataset):
    """Dict items, as Hugging Face image datasets give them: ``{"pixel_values": image, "labels": label}``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


class EpochLoader(DataLoader):
    """A ``DataLoader`` whose ``set_epoch`` (which the Trainer calls before every epoch) reaches its sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


class ALRTrainer(Trainer):
    """A ``Trainer`` whose loss is ``alr`` and whose training batches follow the owner rule."""

    def __init__(self, *args, alr: ALR, sampler: OwnerBatchSampler, **kwargs):
        super().__init__(*args, **kwargs)
        self.alr, self.owner_sampler = alr, sampler

    def get_train_dataloader(self) -> DataLoader:
        return EpochLoader(self.train_dataset, batch_sampler=self.owner_sampler, collate_fn=self.data_collator,
                           num_workers=self.args.dataloader_num_workers)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(pixel_values=inputs["pixel_values"])
        logits = getattr(out, "logits", out)  # a transformers model's output, or a plain module's tensor
        loss = self.alr(logits, inputs["index"])  # the batch mean: the Trainer scales it for accumulation
        return (loss, {"logits": logits}) if return_outputs else loss


ALR_STATE = "alr_states.pt"


class ALRCallback(TrainerCallback):
    """Closes each epoch of ``alr`` and saves its state (every rank's) into each of the Trainer's checkpoints."""

    def __init__(self, alr: ALR):
        self.alr = alr

    def on_epoch_end(self, args, state, control, **kwargs):
        signals = self.alr.end_epoch()  # a collective: every rank runs the callbacks
        if state.is_world_process_zero:
            print(json.dumps({"epoch": round(state.epoch) - 1, **signals}), flush=True)

    def on_save(self, args, state, control, **kwargs):
        states = self.alr.gather_state_dicts()  # a collective; the Trainer has just written the checkpoint
        if state.is_world_process_zero:
            torch.save(states, os.path.join(args.output_dir, f"checkpoint-{state.global_step}", ALR_STATE))


class DigitsMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                       torch.nn.Linear(128, 10))

    def forward(self, pixel_values):
        return self.net(pixel_values)


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
    p.add_argument("--save", action="store_true", help="a Trainer checkpoint (with the ALR state) after every epoch")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint folder of a --save run")
    args = p.parse_args()

    torch.set_num_threads(1)
    s = load_embedded("digits")
    if args.labels:
        labels = np.load(args.labels)
    else:
        labels = make_noisy_labels(s.train_labels, kind="sym-incl", rate=args.noise_rate, num_classes=10,
                                   seed=0)[0]
    mean = torch.tensor(s.mean).view(1, -1, 1, 1) * 255.0
    std = torch.tensor(s.std).view(1, -1, 1, 1) * 255.0
    images = (s.train_images.float() - mean) / std
    data = WithIndex(ImageDataset(images, torch.as_tensor(labels)))  # items gain "index": the global index

    targs = TrainingArguments(
        output_dir=args.out, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0,  # as alr_fast train
        seed=args.seed, use_cpu=True, ddp_backend="gloo",  # GPUs: drop both (NCCL); not run in CI, which has none
        ddp_find_unused_parameters=False,  # as a plain DDP loop
        remove_unused_columns=False,  # keep "index" in the batch
        save_strategy="epoch" if args.save else "no", logging_strategy="no", report_to="none", disable_tqdm=True)
    # TrainingArguments started the process group under torchrun: rank and world size are known from here on.
    sampler = OwnerBatchSampler(data, args.batch_size, seed=args.seed, rank=targs.process_index,
                                world_size=targs.world_size)
    warmup = args.warmup if args.warmup == "auto" else int(args.warmup)
    alr = ALR(labels, 10, lam=args.lam, warmup=warmup, ramp_epochs=args.ramp_epochs, epochs=args.epochs,
              steps_per_epoch=len(sampler), rank=targs.process_index, world_size=targs.world_size,
              assume_unique=True)

    torch.manual_seed(args.seed)  # the same initial weights as alr_fast train's mlp with this seed
    model = DigitsMLP()
    # SGD with weight decay on every parameter, as alr_fast train (the Trainer's default optimizer is AdamW,
    # without decay on biases).
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    trainer = ALRTrainer(model=model, args=targs, train_dataset=data, optimizers=(opt, None),
                         callbacks=[ALRCallback(alr)], alr=alr, sampler=sampler)
    if args.resume:
        alr.load_state_dict(torch.load(os.path.join(args.resume, ALR_STATE)))  # every rank's, re-sharded here
    trainer.train(resume_from_checkpoint=args.resume)

    info = alr.export(args.out)  # every rank: each writes its rows, rank 0 assembles the files
    if trainer.is_world_process_zero():
        torch.save(model.net.state_dict(), os.path.join(args.out, "model.pt"))
        print(json.dumps({"refine_from_epoch": alr.schedule.switch_epoch, "num_changed": info["num_changed"]}))


if __name__ == "__main__":
    main()
