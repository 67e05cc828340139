"""Benchmark the ALR loss: fused Triton kernel vs the eager reference vs torch.compile(reference).

Each timed call is one training-step's worth of loss work: forward (bank update included) and backward to
the logits. Reported per (logits dtype, B, K, implementation):

* median and spread (p10/p90) of the time per call over ``--reps`` calls, with the L2 cache flushed before
  each call (a write of a 256 MiB buffer), measured with CUDA events (``time.perf_counter`` on a CPU);
* "model bandwidth": the minimal bytes a fused pass must move (read logits + bank rows, write bank rows +
  gradient) divided by the time, and its share of the device copy bandwidth measured in the same run
  (a large device-to-device tensor copy: read + write bytes / time);
* kernel launches per call, counted with torch.profiler (CUDA only).

Writes ``benchmarks/results/bench_loss_<device>.json`` (device, versions, git sha, command line, raw
timings) and a markdown table generated from it (``.md``). On a machine without a GPU it runs what can run
(the eager reference, and torch.compile(reference) with ``--impls``) and says that the fused path needs a GPU.

    python benchmarks/bench_loss.py                          # full grid (GPU)
    python benchmarks/bench_loss.py --B 256 1024 --K 10 1000 --dtypes bf16 --reps 10
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
from alr_fast.reference import alr_loss_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("fused", "eager", "compile")
ALPHA, LAM = 0.7, 0.4  # refinement with entropy: the most work per row
FLUSH_BYTES = 256 * 2**20  # > L2 of H100 (50 MB) / H200 (60 MB)
GOALS = (
    "one launch and zero host syncs per call (fused; the duplicate-safe default adds the index sort)",
    ">= 85 % of the measured copy bandwidth at B*K >= 8M (fused)",
    ">= 8x the eager reference and >= 1.5x torch.compile(reference) at B=1024, K=1000",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, nargs="+", default=[256, 1024, 4096, 16384], help="batch sizes")
    p.add_argument("--K", type=int, nargs="+", default=[10, 14, 50, 100, 1000, 32000], help="class counts")
    p.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"], help="logits dtypes")
    p.add_argument("--bank-dtype", choices=sorted(DTYPES), default="fp32", help="soft-label bank dtype")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="implementations to time")
    p.add_argument("--reps", type=int, default=20, help="timed calls per point (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation, autotuning)")
    p.add_argument(
        "--assume-unique",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="fused: skip the duplicate-safe index sort (the benchmark's indices are unique)",
    )
    p.add_argument(
        "--interpreter-smoke",
        action="store_true",
        help="CPU only, with TRITON_INTERPRET=1: run the fused path in the Triton interpreter to smoke-test this "
        "script (its timings are meaningless and are labelled so)",
    )
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
class Timer:
    """Median time of ``fn`` with the L2 flushed before every call (CUDA events on a GPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.flush_buf = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device=device)

    def __call__(self, fn, reps: int, warmup: int, setup=None) -> list[float]:
        for _ in range(warmup):
            if setup:
                setup()
            fn()
        times = []
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
        for _ in range(reps):
            if setup:
                setup()
            self.flush_buf.zero_()  # evict logits/bank/gradient from L2 (a write, so no stale lines stay)
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e-3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return times


def copy_bandwidth(device: torch.device, timer: Timer) -> float | None:
    """Device copy bandwidth in GB/s: (read + write bytes) / time for a 1 GiB (GPU) / 256 MiB (CPU) copy."""
    n = (2**30 if device.type == "cuda" else 2**28) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = timer(lambda: dst.copy_(src), reps=10, warmup=2)
    return 2 * n * 4 / statistics.median(times) / 1e9


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
    """Minimal traffic of one fused pass: read logits + bank rows, write bank rows + gradient."""
    s_l = torch.empty((), dtype=dtype).element_size()
    s_b = torch.empty((), dtype=bank_dtype).element_size()
    return B * K * (2 * s_l + 2 * s_b)


