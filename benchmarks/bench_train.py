"""End-to-end training throughput, and the ALR loss's share of a step, measured in the same run.

For one recipe it builds the real pieces the trainer uses (loader, model, DeepSpeed engine, soft-label bank)
and times training steps (load batch -> forward -> loss -> backward -> optimizer step) with

* ``ce``:  plain ``torch.nn.functional.cross_entropy`` on the given labels (the cheapest possible loss),
* ``alr``: ``alr_fast.alr_loss`` in refinement mode (bank update + entropy term), on the configured backend,

alternating blocks of steps so both see the same machine state. The overhead of ALR is reported two ways:
the difference of median step times (noisy on a shared CPU) and a direct loss-only timing (forward +
backward of the loss alone on logits of the same shape), as a share of the ALR step.

    python benchmarks/bench_train.py                                  # demo recipe (MNIST-5k, CPU)
    python benchmarks/bench_train.py --recipe mini-webvision --data-root DIR --model resnet50 \\
        --set data.image_size=224 --batch-size 256 --set train.precision=bf16    # on a GPU
    python benchmarks/bench_train.py --synthetic 100000,1000,256 --batch-size 256 --tag k1000   # MLP, K=1000

``--synthetic N,K,D`` replaces the recipe's data and model by N random D-dimensional samples with K classes
(in memory, an epoch permutation per rank, padding as the loaders do) and a two-layer MLP (D -> 512 -> K):
the shape at which the loss is a large share of a CPU step.

Writes ``<out>/bench_train_<device>.json`` and ``.md`` (device, versions, git sha, command, raw timings).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import git  # benchmarks/ is on sys.path when run as a script
import torch.nn.functional as F

from alr_fast.loss.bank import SoftLabelBank
from alr_fast.config import apply_overrides
from alr_fast.data.train_data import build_train_data
from alr_fast.loss.functional import alr_loss
from alr_fast.train.models import build_model
from alr_fast.train.precision import model_input
from alr_fast.recipes import RECIPES, get_recipe
from alr_fast.train.runtime import resolve_runtime
from alr_fast.loss.sharding import Sharding
from alr_fast.train.trainer import _ds_config, _optimizer


class SyntheticData:
    """N random samples of dimension D with K classes, held in memory; each rank's epoch is a permutation of
    the rows it owns (i % world == rank), the last batch padded with index -1, like the trainer's loaders."""

    sharding_blocks = None  # the strided owner rule, as TrainData without tar shards

    def __init__(self, n: int, k: int, dim: int, device: torch.device):
        g = torch.Generator().manual_seed(0)
        self.num_classes, self.dim, self.device = k, dim, device
        self.features = torch.randn(n, dim, generator=g).to(device)
        self.given_labels = torch.randint(0, k, (n,), generator=g).numpy()

    def train_source(self, sharding: Sharding, batch: int, seed: int):
        data = self

        class Source:
            def epoch(self, epoch: int):
                owned = torch.from_numpy(sharding.owned(data.features.shape[0]))
                order = owned[torch.randperm(owned.numel(), generator=torch.Generator().manual_seed(seed + epoch))]
                for i in range(0, order.numel(), batch):
                    idx = order[i : i + batch]
                    if idx.numel() < batch:
                        idx = torch.cat([idx, torch.full((batch - idx.numel(),), -1)])
                    idx = idx.to(data.device)
                    yield data.features[idx.clamp_min(0)], idx

        return Source()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="demo", choices=sorted(RECIPES))
    ap.add_argument("--data-root")
    ap.add_argument("--model")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per block")
    ap.add_argument("--blocks", type=int, default=3, help="alternating ce/alr blocks of --steps each")
    ap.add_argument("--warmup-steps", type=int, default=5)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--synthetic", help="N,K,D: random in-memory data and an MLP instead of the recipe's")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--dry-run", action="store_true", help="check the arguments and the config, then exit")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)

    sets = list(args.overrides)
    if args.data_root:
        sets.append(f"data.data_root={args.data_root}")
    if args.model:
        sets.append(f"model.name={args.model}")
    if args.batch_size:
        sets.append(f"train.batch_size={args.batch_size}")
    cfg = apply_overrides(get_recipe(args.recipe), sets + ["train.progress=false"])
    if args.dry_run:  # benchmarks/gpu_evidence.sh --dry-run: arguments and overrides are valid
        print(json.dumps({"recipe": args.recipe, "model": cfg.model.name, "batch_size": cfg.train.batch_size,
                          "precision": cfg.train.precision, "synthetic": args.synthetic, "dry_run": True}))
        return 0
    rt = resolve_runtime(cfg.train.device, cfg.train.precision, cfg.method.backend)
    data = SyntheticData(*map(int, args.synthetic.split(",")), rt.device) if args.synthetic else \
        build_train_data(cfg, rt.device)

    import deepspeed

    torch.manual_seed(0)
    if args.synthetic:
        model = torch.nn.Sequential(torch.nn.Linear(data.dim, 512), torch.nn.ReLU(),
                                    torch.nn.Linear(512, data.num_classes)).to(rt.device)
    else:
        model = build_model(cfg.model.name, num_classes=data.num_classes, in_channels=data.in_channels,
                            image_size=data.image_size, width=cfg.model.width).to(rt.device)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=_optimizer(cfg, model), config=_ds_config(cfg, rt))
    sharding = rt.sharding(data.sharding_blocks)  # the trainer's way: one Sharding for the bank and the loader
    bank = SoftLabelBank(torch.from_numpy(data.given_labels), data.num_classes, cfg.method.bank_dtype,
                         sharding=sharding).to(rt.device)
    given = torch.from_numpy(data.given_labels).to(rt.device)
    loader = data.train_source(sharding, cfg.train.batch_size, cfg.train.seed)

    def batches():
        epoch = 0
        while True:
            for item in loader.epoch(epoch):
                yield item
            epoch += 1

    stream = batches()

    def run_block(mode: str, steps: int) -> list[dict]:
        times = []
        for _ in range(steps):
            _sync(rt.device)
            t0 = time.perf_counter()
            x, idx = next(stream)
            _sync(rt.device)
            t1 = time.perf_counter()
            logits = engine(model_input(x, engine.module))
            if mode == "ce":
                valid = idx >= 0
                loss = F.cross_entropy(logits.float()[valid], given[idx[valid]])
            else:
                loss = alr_loss(logits, bank.soft, bank.local_index(idx), alpha=cfg.method.alpha,
                                lam=max(cfg.method.lam, 1e-3), refine=True, backend=rt.backend,
                                check_index=False, assume_unique=True)
            engine.backward(loss)
            engine.step()
            _sync(rt.device)
            t2 = time.perf_counter()
            times.append({"data_s": t1 - t0, "step_s": t2 - t1, "total_s": t2 - t0, "images": int((idx >= 0).sum())})
        return times

    run_block("ce", args.warmup_steps)
    run_block("alr", args.warmup_steps)
    raw = {"ce": [], "alr": []}
    for _ in range(args.blocks):
        for mode in ("ce", "alr"):
            raw[mode] += run_block(mode, args.steps)

    # Loss alone, same shapes, same device: forward + backward of the loss on detached logits.
    b, k = cfg.train.batch_size, data.num_classes
    logits = torch.randn(b, k, device=rt.device, requires_grad=True)
    idx = torch.arange(b, device=rt.device) % bank.num_samples
    labels = given[:b] if given.numel() >= b else given[idx]
    loss_only = {"ce": [], "alr": []}
    for _ in range(3):
        for mode in ("ce", "alr"):
            for _ in range(20):
                _sync(rt.device)
                t0 = time.perf_counter()
                if mode == "ce":
                    loss = F.cross_entropy(logits, labels)
                else:
                    loss = alr_loss(logits, bank.soft, idx, alpha=0.9, lam=0.5, backend=rt.backend, check_index=False,
                                    assume_unique=True)
                loss.backward()
                _sync(rt.device)
                loss_only[mode].append(time.perf_counter() - t0)

    def med(mode, key):
        return statistics.median(r[key] for r in raw[mode])

    res = {}
    for mode in ("ce", "alr"):
        total = med(mode, "total_s")
        res[mode] = {
            "median_total_s": total, "median_step_s": med(mode, "step_s"), "median_data_s": med(mode, "data_s"),
            "images_per_s": cfg.train.batch_size / total,
            "loss_only_median_s": statistics.median(loss_only[mode]),
        }
    overhead_diff = (res["alr"]["median_total_s"] - res["ce"]["median_total_s"]) / res["alr"]["median_total_s"]
    overhead_direct = (res["alr"]["loss_only_median_s"] - res["ce"]["loss_only_median_s"]) / res["alr"]["median_total_s"]
    device_name = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else (
        f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)")
    result = {
        "device": device_name,
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "git_sha": (git('rev-parse', 'HEAD') or 'unknown'),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "recipe": args.recipe,
        "model": f"mlp({args.synthetic})" if args.synthetic else cfg.model.name,
        "num_classes": data.num_classes,
        "batch_size": cfg.train.batch_size,
        "precision": rt.precision,
        "loss_backend": rt.backend,
        "world_size": rt.world_size,
        "results": res,
        "alr_overhead_share_from_step_difference": overhead_diff,
        "alr_overhead_share_from_loss_timing": overhead_direct,
        "raw": raw,
        "raw_loss_only_s": loss_only,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = ("gpu" if rt.device.type == "cuda" else "cpu") + (f"_{args.tag}" if args.tag else "")
    (out / f"bench_train_{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = [f"# bench_train ({device_name})", "", f"`{result['command']}` — git {result['git_sha'][:10]}, "
          f"{result['date_utc']} UTC, torch {torch.__version__}, {cfg.model.name}, batch {cfg.train.batch_size}, "
          f"{rt.precision}, loss backend {rt.backend}", "",
          "| loss | images/s | median step (ms) | median data (ms) | loss fwd+bwd alone (ms) |", "|---|---|---|---|---|"]
    for mode in ("ce", "alr"):
        r = res[mode]
        md.append(f"| {mode} | {r['images_per_s']:.0f} | {1e3 * r['median_step_s']:.2f} | "
                  f"{1e3 * r['median_data_s']:.2f} | {1e3 * r['loss_only_median_s']:.3f} |")
    md += ["", f"ALR overhead as a share of the ALR step: {100 * overhead_direct:.2f} % from the loss timing, "
           f"{100 * overhead_diff:.2f} % from the difference of step medians (noisier).", ""]
    (out / f"bench_train_{tag}.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
