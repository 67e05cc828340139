"""The ALR kernels compile for a Hopper GPU (sm_90) without one, and ptxas reports no register spills.

The interpreter tests (test_kernel_alr.py) never run the Triton compiler, so a kernel that the interpreter
accepts could still fail to compile (loop-carried types, layouts). Here every specialisation family the host
function can launch is compiled ahead of time with ``triton.compile`` against a GPU target (no driver needed)
and its PTX is assembled by the ptxas that ships with triton. Runs in a subprocess because the interpreter
(TRITON_INTERPRET=1, set by conftest.py without a GPU) replaces ``@triton.jit`` at import time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

DTYPES = ("fp32", "bf16", "fp16")
BANK_DTYPES = ("fp32", "bf16", "fp16", "fp64")
REDUCTION_CODES = (0, 1, 2)  # "none", "sum", "mean"; 1 and 2 include the in-kernel "last program reduces" tail
# Every mode of the forward kernel: (REFINE, HAS_ENTROPY, DEDUP). Warm-up has no entropy term and never sorts
# (DEDUP only with refinement); lam = 0 (SELC) is refinement without the entropy term.
MODES = ((True, True, True), (True, True, False), (True, False, True), (True, False, False), (False, False, False))
# Shapes that reach every layout pick_config chooses on an H100 (132 SMs): several rows per program with few
# warps, one row per program, the largest one-sweep block, and the two-sweep path.
SHAPES = ((16384, 10), (256, 100), (16384, 1000), (1024, 8192), (1024, 32000))


def _forward_variants(full: bool) -> list[tuple]:
    """(logits, bank, REFINE, HAS_ENTROPY, DEDUP, REDUCTION, B, K). ``full``: the product of every logits
    dtype, bank dtype, mode, reduction and shape (what ``--all`` compiles for KERNEL_NOTES). Otherwise a cover
    in which every value of every axis, and every (mode, shape) and (dtype pair, one-/two-sweep) pair, occurs."""
    import itertools

    if full:
        return [(lg, bk, *mode, red, B, K) for lg, bk, mode, red, (B, K) in itertools.product(
            DTYPES, BANK_DTYPES, MODES, REDUCTION_CODES, SHAPES)]
    out = []
    pairs = list(itertools.product(DTYPES, BANK_DTYPES))
    for i, (mode, (B, K)) in enumerate(itertools.product(MODES, SHAPES)):
        lg, bk = pairs[i % len(pairs)]
        out.append((lg, bk, *mode, REDUCTION_CODES[i % 3], B, K))
    return out


FWD_VARIANTS = _forward_variants(full=False)
# Split-K (two launches): (logits, bank, REFINE, HAS_ENTROPY, REDUCTION). The second launch always ends with
# the ticket (every reduction, "none" included: the last program sums each row's chunks). Every dtype pair, and
# every (mode, reduction) pair.
SPLIT_VARIANTS = [
    (lg, bk, refine, ent, red)
    for i, (lg, bk) in enumerate((lg, bk) for lg in DTYPES for bk in BANK_DTYPES)
    for refine, ent, red in [((True, True, 2), (True, False, 0), (False, False, 1))[i % 3]]
] + [("bf16", "fp32", r, e, red) for r, e in ((True, True), (True, False), (False, False)) for red in (0, 1, 2)]


def _reduction_ordering(ptx: str) -> dict:
    """What the single-launch reduction relies on, read off the PTX (the GPU-only part of its correctness):
    the ticket is an ``atom.global.gpu.acq_rel.add`` on an integer, a ``bar.sync`` separates the partial
    stores from it, the partials are read back with L1-bypassing ``ld.global.cg``, and there is no float atomic
    anywhere (the loss sum is not order-dependent)."""
    lines = [ln.strip() for ln in ptx.splitlines()]
    atoms = [i for i, ln in enumerate(lines) if "atom." in ln or ln.startswith(("red.", "@")) and " red." in ln]
    tickets = [i for i in atoms if re.search(r"atom\.global\.gpu\.acq_rel\.add\.u32", lines[i])]
    # The out-of-range index flag: one integer atomic max, executed only when a bad index is present.
    flags = [i for i in atoms if re.search(r"atom\.global\.\S*max\.s64", lines[i])]
    float_atomics = [lines[i] for i in atoms if re.search(r"\.(?:f16|bf16|f32|f64)\b", lines[i])]
    barrier_first = True
    for i in tickets:
        last_store = max((j for j in range(i) if "st.global" in lines[j]), default=-1)
        last_bar = max((j for j in range(i) if lines[j].startswith("bar.sync")), default=-1)
        barrier_first &= last_bar > last_store
    return dict(tickets=len(tickets), index_flags=len(flags), atomics=len(atoms) - len(flags),
                float_atomics=float_atomics,
                barrier_before_ticket=barrier_first, cg_loads=len(re.findall(r"ld\.global\.cg", ptx)))


def _compile_all() -> list[dict]:
    import tempfile

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from alr_fast.loss.triton import alr_kernels as k
    from alr_fast.loss.triton import heuristics as m
    from alr_fast.loss.triton import reduction as red_mod
    from alr_fast.loss.triton import split_k as sk
    from alr_fast.loss.triton.rows import INTERPRETED

    assert not INTERPRETED
    m.num_programs_target = lambda device: 4 * 132  # pick_config as on an H100 SXM (132 SMs)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    target = GPUTarget("cuda", 90, 32)

    def build(fn, sig, constexprs, num_warps, name):
        # Pointers 16-byte aligned, as the launcher specialises them for torch allocations.
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in sig if a.endswith("_ptr")}
        sig = dict(sig, **{k: "constexpr" for k in constexprs})
        kernel = triton.compile(ASTSource(fn, sig, constexprs=constexprs, attrs=attrs), target=target,
                                options=dict(num_warps=num_warps))  # fmt: skip
        ptx = kernel.asm["ptx"]
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr  # fmt: skip
        os.unlink(f.name)
        regs = int(re.search(r"Used (\d+) registers", out).group(1))
        spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", out))
        vector = len(re.findall(r"(?:ld|st)\.global\.v\d", ptx))
        return dict(name=name, num_warps=num_warps, registers=regs, spill_bytes=spill, vector_accesses=vector,
                    ordering=_reduction_ordering(ptx))

    results = []
    full = "--all" in sys.argv
    for logits, bank, refine, entropy, dedup, red, B, K in _forward_variants(full):
        cfg = m.pick_config(B, K, torch.device("cpu"))
        sig = {
            "logits_ptr": f"*{logits}", "stride_lb": "i64", "bank_ptr": f"*{bank}", "stride_nb": "i64",
            "key_ptr": "*i64", "order_ptr": "*i64", "grad_ptr": f"*{logits}", "stride_gb": "i64",
            "loss_ptr": "*fp32", "partial_ptr": "*fp32", "counter_ptr": "*i32" if red else "*fp32",
            "nvalid_ptr": "*fp32" if red == 2 else "*i64" if red else "*fp32", "err_ptr": "*i64",
            "B": "i32", "N": "i32", "K_DIV": "i32", "alpha": "fp32", "one_minus_alpha": "fp32", "lam": "fp32",
        }  # fmt: skip
        cx = dict(REFINE=refine, HAS_ENTROPY=entropy, DEDUP=dedup, REDUCTION=red, ONE_SWEEP=cfg.one_sweep,
                  ROWS=cfg.rows, BLOCK_K=cfg.block_k, ROW_ALIGN=m.row_align(K),
                  RED_BLOCK=m.red_block(cfg.num_warps))  # fmt: skip
        results.append(build(k._alr_fwd_kernel, sig, cx, cfg.num_warps,
                             f"fwd {logits}/{bank} refine={int(refine)} ent={int(entropy)} dedup={int(dedup)} "
                             f"red={red} B={B} K={K} rows={cfg.rows} block={cfg.block_k} warps={cfg.num_warps}"))
        results[-1]["reduction"] = red
        results[-1]["forward"] = True
        # A vector access needs more than 4 bytes per aligned group: ROW_ALIGN elements of the wider dtype
        # (K = 10 gives groups of 2: bf16/bf16 rows are read 4 bytes at a time, fp32 ones as 8-byte vectors).
        size = {"fp16": 2, "bf16": 2, "fp32": 4, "fp64": 8}
        results[-1]["vector_expected"] = m.row_align(K) * max(size[logits], size[bank]) > 4
    for logits, bank, refine, entropy, red in SPLIT_VARIANTS:
        chunk, align = m.SPLIT_CHUNK, 8
        num_warps = m.split_num_warps(chunk)
        sig = {"logits_ptr": f"*{logits}", "stride_lb": "i64", "bank_ptr": f"*{bank}", "stride_nb": "i64",
               "index_ptr": "*i64", "stats_ptr": "*fp32", "N": "i32", "K_DIV": "i32", "C": "i32"}
        cx = dict(HAS_ENTROPY=entropy, CHUNK=chunk, ROW_ALIGN=align)
        results.append(build(sk._alr_split_stats_kernel, sig, cx, num_warps,
                             f"split stats {logits}/{bank} ent={int(entropy)}"))  # fmt: skip
        sig = {"logits_ptr": f"*{logits}", "stride_lb": "i64", "bank_ptr": f"*{bank}", "stride_nb": "i64",
               "index_ptr": "*i64", "stats_ptr": "*fp32", "grad_ptr": f"*{logits}", "stride_gb": "i64",
               "loss_ptr": "*fp32", "partial_ptr": "*fp32", "counter_ptr": "*i32",
               "nvalid_ptr": "*i64" if red == 2 else "*fp32", "err_ptr": "*i64", "B": "i32", "N": "i32", "K_DIV": "i32", "C": "i32", "alpha": "fp32",
               "one_minus_alpha": "fp32", "lam": "fp32"}  # fmt: skip
        cx = dict(REFINE=refine, HAS_ENTROPY=entropy, REDUCTION=red, CHUNK=chunk, C_BLOCK=64, ROW_ALIGN=align,
                  RED_BLOCK=m.red_block(num_warps))  # fmt: skip
        results.append(build(sk._alr_split_apply_kernel, sig, cx, num_warps,
                             f"split apply {logits}/{bank} refine={int(refine)} ent={int(entropy)} red={red}"))
        results[-1]["reduction"] = red
        results[-1]["split_apply"] = True
    # The "mean" pre-pass (one program counts the valid rows once per call).
    cnt = build(red_mod.count_valid_kernel, {"index_ptr": "*i64", "count_ptr": "*fp32", "B": "i32"},
                dict(BLOCK=1024), 4, "count_valid")
    results.append(cnt)
    for dt, per_row in (("bf16", True), ("fp32", False)):
        sig = {
            "grad_ptr": f"*{dt}", "stride_gb": "i64", "go_ptr": "*fp32", "stride_go": "i64",
            "prev_ptr": "*fp32", "stride_prev": "i64", "B": "i32", "K_DIV": "i32", "n_tiles_k": "i32",
            "n_tiles": "i32",
        }  # fmt: skip
        cx = dict(PER_ROW=per_row, HAS_PREV=per_row, ROWS=4, BLOCK_K=1024, ROW_ALIGN=8)
        results.append(build(k._alr_grad_scale_kernel, sig, cx, 8,
                             f"grad_scale {dt} per_row={per_row}"))  # fmt: skip
    return results


def test_kernels_compile_for_sm90_without_spills():
    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("this triton install ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(FWD_VARIANTS) + 2 * len(SPLIT_VARIANTS) + 3
    for r in results:
        assert r["spill_bytes"] == 0, r
        assert r["registers"] <= 255, r
        if r.get("vector_expected", r["name"] != "count_valid"):  # count_valid: int64 scalars, nothing to vectorise
            assert r["vector_accesses"] > 0, f"no vectorised global load/store: {r}"
        order = r["ordering"]
        assert not order["float_atomics"], r  # deterministic: no float atomics anywhere
        if r.get("reduction") or r.get("split_apply"):
            # "sum" / "mean" (and every split-K second launch): exactly one ticket atomic, fenced by a barrier,
            # partials read back with L1 bypassed
            assert order["tickets"] == 1 and order["atomics"] == 1, r
            assert order["barrier_before_ticket"] and order["cg_loads"] > 0, r
        else:
            assert order["atomics"] == 0, r
        assert order["index_flags"] == (1 if r.get("forward") or r.get("split_apply") else 0), r


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
