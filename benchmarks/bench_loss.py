"""Benchmark the ALR loss on a GPU: the fused Triton kernel against cross-entropy and the torch baselines.

Per (logits dtype, B, K, implementation), one **step** = the loss forward (bank update included) and the
gradient w.r.t. the logits:

* **device µs per step**: CUDA events around one CUDA-graph replay of the step (the device runs its kernels
  back to back: no host launch gaps), the L2 flushed (a 256 MiB memset, untimed) before every timed call, so
  inputs come from HBM as in training; median and p10/p90 over ``--reps``. A step that cannot be captured
  (it synchronises with the host) is timed eagerly, and the row says so;
* **host µs per step**: issuing ``--calls`` steps back to back (Python + launch cost);
* **model GB/s**: the byte model (:func:`model_bytes`: the least traffic the step must move) / device time,
  and its share of the device copy bandwidth measured in the same run;
* GPU activities per step (torch.profiler) and host syncs (CUDA sync debug mode).

Implementations: ``ce`` (``F.cross_entropy`` with hard labels: the floor a loss step can cost), ``eager``
(the soft-target reference ``alr_fast.loss.reference``), ``compile_unique`` (``torch.compile(fullgraph=True)``
of the torch backend's unique fast path ``alr_fast.loss.torch_fast.alr_loss_unique``: a graph break fails the
row), ``fused_unique`` (``alr_loss(..., backend="triton", check_index=False, assume_unique=True)``: exactly the
trainer's call) and ``fused`` (the duplicate-safe default). At large K with few rows the kernel takes its
split-K path by itself; ``--split-check`` times it against the two-sweep path (``split_k=-1``).

Before timing, **correctness on the hardware**: the fused loss, gradient and bank against the independent
float64 oracle (tests/reference64.py) for every logits dtype (fp32/bf16/fp16), bank dtype (fp32/bf16), mode
(duplicate-safe refinement with repeated indices, assume_unique, warm-up) and reduction, at one-sweep,
two-sweep and split-K shapes, each case with a padded row and a NaN row.

The JSON (``benchmarks/results/bench_loss_<device>[_tag].json``: device, versions, git sha, command, raw
timings) is rewritten after every finished point, so a run cut off by a time limit keeps every figure it had;
a markdown table is written from it at the end. ``--dry-run`` runs the whole path on a CPU under the Triton
interpreter with tiny shapes (timings there are CPU wall time and mean nothing).

    python benchmarks/bench_loss.py --grid trainer --grid large          # GPU
    python benchmarks/bench_loss.py --dry-run                            # CPU: the same path, tiny shapes
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
import torch.nn.functional as F

from _common import REPO, cpu_model, relative, run_metadata  # noqa: E402  (benchmarks/ is on sys.path)
from alr_fast.loss.contract import ALRParams
from alr_fast.loss.reference import alr_loss_reference

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOL = {"fp32": 2e-5, "bf16": 2e-2, "fp16": 4e-3}  # oracle check: max abs error / max(|ref|, 1)
IMPLS = ("fused_unique", "fused", "compile_unique", "eager", "ce")
ALPHA, LAM = 0.7, 0.4  # refinement with entropy: the most work per row
REFINE = ALRParams(ALPHA, LAM, refine=True)
REFINE_UNIQUE = ALRParams(ALPHA, LAM, refine=True, assume_unique=True)
FLUSH_BYTES = 256 * 2**20
GRIDS = {
    "trainer": [(B, K) for B in (256, 1024, 4096) for K in (10, 100, 1000)],
    "large": [(8192, 1000), (256, 21841), (32, 262144)],  # B*K >= 5M; K = 21,841: ImageNet-21k
    "dry": [(8, 5)],
}
GOALS = (
    "fused_unique: one launch forward, at most one (early-exit) backward, 0 host syncs",
    "fused_unique step >= 8x eager and >= 1.5x compile_unique at B=1024, K=1000 (device time)",
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
    p.add_argument("--calls", type=int, default=20, help="steps issued back to back for the host time")
    p.add_argument("--reps", type=int, default=20, help="timed calls per point (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (compilation)")
    p.add_argument("--no-oracle", action="store_true", help="skip the float64 correctness cases")
    p.add_argument("--oracle-only", action="store_true", help="only the float64 correctness cases")
    p.add_argument("--split-check", action="store_true", help="also time split-K vs two sweeps at B=256, K=21841")
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny shapes: tests the path")
    p.add_argument("--host", action="store_true", help="host time per call with every Triton launch stubbed (CPU)")
    p.add_argument("--host-shapes", nargs="+", default=["256x10", "1024x1000"], help="--host: BxK shapes")
    p.add_argument("--host-calls", type=int, default=200, help="--host: calls per timed round")
    p.add_argument("--host-rounds", type=int, default=15, help="--host: timed rounds (median reported)")
    p.add_argument("--tag", default="", help="suffix of the output file name (e.g. before / after)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.dry_run:
        args.grid = args.grid or ["dry"]
        args.reps, args.calls, args.warmup = min(args.reps, 2), min(args.calls, 2), min(args.warmup, 1)
    return args


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
def l2_flush_buffer(device: torch.device) -> torch.Tensor | None:
    """A 256 MiB buffer whose memset between timed calls evicts the L2 (60 MB on an H200, 50 MB on an H100),
    so every timed call reads its inputs from HBM as in training (the trainer-shape working sets fit in L2)."""
    if device.type != "cuda":
        return None
    return torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)


def capture(step, device: torch.device):
    """``step`` as a CUDA graph replay (the device runs the kernels back to back, no host launch gaps), or
    ``None`` when the step cannot be captured (a host sync, e.g. the duplicate-safe reference)."""
    if device.type != "cuda":
        return None
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up on a side stream: compilation, allocator, ticket counter slab
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        return graph.replay
    except Exception as exc:  # noqa: BLE001  (recorded: the row is then timed eagerly)
        print(f"    (no CUDA graph: {type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)
        torch.cuda.synchronize(device)
        return None


def time_device(step, device: torch.device, reps: int, warmup: int, flush: torch.Tensor | None) -> dict:
    """Device µs per call: CUDA events around one CUDA-graph replay of ``step`` (eager ``step`` where it cannot
    be captured), with the L2 flushed before every timed call; median and p10/p90 over ``reps``.

    On a CPU (``--dry-run``) this is wall time per call and means nothing about a GPU."""
    for _ in range(warmup):
        step()
    if device.type != "cuda":
        xs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            xs.append((time.perf_counter() - t0) * 1e6)
        return dict(method="cpu wall time", **_summary(xs))
    replay = capture(step, device)
    run = replay or step
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()  # evict L2; not timed (the events bracket the call only)
        starts[i].record()
        run()
        ends[i].record()
    torch.cuda.synchronize(device)
    xs = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    return dict(method="cuda graph replay, L2 flushed" if replay else "eager launches, L2 flushed", **_summary(xs))


def time_host(step, device: torch.device, calls: int) -> float:
    """Host µs per call to issue ``step`` back to back (the host runs ahead of the GPU: Python + launch cost)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    host = (time.perf_counter() - t0) * 1e6 / calls
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return host


