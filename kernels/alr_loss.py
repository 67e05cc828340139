"""Fused ALR loss: softmax, soft-label bank update, CE + entropy loss and logits gradient in one pass.

Semantics are exactly those of :func:`alr_fast.reference.alr_loss_reference` (the specification). Per valid
row ``i`` (``index[i] >= 0``), ``z = logits[i]`` (math in fp32), ``p = softmax(z)``, ``t = bank[index[i]]``:

* refinement (``REFINE``): ``t_new = alpha t + (1 - alpha) p`` is written into ``bank[index[i]]`` (rounded to
  the bank's dtype), ``loss_i = -sum_k t_new_k log p_k + lam H(p)`` with ``t_new`` in fp32;
* warm-up (``REFINE=False``, a compile-time flag of the same kernel): ``loss_i = -sum_k t_k log p_k``, no write;
* gradient, written by the forward kernel into a gradient buffer:
  ``dL_i/dz = (sum_k t_k) p - t - lam p (log p + H(p))``. The backward only scales it by ``grad_output``
  (and ``1 / n_valid`` for ``"mean"``).

Kernel layout
-------------
One program handles ``ROWS`` batch rows (several rows per program when K is small) as a ``[ROWS, BLOCK_K]``
tile. When ``K <= BLOCK_K`` (``ONE_SWEEP``) a row is loaded once and everything is computed in registers.
Otherwise two sweeps over K in blocks of ``BLOCK_K``: the first keeps an online max / sum of ``exp(z - m)``
(and the online entropy sum and ``sum_k t_k``), the second writes the bank, the gradient and the loss. So any
K from 1 to 262,144 and beyond works; the second sweep re-reads the logits and bank row, mostly from L2.
Row offsets are ``int64`` (``row * stride`` overflows int32 once ``B*K`` or ``N*K`` exceeds 2**31), and the
logits may have any row stride (unit column stride; other layouts are copied once by the host function).

Duplicate indices
-----------------
The reference applies duplicates sequentially in batch order. GPU programs run concurrently, so two programs
writing the same bank row would race. Design: the host stable-sorts ``index`` on the device
(``torch.sort(stable=True)``: no host sync) and launches one program lane per *sorted position*. A lane that
heads a group of equal indices processes all occurrences of its group one after another, in batch order (the
sort is stable), reading the bank row back after each occurrence's write (rounded to the bank dtype, a CTA
barrier makes the write visible to every thread), exactly like the reference; follower lanes do nothing.
Each bank row therefore has exactly one writer, and the result is deterministic. A non-finite occurrence
skips its write, so it drops out of the chain just as in the reference. Padded rows (index < 0) sort first;
their lanes only zero their gradient row. Cost: the sort (a few small launches, O(B log B) on B int64 keys)
plus gathered (permuted) row reads, and a group of d duplicates is processed serially by one program.

* ``assume_unique=True`` skips the sort (one launch). With duplicate indices the bank rows, losses and
  gradients are then **undefined** (concurrent read-modify-write of the same row).
* Warm-up never writes the bank, so duplicates cannot interact and the sort is always skipped.

Launches per call
-----------------
Warm-up, or refinement with ``assume_unique=True``: **one kernel launch for every reduction** (no memset, no
second kernel); default (duplicate-safe) refinement: the sort's launches in addition. The backward is one more
launch. No host synchronisation anywhere on this path (no ``.item()``, no data-dependent Python branch).

Reductions (single pass, deterministic)
---------------------------------------
``"none"`` stores per-row losses. ``"sum"``/``"mean"`` use a "last program reduces" scheme inside the same
launch: every program stores its partial (sum of its row losses in fp32, number of its valid rows), then draws
a ticket from an int32 counter with ``atomic_add(sem="acq_rel", scope="gpu")`` after a CTA barrier; the program
that draws the last ticket loads all partials (L1 bypassed) and adds them in a fixed order in fp64, writes the
loss (``"mean"``: divided by ``max(n_valid, 1)``, so 0 when no row is valid) and the backward scale
``1 / max(n_valid, 1)``, and resets the counter to 0. The summation order does not depend on which program
finishes last, and there are no float atomics: results are bitwise identical run to run. A NaN row loss makes
the reduced loss NaN, as in the reference. The counter is cached per device and CUDA stream and a fresh one is
taken per CUDA-graph-captured call (:class:`_TicketCounters`); partials are a per-call ``torch.empty``.

Non-finite logits: a valid row with a NaN or +-inf logit gets a NaN loss and a NaN gradient row, and its bank
row is not written. Masked and non-finite elements are replaced by 0 before any arithmetic so no NaN/inf
leaks into the statistics of other rows.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import nn

from alr_fast.functional import describe, validate_inputs

__all__ = [
    "ALRLoss",
    "FusedALRFunction",
    "KernelConfig",
    "alr_forward",
    "alr_grad_scale",
    "fused_alr_loss",
    "pick_config",
    "INTERPRETED",
]

REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}

# Block-size heuristics. NOT yet timed on a GPU (no GPU in the session that wrote them). Checked only by
# compiling for sm_90 with ptxas (no spills; about 64-140 registers per thread at 8 elements per thread per
# [ROWS, BLOCK_K] tensor). Re-tune with benchmarks/bench_loss.py on the first H100/H200 run.
MAX_ONE_SWEEP_BLOCK = 8192  # K up to this is processed from registers: one read of the logits and bank row
MULTI_SWEEP_BLOCK = 4096  # block along K for the two-sweep path (K > MAX_ONE_SWEEP_BLOCK)
TILE_ELEMS = 2048  # target elements per program (ROWS * BLOCK_K) when K is small
ELEMS_PER_THREAD = 8  # num_warps = ROWS * BLOCK_K / (32 * ELEMS_PER_THREAD), clamped to [2, 32]
MAX_ROWS = 128  # most rows per program
RED_ELEMS_PER_THREAD = 4  # the last program sums 32 * num_warps * this many partials per loop step
TICKET_SLOTS = 64  # ticket counters per zeroed slab (one per CUDA stream, one per CUDA-graph capture)
TICKET_STRIDE = 32  # int32 between counters: one 128-byte line each, every slot 16-byte aligned


# ------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _round_to(x, dtype: tl.constexpr):
    """fp32 -> ``dtype``, rounding to nearest even.

    bf16 is rounded by hand (add 0x7FFF plus the lowest kept bit, drop 16 bits): the Triton interpreter
    truncates fp32 -> bf16, so a plain cast would round differently on CPU than ``cvt.rn`` on a GPU. Exact
    RNE for finite values and inf; any NaN becomes the canonical NaN. On a GPU it costs a few integer ops per
    stored element, nothing for a memory-bound kernel.
    """
    if dtype == tl.bfloat16:
        u = tl.where(x == x, x.to(tl.uint32, bitcast=True), 0x7FC00000)
        u = (u + ((u >> 16) & 1) + 0x7FFF) >> 16
        return u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _alr_rows(
    logits_ptr,
    stride_lb,
    bank_ptr,
    stride_nb,
    grad_ptr,
    stride_gb,
    loss_ptr,
    row,
    idx,
    act,
    K_DIV,
    alpha,
    one_minus_alpha,
    lam,
    REFINE: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    STORE_ROWS: tl.constexpr,
    ONE_SWEEP: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """One row per lane: lanes ``act`` process batch row ``row`` against bank row ``idx`` (< 0: padded).

    Returns the per-lane loss (0 for padded or inactive lanes, NaN for non-finite rows) and the valid mask.
    """
    valid = act & (idx >= 0)
    # int64 offsets: row * stride overflows int32 once B*K (or N*K for the bank) exceeds 2**31.
    # ROW_ALIGN (a power of two dividing K and every row stride) tells the compiler that rows start on aligned
    # elements (multiple_of) and, through K = K_DIV * ROW_ALIGN, that the column mask is constant in groups of
    # ROW_ALIGN; so loads and stores vectorise even when K is not a multiple of 16 (K=1000: groups of 8).
    K = K_DIV * ROW_ALIGN
    l_off = tl.multiple_of(row.to(tl.int64) * stride_lb, ROW_ALIGN)
    g_off = tl.multiple_of(row.to(tl.int64) * stride_gb, ROW_ALIGN)
    b_off = tl.multiple_of(tl.where(valid, idx, 0).to(tl.int64) * stride_nb, ROW_ALIGN)
    cols = tl.arange(0, BLOCK_K)

    if ONE_SWEEP:
        kmask = cols[None, :] < K
        lmask = valid[:, None] & kmask
        z = tl.load(logits_ptr + l_off[:, None] + cols[None, :], mask=lmask, other=0.0).to(tl.float32)
        finite = tl.abs(z) < float("inf")  # False for NaN and +-inf; masked elements are 0.0
        bad = tl.max(tl.where(finite, 0, 1), axis=1) > 0
        zs = tl.where(finite, z, 0.0)
        zm = tl.where(kmask, zs, float("-inf"))
        m = tl.max(zm, axis=1)
        e = tl.exp(zm - m[:, None])  # exp(z - m); exactly 0 on masked columns
        s = tl.sum(e, axis=1)
        # log p = (z - m) - log sum_k exp(z_k - m)
        logp = (zs - m[:, None]) - tl.log(s)[:, None]
        p = e / s[:, None]
        t = tl.load(bank_ptr + b_off[:, None] + cols[None, :], mask=lmask, other=0.0).to(tl.float32)
        if REFINE:
            # t_new = alpha t + (1 - alpha) p   (p detached); enters the loss in fp32, stored in the bank dtype
            t = alpha * t + one_minus_alpha * p
            wmask = (valid & ~bad)[:, None] & kmask
            tl.store(bank_ptr + b_off[:, None] + cols[None, :], _round_to(t, bank_ptr.dtype.element_ty), mask=wmask)
        t_sum = tl.sum(t, axis=1)
        # CE against the target: -sum_k t_k log p_k (t_k = 0 contributes exactly 0, masked columns too)
        loss = -tl.sum(tl.where(kmask, t * logp, 0.0), axis=1)
        if HAS_ENTROPY:
            # H(p) = -sum_k p_k log p_k
            ent = -tl.sum(tl.where(kmask, p * logp, 0.0), axis=1)
            loss = loss + lam * ent
            # dL/dz = (sum_k t_k) p - t - lam * p * (log p + H(p))
            g = t_sum[:, None] * p - t - lam * p * (logp + ent[:, None])
        else:
            # dL/dz = (sum_k t_k) p - t
            g = t_sum[:, None] * p - t
        g = tl.where(bad[:, None], float("nan"), tl.where(valid[:, None], g, 0.0))
        gmask = act[:, None] & kmask
        tl.store(grad_ptr + g_off[:, None] + cols[None, :], _round_to(g, grad_ptr.dtype.element_ty), mask=gmask)
    else:
        # Sweep 1: online max m, s = sum_k exp(z_k - m), a = sum_k exp(z_k - m) (z_k - m), sum_k t_k.
        m = tl.full([ROWS], float("-inf"), tl.float32)
        s = tl.zeros([ROWS], tl.float32)
        a = tl.zeros([ROWS], tl.float32)
        t_sum = tl.zeros([ROWS], tl.float32)
        n_bad = tl.zeros([ROWS], tl.int32)
        for k0 in range(0, K, BLOCK_K):
            c = k0 + cols
            kmask = c[None, :] < K
            lmask = valid[:, None] & kmask
            z = tl.load(logits_ptr + l_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
            finite = tl.abs(z) < float("inf")
            n_bad += tl.sum(tl.where(finite, 0, 1), axis=1)
            zs = tl.where(finite, z, 0.0)
            zm = tl.where(kmask, zs, float("-inf"))
            m_new = tl.maximum(m, tl.max(zm, axis=1))  # finite: every row has column 0
            r = tl.exp(m - m_new)  # rescales sums taken with max m to max m_new (0 on the first block)
            e = tl.exp(zm - m_new[:, None])
            if HAS_ENTROPY:
                # a(m_new) = r * (a(m) + (m - m_new) * s(m)); the guard avoids (-inf) * 0 on the first block
                shift = tl.where(s > 0.0, m - m_new, 0.0)
                a = r * (a + shift * s) + tl.sum(tl.where(kmask, e * (zs - m_new[:, None]), 0.0), axis=1)
            s = r * s + tl.sum(e, axis=1)
            m = m_new
            t = tl.load(bank_ptr + b_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
            t_sum += tl.sum(t, axis=1)
        bad = n_bad > 0
        log_s = tl.log(s)
        if REFINE:
            # sum_k t_new_k = alpha sum_k t_k + (1 - alpha) sum_k p_k, and sum_k p_k = 1
            t_sum = alpha * t_sum + one_minus_alpha
        if HAS_ENTROPY:
            # H(p) = -sum_k p_k (z_k - m - log s) = log s - a / s
            ent = log_s - a / s
        else:
            ent = tl.zeros([ROWS], tl.float32)
        # Sweep 2: bank write, loss and gradient.
        loss = tl.zeros([ROWS], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            c = k0 + cols
            kmask = c[None, :] < K
            lmask = (valid & ~bad)[:, None] & kmask
            z = tl.load(logits_ptr + l_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
            # log p = (z - m) - log s
            logp = (z - m[:, None]) - log_s[:, None]
            p = tl.exp(logp)
            t = tl.load(bank_ptr + b_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
            if REFINE:
                # t_new = alpha t + (1 - alpha) p   (p detached); stored in the bank dtype
                t = alpha * t + one_minus_alpha * p
                tl.store(bank_ptr + b_off[:, None] + c[None, :], _round_to(t, bank_ptr.dtype.element_ty), mask=lmask)
            # -sum_k t_k log p_k
            loss -= tl.sum(tl.where(kmask, t * logp, 0.0), axis=1)
            if HAS_ENTROPY:
                # dL/dz = (sum_k t_k) p - t - lam * p * (log p + H(p))
                g = t_sum[:, None] * p - t - lam * p * (logp + ent[:, None])
            else:
                # dL/dz = (sum_k t_k) p - t
                g = t_sum[:, None] * p - t
            g = tl.where(bad[:, None], float("nan"), tl.where(valid[:, None], g, 0.0))
            gmask = act[:, None] & kmask
            tl.store(grad_ptr + g_off[:, None] + c[None, :], _round_to(g, grad_ptr.dtype.element_ty), mask=gmask)
        if HAS_ENTROPY:
            loss = loss + lam * ent

    loss = tl.where(bad, float("nan"), tl.where(valid, loss, 0.0))
    if STORE_ROWS:
        tl.store(loss_ptr + row, loss, mask=act)
    return loss, valid


@triton.jit
def _alr_fwd_kernel(
    logits_ptr,
    stride_lb,
    bank_ptr,
    stride_nb,
    key_ptr,
    order_ptr,
    grad_ptr,
    stride_gb,
    loss_ptr,
    partial_ptr,
    counter_ptr,
    scale_ptr,
    B,
    K_DIV,
    alpha,
    one_minus_alpha,
    lam,
    REFINE: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    DEDUP: tl.constexpr,
    REDUCTION: tl.constexpr,
    ONE_SWEEP: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    RED_BLOCK: tl.constexpr,
):
    """Forward: loss, bank update, gradient buffer. ``key`` is the sorted index (DEDUP) or the index itself.

    REDUCTION: 0 "none" (per-row losses into ``loss_ptr[B]``, ``scale = 1``), 1 "sum", 2 "mean" (the scalar
    loss into ``loss_ptr[0]`` and ``scale`` by the last program, see :func:`_last_program_reduces`).
    """
    pid = tl.program_id(0)
    pos = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)  # sorted positions (DEDUP) or batch rows
    in_batch = pos < B
    key = tl.load(key_ptr + pos, mask=in_batch, other=-1)
    loss_acc = tl.zeros([ROWS], tl.float32)
    n_valid = tl.zeros([ROWS], tl.float32)
    if DEDUP:
        prev = tl.load(key_ptr + pos - 1, mask=in_batch & (pos > 0), other=-1)
        # A lane works if it heads a group of equal valid indices, or holds a padded row (zeroes its outputs).
        act = in_batch & ((key < 0) | (pos == 0) | (prev != key))
        while tl.max(act.to(tl.int32), axis=0) > 0:
            row = tl.load(order_ptr + pos, mask=act, other=0)
            loss, valid = _alr_rows(
                logits_ptr, stride_lb, bank_ptr, stride_nb, grad_ptr, stride_gb, loss_ptr,
                row, key, act, K_DIV, alpha, one_minus_alpha, lam,
                REFINE, HAS_ENTROPY, REDUCTION == 0, ONE_SWEEP, ROWS, BLOCK_K, ROW_ALIGN,
            )  # fmt: skip
            loss_acc += tl.where(act, loss, 0.0)
            n_valid += valid.to(tl.float32)
            # The next occurrence of this bank row must read this occurrence's write: make the write visible
            # to every thread of the program (bar.sync orders global memory within the CTA).
            tl.debug_barrier()
            nxt = pos + 1
            nkey = tl.load(key_ptr + nxt, mask=act & (nxt < B), other=-1)
            act = act & (key >= 0) & (nkey == key)
            pos = nxt
    else:
        loss, valid = _alr_rows(
            logits_ptr, stride_lb, bank_ptr, stride_nb, grad_ptr, stride_gb, loss_ptr,
            pos, key, in_batch, K_DIV, alpha, one_minus_alpha, lam,
            REFINE, HAS_ENTROPY, REDUCTION == 0, ONE_SWEEP, ROWS, BLOCK_K, ROW_ALIGN,
        )  # fmt: skip
        loss_acc += tl.where(in_batch, loss, 0.0)
        n_valid += valid.to(tl.float32)
    if REDUCTION == 0:
        if pid == 0:
            tl.store(scale_ptr, 1.0)
    else:
        _last_program_reduces(
            partial_ptr, counter_ptr, loss_ptr, scale_ptr, tl.sum(loss_acc, axis=0), tl.sum(n_valid, axis=0),
            REDUCTION == 2, RED_BLOCK,
        )  # fmt: skip


@triton.jit
def _last_program_reduces(
    partial_ptr, counter_ptr, loss_ptr, scale_ptr, loss_part, count_part, MEAN: tl.constexpr, RED_BLOCK: tl.constexpr
):
    """Deterministic single-pass grid reduction ("last program reduces"); no second launch, no float atomics.

    Every program stores its partial (sum of its row losses, number of its valid rows) in
    ``partial_ptr[pid]`` / ``partial_ptr[n_prog + pid]``, then draws a ticket from the int32 counter
    (``atomic_add``, ``sem="acq_rel"``, ``scope="gpu"``). The program that draws ticket ``n_prog - 1`` knows
    every partial is stored and visible, adds them all in a fixed order (independent of which program is
    last and of the order the programs ran in: bitwise reproducible), writes the loss (``/ max(n_valid, 1)``
    for "mean") and the backward scale, and resets the counter to 0 for the next launch on the same counter.

    Memory ordering (GPU), by the PTX memory model's causality order, which is transitive:
    partial stores (any thread of program A) -> ``bar.sync`` of A -> A's release atomic (gpu scope) ->
    read by the last program's acquire atomic on the same counter (gpu scope) -> ``bar.sync`` of the last
    program (Triton broadcasts a scalar atomic's result through shared memory between barriers) -> its loads
    of the partials, which additionally bypass L1 (``.cg``) so no stale line can be read. This is the pattern
    of CUDA's threadFenceReduction sample (store, fence, atomicInc, last block reads). No program waits for
    another, so it needs no co-residency and cannot deadlock.
    """
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    tl.store(partial_ptr + pid, loss_part)
    tl.store(partial_ptr + n_prog + pid, count_part)
    # Every thread's partial store is ordered before the (single-thread) release atomic below.
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == n_prog - 1:
        # Fixed order: lane j accumulates partials j, j + RED_BLOCK, ... in fp64, then one fixed tree sum.
        # fp64 makes the cross-program sum exact to well below fp32 resolution for any realistic grid.
        offs = tl.arange(0, RED_BLOCK)
        total = tl.zeros([RED_BLOCK], tl.float64)
        count = tl.zeros([RED_BLOCK], tl.float64)
        for i0 in range(0, n_prog, RED_BLOCK):
            o = i0 + offs
            m = o < n_prog
            total += tl.load(partial_ptr + o, mask=m, other=0.0, cache_modifier=".cg").to(tl.float64)
            if MEAN:
                count += tl.load(partial_ptr + n_prog + o, mask=m, other=0.0, cache_modifier=".cg").to(tl.float64)
        loss_sum = tl.sum(total, axis=0)  # NaN if any row loss is NaN, as in the reference
        if MEAN:
            n = tl.maximum(tl.sum(count, axis=0), 1.0)  # a batch without a valid row has loss 0
            tl.store(loss_ptr, (loss_sum / n).to(tl.float32))
            tl.store(scale_ptr, (1.0 / n).to(tl.float32))
        else:
            tl.store(loss_ptr, loss_sum.to(tl.float32))
            tl.store(scale_ptr, 1.0)
        # Every other program has taken its ticket: nothing else touches the counter in this launch. The next
        # launch on this counter starts after this one ends (same stream), so it sees 0.
        tl.store(counter_ptr, 0)


@triton.jit
def _alr_grad_scale_kernel(
    grad_ptr,
    stride_gb,
    out_ptr,
    stride_ob,
    grad_out_ptr,
    stride_go,
    scale_ptr,
    B,
    K_DIV,
    PER_ROW: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """Backward: dL/dz = grad_output (per row for "none") * scale (1/n_valid for "mean") * dL_i/dz."""
    K = K_DIV * ROW_ALIGN  # see _alr_rows: lets loads and stores vectorise
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask = rows < B
    mask = rmask[:, None] & (cols[None, :] < K)
    if PER_ROW:
        go = tl.load(grad_out_ptr + rows * stride_go, mask=rmask, other=0.0).to(tl.float32)
    else:
        go = tl.zeros([ROWS], tl.float32) + tl.load(grad_out_ptr).to(tl.float32)
    f = go * tl.load(scale_ptr)
    g_off = tl.multiple_of(rows * stride_gb, ROW_ALIGN)  # int64: rows * stride may exceed 2**31
    o_off = tl.multiple_of(rows * stride_ob, ROW_ALIGN)
    g = tl.load(grad_ptr + g_off[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    g = g * f[:, None]
    tl.store(out_ptr + o_off[:, None] + cols[None, :], _round_to(g, out_ptr.dtype.element_ty), mask=mask)


INTERPRETED = not isinstance(_alr_fwd_kernel, triton.runtime.JITFunction)
"""True when the kernels run under the Triton interpreter (TRITON_INTERPRET=1 at import): CPU tensors."""


# ----------------------------------------------------------------------------------------------- host side
class _TicketCounters:
    """Zeroed int32 ticket counters for the single-launch reduction, cached per device and CUDA stream.

    Contract: a counter is 0 when a launch starts, and the launch leaves it at 0 (its last program resets
    it). So no memset per call: one ``torch.zeros`` per slab of ``TICKET_SLOTS`` counters, the first time a
    slab is needed (first call on a device, then every ``TICKET_SLOTS`` streams / captured calls).

    * Eager: one counter per ``(device, CUDA stream)``. Launches on one stream run one after another, so they
      can share it; launches on two streams may overlap, so they get different counters.
    * Slabs are zeroed on a private stream, outside any memory pool that routes the current stream's
      allocations (torch.compile's cudagraph trees warm up in one); a stream that gets a counter first waits
      for that memset (``wait_event``: a stream dependency, not a launch; once per stream).
    * CUDA graph capture (``torch.cuda.is_current_stream_capturing()``): every captured call gets a counter of
      its own, never handed out again (the graph may be replayed on any stream, concurrently with eager work;
      4 bytes per captured call are never reclaimed). It comes from a slab zeroed *before* the capture began:
      ``torch.cuda.graph``, ``make_graphed_callables`` and the cudagraph trees all synchronise the device
      before capturing, so that memset has completed (a raw ``CUDAGraph.capture_begin`` must be preceded by
      a call outside the capture and a synchronisation). If no zeroed slot is left, the counter is a
      ``torch.zeros`` made inside the capture: the graph then holds a 4-byte memset node before the kernel
      (still correct). No synchronisation and no slab allocation happen during a capture.
    * Not supported: replaying one graph concurrently on two streams (its outputs are shared too), and
      programmatic dependent launch (the next launch on a stream must start after this one ended).
    * CPU (the Triton interpreter): one counter per device; programs run one after another.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_stream: dict[tuple, torch.Tensor] = {}
        self._free: dict[torch.device, list[tuple[torch.Tensor, object]]] = {}  # (counter, memset event)

    def get(self, device: torch.device) -> torch.Tensor:
        """The counter for a launch on ``device`` from the current stream (a ``[1]`` int32 tensor, 0 now)."""
        device = torch.device(device)
        if device.type != "cuda":
            with self._lock:
                key = (device, None)
                if key not in self._by_stream:
                    self._by_stream[key] = torch.zeros((1,), dtype=torch.int32, device=device)
                return self._by_stream[key]
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        stream = torch.cuda.current_stream(device)
        with self._lock:
            free = self._free.setdefault(device, [])
            if torch.cuda.is_current_stream_capturing():
                if not free:
                    return torch.zeros((1,), dtype=torch.int32, device=device)  # a memset node in the graph
                return free.pop()[0]  # zeroed before the capture began (the capture entry synchronised)
            key = (device, stream.cuda_stream)
            counter = self._by_stream.get(key)
            if counter is None:
                if not free:
                    side = torch.cuda.Stream(device)
                    event = torch.cuda.Event()
                    with torch.cuda.stream(side):
                        slab = torch.zeros((TICKET_SLOTS * TICKET_STRIDE,), dtype=torch.int32, device=device)
                        event.record(side)
                    last = (TICKET_SLOTS - 1) * TICKET_STRIDE
                    free.extend((slab[i : i + 1], event) for i in range(last, -1, -TICKET_STRIDE))
                counter, event = free.pop()
                stream.wait_event(event)
                self._by_stream[key] = counter
            return counter


_TICKETS = _TicketCounters()


class KernelConfig(NamedTuple):
    """Launch configuration of the forward kernel."""

    block_k: int  # power of two; the kernel sweeps K in blocks of this size
    rows: int  # batch rows per program (power of two)
    num_warps: int
    one_sweep: bool  # K <= block_k: each row is read once and processed from registers


def _num_programs_target(device: torch.device) -> int:
    """Programs wanted to fill the device: 4 per SM on a GPU; 1 under the interpreter (each costs ~5 ms)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def pick_config(
    B: int, K: int, device: torch.device, *, block_k: int = 0, rows_per_program: int = 0, num_warps: int = 0
) -> KernelConfig:
    """Block sizes and warps for a ``[B, K]`` problem; non-zero arguments override the heuristics.

    Heuristics (untimed, see benchmarks/KERNEL_NOTES.md): ``K <= 8192`` is one sweep with
    ``BLOCK_K = next_pow2(K)``; larger K sweeps twice in blocks of 4096. Small K packs several rows per program
    (about 2048 elements per tile) but keeps enough programs to fill the device. 8 elements per thread.
    """
    for name, value in (("block_k", block_k), ("rows_per_program", rows_per_program)):
        if value < 0 or (value and value & (value - 1)):
            raise ValueError(f"pick_config: {name} must be 0 (auto) or a power of two, got {value}")
    if num_warps < 0 or (num_warps and num_warps & (num_warps - 1)) or num_warps > 32:
        raise ValueError(f"pick_config: num_warps must be 0 (auto) or a power of two <= 32, got {num_warps}")
    k_pow2 = triton.next_power_of_2(max(K, 1))
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
        rows = max(1, min(TILE_ELEMS // blk, MAX_ROWS, triton.next_power_of_2(max(B, 1))))
        target = _num_programs_target(device)
        # Halve the rows per program while that leaves the device under-filled and tiles above 256 elements.
        while rows > 1 and triton.cdiv(B, rows) < target and rows * blk > 256:
            rows //= 2
    if not num_warps:
        # At least 2 warps: with one, ptxas spilled the bf16 DEDUP variant at K=100 (sm_90, triton 3.7.1).
        num_warps = max(2, min(32, (rows * blk) // (32 * ELEMS_PER_THREAD)))
    return KernelConfig(block_k=blk, rows=rows, num_warps=num_warps, one_sweep=one_sweep)


def _red_block(num_warps: int) -> int:
    """Partials the last program sums per loop step: ``RED_ELEMS_PER_THREAD`` per thread (tests shrink it)."""
    return RED_ELEMS_PER_THREAD * 32 * num_warps


def _row_align(*sizes: int) -> int:
    """Largest power of two (<= 16) dividing K and every row stride: a hint for vectorised access."""
    align = 16
    for size in sizes:
        while align > 1 and size % align:
            align //= 2
    return align


def _check_inputs(logits, bank, index, alpha, lam, reduction, where: str) -> None:
    """Raise a clear error naming the argument. Cheap (no device access): the checks every backend shares,
    then what only the kernel needs."""
    validate_inputs(logits, bank, index, alpha=alpha, lam=lam, reduction=reduction, where=where)
    if logits.dtype == torch.float64:
        raise TypeError(
            f"{where}: logits dtype torch.float64 is not supported by the fused kernel (it computes in fp32); "
            "use backend='torch' for float64"
        )
    if (bank.shape[1] > 1 and bank.stride(1) != 1) or (bank.shape[0] > 1 and bank.stride(0) == 0):
        raise ValueError(
            f"{where}: bank must have unit column stride and distinct rows (it is updated in place), got "
            f"strides {bank.stride()}"
        )
    if logits.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"{where}: tensors on {logits.device} need a CUDA device, or TRITON_INTERPRET=1 set before "
            "alr_fast.kernels is imported (the Triton interpreter, for tests)"
        )


def alr_forward(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    *,
    alpha: float,
    lam: float,
    refine: bool = True,
    reduction: str = "mean",
    assume_unique: bool = False,
    grad: torch.Tensor | None = None,
    loss_rows: torch.Tensor | None = None,
    block_k: int = 0,
    rows_per_program: int = 0,
    num_warps: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Host function of the forward kernel (no autograd): returns ``(loss, grad, scale)``; updates ``bank``.

    ``grad`` is ``dL_i/dz`` per row (unscaled) in the logits dtype; the gradient of the returned loss is
    ``grad * scale * grad_output`` (``scale`` = ``1 / n_valid`` for ``"mean"``, else 1; a ``[1]`` fp32
    tensor). Pass ``grad`` (``[B, K]``, logits dtype, unit column stride; may be ``logits`` itself) and
    ``loss_rows`` (``[B]`` fp32, ``"none"`` only) to choose the output buffers. No host synchronisation;
    one kernel launch for every reduction (plus the index sort when ``refine`` and not ``assume_unique``).
    """
    _check_inputs(logits, bank, index, alpha, lam, reduction, "alr_forward")
    B, K = logits.shape
    if logits.stride(1) != 1 and K > 1:
        if grad is not None and grad.data_ptr() == logits.data_ptr():
            raise ValueError("alr_forward: writing the gradient into logits needs logits with unit column stride")
        logits = logits.contiguous()  # one copy; any row stride is fine, a column stride is not
    if grad is None:
        grad = torch.empty((B, K), dtype=logits.dtype, device=logits.device)
    elif grad.shape != (B, K) or grad.dtype != logits.dtype or (K > 1 and grad.stride(1) != 1):
        raise ValueError(
            f"alr_forward: grad must be [{B}, {K}] of dtype {logits.dtype} with unit column stride, got "
            f"{describe(grad)} with strides {grad.stride()}"
        )
    red = REDUCTIONS[reduction]
    scale = torch.empty((1,), dtype=torch.float32, device=logits.device)
    if red == 0:
        if loss_rows is None:
            loss_rows = torch.empty((B,), dtype=torch.float32, device=logits.device)
        elif loss_rows.shape != (B,) or loss_rows.dtype != torch.float32 or not loss_rows.is_contiguous():
            raise ValueError(f"alr_forward: loss_rows must be a contiguous [{B}] float32 tensor")
        loss = loss_rows
    else:
        loss = torch.empty((), dtype=torch.float32, device=logits.device)
    if B == 0:  # static shape: nothing to launch
        loss.zero_()
        scale.fill_(1.0)
        return loss, grad, scale

    cfg = pick_config(B, K, logits.device, block_k=block_k, rows_per_program=rows_per_program, num_warps=num_warps)
    index = index.contiguous()
    dedup = bool(refine) and not assume_unique
    if dedup:
        # Stable sort on the device (no host sync): equal indices become adjacent, in batch order.
        key, order = torch.sort(index, stable=True)
    else:
        key, order = index, index  # order is unused without DEDUP
    n_prog = triton.cdiv(B, cfg.rows)
    align = _row_align(K, logits.stride(0), grad.stride(0), bank.stride(0))
    if red:
        # Per-program partials: torch.empty launches nothing (caching allocator; stream-ordered, and taken
        # from the graph's private pool under CUDA graph capture). The ticket counter must be 0 on entry:
        # a cached per-stream (per-capture) slot that the kernel leaves at 0; see _TicketCounters.
        partials = torch.empty((2 * n_prog,), dtype=torch.float32, device=logits.device)
        counter = _TICKETS.get(logits.device)
    else:
        partials = counter = scale  # unused by the kernel ("none")
    try:
        _alr_fwd_kernel[(n_prog,)](
            logits, logits.stride(0),
            bank, bank.stride(0),
            key, order,
            grad, grad.stride(0),
            loss,
            partials, counter, scale,
            B, K // align, float(alpha), 1.0 - float(alpha), float(lam),
            REFINE=bool(refine), HAS_ENTROPY=bool(refine) and float(lam) != 0.0, DEDUP=dedup, REDUCTION=red,
            ONE_SWEEP=cfg.one_sweep, ROWS=cfg.rows, BLOCK_K=cfg.block_k,
            ROW_ALIGN=align, RED_BLOCK=_red_block(cfg.num_warps),
            num_warps=cfg.num_warps,
        )  # fmt: skip
    except BaseException:
        # The interpreter runs the programs inside this call: an exception (or Ctrl-C) part-way through the
        # grid would leave the counter non-zero for the next call. On a GPU nothing has run when the launch
        # raises (a device fault mid-kernel is fatal to the CUDA context anyway).
        if red and INTERPRETED:
            counter.zero_()
        raise
    return loss, grad, scale


def alr_grad_scale(
    grad: torch.Tensor, grad_output: torch.Tensor, scale: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``out = grad * grad_output * scale`` (``grad_output`` is a scalar or ``[B]`` for ``"none"``); one launch.

    ``out`` may be ``grad`` itself (in place). Allocated contiguous in ``grad``'s dtype when not given.
    """
    B, K = grad.shape
    if out is None:
        out = torch.empty((B, K), dtype=grad.dtype, device=grad.device)
    if grad_output.dim() not in (0, 1) or (grad_output.dim() == 1 and grad_output.shape[0] != B):
        raise ValueError(f"alr_grad_scale: grad_output must be a scalar or [{B}], got {describe(grad_output)}")
    if B == 0 or K == 0:
        return out
    per_row = grad_output.dim() == 1
    blk = min(triton.next_power_of_2(K), 4096)
    rows = max(1, min(4096 // blk, triton.next_power_of_2(B)))  # ~4096 elements per program, 16 per thread
    grid = (triton.cdiv(B, rows), triton.cdiv(K, blk))
    align = _row_align(K, grad.stride(0), out.stride(0))
    _alr_grad_scale_kernel[grid](
        grad, grad.stride(0), out, out.stride(0),
        grad_output, grad_output.stride(0) if per_row else 0, scale,
        B, K // align, PER_ROW=per_row, ROWS=rows, BLOCK_K=blk, ROW_ALIGN=align,
        num_warps=max(1, min(8, rows * blk // 512)),
    )  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------ torch custom ops
# Registered so that torch.compile treats the kernels as opaque ops (with fake implementations for tracing)
# and so CUDA graphs can capture them; the bank is declared mutated. The reduction's ticket counter and
# partials are internal scratch, not arguments: partials are a fresh torch.empty per call, and the counter is
# 0 before and after every call (the launch restores it), so no state observable by the caller or by
# functionalization changes; concurrency is handled by _TicketCounters (per stream, per captured call).
@torch.library.custom_op("alr_fast::fused_alr_fwd", mutates_args=("bank",))
def _fused_alr_fwd_op(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    alpha: float,
    lam: float,
    refine: bool,
    reduction: str,
    assume_unique: bool,
    block_k: int,
    rows_per_program: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    loss, grad, scale = alr_forward(
        logits, bank, index, alpha=alpha, lam=lam, refine=refine, reduction=reduction,
        assume_unique=assume_unique, block_k=block_k, rows_per_program=rows_per_program,
    )  # fmt: skip
    return loss, grad, scale


@_fused_alr_fwd_op.register_fake
def _(logits, bank, index, alpha, lam, refine, reduction, assume_unique, block_k, rows_per_program):
    _check_inputs(logits, bank, index, alpha, lam, reduction, "fused_alr_fwd")
    B, K = logits.shape
    loss = logits.new_empty((B,) if reduction == "none" else (), dtype=torch.float32)
    return loss, logits.new_empty((B, K)), logits.new_empty((1,), dtype=torch.float32)


@torch.library.custom_op("alr_fast::fused_alr_fwd_inplace_grad", mutates_args=("logits", "bank"))
def _fused_alr_fwd_inplace_op(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    alpha: float,
    lam: float,
    refine: bool,
    reduction: str,
    assume_unique: bool,
    block_k: int,
    rows_per_program: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    loss, _, scale = alr_forward(
        logits, bank, index, alpha=alpha, lam=lam, refine=refine, reduction=reduction,
        assume_unique=assume_unique, grad=logits, block_k=block_k, rows_per_program=rows_per_program,
    )  # fmt: skip
    return loss, scale


@_fused_alr_fwd_inplace_op.register_fake
def _(logits, bank, index, alpha, lam, refine, reduction, assume_unique, block_k, rows_per_program):
    _check_inputs(logits, bank, index, alpha, lam, reduction, "fused_alr_fwd_inplace_grad")
    B = logits.shape[0]
    loss = logits.new_empty((B,) if reduction == "none" else (), dtype=torch.float32)
    return loss, logits.new_empty((1,), dtype=torch.float32)


@torch.library.custom_op("alr_fast::fused_alr_grad_scale", mutates_args=())
def _fused_alr_grad_scale_op(grad: torch.Tensor, grad_output: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return alr_grad_scale(grad, grad_output, scale)


@_fused_alr_grad_scale_op.register_fake
def _(grad, grad_output, scale):
    return grad.new_empty(grad.shape)


@torch.library.custom_op("alr_fast::fused_alr_grad_scale_inplace", mutates_args=("grad",))
def _fused_alr_grad_scale_inplace_op(grad: torch.Tensor, grad_output: torch.Tensor, scale: torch.Tensor) -> None:
    alr_grad_scale(grad, grad_output, scale, out=grad)


@_fused_alr_grad_scale_inplace_op.register_fake
def _(grad, grad_output, scale):
    return None


# ------------------------------------------------------------------------------------- autograd and public API
class FusedALRFunction(torch.autograd.Function):
    """Forward runs the fused kernel (which already writes dL_i/dz); backward only scales that buffer."""

    @staticmethod
    def forward(ctx, logits, bank, index, alpha, lam, refine, reduction, assume_unique, inplace_grad, block_k, rows):
        if inplace_grad:
            loss, scale = torch.ops.alr_fast.fused_alr_fwd_inplace_grad(
                logits, bank, index, alpha, lam, refine, reduction, assume_unique, block_k, rows
            )
            grad = logits  # the logits buffer now holds dL_i/dz
        else:
            loss, grad, scale = torch.ops.alr_fast.fused_alr_fwd(
                logits, bank, index, alpha, lam, refine, reduction, assume_unique, block_k, rows
            )
        ctx.save_for_backward(grad, scale)
        ctx.inplace_grad = inplace_grad
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        grad, scale = ctx.saved_tensors
        if ctx.inplace_grad:
            # Scaled in place: the logits buffer becomes the gradient (backward can run only once).
            torch.ops.alr_fast.fused_alr_grad_scale_inplace(grad, grad_output, scale)
            dz = grad
        else:
            # Out of place, so a retained graph can be differentiated again.
            dz = torch.ops.alr_fast.fused_alr_grad_scale(grad, grad_output, scale)
        return dz, None, None, None, None, None, None, None, None, None, None


def fused_alr_loss(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    *,
    alpha: float,
    lam: float,
    refine: bool = True,
    reduction: str = "mean",
    assume_unique: bool = False,
    inplace_grad: bool = False,
    block_k: int = 0,
    rows_per_program: int = 0,
) -> torch.Tensor:
    """Fused ALR loss (differentiable w.r.t. ``logits``); updates ``bank`` in place when ``refine``.

    Same semantics as :func:`alr_fast.reference.alr_loss_reference`. The index range is not checked here
    (that would sync): indices must be ``< bank.shape[0]`` (``alr_fast.alr_loss(check_index=True)`` checks).

    Args:
        assume_unique: skip the device sort that serialises duplicate indices: the forward is then a single
            kernel launch for every reduction. With duplicate indices the results are then undefined.
        inplace_grad: write the gradient into the logits buffer instead of a new ``[B, K]`` buffer (saves
            memory). The logits values are destroyed by the forward, so nothing else may use them afterwards
            (autograd raises if something saved them), and backward can run once.
        block_k, rows_per_program: override the block along K / rows per program (powers of two; 0 = auto).
    """
    _check_inputs(logits, bank, index, alpha, lam, reduction, "fused_alr_loss")
    if inplace_grad and logits.shape[1] > 1 and logits.stride(1) != 1:
        raise ValueError("fused_alr_loss: inplace_grad=True needs logits with unit column stride")
    return FusedALRFunction.apply(
        logits, bank, index, float(alpha), float(lam), bool(refine), reduction, bool(assume_unique),
        bool(inplace_grad), int(block_k), int(rows_per_program),
    )  # fmt: skip


class ALRLoss(nn.Module):
    """Thin module around :func:`fused_alr_loss`; the bank is passed in (it is model state owned elsewhere)."""

    def __init__(
        self,
        alpha: float,
        lam: float,
        reduction: str = "mean",
        *,
        assume_unique: bool = False,
        inplace_grad: bool = False,
    ):
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"ALRLoss: alpha must be in [0, 1], got {alpha}")
        if not float(lam) >= 0.0 or float(lam) == float("inf"):
            raise ValueError(f"ALRLoss: lam must be a finite number >= 0, got {lam}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"ALRLoss: reduction must be one of {tuple(REDUCTIONS)}, got {reduction!r}")
        self.alpha = float(alpha)
        self.lam = float(lam)
        self.reduction = reduction
        self.assume_unique = assume_unique
        self.inplace_grad = inplace_grad

    def forward(
        self, logits: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, refine: bool = True
    ) -> torch.Tensor:
        return fused_alr_loss(
            logits, bank, index, alpha=self.alpha, lam=self.lam, refine=refine, reduction=self.reduction,
            assume_unique=self.assume_unique, inplace_grad=self.inplace_grad,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lam={self.lam}, reduction={self.reduction!r}"
