"""Benchmark the baselines' losses (ELR, GCE, SCE, soft bootstrapping): fused Triton kernel vs the torch backend.

One timed call is a training step's loss work: forward (ELR's bank update included) and backward to the logits,
as the trainer calls it (``assume_unique=True``, ``check_index=False``, mean reduction). Per (method, logits dtype,
B, K, implementation): ``eager`` (``backend="torch"``: the reference in alr_fast/loss/baselines.py; for ELR,
called with ``assume_unique``, its closed-form path ``elr_loss_unique`` in alr_fast/loss/torch_fast.py) and, on
a GPU, ``fused`` (``backend="triton"``: alr_fast/loss/triton/baselines.py). ``--calls`` calls back to back,
``--reps`` times; median µs per call (CUDA events on a GPU, wall time on the CPU), min and max. Without a GPU
only ``eager`` runs (the fused kernels run on the CPU only under the Triton interpreter, which is not a speed).
Two reference rows (``--methods``): ``alr``, ALR as the trainer calls it (``eager`` = ``backend="torch"``, which
with ``assume_unique`` is the CPU fast path ``alr_fast/loss/torch_fast.py``; ``fused`` = ALR's kernel), and
``ce``, ``F.cross_entropy`` (eager only). ALR's kernel itself is benchmarked in detail by bench_loss.py.

    python benchmarks/bench_baselines.py                       # GPU: both implementations
    python benchmarks/bench_baselines.py --B 256 1024 --K 10 100 1000 --dtypes fp32 bf16   # CPU: eager only

Writes ``benchmarks/results/bench_baselines_<device>.json`` and the markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import REPO, cpu_model, run_metadata  # noqa: E402  (benchmarks/ is on sys.path)
from alr_fast import alr_loss, bootstrap_loss, elr_loss, gce_loss, sce_loss

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ("elr", "gce", "sce", "bootstrap")
REFERENCES = ("alr", "ce")
"""Rows to compare the baselines with: ALR as the trainer calls it (``alr_loss(assume_unique=True)``: the CPU fast
path on a CPU, the fused kernel on a GPU) and plain cross-entropy (``F.cross_entropy``, eager only)."""


def make_call(method: str, impl: str, logits, bank, index, labels):
    backend = "triton" if impl == "fused" else "torch"
    common = dict(backend=backend, check_index=False)
    if method == "alr":
        return lambda: alr_loss(logits, bank, index, alpha=0.9, lam=1.0, assume_unique=True, **common)
    if method == "ce":
        return lambda: torch.nn.functional.cross_entropy(logits.float(), labels)
    if method == "elr":
        return lambda: elr_loss(logits, bank, index, labels, beta=0.7, lam=3.0, assume_unique=True, **common)
    if method == "gce":
        return lambda: gce_loss(logits, labels, q=0.7, **common)
    if method == "sce":
        return lambda: sce_loss(logits, labels, alpha=0.1, beta=1.0, **common)
    return lambda: bootstrap_loss(logits, labels, beta=0.95, **common)


def time_step(loss_fn, logits, device, calls: int, reps: int, warmup: int) -> list[float]:
    def step():
        logits.grad = None
        loss_fn().backward()

    for _ in range(warmup):
        step()
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(calls):
                step()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b) * 1000.0 / calls)
        else:
            t0 = time.perf_counter()
            for _ in range(calls):
                step()
            out.append((time.perf_counter() - t0) * 1e6 / calls)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--K", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16"])
    ap.add_argument("--methods", nargs="+", choices=METHODS + REFERENCES, default=list(METHODS + REFERENCES),
                    help="the baselines, and for comparison 'alr' (as the trainer calls it) and 'ce' (eager only)")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impls = ["eager", "fused"] if device.type == "cuda" else ["eager"]
    rows = []
    for method in args.methods:
        for dname in args.dtypes:
            for B in args.B:
                for K in args.K:
                    g = torch.Generator().manual_seed(B + K)
                    logits = (torch.randn(B, K, generator=g) * 3).to(device, DTYPES[dname]).requires_grad_(True)
                    labels = torch.randint(0, K, (B,), generator=g).to(device)
                    bank = torch.softmax(torch.randn(2 * B, K, generator=g), 1).to(device)
                    index = torch.randperm(2 * B, generator=g)[:B].to(device)
                    for impl in impls:
                        if method == "ce" and impl == "fused":
                            continue  # no fused cross-entropy in this project: torch's own kernels
                        us = time_step(make_call(method, impl, logits, bank, index, labels), logits, device,
                                       args.calls, args.reps, args.warmup)
                        q = [min(us), max(us)]
                        rows.append(dict(method=method, dtype=dname, B=B, K=K, impl=impl,
                                         median_us=statistics.median(us), min_us=q[0], max_us=q[1]))
                        print(json.dumps(rows[-1]), flush=True)
    env = {"device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_model(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), **run_metadata()}
    slug = "cuda" if device.type == "cuda" else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_baselines_{slug}.json").write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    lines = [f"# Baselines' loss: fused vs eager ({env['device']})", "",
             f"`{env['command']}` at {env['time_utc']}, git {env['git_sha']}, torch {env['torch']}, "
             f"{env['threads']} threads, load average {env['load_avg_1m_at_start']}. µs per forward + backward "
             "(median of the reps; min-max).", "",
             "| method | dtype | B | K | " + " | ".join(f"{i} µs" for i in impls)
             + (" | fused speed-up |" if "fused" in impls else " |"),
             "|" + "---|" * (4 + len(impls) + ("fused" in impls))]
    for method in args.methods:
        for dname in args.dtypes:
            for B in args.B:
                for K in args.K:
                    cell = {r["impl"]: r for r in rows if (r["method"], r["dtype"], r["B"], r["K"]) ==
                            (method, dname, B, K)}
                    vals = [f"{cell[i]['median_us']:.0f} ({cell[i]['min_us']:.0f}-{cell[i]['max_us']:.0f})"
                            if i in cell else "-" for i in impls]
                    if "fused" in impls:
                        vals.append(f"{cell['eager']['median_us'] / cell['fused']['median_us']:.1f}x"
                                    if "fused" in cell else "-")
                    lines.append(f"| {method} | {dname} | {B} | {K} | " + " | ".join(vals) + " |")
    (out / f"bench_baselines_{slug}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
