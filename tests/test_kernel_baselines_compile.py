"""The baselines' kernels (alr_fast/loss/triton/baselines.py) compile for a Hopper GPU (sm_90) without one, and
ptxas reports no register spills: the interpreter tests never run the Triton compiler. Same method as
test_kernel_compile.py (triton.compile against a GPU target, the PTX assembled by triton's ptxas), in a
subprocess without TRITON_INTERPRET."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("triton")

# (method code, logits dtype, K): every method, both common logits dtypes, the smallest, a middle and the widest tile (MAX_K)
STATELESS = [(m, dt, k) for m in (0, 1, 2) for dt, k in (("fp32", 10), ("bf16", 1000), ("bf16", 4096))]
ELR = [(refine, dt, bank, k) for refine, dt, bank, k in
       ((True, "fp32", "fp32", 10), (True, "bf16", "bf16", 1000), (True, "bf16", "fp32", 4096),
        (False, "fp32", "fp32", 100))]


def _compile_all() -> list[dict]:
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from alr_fast.loss.triton import baselines as b
    from alr_fast.loss.triton.rows import INTERPRETED

    assert not INTERPRETED
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    target = GPUTarget("cuda", 90, 32)

    def build(fn, sig, constexprs, num_warps, name):
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in sig if a.endswith("_ptr")}
        sig = dict(sig, **{k: "constexpr" for k in constexprs})
        kernel = triton.compile(ASTSource(fn, sig, constexprs=constexprs, attrs=attrs), target=target,
                                options=dict(num_warps=num_warps))
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(kernel.asm["ptx"])
        out = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
        os.unlink(f.name)
        spill = sum(int(x) for x in re.findall(r"(\d+) bytes spill (?:stores|loads)", out))
        return dict(name=name, registers=int(re.search(r"Used (\d+) registers", out).group(1)), spill_bytes=spill)

    results = []
    for method, dt, k in STATELESS:
        block, rows, warps = b._tile(k)
        sig = {"z_ptr": f"*{dt}", "y_ptr": "*i64", "g_ptr": f"*{dt}", "loss_ptr": "*fp32", "B": "i32", "K": "i32",
               "stride_zb": "i64", "stride_gb": "i64", "c1": "fp32", "c2": "fp32", "c3": "fp32"}
        results.append(build(b._stateless_kernel, sig, dict(METHOD=method, ROWS=rows, BLOCK=block), warps,
                             f"stateless method={method} {dt} K={k}"))
    for refine, dt, bank, k in ELR:
        block, rows, warps = b._tile(k)
        sig = {"z_ptr": f"*{dt}", "bank_ptr": f"*{bank}", "idx_ptr": "*i64", "y_ptr": "*i64", "g_ptr": f"*{dt}",
               "loss_ptr": "*fp32", "B": "i32", "K": "i32", "N": "i32", "stride_zb": "i64", "stride_nb": "i64",
               "stride_gb": "i64", "beta": "fp32", "lam": "fp32", "eps": "fp32"}
        results.append(build(b._elr_kernel, sig, dict(REFINE=refine, ROWS=rows, BLOCK=block), warps,
                             f"elr refine={refine} {dt}/{bank} K={k}"))
    return results


def test_baseline_kernels_compile_for_sm90_without_spills():
    import triton

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("this triton install ships no ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(STATELESS) + len(ELR)
    for r in results:
        assert r["spill_bytes"] == 0 and r["registers"] <= 255, r


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
