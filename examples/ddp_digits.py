"""ALR in a plain PyTorch DDP loop: any number of CPU or GPU ranks under torchrun.

    torchrun --nproc_per_node 2 examples/ddp_digits.py --out runs/ddp_digits

The data are scikit-learn's 8x8 digits as ``alr_fast train --set data.dataset=digits`` splits and normalises them
(needs the [demo] extra), with synthetic symmetric noise, or the labels of a run (``--labels RUN/noisy_labels.npy``).
What is ALR-specific: ``WithIndex`` (each sample yields its global index), ``OwnerBatchSampler`` (each rank reads
the samples whose soft labels it holds), ``ALR`` (loss + soft labels + schedule), ``end_epoch`` and ``export``.
tests/test_examples.py checks this loop against the equivalent ``alr_fast train`` run.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

from alr_fast import ALR, OwnerBatchSampler, WithIndex, make_noisy_labels
from alr_fast.data.readers.embedded import load_embedded


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
    args = p.parse_args()

    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")  # "nccl" on GPUs
    rank = dist.get_rank() if distributed else 0

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
    sampler = OwnerBatchSampler(data, args.batch_size, seed=args.seed)  # this rank's samples, -1 padded
    loader = DataLoader(data, batch_sampler=sampler)

    torch.manual_seed(args.seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    if distributed:
        model = DDP(model)
    warmup = args.warmup if args.warmup == "auto" else int(args.warmup)
    alr = ALR(labels, 10, lam=args.lam, warmup=warmup, ramp_epochs=args.ramp_epochs, epochs=args.epochs,
              steps_per_epoch=len(loader), assume_unique=True)  # the sampler never repeats an index

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for x, _, index in loader:
            loss = alr(model(x), index)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as alr_fast train (DeepSpeed's clipping)
            opt.step()
        signals = alr.end_epoch()
        if rank == 0:
            print(json.dumps({"epoch": epoch, **signals}), flush=True)
    info = alr.export(args.out)
    if rank == 0:
        torch.save((model.module if distributed else model).state_dict(), os.path.join(args.out, "model.pt"))
        print(json.dumps({"refine_from_epoch": alr.schedule.switch_epoch, "num_changed": info["num_changed"]}))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
