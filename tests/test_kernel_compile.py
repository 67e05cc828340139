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

# (logits, bank, REFINE, HAS_ENTROPY, DEDUP, REDUCTION, B, K, block_k): the launch config comes from
# pick_config exactly as the host function picks it on an H100 (132 SMs).
FWD_VARIANTS = [
    ("fp32", "fp32", True, True, True, 2, 16384, 10, 0),
    ("bf16", "bf16", True, True, True, 2, 16384, 100, 0),
    ("bf16", "fp32", True, True, True, 2, 256, 100, 0),  # few rows per program, 2 warps
    ("fp32", "bf16", True, True, True, 0, 4096, 14, 0),
    ("fp16", "fp32", True, False, False, 0, 16384, 1000, 0),
    ("bf16", "fp64", False, False, False, 1, 16384, 1000, 0),
    ("fp32", "fp16", True, True, True, 0, 1024, 8192, 0),
    ("bf16", "bf16", True, True, True, 2, 1024, 32000, 0),
    ("fp32", "fp32", False, False, False, 2, 64, 262144, 0),
]


def _compile_all() -> list[dict]:
    import tempfile

    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from alr_fast.kernels import alr_loss as m

    assert not m.INTERPRETED
    m._num_programs_target = lambda device: 4 * 132  # pick_config as on an H100 SXM (132 SMs)
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
        return dict(name=name, num_warps=num_warps, registers=regs, spill_bytes=spill, vector_accesses=vector)

    results = []
    for logits, bank, refine, entropy, dedup, red, B, K, block_k in FWD_VARIANTS:
        cfg = m.pick_config(B, K, torch.device("cpu"), block_k=block_k)
        sig = {
            "logits_ptr": f"*{logits}", "stride_lb": "i64", "bank_ptr": f"*{bank}", "stride_nb": "i64",
            "key_ptr": "*i64", "order_ptr": "*i64", "grad_ptr": f"*{logits}", "stride_gb": "i64",
            "loss_rows_ptr": "*fp32", "partial_ptr": "*fp32", "scale_ptr": "*fp32",
            "B": "i32", "K_DIV": "i32", "alpha": "fp32", "one_minus_alpha": "fp32", "lam": "fp32",
        }  # fmt: skip
        cx = dict(REFINE=refine, HAS_ENTROPY=entropy, DEDUP=dedup, REDUCTION=red, ONE_SWEEP=cfg.one_sweep,
                  ROWS=cfg.rows, BLOCK_K=cfg.block_k, ROW_ALIGN=m._row_align(K))  # fmt: skip
        results.append(build(m._alr_fwd_kernel, sig, cx, cfg.num_warps, f"fwd {logits}/{bank} K={K} {cfg}"))
    sig = {"partial_ptr": "*fp32", "loss_ptr": "*fp32", "scale_ptr": "*fp32", "n_partials": "i32"}
    results.append(build(m._alr_reduce_kernel, sig, dict(MEAN=True, BLOCK=m.REDUCE_BLOCK), 4, "reduce"))
    for dt, per_row in (("bf16", True), ("fp32", False)):
        sig = {
            "grad_ptr": f"*{dt}", "stride_gb": "i64", "out_ptr": f"*{dt}", "stride_ob": "i64",
            "grad_out_ptr": "*fp32", "stride_go": "i64", "scale_ptr": "*fp32", "B": "i32", "K_DIV": "i32",
        }  # fmt: skip
        cx = dict(PER_ROW=per_row, ROWS=4, BLOCK_K=1024, ROW_ALIGN=8)
        results.append(build(m._alr_grad_scale_kernel, sig, cx, 8,
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
    assert len(results) == len(FWD_VARIANTS) + 3
    for r in results:
        assert r["spill_bytes"] == 0, r
        assert r["registers"] <= 255, r
        if r["name"] != "reduce":  # K=10 rows are 40 bytes: still 2 x 8-byte vectors per row
            assert r["vector_accesses"] > 0, f"no vectorised global load/store: {r}"


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