def make_loss_fn(impl: str, assume_unique: bool, compiled_ref):
    """(logits, bank, index) -> loss with one implementation (refinement with entropy, mean reduction)."""
    if impl == "fused":
        from alr_fast.kernels import fused_alr_loss

        def loss_fn(z, bank, index):
            return fused_alr_loss(z, bank, index, alpha=ALPHA, lam=LAM, refine=True, assume_unique=assume_unique)
    elif impl == "eager":

        def loss_fn(z, bank, index):
            return alr_loss_reference(z, bank, index, alpha=ALPHA, lam=LAM, refine=True)
    else:

        def loss_fn(z, bank, index):
            return compiled_ref(z, bank, index, alpha=ALPHA, lam=LAM, refine=True)

    return loss_fn


def check_against_reference(logits, bank, index, fused_loss_fn) -> dict:
    """One fused call vs the eager reference on copies: max |difference| of gradient and bank (sanity)."""
    grads, banks = [], []
    for loss_fn in (fused_loss_fn, make_loss_fn("eager", False, None)):
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
    lines = [
        f"# ALR loss benchmark: {env['device']}",
        "",
        f"Generated by `benchmarks/bench_loss.py` from `{path.with_suffix('.json').name}`. Command: `{env['command']}`",
        "",
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, git {env['git_sha']}"
        f"{' (dirty)' if env['git_dirty'] else ''}, {env['time_utc']}, 1-min load average at start "
        f"{env['load_avg_1m_at_start']}.",
        "",
        f"Copy bandwidth (same run): {result['copy_bandwidth_gbs']:.1f} GB/s. Times: median of "
        f"{result['settings']['reps']} calls with the L2 flushed before each (p10-p90 in brackets). `fwd` = the "
        "loss forward (for the fused kernel this already writes the bank and the gradient buffer); `step` = "
        "forward + backward to the logits (the fused backward scales the gradient buffer: one more read and "
        "write of B*K). Model GB/s = (read logits + bank rows, write bank rows + gradient) / fwd time. "
        "Speed-ups compare `step` times. Launches: GPU kernels (and memcpy/memset) per call, torch.profiler; "
        "`step` includes the fill kernel with which autograd seeds `loss.backward()` (not the loss's own).",
        "",
    ]
    for note in result["notes"]:
        lines += [f"**{note}**", ""]
    lines += [
        "| logits | B | K | impl | fwd ms [p10-p90] | model GB/s | % copy BW | step ms [p10-p90] | launches "
        "fwd/step | step x eager | step x compile | max abs grad diff vs eager |",
        "|---|---:|---:|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    by_key = {(r["dtype"], r["B"], r["K"], r["impl"]): r for r in rows if "error" not in r}

    def ms(t):
        return f"{t['median_s'] * 1e3:.3f} [{t['p10_s'] * 1e3:.3f}-{t['p90_s'] * 1e3:.3f}]"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['B']} | {r['K']} | {r['impl']} | {r['error']} |" + " |" * 7)
            continue

        def speedup(other):
            o = by_key.get((r["dtype"], r["B"], r["K"], other))
            return f"{o['step']['median_s'] / r['step']['median_s']:.2f}" if o and other != r["impl"] else ""

        launches = "n/a" if r["fwd"]["launches"] is None else f"{r['fwd']['launches']}/{r['step']['launches']}"
        check = f"{r['check_grad_max_abs_diff']:.1e}" if "check_grad_max_abs_diff" in r else ""
        lines.append(
            f"| {r['dtype']} | {r['B']} | {r['K']} | {r['impl']} | {ms(r['fwd'])} | {r['model_gbs']:.1f} | "
            f"{r['copy_share'] * 100:.1f} | {ms(r['step'])} | {launches} | {speedup('eager')} | "
            f"{speedup('compile')} | {check} |"
        )
    lines += ["", "Goals (issue 3, GPU run):", *[f"- {g}" for g in GOALS], ""]
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
    smoke = args.interpreter_smoke and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if smoke and "fused" in impls:
        notes.append("Interpreter smoke run: fused timings are of the Triton interpreter on a CPU, meaningless.")
        print(f"NOTE: {notes[-1]}", flush=True)
    elif device.type != "cuda" and "fused" in impls:
        impls.remove("fused")
        notes.append(
            "No GPU: the fused Triton path needs a CUDA device (on a CPU it only runs under the Triton "
            "interpreter, which is for tests, not timing); fused results are absent from this run."
        )
        print(f"NOTE: {notes[-1]}", flush=True)
    if device.type != "cuda":
        notes.append("CPU run: timings are of the reference on this CPU and say nothing about GPU performance.")
    timer = Timer(device)
    bw = copy_bandwidth(device, timer)
    print(f"device: {env['device']}; copy bandwidth {bw:.1f} GB/s", flush=True)

    compiled_ref = None
    if "compile" in impls:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 256)  # one graph per shape
        compiled_ref = torch.compile(alr_loss_reference, dynamic=False)

    bank_dtype = DTYPES[args.bank_dtype]
    rows = []
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for B in args.B:
            for K in args.K:
                nbytes = model_bytes(B, K, dtype, bank_dtype)
                for impl in impls:
                    row = dict(dtype=dname, bank_dtype=args.bank_dtype, B=B, K=K, impl=impl, model_bytes=nbytes)
                    try:
                        logits, bank, index = make_problem(B, K, dtype, bank_dtype, device, args.seed)
                        loss_fn = make_loss_fn(impl, args.assume_unique, compiled_ref)

                        def forward(loss_fn=loss_fn, logits=logits, bank=bank, index=index):
                            loss_fn(logits, bank, index)  # the graph is dropped: forward work only

                        def step(loss_fn=loss_fn, logits=logits, bank=bank, index=index):
                            loss_fn(logits, bank, index).backward()

                        def reset_grad(logits=logits):
                            logits.grad = None

                        if impl == "fused":
                            row.update(check_against_reference(logits, bank, index, loss_fn))
                        for name, fn in (("fwd", forward), ("step", step)):
                            times = timer(fn, args.reps, args.warmup, setup=reset_grad)
                            med = statistics.median(times)
                            q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else [med] * 9
                            row[name] = dict(times_s=times, median_s=med, p10_s=q[0], p90_s=q[-1])
                            reset_grad()
                            row[name]["launches"] = count_launches(fn)
                    except Exception as exc:  # noqa: BLE001  (a failed point is recorded, the grid goes on)
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                        print(f"{dname} B={B} K={K} {impl}: FAILED {row['error']}", flush=True)
                        rows.append(row)
                        continue
                    finally:
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    fwd = row["fwd"]["median_s"]
                    row.update(model_gbs=nbytes / fwd / 1e9, copy_share=nbytes / fwd / 1e9 / bw)
                    rows.append(row)
                    print(
                        f"{dname} B={B:6d} K={K:6d} {impl:8s} fwd {fwd * 1e3:9.3f} ms {row['model_gbs']:8.1f} GB/s "
                        f"({row['copy_share'] * 100:5.1f} % copy)  step {row['step']['median_s'] * 1e3:9.3f} ms  "
                        f"launches fwd/step {row['fwd']['launches']}/{row['step']['launches']}",
                        flush=True,
                    )

    result = dict(
        environment=env,
        settings=dict(vars(args), out=relative(args.out), impls_run=impls, alpha=ALPHA, lam=LAM, refine=True),
        copy_bandwidth_gbs=bw,
        notes=notes,
        goals=list(GOALS),
        rows=rows,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_loss_{device_slug(env)}{'_assume_unique' if args.assume_unique else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    write_markdown(stem.with_suffix(".md"), result)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    if "--host" in sys.argv[1:]:
        os.environ["TRITON_INTERPRET"] = "1"  # before alr_fast.kernels is imported: launches become stubbable
    elif os.environ.get("TRITON_INTERPRET") == "1":
        print("NOTE: TRITON_INTERPRET=1 is set: the fused path would run in the interpreter (not a benchmark).")
    sys.exit(main())
