"""Peak resident memory of each rank while writing the exports, on a synthetic N x K run (no training).

    torchrun --nproc_per_node 2 benchmarks/export_memory.py --samples 200000 --classes 1000 --out /tmp/expmem
    # the previous implementation, for comparison (any file defining write_exports with the same signature):
    git show <rev>:alr_fast/train/exports.py > /tmp/old_exports.py
    torchrun --nproc_per_node 2 benchmarks/export_memory.py --exports-module /tmp/old_exports.py ...

Each rank holds what a real run holds at export time - its float32 bank shard (N/W x K) and a model - then
calls ``write_exports``; a thread samples the process's resident set (VmRSS) every 5 ms. Rank 0 writes one
JSON row (all ranks' baseline and peak) to ``--json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    def __init__(self, every_s: float = 0.005):
        self.peak, self.every_s, self._stop = rss_bytes(), every_s, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.every_s)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_bytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--exports-module", help="a .py file with write_exports (default: alr_fast.train.exports)")
    ap.add_argument("--json", help="append the result row to this JSON-lines file (rank 0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if "RANK" in os.environ:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    from alr_fast.loss.bank import SoftLabelBank
    from alr_fast.train.runtime import Runtime
    from alr_fast.data.train_data import TrainData

    if args.exports_module:
        spec = importlib.util.spec_from_file_location("exports_under_test", args.exports_module)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        write_exports, impl = mod.write_exports, args.exports_module
    else:
        from alr_fast.train.exports import write_exports

        impl = "alr_fast.train.exports"
    g = torch.Generator().manual_seed(0)
    n, k = args.samples, args.classes
    images = torch.randint(0, 256, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    data = TrainData.from_arrays(images, labels.numpy(), None, images[:10], labels[:10].numpy(), num_classes=k,
                                 mean=(0.5,), std=(0.25,))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, k))
    rt = Runtime(device=torch.device("cpu"), precision="fp32", backend="torch", rank=rank, world_size=world)
    bank = SoftLabelBank(labels, k, "float32", sharding=rt.sharding(data.sharding_blocks))
    out = Path(args.out)
    if dist.is_initialized():
        dist.barrier()
    base = rss_bytes()
    t0 = time.perf_counter()
    with PeakRSS() as peak:
        write_exports(out, SimpleNamespace(module=model), bank, data, rt, 1024)
    seconds = time.perf_counter() - t0
    mine = torch.tensor([base, peak.peak], dtype=torch.long)
    rows = [torch.zeros_like(mine) for _ in range(world)]
    if dist.is_initialized():
        dist.all_gather(rows, mine)
    else:
        rows = [mine]
    if rank == 0:
        gib = 2**30
        result = {
            "impl": impl, "n": n, "k": k, "world_size": world, "export_s": round(seconds, 2),
            "bank_shard_gib": round(bank.soft.numel() * 4 / gib, 3),
            "file_gib": round(n * k * 4 / gib, 3),
            "per_rank": [{"rank": r, "rss_before_gib": round(int(v[0]) / gib, 3), "peak_rss_gib": round(int(v[1]) / gib, 3)}
                         for r, v in enumerate(rows)],
            "device": "CPU",
        }
        print(json.dumps(result))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