def _summary(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=10, method="inclusive") if len(xs) >= 2 else [xs[0]] * 9
    return dict(median=statistics.median(xs), p10=q[0], p90=q[-1], raw=xs)


def copy_bandwidth(device: torch.device, flush: torch.Tensor | None) -> float:
    """Device copy bandwidth in GB/s: (read + write bytes) / time of a 1 GiB copy (GPU; 64 MiB on a CPU)."""
    n = (2**30 if device.type == "cuda" else 2**26) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = time_device(lambda: dst.copy_(src), device, reps=5, warmup=1, flush=flush)
    return 2 * n * 4 / (t["median"] * 1e-6) / 1e9


def count_launches(fn) -> int | None:
    """GPU activities (kernels, memsets, memcpys) during one call, from torch.profiler (CUDA only)."""
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
    """Logits ~ N(0, 3^2), a bank of 2B one-hot rows, B unique indices (an epoch permutation), hard targets."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(B, K, generator=g) * 3).to(device=device, dtype=dtype).requires_grad_(True)
    n = 2 * B
    labels = torch.randint(0, K, (n,), generator=g)
    bank = F.one_hot(labels, K).to(device=device, dtype=bank_dtype)
    index = torch.randperm(n, generator=g)[:B]
    return logits, bank, index.to(device), labels[index].to(device)


def model_bytes(impl: str, B: int, K: int, dtype: torch.dtype, bank_dtype: torch.dtype) -> int:
    """The byte model: the least traffic one step (forward + backward to the logits) must move.

    ALR: read logits and bank rows, write bank rows and the gradient, read the index: ``B K (2 s_l + 2 s_b) +
    8 B`` (the fused backward moves nothing for grad_output 1: the forward wrote the final gradient).
    Cross-entropy with hard labels: read logits, write the gradient, read the targets: ``2 B K s_l + 8 B``.
    Every implementation of one loss is measured against the same model (GB/s = model bytes / device time):
    an implementation that moves more than the model shows as a lower GB/s."""
    s_l = torch.empty((), dtype=dtype).element_size()
    s_b = torch.empty((), dtype=bank_dtype).element_size()
    if impl == "ce":
        return 2 * B * K * s_l + 8 * B
    return B * K * (2 * s_l + 2 * s_b) + 8 * B


def make_step(impl: str, logits, bank, index, target, compiled):
    """One training step's worth of loss work: forward (bank update included) and the gradient w.r.t. logits."""
    if impl == "ce":

        def loss():
            return F.cross_entropy(logits, target)
    elif impl in ("fused", "fused_unique"):
        from alr_fast import alr_loss

        unique = impl == "fused_unique"

        def loss():  # fused_unique: exactly the trainer's call
            return alr_loss(logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, backend="triton",
                            check_index=False, assume_unique=unique)
    elif impl == "eager":

        def loss():
            return alr_loss_reference(logits, bank, index, REFINE)
    elif impl == "compile_unique":

        def loss():
            return compiled(logits, bank, index, REFINE_UNIQUE)
    else:
        raise ValueError(f"unknown implementation {impl!r}")

    def step():
        return torch.autograd.grad(loss(), logits)[0]

    return step


