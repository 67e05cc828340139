"""Launch configuration of the fused kernels: block sizes, rows per program, warps, split-K choice.

Untimed on a GPU (see benchmarks/KERNEL_NOTES.md, "Block sizes"): checked only by compiling for sm_90 with
ptxas (tests/test_kernel_compile.py reports registers and spills per variant). Re-tune with
benchmarks/bench_loss.py on the first H100/H200 run. Plain Python: no triton import.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

MAX_ONE_SWEEP_BLOCK = 8192  # K up to this is processed from registers: one read of the logits and bank row
MULTI_SWEEP_BLOCK = 2048  # block along K for the two-sweep path (K > MAX_ONE_SWEEP_BLOCK)
MULTI_SWEEP_ELEMS_PER_THREAD = 4  # two-sweep path: 5 per-lane accumulators per element (ptxas: no spills)
TILE_ELEMS = 2048  # target elements per program (ROWS * BLOCK_K) when K is small
ELEMS_PER_THREAD = 8  # num_warps = ROWS * BLOCK_K / (32 * ELEMS_PER_THREAD), clamped to [2, 32]
MAX_ROWS = 128  # most rows per program
RED_ELEMS_PER_THREAD = 4  # the last program sums 32 * num_warps * this many partials per loop step
SPLIT_CHUNK = 4096  # columns per program on the split-K path (held in registers)
# Split-K: 16 columns per thread (8 warps for a 4096 chunk). At 8 per thread (16 warps) ptxas (triton 3.7.1,
# sm_90) spilled the bf16-logits / fp32-bank apply kernel without the entropy term (4-12 bytes); at 16 per
# thread no split variant spills (at most 123 registers; tests/test_kernel_compile.py).
SPLIT_ELEMS_PER_THREAD = 16


def cdiv(a: int, b: int) -> int:
    """Host-side ceil(a / b) on Python ints (triton.cdiv is a constexpr function: slow to call from Python)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1), on Python ints."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


class KernelConfig(NamedTuple):
    """Launch configuration of the forward kernel."""

    block_k: int  # power of two; the kernel sweeps K in blocks of this size
    rows: int  # batch rows per program (power of two)
    num_warps: int
    one_sweep: bool  # K <= block_k: each row is read once and processed from registers


@functools.lru_cache(maxsize=None)
def num_programs_target(device: torch.device) -> int:
    """Programs wanted to fill the device: 4 per SM on a GPU; 1 under the interpreter (each costs ~5 ms)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def pick_config(
    B: int, K: int, device: torch.device, *, block_k: int = 0, rows_per_program: int = 0, num_warps: int = 0
) -> KernelConfig:
    """Block sizes and warps for a ``[B, K]`` problem; non-zero arguments override the heuristics.

    Heuristics (untimed, see benchmarks/KERNEL_NOTES.md): ``K <= 8192`` is one sweep with
    ``BLOCK_K = next_pow2(K)``; larger K sweeps twice in blocks of 2048. Small K packs several rows per program
    (about 2048 elements per tile) but keeps enough programs to fill the device. 8 elements per thread.
    """
    for name, value in (("block_k", block_k), ("rows_per_program", rows_per_program)):
        if value < 0 or (value and value & (value - 1)):
            raise ValueError(f"pick_config: {name} must be 0 (auto) or a power of two, got {value}")
    if num_warps < 0 or (num_warps and num_warps & (num_warps - 1)) or num_warps > 32:
        raise ValueError(f"pick_config: num_warps must be 0 (auto) or a power of two <= 32, got {num_warps}")
    k_pow2 = next_pow2(max(K, 1))
    if block_k:
        blk = min(block_k, k_pow2)
    else:
        blk = k_pow2 if k_pow2 <= MAX_ONE_SWEEP_BLOCK else MULTI_SWEEP_BLOCK
    one_sweep = blk >= K
    if rows_per_program:
        rows = rows_per_program
    elif not one_sweep:
        rows = 1
    else:
        rows = max(1, min(TILE_ELEMS // blk, MAX_ROWS, next_pow2(max(B, 1))))
        target = num_programs_target(device)
        # Halve the rows per program while that leaves the device under-filled and tiles above 256 elements.
        while rows > 1 and cdiv(B, rows) < target and rows * blk > 256:
            rows //= 2
    if not num_warps:
        # At least 2 warps: with one, ptxas spilled the bf16 DEDUP variant at K=100 (sm_90, triton 3.7.1).
        # The two-sweep path keeps 5 accumulators per element: 4 elements per thread (8 spilled at K=262144).
        per_thread = ELEMS_PER_THREAD if one_sweep else MULTI_SWEEP_ELEMS_PER_THREAD
        num_warps = max(2, min(32, (rows * blk) // (32 * per_thread)))
    return KernelConfig(block_k=blk, rows=rows, num_warps=num_warps, one_sweep=one_sweep)


_CONFIGS: dict[tuple, KernelConfig] = {}


def config_for(B: int, K: int, device: torch.device, block_k: int, rows: int, num_warps: int) -> KernelConfig:
    """:func:`pick_config`, cached: a training loop sees a handful of shapes."""
    key = (B, K, device, block_k, rows, num_warps)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = _CONFIGS[key] = pick_config(B, K, device, block_k=block_k, rows_per_program=rows, num_warps=num_warps)
    return cfg


def red_block(num_warps: int) -> int:
    """Partials the last program sums per loop step: ``RED_ELEMS_PER_THREAD`` per thread (tests shrink it)."""
    return RED_ELEMS_PER_THREAD * 32 * num_warps


def row_align(*sizes: int) -> int:
    """Largest power of two (<= 16) dividing K and every row stride: a hint for vectorised access."""
    align = 16
    for size in sizes:
        while align > 1 and size % align:
            align //= 2
    return align


def split_num_warps(chunk: int) -> int:
    """Warps of both split-K launches for chunks of ``chunk`` columns."""
    return max(2, min(32, chunk // (32 * SPLIT_ELEMS_PER_THREAD)))


def split_chunk(B: int, K: int, device: torch.device, split_k: int = 0) -> int:
    """Columns per program of the split-K path, or 0 for the one-launch kernel.

    ``split_k`` 0 (auto): split when K needs the two-sweep path (``K > MAX_ONE_SWEEP_BLOCK``) and one program
    per row would leave the device under-filled (``B`` below the programs wanted, 4 per SM; never under the
    interpreter, where that target is 1). A power of two: chunks of that size. -1: never.
    """
    if split_k < 0:
        return 0
    if split_k:
        if split_k & (split_k - 1):
            raise ValueError(f"alr_forward: split_k must be 0 (auto), -1 (off) or a power of two, got {split_k}")
        return split_k
    if K > MAX_ONE_SWEEP_BLOCK and B < num_programs_target(device):
        return SPLIT_CHUNK
    return 0
