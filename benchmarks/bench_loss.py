"""Benchmark the ALR loss: fused Triton kernel vs the eager reference vs torch.compile(reference).

Each timed call is one training step's worth of loss work: forward (bank update included) and backward to
the logits (``step``), and the forward alone (``fwd``). Per (logits dtype, B, K, implementation):

* ``--calls`` calls issued back to back between two CUDA events, repeated ``--reps`` times: **device µs per
  call** (event time / calls) and **host µs per call** (wall time of issuing the calls / calls; on a GPU the
  host runs ahead of the device, so this is the Python + launch cost), median and p10/p90 over the reps;
* **model GB/s** from an explicit byte count of forward + backward: read logits + bank rows, write bank rows
  + gradient, plus the index (``B (2 s_logits + 2 s_bank) K + 8 B``; the backward moves nothing when
  grad_output is 1) divided by the device time of ``step``, and its share of the device copy bandwidth
  measured in the same run;
* kernel launches per call, counted with torch.profiler (CUDA only).

Implementations: ``eager`` (alr_fast.loss.reference), ``compile`` (torch.compile of it), ``fused`` (default,
duplicate-safe), ``fused_unique`` (``alr_loss(..., backend="triton", check_index=False, assume_unique=True)``,
as the trainer calls it). At large K with few rows the kernel takes its split-K path by itself. Grids: ``--grid
trainer`` (B in 256/1024/4096, K in 10/14/50/100/1000), ``large`` (B*K >= 8M: K = 1000, 32k, 262k), or explicit
``--B``/``--K``.

Writes ``benchmarks/results/bench_loss_<device>[_tag].json`` (device, versions, git sha, command line, raw
timings) and a markdown table generated from it. Without a GPU it times what runs (eager, compile).

    python benchmarks/bench_loss.py --grid trainer --grid large          # GPU
    python benchmarks/bench_loss.py --impls eager --B 256 --K 10 100 --dtypes fp32   # CPU smoke run
    python benchmarks/bench_loss.py --host --tag after       # host time per call, every Triton launch stubbed

``--host`` (CPU): the host-side cost of one loss forward + backward, i.e. everything Python and torch do
around the kernel launches, which is what decides the loss's speed on a GPU at the trainer's small shapes.
It runs with ``TRITON_INTERPRET=1`` and ``triton.runtime.interpreter.InterpretedFunction.run`` replaced by a
no-op (so a launch costs nothing and computes nothing), ``torch.set_num_threads(1)``, and compares
``alr_loss(..., backend="triton", check_index=False, assume_unique=True)`` (the trainer's call) with an
eager ``F.cross_entropy`` forward + backward on the same logits (real arithmetic included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import REPO, cpu_model, relative, run_metadata  # noqa: E402  (benchmarks/ is on sys.path)
from alr_fast.loss.contract import ALRParams
from alr_fast.loss.reference import alr_loss_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("fused", "fused_unique", "eager", "compile")
ALPHA, LAM = 0.7, 0.4  # refinement with entropy: the most work per row
REFINE = ALRParams(ALPHA, LAM, refine=True)
GRIDS = {
    "trainer": [(B, K) for B in (256, 1024, 4096) for K in (10, 14, 50, 100, 1000)],
    "large": [(8192, 1000), (256, 32000), (32, 262144)],  # B*K >= 8M
}
GOALS = (
    "fused_unique: one launch forward, at most one (early-exit) backward, 0 host syncs",
    "fused_unique step >= 8x eager and >= 1.5x torch.compile(reference) at B=1024, K=1000 (device time)",
    ">= 85 % of the measured copy bandwidth at B*K >= 8M (fused_unique step, model bytes)",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", action="append", choices=sorted(GRIDS), help="shape grid(s); default: --B x --K")
    p.add_argument("--B", type=int, nargs="+", default=[256, 1024], help="batch sizes (without --grid)")
    p.add_argument("--K", type=int, nargs="+", default=[10, 1000], help="class counts (without --grid)")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16"], help="logits dtypes")
    p.add_argument("--bank-dtype", choices=sorted(DTYPES), default="fp32", help="soft-label bank dtype")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations to time")
    p.add_argument("--calls", type=int, default=50, help="calls back to back per timed rep")
    p.add_argument("--reps", type=int, default=7, help="timed reps per point (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation)")
    p.add_argument("--host", action="store_true", help="host time per call with every Triton launch stubbed (CPU)")
    p.add_argument("--host-shapes", nargs="+", default=["256x10", "1024x1000"], help="--host: BxK shapes")
    p.add_argument("--host-calls", type=int, default=200, help="--host: calls per timed round")
    p.add_argument("--host-rounds", type=int, default=15, help="--host: timed rounds (median reported)")
    p.add_argument("--tag", default="", help="suffix of the output file name (e.g. before / after)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------- environment
def environment(device: torch.device) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_model()})",
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        **run_metadata(),
    }


def device_slug(env: dict) -> str:
    name = "cpu" if env["device_type"] == "cpu" else env["device"]
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ------------------------------------------------------------------------------------------------- timing
def time_calls(fn, device: torch.device, calls: int, reps: int, warmup: int) -> dict:
    """``calls`` calls back to back between two CUDA events, ``reps`` times: device and host µs per call."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    dev_us, host_us = [], []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        host = time.perf_counter() - t0  # issuing the calls (the host runs ahead of the GPU)
        if cuda:
            end.record()
            end.synchronize()
            dev_us.append(start.elapsed_time(end) * 1e3 / calls)
        else:
            dev_us.append(host * 1e6 / calls)
        host_us.append(host * 1e6 / calls)

    def summary(xs):
        q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) >= 2 else [xs[0]] * 9
        return dict(median=statistics.median(xs), p10=q[0], p90=q[-1], raw=xs)

    return dict(device_us=summary(dev_us), host_us=summary(host_us))