# ---------------------------------------------------------------------------------------------- correctness
def oracle_cases(device: torch.device, dry_run: bool) -> list[tuple]:
    """(B, K, logits dtype, bank dtype, mode, reduction) for the float64 check: every dtype the hardware runs,
    one- and two-sweep K, split-K (few rows, K > 8192), every mode (duplicate-safe refinement with duplicate
    indices, assume_unique, warm-up) and reduction."""
    if dry_run:
        shapes = [(6, 5)]
    else:
        shapes = [(7, 10), (64, 100), (33, 1000), (16, 8193), (4, 20000)]  # the last: split-K on a GPU
    ldt = ["fp32", "bf16", "fp16"]
    bdt = ["fp32", "bf16"]
    modes = ["refine_dups", "refine_unique", "warmup"]
    reds = ["mean", "none", "sum"]
    cases = []
    for i, (B, K) in enumerate(shapes):
        for j, lg in enumerate(ldt):
            for bk in bdt:
                for m, mode in enumerate(modes):
                    cases.append((B, K, lg, bk, mode, reds[(i + j + m) % 3]))
    return cases


def check_oracle(case: tuple, device: torch.device, seed: int) -> dict:
    """One fused call (as alr_loss(backend="triton") makes it) against the independent float64 oracle of
    tests/reference64.py, with a padded row, a NaN row and (refine_dups) repeated indices."""
    sys.path.insert(0, str(REPO / "tests"))
    from reference64 import alr_oracle

    from alr_fast import alr_loss

    B, K, lg, bk, mode, red = case
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, generator=g, dtype=torch.float64) * 3
    logits[B // 2, K // 3] = float("nan")
    n = 2 * B
    bank = torch.softmax(torch.randn(n, K, generator=g, dtype=torch.float64), 1) * (0.6 + 0.8 * torch.rand(n, 1, generator=g))
    index = torch.randperm(n, generator=g)[:B]
    if mode == "refine_dups":
        index[1::3] = index[0]  # one bank row repeated through the batch
    index[-1] = -1
    z = logits.to(DTYPES[lg]).to(device).requires_grad_(True)
    b = bank.to(DTYPES[bk]).to(device)
    b_before = b.double().cpu().numpy()
    refine = mode != "warmup"
    loss = alr_loss(z, b, index.to(device), alpha=ALPHA, lam=LAM if refine else 0.0, refine=refine,
                    reduction=red, backend="triton", check_index=False, assume_unique=mode == "refine_unique")
    (grad,) = torch.autograd.grad(loss, z, torch.ones_like(loss))
    store = (lambda row: torch.from_numpy(row).to(DTYPES[bk]).double().numpy())
    ref_loss, ref_grad, ref_bank = alr_oracle(z.detach().double().cpu().numpy(), b_before,
                                              index.numpy(), alpha=ALPHA, lam=LAM if refine else 0.0,
                                              refine=refine, reduction=red, store=store)
    out = {}
    for name, got, ref, tol in (("loss", loss, ref_loss, TOL[lg]), ("grad", grad, ref_grad, TOL[lg]),
                                ("bank", b, ref_bank, TOL[bk])):
        got = got.detach().double().cpu()
        ref = torch.as_tensor(ref, dtype=torch.float64)
        same_nan = bool(torch.equal(torch.isnan(got), torch.isnan(ref)))
        ok = ~torch.isnan(ref)
        err = float((got[ok] - ref[ok]).abs().max()) if ok.any() else 0.0
        scale = float(ref[ok].abs().max()) if ok.any() else 1.0
        out[f"{name}_max_abs_err"] = err
        out[f"{name}_ok"] = same_nan and err <= tol * max(scale, 1.0)
    out["ok"] = all(v for k, v in out.items() if k.endswith("_ok"))
    return out


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


# ------------------------------------------------------------------------------------------------- report
def write_markdown(path: Path, result: dict) -> None:
    env, rows, s = result["environment"], result["rows"], result["settings"]
    bw = result.get("copy_bandwidth_gbs")
    lines = [
        f"# ALR loss benchmark: {env['device']}{' (DRY RUN: CPU, Triton interpreter)' if result['dry_run'] else ''}",
        "",
        f"Generated by `benchmarks/bench_loss.py` from `{path.with_suffix('.json').name}`. Command: `{env['command']}`",
        "",
        f"torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, git {env['git_sha']}"
        f"{' (dirty)' if env['git_dirty'] else ''}, {env['time_utc']}. Copy bandwidth (same run): "
        f"{'n/a' if bw is None else f'{bw:.1f} GB/s'}.",
        "",
    ]
    oracle = result["oracle"]
    if oracle:
        bad = [o for o in oracle if not o.get("ok")]
        lines += [f"Correctness vs the float64 oracle: {len(oracle) - len(bad)} / {len(oracle)} cases pass "
                  "(every logits dtype x bank dtype x mode x reduction at one-sweep, two-sweep and split-K shapes, "
                  "each with a padded and a NaN row).", ""]
        lines += [f"- FAIL {o['case']}: {o.get('error') or {k: v for k, v in o.items() if k.endswith('err')}}"
                  for o in bad]
        lines.append("")
    lines += [
        f"Step = loss forward + gradient w.r.t. the logits. Device µs: CUDA events around a CUDA-graph replay of one "
        f"step, L2 flushed before each, median of {s['reps']} [p10-p90]. Host µs: steps issued back to back. "
        "Model GB/s: the byte model (least traffic of the step) / device time. Launches: GPU activities per "
        "step (torch.profiler). Syncs: host syncs in one step.",
        "",
        "| logits | B | K | impl | step dev µs [p10-p90] | timing | host µs | model GB/s | % copy BW | launches "
        "| syncs | x ce | x eager | x compile_unique |",
        "|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["dtype"], r["B"], r["K"], r["impl"]): r for r in rows if "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dtype']} | {r['B']} | {r['K']} | {r['impl']} | {r['error']} |" + " |" * 9)
            continue

        def ratio(other):
            o = by_key.get((r["dtype"], r["B"], r["K"], other))
            return "" if not o or other == r["impl"] else f"{o['step']['median'] / r['step']['median']:.2f}"

        st = r["step"]
        share = "" if r.get("copy_share") is None else f"{r['copy_share'] * 100:.1f}"
        lines.append(
            f"| {r['dtype']} | {r['B']} | {r['K']} | {r['impl']} | {st['median']:.1f} [{st['p10']:.1f}-"
            f"{st['p90']:.1f}] | {st['method']} | {r['host_us']:.1f} | {r['model_gbs']:.1f} | {share} | "
            f"{r['launches']} | {r['host_syncs']} | {ratio('ce')} | {ratio('eager')} | {ratio('compile_unique')} |"
        )
    for sc in result.get("split_check", []):
        lines += ["", f"Split-K check: {sc}"]
    lines += ["", "Goals (issue 24, GPU run):", *[f"- {g}" for g in GOALS], ""]
    path.write_text("\n".join(lines))


def _save(path: Path, result: dict) -> None:
    """Rewrite the JSON whole (write aside, rename): a run cut off later keeps every finished point."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def split_check(args, device: torch.device, flush) -> dict:
    """The split-K path against the two-sweep path on the same inputs (device time of the forward launches)."""
    from alr_fast.loss.triton import alr_forward

    cuda = device.type == "cuda"
    B, K, forced = (256, 21841, 0) if not args.dry_run else (2, 40, 16)
    logits, bank, index, _ = make_problem(B, K, torch.bfloat16, torch.float32, device, args.seed)
    logits = logits.detach()
    out = dict(B=B, K=K, logits="bf16", bank="fp32")
    results = {}
    for name, split_k in (("split_k", forced), ("two_sweep", -1)):
        b = bank.clone()

        def fwd(b=b, split_k=split_k):
            return alr_forward(logits, b, index, REFINE_UNIQUE, split_k=split_k)

        results[name] = fwd()
        out[name] = time_device(fwd, device, args.reps if cuda else 1, args.warmup if cuda else 0, flush)
    same = torch.allclose(results["split_k"][1].float(), results["two_sweep"][1].float(), rtol=2e-2, atol=1e-5)
    out["same_gradient"] = bool(same)
    out["speedup"] = out["two_sweep"]["median"] / out["split_k"]["median"]
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.host:
        return main_host(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.dry_run:
        print("bench_loss: no CUDA device; use --dry-run (CPU, Triton interpreter, tiny shapes) or --host",
              file=sys.stderr)
        return 2
    env = environment(device)
    flush = l2_flush_buffer(device)
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or ("dry_run" if args.dry_run else "")
    stem = args.out / f"bench_loss_{device_slug(env)}{'_' + tag if tag else ''}"
    json_path = stem.with_suffix(".json")
    shapes = [bk for g in args.grid for bk in GRIDS[g]] if args.grid else [(B, K) for B in args.B for K in args.K]
    result = dict(environment=env, dry_run=args.dry_run,
                  settings=dict(vars(args), out=relative(args.out), shapes=shapes, alpha=ALPHA, lam=LAM,
                                compile_fullgraph=device.type == "cuda",
                                flush_bytes=FLUSH_BYTES if flush is not None else 0),
                  goals=list(GOALS), copy_bandwidth_gbs=None, oracle=[], rows=[], split_check=[])
    _save(json_path, result)
    print(f"device: {env['device']}; torch {env['torch']}, triton {env['triton']}; writing {relative(json_path)}",
          flush=True)
    failed = 0

    if not args.no_oracle:  # correctness first: it says whether the timings below mean anything
        for case in oracle_cases(device, args.dry_run):
            try:
                r = check_oracle(case, device, args.seed)
            except Exception as exc:  # noqa: BLE001  (recorded; the run goes on)
                r = dict(ok=False, error=_error(exc))
            result["oracle"].append(dict(case=dict(zip(("B", "K", "logits", "bank", "mode", "reduction"), case)), **r))
            failed += not r["ok"]
            _save(json_path, result)
        n = len(result["oracle"])
        print(f"oracle: {n - failed} / {n} cases match the float64 oracle", flush=True)
        for o in result["oracle"]:
            if not o["ok"]:
                print(f"  FAIL {o['case']} {o.get('error', '')}", flush=True)
    if args.oracle_only:
        write_markdown(stem.with_suffix(".md"), result)
        return 1 if failed else 0

    bw = copy_bandwidth(device, flush)
    result["copy_bandwidth_gbs"] = bw
    _save(json_path, result)
    print(f"copy bandwidth {bw:.1f} GB/s", flush=True)
    compiled = None
    if "compile_unique" in args.impls:
        import torch._dynamo as dynamo

        from alr_fast.loss.torch_fast import alr_loss_unique

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 256)  # one graph per shape
        # fullgraph on a GPU: a graph break fails the row. On a CPU (dry run) the fast path reads a flag on the
        # host by design (free there), which breaks the graph; the dry run only checks that the path runs.
        cuda = device.type == "cuda"
        compiled = torch.compile(alr_loss_unique, fullgraph=cuda, dynamic=False,
                                 backend="inductor" if cuda else "aot_eager")
    bank_dtype = DTYPES[args.bank_dtype]
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for B, K in shapes:
            for impl in args.impls:
                nbytes = model_bytes(impl, B, K, dtype, bank_dtype)
                row = dict(dtype=dname, bank_dtype=args.bank_dtype, B=B, K=K, impl=impl, model_bytes=nbytes)
                try:
                    logits, bank, index, target = make_problem(B, K, dtype, bank_dtype, device, args.seed)
                    step = make_step(impl, logits, bank, index, target, compiled)
                    step()  # compile / first call outside the checks
                    row["host_syncs"] = count_host_syncs(step, device)
                    row["step"] = time_device(step, device, args.reps, args.warmup, flush)
                    row["host_us"] = time_host(step, device, args.calls)
                    row["launches"] = count_launches(step)
                    dev = row["step"]["median"]
                    row["model_gbs"] = nbytes / (dev * 1e-6) / 1e9
                    row["copy_share"] = row["model_gbs"] / bw
                    print(f"{dname} B={B:6d} K={K:6d} {impl:15s} step {dev:9.1f} us [{row['step']['method']}] host "
                          f"{row['host_us']:8.1f} us {row['model_gbs']:8.1f} GB/s ({row['copy_share'] * 100:5.1f} %) "
                          f"launches {row['launches']} syncs {row['host_syncs']}", flush=True)
                except Exception as exc:  # noqa: BLE001  (a failed point is recorded, the grid goes on)
                    row["error"] = _error(exc)
                    failed += 1
                    print(f"{dname} B={B} K={K} {impl}: FAILED {row['error']}", flush=True)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                result["rows"].append(row)
                _save(json_path, result)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if args.split_check:
        try:
            result["split_check"].append(split_check(args, device, flush))
        except Exception as exc:  # noqa: BLE001
            result["split_check"].append(dict(error=_error(exc)))
            failed += 1
        print(f"split-K check: {result['split_check'][-1]}", flush=True)
        _save(json_path, result)
    write_markdown(stem.with_suffix(".md"), result)
    print(f"wrote {relative(stem)}.json and .md ({failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    if "--host" in sys.argv[1:] or "--dry-run" in sys.argv[1:]:
        os.environ["TRITON_INTERPRET"] = "1"  # before alr_fast.loss.triton is imported: CPU tensors / stubbable
    elif os.environ.get("TRITON_INTERPRET") == "1":
        print("NOTE: TRITON_INTERPRET=1 is set: the fused path would run in the interpreter (not a benchmark).")
    sys.exit(main())