def copy_bandwidth(device: torch.device) -> float:
    """Device copy bandwidth in GB/s: (read + write bytes) / time of a 1 GiB (GPU) / 256 MiB (CPU) copy."""
    n = (2**30 if device.type == "cuda" else 2**28) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), device, calls=5, reps=5, warmup=2)
    return 2 * n * 4 / (t["device_us"]["median"] * 1e-6) / 1e9


def count_launches(fn) -> int | None:
    """Kernel (and memcpy/memset) activities on the GPU during one call, from torch.profiler."""
    if not torch.cuda.is_available():
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def count_host_syncs(fn, device: torch.device) -> int | None:
    """0 if ``fn`` runs under CUDA sync debug mode "error" without raising, else 1 (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return 0
    except RuntimeError:
        return 1
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------------------------------------- problem
def make_problem(B: int, K: int, dtype: torch.dtype, bank_dtype: torch.dtype, device: torch.device, seed: int):
    """Logits ~ N(0, 3^2), a bank of 2B one-hot rows, B unique indices (an epoch permutation)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(B, K, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_(True)
    n = 2 * B
    bank = torch.nn.functional.one_hot(torch.randint(0, K, (n,), generator=g), K).to(device=device, dtype=bank_dtype)
    index = torch.randperm(n, generator=g)[:B].to(device)
    return logits, bank, index


def model_bytes(B: int, K: int, dtype: torch.dtype, bank_dtype: torch.dtype) -> int:
    """Minimal traffic of forward + backward: read logits + bank rows, write bank rows + gradient, the index.
    (The fused backward moves nothing for grad_output 1: the forward wrote the final gradient.)"""
    s_l = torch.empty((), dtype=dtype).element_size()
    s_b = torch.empty((), dtype=bank_dtype).element_size()
    return B * K * (2 * s_l + 2 * s_b) + 8 * B


def make_loss_fn(impl: str, compiled_ref):
    """(logits, bank, index) -> loss with one implementation (refinement with entropy, mean reduction)."""
    if impl in ("fused", "fused_unique"):
        from alr_fast import alr_loss

        unique = impl == "fused_unique"

        def loss_fn(z, bank, index):
            return alr_loss(z, bank, index, alpha=ALPHA, lam=LAM, refine=True, backend="triton", check_index=False,
                            assume_unique=unique)
    elif impl == "eager":

        def loss_fn(z, bank, index):
            return alr_loss_reference(z, bank, index, REFINE)
    else:

        def loss_fn(z, bank, index):
            return compiled_ref(z, bank, index, REFINE)

    return loss_fn


def check_against_reference(logits, bank, index, fused_loss_fn) -> dict:
    """One fused call vs the eager reference on copies: max |difference| of gradient and bank (sanity)."""
    grads, banks = [], []
    for loss_fn in (fused_loss_fn, make_loss_fn("eager", None)):
        z = logits.detach().clone().requires_grad_(True)
        b = bank.clone()
        loss_fn(z, b, index).backward()
        grads.append(z.grad.float())
        banks.append(b.float())
    return dict(
        check_grad_max_abs_diff=(grads[0] - grads[1]).abs().max().item(),  # host sync: outside the timing
        check_bank_max_abs_diff=(banks[0] - banks[1]).abs().max().item(),
    )


# ------------------------------------------------------------------------------------------------- report
def write_markdown(path: Path, result: dict) -> None:
    env, rows = result["environment"], result["rows"]
    s = result["settings"]
    lines = [
        f"# ALR loss benchmark: {env['device']}",
        "",
        f"Generated by `benchmarks/bench_loss.py` from `{path.with_suffix('.json').name}`. Command: `{env['command']}`",
        "",
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, git {env['git_sha']}"
        f"{' (dirty)' if env['git_dirty'] else ''}, {env['time_utc']}, load average at start "
        f"{env['load_avg_1m_at_start']}. Copy bandwidth (same run): {result['copy_bandwidth_gbs']:.1f} GB/s.",
        "",
        f"{s['calls']} calls back to back between CUDA events, median of {s['reps']} reps (p10-p90). dev = device "
        "µs per call, host = µs per call to issue them. `step` = forward + backward to the logits. Model GB/s = "
        "(read logits + bank rows, write bank rows + gradient, index) / step device time. Speed-ups: step device "
        "time. Launches: GPU activities per fwd / step (torch.profiler); syncs: host syncs in one step (CUDA sync "
        "debug mode).",
        "",
    ]
    for note in result["notes"]:
        lines += [f"**{note}**", ""]
    lines += [
        "| logits | B | K | impl | fwd dev µs | step dev µs [p10-p90] | step host µs | model GB/s | % copy BW "
        "| launches fwd/step | syncs | x eager | x compile | grad diff vs eager |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["dtype"], r["B"], r["K"], r["impl"]): r for r in rows if "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['B']} | {r['K']} | {r['impl']} | {r['error']} |" + " |" * 9)
            continue

        def speedup(other):
            o = by_key.get((r["dtype"], r["B"], r["K"], other))
            if not o or other == r["impl"]:
                return ""
            return f"{o['step']['device_us']['median'] / r['step']['device_us']['median']:.2f}"

        st = r["step"]["device_us"]
        launches = "n/a" if r["fwd"]["launches"] is None else f"{r['fwd']['launches']}/{r['step']['launches']}"
        check = f"{r['check_grad_max_abs_diff']:.1e}" if "check_grad_max_abs_diff" in r else ""
        syncs = "n/a" if r.get("host_syncs") is None else str(r["host_syncs"])
        lines.append(
            f"| {r['dtype']} | {r['B']} | {r['K']} | {r['impl']} | {r['fwd']['device_us']['median']:.1f} | "
            f"{st['median']:.1f} [{st['p10']:.1f}-{st['p90']:.1f}] | {r['step']['host_us']['median']:.1f} | "
            f"{r['model_gbs']:.1f} | {r['copy_share'] * 100:.1f} | {launches} | {syncs} | {speedup('eager')} | "
            f"{speedup('compile')} | {check} |"
        )
    lines += ["", "Goals (issue 14, GPU run):", *[f"- {g}" for g in GOALS], ""]
    path.write_text("\n".join(lines))


# ------------------------------------------------------------------------------------------------ host time
def stub_triton_launches() -> None:
    """Make every interpreted Triton launch a no-op (needs TRITON_INTERPRET=1 before the kernels import)."""
    from triton.runtime import interpreter

    interpreter.InterpretedFunction.run = lambda self, *args, **kwargs: None


def host_time(args) -> dict:
    """Median host µs per call of fused ALR fwd+bwd (launches stubbed) vs eager F.cross_entropy fwd+bwd."""
    import torch.nn.functional as F

    from alr_fast import alr_loss

    torch.set_num_threads(1)
    stub_triton_launches()

    def timed(fn, calls):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls * 1e6

    rows = []
    for shape in args.host_shapes:
        B, K = (int(v) for v in shape.lower().split("x"))
        g = torch.Generator().manual_seed(args.seed)
        logits = torch.randn(B, K, generator=g).requires_grad_(True)
        target = torch.randint(0, K, (B,), generator=g)
        bank = torch.nn.functional.one_hot(torch.randint(0, K, (2 * B,), generator=g), K).float()
        index = torch.randperm(2 * B, generator=g)[:B]

        def fused():
            logits.grad = None
            alr_loss(logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, backend="triton", check_index=False,
                     assume_unique=True).backward()

        def fused_dedup():
            logits.grad = None
            alr_loss(logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, backend="triton",
                     check_index=False).backward()

        def ce():
            logits.grad = None
            F.cross_entropy(logits, target).backward()

        fns = {"fused_assume_unique": fused, "fused_default": fused_dedup, "eager_cross_entropy": ce}
        for fn in fns.values():  # warm-up (first-call caches, allocator)
            timed(fn, 50)
        samples = {name: [] for name in fns}
        for _ in range(args.host_rounds):  # interleaved rounds: a load spike hits every implementation alike
            for name, fn in fns.items():
                samples[name].append(timed(fn, args.host_calls))
        for name, us in samples.items():
            q = statistics.quantiles(us, n=10, method="inclusive")
            rows.append(dict(B=B, K=K, impl=name, median_us=statistics.median(us), p10_us=q[0], p90_us=q[-1],
                             rounds_us=us))
            print(f"host B={B:5d} K={K:5d} {name:22s} {statistics.median(us):8.1f} us/call "
                  f"[{q[0]:.1f}-{q[-1]:.1f}]", flush=True)
    return dict(rows=rows)


def main_host(args) -> int:
    env = environment(torch.device("cpu"))
    result = dict(
        environment=env,
        settings=dict(vars(args), out=relative(args.out), alpha=ALPHA, lam=LAM, torch_threads=1,
                      method="TRITON_INTERPRET=1 with triton.runtime.interpreter.InterpretedFunction.run stubbed "
                             "to a no-op; median over rounds of (wall time of host_calls calls / host_calls); "
                             "fused = alr_loss(backend='triton', check_index=False[, assume_unique=True]) "
                             "forward + backward, CE = eager F.cross_entropy forward + backward"),
        **host_time(args),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_loss_host{'_' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {relative(path)}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.host:
        return main_host(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device)
    notes = []
    impls = list(args.impls)
    fused = [i for i in impls if i.startswith("fused")]
    if device.type != "cuda" and fused:
        impls = [i for i in impls if not i.startswith("fused")]
        notes.append(
            "No GPU: the fused Triton path needs a CUDA device (on a CPU it only runs under the Triton "
            "interpreter, which is for tests, not timing; see --host for its host cost); fused rows are absent."
        )
        print(f"NOTE: {notes[-1]}", flush=True)
    if device.type != "cuda":
        notes.append("CPU run: timings are of the reference on this CPU and say nothing about GPU performance.")
    bw = copy_bandwidth(device)
    print(f"device: {env['device']}; copy bandwidth {bw:.1f} GB/s", flush=True)

    compiled_ref = None
    if "compile" in impls:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 256)  # one graph per shape
        compiled_ref = torch.compile(alr_loss_reference, dynamic=False)

    shapes = [bk for g in args.grid for bk in GRIDS[g]] if args.grid else [(B, K) for B in args.B for K in args.K]
    bank_dtype = DTYPES[args.bank_dtype]
    rows = []
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for B, K in shapes:
            nbytes = model_bytes(B, K, dtype, bank_dtype)
            for impl in impls:
                row = dict(dtype=dname, bank_dtype=args.bank_dtype, B=B, K=K, impl=impl, model_bytes=nbytes)
                try:
                    logits, bank, index = make_problem(B, K, dtype, bank_dtype, device, args.seed)
                    loss_fn = make_loss_fn(impl, compiled_ref)

                    def forward(loss_fn=loss_fn, logits=logits, bank=bank, index=index):
                        loss_fn(logits, bank, index)  # the graph is dropped: forward work only

                    def step(loss_fn=loss_fn, logits=logits, bank=bank, index=index):
                        logits.grad = None
                        loss_fn(logits, bank, index).backward()

                    if impl.startswith("fused"):
                        row.update(check_against_reference(logits, bank, index, loss_fn))
                    for name, fn in (("fwd", forward), ("step", step)):
                        row[name] = time_calls(fn, device, args.calls, args.reps, args.warmup)
                        row[name]["launches"] = count_launches(fn)
                    row["host_syncs"] = count_host_syncs(step, device)
                except Exception as exc:  # noqa: BLE001  (a failed point is recorded, the grid goes on)
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    print(f"{dname} B={B} K={K} {impl}: FAILED {row['error']}", flush=True)
                    rows.append(row)
                    continue
                finally:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                dev = row["step"]["device_us"]["median"]
                row.update(model_gbs=nbytes / (dev * 1e-6) / 1e9, copy_share=nbytes / (dev * 1e-6) / 1e9 / bw)
                rows.append(row)
                print(
                    f"{dname} B={B:6d} K={K:6d} {impl:12s} fwd {row['fwd']['device_us']['median']:9.1f} us  step "
                    f"dev {dev:9.1f} us host {row['step']['host_us']['median']:8.1f} us  {row['model_gbs']:7.1f} "
                    f"GB/s ({row['copy_share'] * 100:5.1f} %)  launches {row['fwd']['launches']}/"
                    f"{row['step']['launches']} syncs {row['host_syncs']}",
                    flush=True,
                )

    result = dict(
        environment=env,
        settings=dict(vars(args), out=relative(args.out), impls_run=impls, shapes=shapes, alpha=ALPHA, lam=LAM,
                      refine=True),
        copy_bandwidth_gbs=bw,
        notes=notes,
        goals=list(GOALS),
        rows=rows,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_loss_{device_slug(env)}{'_' + args.tag if args.tag else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    write_markdown(stem.with_suffix(".md"), result)
    print(f"wrote {relative(stem)}.json and .md")
    return 0


if __name__ == "__main__":
    if "--host" in sys.argv[1:]:
        os.environ["TRITON_INTERPRET"] = "1"  # before alr_fast.loss.triton is imported: launches become stubbable
    elif os.environ.get("TRITON_INTERPRET") == "1":
        print("NOTE: TRITON_INTERPRET=1 is set: the fused path would run in the interpreter (not a benchmark).")
    sys.exit(main())
