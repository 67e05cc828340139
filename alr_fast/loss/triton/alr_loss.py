"""Fused ALR loss: softmax, soft-label bank update, CE + entropy loss and logits gradient in one pass.

Semantics are exactly those of :func:`alr_fast.loss.reference.alr_loss_reference` (the specification). Per valid
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

Bytes per element of forward + backward (``s_l``, ``s_b``: logits and bank element sizes; the minimum is one
read and one write of each, ``2 s_l + 2 s_b``): one sweep (``K <= 8192``) ``2 s_l + 2 s_b``; two sweeps
``3 s_l + 3 s_b``, or ``3 s_l + 2 s_b`` with ``row_sums`` (an ``[N]`` fp32 vector of the bank's row sums that
the kernel keeps exact, so the first sweep needs no bank read for ``sum_k t_k``). The backward adds nothing
when ``grad_output`` is 1.

Split-K: when K needs two sweeps and the batch alone cannot fill the GPU (fewer rows than 4 programs per SM),
each row is cut into chunks of 4096 columns with one program per (row, chunk), in two launches (chunk
statistics, then combine + write); same bytes as two sweeps. Only where no bank row is written twice in the
call (``assume_unique=True`` or warm-up), since the duplicate chain below is sequential per row.
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

import contextlib
import functools
import threading
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import nn

from alr_fast.loss.contract import REDUCTIONS as _REDUCTION_NAMES
from alr_fast.loss.contract import ALRParams, describe, validate_fused_inputs, validate_inputs

__all__ = [
    "ALRLoss",
    "FusedALRFunction",
    "KernelConfig",
    "alr_forward",
    "alr_grad_scale",
    "fused_alr_loss",
    "pick_config",
    "raise_on_bad_index",
    "split_chunk",
    "INTERPRETED",
]

REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}  # the kernel's codes for alr_fast.loss.contract.REDUCTIONS
assert set(REDUCTIONS) == set(_REDUCTION_NAMES)

# Block-size heuristics. NOT yet timed on a GPU (no GPU in the session that wrote them). Checked only by
# compiling for sm_90 with ptxas (no spills; about 64-140 registers per thread at 8 elements per thread per
# [ROWS, BLOCK_K] tensor). Re-tune with benchmarks/bench_loss.py on the first H100/H200 run.
MAX_ONE_SWEEP_BLOCK = 8192  # K up to this is processed from registers: one read of the logits and bank row
MULTI_SWEEP_BLOCK = 2048  # block along K for the two-sweep path (K > MAX_ONE_SWEEP_BLOCK)
MULTI_SWEEP_ELEMS_PER_THREAD = 4  # two-sweep path: 5 per-lane accumulators per element (ptxas: no spills)
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
def _store_grad(grad_ptr, g_off, c, kmask, p, t, logp, t_sum, ent, lam, gscale, act, valid, bad,
                HAS_ENTROPY: tl.constexpr):
    """Store ``dL/dz`` for the columns ``c`` of the lanes' rows (both sweeps of :func:`_alr_rows`): scaled by
    ``gscale``, NaN on ``bad`` rows, 0 on padded ones, written for every active lane."""
    if HAS_ENTROPY:
        # dL/dz = (sum_k t_k) p - t - lam * p * (log p + H(p))
        g = t_sum[:, None] * p - t - lam * p * (logp + ent[:, None])
    else:
        # dL/dz = (sum_k t_k) p - t
        g = t_sum[:, None] * p - t
    # The mean's 1/n_valid is folded in here, so the backward has nothing to do when grad_output is 1.
    g = tl.where(bad[:, None], float("nan"), tl.where(valid[:, None], g * gscale, 0.0))
    gmask = act[:, None] & kmask
    tl.store(grad_ptr + g_off[:, None] + c[None, :], _round_to(g, grad_ptr.dtype.element_ty), mask=gmask)


@triton.jit
def _alr_rows(
    logits_ptr,
    stride_lb,
    bank_ptr,
    stride_nb,
    grad_ptr,
    stride_gb,
    loss_ptr,
    rowsum_ptr,
    row,
    idx,
    act,
    N,
    K_DIV,
    alpha,
    one_minus_alpha,
    lam,
    gscale,
    loss_acc,
    n_valid,
    worst,
    REFINE: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    STORE_ROWS: tl.constexpr,
    ONE_SWEEP: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
    HAS_ROWSUM: tl.constexpr,
):
    """One row per lane: lanes ``act`` process batch row ``row`` against bank row ``idx`` (< 0: padded).

    ``gscale`` multiplies the stored gradient (``1 / n_valid`` for "mean", else 1): the gradient is final when
    the loss's ``grad_output`` is 1. An index ``>= N`` never touches the bank: its row gets a NaN loss and a
    NaN gradient (like a non-finite row). The per-lane loss (0 for padded or inactive lanes, NaN for
    non-finite or out-of-range rows) is stored with ``STORE_ROWS``; returns the program's running totals
    ``loss_acc + loss``, ``n_valid`` + the lanes with an index >= 0, and ``worst`` raised to the largest
    index >= N seen.

    ``HAS_ROWSUM``: ``rowsum_ptr[N]`` (fp32) holds each bank row's sum as stored. The two-sweep path then reads
    ``sum_k t_k`` from it instead of reading the bank row in its first sweep, and every bank write also stores
    the new row's sum (of the values as rounded to the bank dtype), so it stays exact.
    """
    valid = act & (idx >= 0)
    oob = valid & (idx >= N)
    inb = valid & (idx < N)  # the only rows whose logits and bank row are read
    # int64 offsets: row * stride overflows int32 once B*K (or N*K for the bank) exceeds 2**31.
    # ROW_ALIGN (a power of two dividing K and every row stride) tells the compiler that rows start on aligned
    # elements (multiple_of) and, through K = K_DIV * ROW_ALIGN, that the column mask is constant in groups of
    # ROW_ALIGN; so loads and stores vectorise even when K is not a multiple of 16 (K=1000: groups of 8).
    K = K_DIV * ROW_ALIGN
    l_off = tl.multiple_of(row.to(tl.int64) * stride_lb, ROW_ALIGN)
    g_off = tl.multiple_of(row.to(tl.int64) * stride_gb, ROW_ALIGN)
    b_off = tl.multiple_of(tl.where(inb, idx, 0).to(tl.int64) * stride_nb, ROW_ALIGN)
    cols = tl.arange(0, BLOCK_K)

    if ONE_SWEEP:
        kmask = cols[None, :] < K
        lmask = inb[:, None] & kmask
        z = tl.load(logits_ptr + l_off[:, None] + cols[None, :], mask=lmask, other=0.0).to(tl.float32)
        finite = tl.abs(z) < float("inf")  # False for NaN and +-inf; masked elements are 0.0
        bad = (tl.max(tl.where(finite, 0, 1), axis=1) > 0) | oob
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
            wmask = (inb & ~bad)[:, None] & kmask
            t_store = _round_to(t, bank_ptr.dtype.element_ty)
            tl.store(bank_ptr + b_off[:, None] + cols[None, :], t_store, mask=wmask)
            if HAS_ROWSUM:
                new_sum = tl.sum(tl.where(wmask, t_store.to(tl.float32), 0.0), axis=1)
                tl.store(rowsum_ptr + tl.where(inb, idx, 0), new_sum, mask=inb & ~bad)
        t_sum = tl.sum(t, axis=1)
        # CE against the target: -sum_k t_k log p_k (t_k = 0 contributes exactly 0, masked columns too)
        loss = -tl.sum(tl.where(kmask, t * logp, 0.0), axis=1)
        if HAS_ENTROPY:
            # H(p) = -sum_k p_k log p_k
            ent = -tl.sum(tl.where(kmask, p * logp, 0.0), axis=1)
            loss = loss + lam * ent
        else:
            ent = tl.zeros([ROWS], tl.float32)  # not read without the entropy term
        _store_grad(grad_ptr, g_off, cols, kmask, p, t, logp, t_sum, ent, lam, gscale, act, valid, bad, HAS_ENTROPY)
    else:
        # Sweep 1, per lane (no cross-thread reduction inside the loop): lane j keeps, over the columns
        # j, j + BLOCK_K, ..., a running max m_j, s_j = sum exp(z - m_j), a_j = sum exp(z - m_j) (z - m_j),
        # the sum of t and a count of non-finite logits. They are combined once after the loop.
        m_l = tl.full([ROWS, BLOCK_K], float("-inf"), tl.float32)
        s_l = tl.zeros([ROWS, BLOCK_K], tl.float32)
        a_l = tl.zeros([ROWS, BLOCK_K], tl.float32)
        t_l = tl.zeros([ROWS, BLOCK_K], tl.float32)
        bad_l = tl.zeros([ROWS, BLOCK_K], tl.int32)
        for k0 in range(0, K, BLOCK_K):
            c = k0 + cols
            kmask = c[None, :] < K
            lmask = inb[:, None] & kmask
            z = tl.load(logits_ptr + l_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
            finite = tl.abs(z) < float("inf")
            bad_l += tl.where(finite, 0, 1)
            zs = tl.where(finite, z, 0.0)
            m_new = tl.where(kmask, tl.maximum(m_l, zs), m_l)
            seen = m_new > float("-inf")  # the lane has had a column (m_new is finite)
            r = tl.where(seen, tl.exp(m_l - m_new), 0.0)  # rescales s_j, a_j from max m_l to m_new
            e = tl.where(kmask, tl.exp(zs - m_new), 0.0)
            if HAS_ENTROPY:
                # a(m_new) = r * (a(m) + (m - m_new) * s(m)); the guard avoids (-inf) * 0 on a lane's first column
                shift = tl.where(s_l > 0.0, m_l - m_new, 0.0)
                a_l = r * (a_l + shift * s_l) + e * tl.where(kmask, zs - m_new, 0.0)
            s_l = r * s_l + e
            m_l = m_new
            if not HAS_ROWSUM:
                t_l += tl.load(bank_ptr + b_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
        # One reduction across lanes per statistic: m = max_j m_j, s = sum_j s_j exp(m_j - m), etc.
        m = tl.max(m_l, axis=1)
        w = tl.where(s_l > 0.0, tl.exp(m_l - m[:, None]), 0.0)
        s = tl.sum(s_l * w, axis=1)
        if HAS_ROWSUM:
            t_sum = tl.load(rowsum_ptr + tl.where(inb, idx, 0), mask=inb, other=0.0)  # no bank read in sweep 1
        else:
            t_sum = tl.sum(t_l, axis=1)
        bad = (tl.sum(bad_l, axis=1) > 0) | oob
        m = tl.where(inb, m, 0.0)  # rows not read: any finite value (their outputs are masked below)
        s = tl.where(inb, s, 1.0)
        log_s = tl.log(s)
        if REFINE:
            # sum_k t_new_k = alpha sum_k t_k + (1 - alpha) sum_k p_k, and sum_k p_k = 1
            t_sum = alpha * t_sum + one_minus_alpha
        if HAS_ENTROPY:
            # a = sum_k exp(z_k - m) (z_k - m) = sum_j w_j (a_j + (m_j - m) s_j);  H(p) = log s - a / s
            a = tl.sum(w * (a_l + tl.where(s_l > 0.0, m_l - m[:, None], 0.0) * s_l), axis=1)
            ent = log_s - a / s
        else:
            ent = tl.zeros([ROWS], tl.float32)
        # Sweep 2: bank write, loss and gradient.
        loss = tl.zeros([ROWS], tl.float32)
        new_sum = tl.zeros([ROWS], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            c = k0 + cols
            kmask = c[None, :] < K
            lmask = (inb & ~bad)[:, None] & kmask
            z = tl.load(logits_ptr + l_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
            # log p = (z - m) - log s
            logp = (z - m[:, None]) - log_s[:, None]
            p = tl.exp(logp)
            t = tl.load(bank_ptr + b_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
            if REFINE:
                # t_new = alpha t + (1 - alpha) p   (p detached); stored in the bank dtype
                t = alpha * t + one_minus_alpha * p
                t_store = _round_to(t, bank_ptr.dtype.element_ty)
                tl.store(bank_ptr + b_off[:, None] + c[None, :], t_store, mask=lmask)
                if HAS_ROWSUM:
                    new_sum += tl.sum(tl.where(lmask, t_store.to(tl.float32), 0.0), axis=1)
            # -sum_k t_k log p_k
            loss -= tl.sum(tl.where(lmask, t * logp, 0.0), axis=1)
            _store_grad(grad_ptr, g_off, c, kmask, p, t, logp, t_sum, ent, lam, gscale, act, valid, bad, HAS_ENTROPY)
        if HAS_ENTROPY:
            loss = loss + lam * ent
        if REFINE and HAS_ROWSUM:
            tl.store(rowsum_ptr + tl.where(inb, idx, 0), new_sum, mask=inb & ~bad)

    loss = tl.where(bad, float("nan"), tl.where(valid, loss, 0.0))
    if STORE_ROWS:
        tl.store(loss_ptr + row, loss, mask=act)
    loss_acc = loss_acc + tl.where(act, loss, 0.0)
    n_valid = n_valid + valid.to(tl.float32)
    worst = tl.maximum(worst, tl.where(oob, idx, -1))
    return loss_acc, n_valid, worst


@triton.jit
def _grad_scale_of(key_ptr, B, MEAN: tl.constexpr, RED_BLOCK: tl.constexpr):
    """The factor folded into the stored gradient: ``1 / n_valid`` of the whole batch for "mean" (``B`` int64
    reads, from L2 after the first program), else 1; so dL/dz is final in the forward."""
    scale = 1.0
    if MEAN:
        offs = tl.arange(0, RED_BLOCK)
        cnt = tl.zeros([RED_BLOCK], tl.int32)
        for b0 in range(0, B, RED_BLOCK):
            o = b0 + offs
            cnt += (tl.load(key_ptr + o, mask=o < B, other=-1) >= 0).to(tl.int32)
        scale = 1.0 / tl.maximum(tl.sum(cnt, axis=0), 1).to(tl.float32)
    return scale


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
    rowsum_ptr,
    partial_ptr,
    counter_ptr,
    err_ptr,
    B,
    N,
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
    HAS_ROWSUM: tl.constexpr,
):
    """Forward: loss, bank update, final gradient. ``key`` is the sorted index (DEDUP) or the index itself.

    REDUCTION: 0 "none" (per-row losses into ``loss_ptr[B]``), 1 "sum", 2 "mean" (the scalar loss into
    ``loss_ptr[0]`` by the last program, see :func:`_last_program_reduces`). For "mean" every program first
    counts the valid rows of the whole index (``B`` int64 reads, from L2 after the first program) so that it
    can store the gradient already divided by ``n_valid``. An index ``>= N`` is recorded in ``err_ptr``
    (``atomic_max`` of ``index + 1``; the host reads it where it synchronises anyway).
    """
    pid = tl.program_id(0)
    pos = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)  # sorted positions (DEDUP) or batch rows
    in_batch = pos < B
    key = tl.load(key_ptr + pos, mask=in_batch, other=-1)
    loss_acc = tl.zeros([ROWS], tl.float32)
    n_valid = tl.zeros([ROWS], tl.float32)
    worst = tl.full([ROWS], -1, tl.int64)  # largest out-of-range index seen (-1: none)
    gscale = _grad_scale_of(key_ptr, B, REDUCTION == 2, RED_BLOCK)
    if DEDUP:
        prev = tl.load(key_ptr + pos - 1, mask=in_batch & (pos > 0), other=-1)
        # A lane works if it heads a group of equal valid indices, or holds a padded row (zeroes its outputs).
        act = in_batch & ((key < 0) | (pos == 0) | (prev != key))
        while tl.max(act.to(tl.int32), axis=0) > 0:
            row = tl.load(order_ptr + pos, mask=act, other=0)
            loss_acc, n_valid, worst = _alr_rows(
                logits_ptr, stride_lb, bank_ptr, stride_nb, grad_ptr, stride_gb, loss_ptr, rowsum_ptr,
                row, key, act, N, K_DIV, alpha, one_minus_alpha, lam, gscale, loss_acc, n_valid, worst,
                REFINE, HAS_ENTROPY, REDUCTION == 0, ONE_SWEEP, ROWS, BLOCK_K, ROW_ALIGN, HAS_ROWSUM,
            )  # fmt: skip
            # The next occurrence of this bank row must read this occurrence's write: make the write visible
            # to every thread of the program (bar.sync orders global memory within the CTA).
            tl.debug_barrier()
            nxt = pos + 1
            nkey = tl.load(key_ptr + nxt, mask=act & (nxt < B), other=-1)
            act = act & (key >= 0) & (nkey == key)
            pos = nxt
    else:
        loss_acc, n_valid, worst = _alr_rows(
            logits_ptr, stride_lb, bank_ptr, stride_nb, grad_ptr, stride_gb, loss_ptr, rowsum_ptr,
            pos, key, in_batch, N, K_DIV, alpha, one_minus_alpha, lam, gscale, loss_acc, n_valid, worst,
            REFINE, HAS_ENTROPY, REDUCTION == 0, ONE_SWEEP, ROWS, BLOCK_K, ROW_ALIGN, HAS_ROWSUM,
        )  # fmt: skip
    worst_idx = tl.max(worst, axis=0)
    if worst_idx >= 0:
        tl.atomic_max(err_ptr, worst_idx + 1)  # only when a bad index is present: no cost otherwise
    if REDUCTION != 0:
        _last_program_reduces(
            partial_ptr, counter_ptr, loss_ptr, tl.sum(loss_acc, axis=0), tl.sum(n_valid, axis=0),
            REDUCTION == 2, RED_BLOCK,
        )  # fmt: skip


@triton.jit
def _last_program_reduces(
    partial_ptr, counter_ptr, loss_ptr, loss_part, count_part, MEAN: tl.constexpr, RED_BLOCK: tl.constexpr
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
        _sum_partials(partial_ptr, n_prog, loss_ptr, MEAN, RED_BLOCK)
        # Every other program has taken its ticket: nothing else touches the counter in this launch. The next
        # launch on this counter starts after this one ends (same stream), so it sees 0.
        tl.store(counter_ptr, 0)


@triton.jit
def _sum_partials(partial_ptr, n_prog, loss_ptr, MEAN: tl.constexpr, RED_BLOCK: tl.constexpr):
    """The last program's sum of the ``n_prog`` partials (and valid-row counts for "mean") into ``loss_ptr``."""
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
    else:
        tl.store(loss_ptr, loss_sum.to(tl.float32))


@triton.jit
def _alr_grad_scale_kernel(
    grad_ptr,
    stride_gb,
    go_ptr,
    stride_go,
    prev_ptr,
    stride_prev,
    B,
    K_DIV,
    n_tiles_k,
    n_tiles,
    PER_ROW: tl.constexpr,
    HAS_PREV: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROW_ALIGN: tl.constexpr,
):
    """Backward, in place: ``grad *= grad_output / prev`` (``prev`` = the grad_output a previous backward of
    the same graph applied, else 1). The forward stored the final gradient for ``grad_output == 1``, so in the
    usual case every program loads one scalar (per row for "none"), finds the factor is 1 and returns: no
    traffic over the gradient, and no host synchronisation to decide it. A grid-stride loop over
    ``[ROWS, BLOCK_K]`` tiles keeps the grid small (a few programs per SM) whatever the shape.
    """
    K = K_DIV * ROW_ALIGN  # see _alr_rows: lets loads and stores vectorise
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows = (tile // n_tiles_k).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = (tile % n_tiles_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        rmask = rows < B
        if PER_ROW:
            f = tl.load(go_ptr + rows * stride_go, mask=rmask, other=1.0).to(tl.float32)
            if HAS_PREV:
                f = f / tl.load(prev_ptr + rows * stride_prev, mask=rmask, other=1.0).to(tl.float32)
        else:
            f = tl.zeros([ROWS], tl.float32) + tl.load(go_ptr).to(tl.float32)
            if HAS_PREV:
                f = f / tl.load(prev_ptr).to(tl.float32)
        # Early exit: nothing to do where the factor is exactly 1 (a NaN factor is != 1 and is applied).
        todo = rmask & (f != 1.0)
        if tl.max(tl.where(todo, 1, 0), axis=0) > 0:
            mask = todo[:, None] & (cols[None, :] < K)  # rows whose factor is 1 are neither read nor written
            g_off = tl.multiple_of(rows * stride_gb, ROW_ALIGN)  # int64: rows * stride may exceed 2**31
            g = tl.load(grad_ptr + g_off[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            g = g * f[:, None]
            tl.store(grad_ptr + g_off[:, None] + cols[None, :], _round_to(g, grad_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------ split-K kernels
# K too large for one row per program to fill the GPU (e.g. B = 64 rows of K = 262,144 on 132 SMs): each row
# is cut into C chunks of CHUNK columns and every (row, chunk) is a program, in two launches. The first
# stores per-chunk statistics (max m_c, s_c = sum exp(z - m_c), a_c = sum exp(z - m_c)(z - m_c), sum t,
# non-finite count); the second combines its row's C statistics (as the two-sweep path combines its lanes),
# then writes its chunk's bank update and gradient and reduces the loss with the "last program reduces"
# scheme. Used only where no bank row is read after another program's write: assume_unique=True or warm-up
# (duplicates need the sequential chain of the one-launch kernel). Bytes: the same as the two-sweep path.
SPLIT_STATS = tl.constexpr(5)  # statistics per (row, chunk)


@triton.jit
def _alr_split_stats_kernel(
    logits_ptr, stride_lb, bank_ptr, stride_nb, index_ptr, stats_ptr, N, K_DIV, C,
    HAS_ENTROPY: tl.constexpr, CHUNK: tl.constexpr, ROW_ALIGN: tl.constexpr, HAS_ROWSUM: tl.constexpr,
):
    """Launch 1 of the split-K path: statistics of chunk ``pid % C`` of row ``pid // C`` into ``stats``."""
    pid = tl.program_id(0)
    row = tl.zeros([1], tl.int64) + pid // C
    chunk = pid % C
    K = K_DIV * ROW_ALIGN
    idx = tl.load(index_ptr + row)
    inb = (idx >= 0) & (idx < N)
    c = chunk * CHUNK + tl.arange(0, CHUNK)
    lmask = inb[:, None] & (c[None, :] < K)
    l_off = tl.multiple_of(row * stride_lb, ROW_ALIGN)
    b_off = tl.multiple_of(tl.where(inb, idx, 0) * stride_nb, ROW_ALIGN)
    z = tl.load(logits_ptr + l_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
    finite = tl.abs(z) < float("inf")
    n_bad = tl.sum(tl.where(finite, 0.0, 1.0), axis=1)
    zs = tl.where(finite, z, 0.0)
    m = tl.max(tl.where(lmask, zs, float("-inf")), axis=1)
    m_safe = tl.where(m > float("-inf"), m, 0.0)
    e = tl.where(lmask, tl.exp(zs - m_safe[:, None]), 0.0)
    s = tl.sum(e, axis=1)
    if HAS_ENTROPY:
        a = tl.sum(e * tl.where(lmask, zs - m_safe[:, None], 0.0), axis=1)
    else:
        a = tl.zeros([1], tl.float32)
    if HAS_ROWSUM:
        t = tl.zeros([1], tl.float32)  # launch 2 reads sum_k t_k from rowsum: no bank read here
    else:
        t = tl.sum(tl.load(bank_ptr + b_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32), axis=1)
    out = stats_ptr + pid.to(tl.int64) * SPLIT_STATS + tl.zeros([1], tl.int64)
    tl.store(out, m)
    tl.store(out + 1, s)
    tl.store(out + 2, a)
    tl.store(out + 3, t)
    tl.store(out + 4, n_bad)


@triton.jit
def _alr_split_apply_kernel(
    logits_ptr, stride_lb, bank_ptr, stride_nb, index_ptr, stats_ptr, grad_ptr, stride_gb, loss_ptr, rowsum_ptr,
    partial_ptr, counter_ptr, err_ptr, B, N, K_DIV, C, alpha, one_minus_alpha, lam,
    REFINE: tl.constexpr, HAS_ENTROPY: tl.constexpr, REDUCTION: tl.constexpr, CHUNK: tl.constexpr,
    C_BLOCK: tl.constexpr, ROW_ALIGN: tl.constexpr, RED_BLOCK: tl.constexpr, HAS_ROWSUM: tl.constexpr,
):
    """Launch 2 of the split-K path: chunk ``pid % C`` of row ``pid // C``: bank write, gradient, loss."""
    pid = tl.program_id(0)
    row = tl.zeros([1], tl.int64) + pid // C
    chunk = pid % C
    K = K_DIV * ROW_ALIGN
    gscale = _grad_scale_of(index_ptr, B, REDUCTION == 2, RED_BLOCK)
    act = row < B
    idx = tl.load(index_ptr + row)
    valid = idx >= 0
    oob = valid & (idx >= N)
    inb = valid & (idx < N)
    # Combine the row's C chunk statistics: m = max_j m_j, s = sum_j s_j exp(m_j - m), and for H(p)
    # a = sum_j exp(m_j - m) (a_j + (m_j - m) s_j); a chunk with s_j = 0 (nothing read) contributes nothing.
    j = tl.arange(0, C_BLOCK)
    st = stats_ptr + (row[:, None] * C + j[None, :]) * SPLIT_STATS
    jm = j[None, :] < C
    m_j = tl.load(st, mask=jm, other=float("-inf"))
    s_j = tl.load(st + 1, mask=jm, other=0.0)
    m = tl.max(m_j, axis=1)
    m = tl.where(inb & (m > float("-inf")), m, 0.0)  # rows not read: any finite value (outputs masked below)
    read = s_j > 0.0
    m_j = tl.where(read, m_j, m[:, None])  # keeps exp() and differences finite on chunks that read nothing
    w = tl.where(read, tl.exp(m_j - m[:, None]), 0.0)
    s = tl.sum(s_j * w, axis=1)
    if HAS_ROWSUM:
        t_sum = tl.load(rowsum_ptr + tl.where(inb, idx, 0), mask=inb, other=0.0)
    else:
        t_sum = tl.sum(tl.load(st + 3, mask=jm, other=0.0), axis=1)
    bad = (tl.sum(tl.load(st + 4, mask=jm, other=0.0), axis=1) > 0.0) | oob
    s = tl.where(inb & (s > 0.0), s, 1.0)
    log_s = tl.log(s)
    if REFINE:
        t_sum = alpha * t_sum + one_minus_alpha  # sum_k t_new_k, since sum_k p_k = 1
    if HAS_ENTROPY:
        a_j = tl.load(st + 2, mask=jm, other=0.0)
        a = tl.sum(w * (a_j + (m_j - m[:, None]) * s_j), axis=1)
        ent = log_s - a / s
    else:
        ent = tl.zeros([1], tl.float32)
    c = chunk * CHUNK + tl.arange(0, CHUNK)
    kmask = c[None, :] < K
    lmask = (inb & ~bad)[:, None] & kmask
    l_off = tl.multiple_of(row * stride_lb, ROW_ALIGN)
    g_off = tl.multiple_of(row * stride_gb, ROW_ALIGN)
    b_off = tl.multiple_of(tl.where(inb, idx, 0) * stride_nb, ROW_ALIGN)
    z = tl.load(logits_ptr + l_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
    logp = (z - m[:, None]) - log_s[:, None]
    p = tl.exp(logp)
    t = tl.load(bank_ptr + b_off[:, None] + c[None, :], mask=lmask, other=0.0).to(tl.float32)
    new_sum = tl.zeros([1], tl.float32)
    if REFINE:
        t = alpha * t + one_minus_alpha * p
        t_store = _round_to(t, bank_ptr.dtype.element_ty)
        tl.store(bank_ptr + b_off[:, None] + c[None, :], t_store, mask=lmask)
        if HAS_ROWSUM:
            # this chunk's share of the new row sum; NaN marks a row whose sum must not be written
            new_sum = tl.where(inb & ~bad, tl.sum(tl.where(lmask, t_store.to(tl.float32), 0.0), axis=1),
                               float("nan"))
    loss = -tl.sum(tl.where(lmask, t * logp, 0.0), axis=1)
    if HAS_ENTROPY:
        loss = loss + tl.where(chunk == 0, lam * ent, 0.0)  # the row's entropy term, counted once
    _store_grad(grad_ptr, g_off, c, kmask, p, t, logp, t_sum, ent, lam, gscale, act, valid, bad, HAS_ENTROPY)
    loss = tl.where(bad, float("nan"), tl.where(valid, loss, 0.0))
    first = chunk == 0
    if first:
        worst = tl.max(tl.where(oob, idx, -1), axis=0)
        if worst >= 0:
            tl.atomic_max(err_ptr, worst + 1)
    n_valid = tl.sum(tl.where(valid & first, 1.0, 0.0), axis=0)
    _split_finish(
        partial_ptr, counter_ptr, loss_ptr, rowsum_ptr, index_ptr, tl.sum(loss, axis=0), n_valid,
        tl.sum(new_sum, axis=0), B, C, N, REDUCTION, REFINE and HAS_ROWSUM, RED_BLOCK,
    )  # fmt: skip


@triton.jit
def _split_finish(
    partial_ptr, counter_ptr, loss_ptr, rowsum_ptr, index_ptr, loss_part, count_part, sum_part, B, C, N,
    REDUCTION: tl.constexpr, ROWSUM_OUT: tl.constexpr, RED_BLOCK: tl.constexpr,
):
    """The split-K path's "last program reduces" (memory ordering as in :func:`_last_program_reduces`).

    Program ``r * C + c`` stores its chunk's loss, valid count and (``ROWSUM_OUT``) share of the new bank-row
    sum. The program drawing the last ticket writes the scalar loss ("sum"/"mean") or each row's loss, the
    sum of its C chunks in chunk order ("none"), and each written row's new sum into ``rowsum``; all in a
    fixed order (bitwise reproducible). Then it resets the counter.
    """
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    tl.store(partial_ptr + pid, loss_part)
    tl.store(partial_ptr + n_prog + pid, count_part)
    if ROWSUM_OUT:
        tl.store(partial_ptr + 2 * n_prog + pid, sum_part)
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == n_prog - 1:
        if REDUCTION != 0:
            _sum_partials(partial_ptr, n_prog, loss_ptr, REDUCTION == 2, RED_BLOCK)
        if REDUCTION == 0 or ROWSUM_OUT:
            offs = tl.arange(0, RED_BLOCK)
            for b0 in range(0, B, RED_BLOCK):
                r = b0 + offs
                rm = r < B
                base = r.to(tl.int64) * C
                acc = tl.zeros([RED_BLOCK], tl.float32)
                new_sum = tl.zeros([RED_BLOCK], tl.float32)
                for j in range(0, C):
                    if REDUCTION == 0:
                        acc += tl.load(partial_ptr + base + j, mask=rm, other=0.0, cache_modifier=".cg")
                    if ROWSUM_OUT:
                        new_sum += tl.load(partial_ptr + 2 * n_prog + base + j, mask=rm, other=0.0,
                                           cache_modifier=".cg")
                if REDUCTION == 0:
                    tl.store(loss_ptr + r, acc, mask=rm)
                if ROWSUM_OUT:
                    idx = tl.load(index_ptr + r, mask=rm, other=-1)
                    ok = rm & (idx >= 0) & (idx < N) & (new_sum == new_sum)
                    tl.store(rowsum_ptr + tl.where(ok, idx, 0), new_sum, mask=ok)
        tl.store(counter_ptr, 0)


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
        if device.type != "cuda":
            counter = self._by_stream.get((device, None))
            if counter is not None:
                return counter
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


def _cdiv(a: int, b: int) -> int:
    """Host-side ceil(a / b) on Python ints (triton.cdiv is a constexpr function: slow to call from Python)."""
    return -(-a // b)


def _next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1), on Python ints."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


class KernelConfig(NamedTuple):
    """Launch configuration of the forward kernel."""

    block_k: int  # power of two; the kernel sweeps K in blocks of this size
    rows: int  # batch rows per program (power of two)
    num_warps: int
    one_sweep: bool  # K <= block_k: each row is read once and processed from registers


@functools.lru_cache(maxsize=None)
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
    k_pow2 = _next_pow2(max(K, 1))
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
        rows = max(1, min(TILE_ELEMS // blk, MAX_ROWS, _next_pow2(max(B, 1))))
        target = _num_programs_target(device)
        # Halve the rows per program while that leaves the device under-filled and tiles above 256 elements.
        while rows > 1 and _cdiv(B, rows) < target and rows * blk > 256:
            rows //= 2
    if not num_warps:
        # At least 2 warps: with one, ptxas spilled the bf16 DEDUP variant at K=100 (sm_90, triton 3.7.1).
        # The two-sweep path keeps 5 accumulators per element: 4 elements per thread (8 spilled at K=262144).
        per_thread = ELEMS_PER_THREAD if one_sweep else MULTI_SWEEP_ELEMS_PER_THREAD
        num_warps = max(2, min(32, (rows * blk) // (32 * per_thread)))
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


def _config_for(B: int, K: int, device: torch.device, block_k: int, rows: int, num_warps: int) -> KernelConfig:
    """:func:`pick_config`, cached: a training loop sees a handful of shapes."""
    key = (B, K, device, block_k, rows, num_warps)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        cfg = _CONFIGS[key] = pick_config(B, K, device, block_k=block_k, rows_per_program=rows, num_warps=num_warps)
    return cfg


_CONFIGS: dict[tuple, KernelConfig] = {}
_NULL_CONTEXT = contextlib.nullcontext()


def _device_guard(device: torch.device):
    """Launch on the tensors' device: Triton launches on the current CUDA device and its current stream."""
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return _NULL_CONTEXT


# ---------------------------------------------------------------------------------------- out-of-range index
_BAD_INDEX: dict[torch.device, torch.Tensor] = {}


def _bad_index_flag(device: torch.device) -> torch.Tensor:
    """Per-device int64 flag: 0, or 1 + the largest index >= N any launch on the device has seen."""
    flag = _BAD_INDEX.get(device)
    if flag is None:
        flag = _BAD_INDEX[device] = torch.zeros((1,), dtype=torch.int64, device=device)
    return flag


def raise_on_bad_index(device: torch.device | str, n_rows: int | None = None) -> None:
    """Raise ``IndexError`` if a fused call on ``device`` was given an index ``>= N`` since the last check.

    Such a row never touches the bank (its loss and gradient are NaN, so the loss shows it too). Reading the
    flag synchronises the host with the device: call it where the loop synchronises anyway (logging the loss,
    the end of an epoch), not per step. The flag is reset.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    flag = _BAD_INDEX.get(device)
    if flag is None:
        return
    worst = int(flag.item())  # host sync (the caller's chosen point)
    if worst:
        flag.zero_()
        size = f" for a bank of {n_rows} rows" if n_rows is not None else ""
        raise IndexError(f"alr_loss (fused): index {worst - 1} is out of range{size}; its rows got NaN loss")


# ------------------------------------------------------------------------------------------------ launches
@functools.lru_cache(maxsize=256)
def _scale_geometry(B: int, K: int, stride: int, device: torch.device) -> tuple[int, ...]:
    """Tiles of the backward: ~4096 elements (16 per thread), a grid of at most a few programs per SM."""
    blk = min(_next_pow2(K), 4096)
    rows = max(1, min(4096 // blk, _next_pow2(B)))
    n_tk = _cdiv(K, blk)
    n_tiles = _cdiv(B, rows) * n_tk
    return blk, rows, n_tk, n_tiles, min(n_tiles, _num_programs_target(device)), _row_align(K, stride), \
        max(1, min(8, rows * blk // 512))


def _launch_grad_scale(grad: torch.Tensor, grad_output: torch.Tensor, prev: torch.Tensor | None) -> None:
    """``grad *= grad_output / prev`` in place (``prev`` None: 1); a no-op in traffic when the factor is 1."""
    B, K = grad.shape
    if B == 0:
        return
    per_row = grad_output.dim() == 1
    blk, rows, n_tk, n_tiles, n_prog, align, num_warps = _scale_geometry(B, K, grad.stride(0), grad.device)
    has_prev = prev is not None
    if not has_prev:
        prev = grad_output  # unused
    _alr_grad_scale_kernel[(n_prog,)](
        grad, grad.stride(0),
        grad_output, grad_output.stride(0) if per_row else 0,
        prev, prev.stride(0) if per_row else 0,
        B, K // align, n_tk, n_tiles,
        PER_ROW=per_row, HAS_PREV=has_prev, ROWS=rows, BLOCK_K=blk, ROW_ALIGN=align, num_warps=num_warps,
    )  # fmt: skip


def alr_forward(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    params: ALRParams,
    *,
    grad: torch.Tensor | None = None,
    loss_rows: torch.Tensor | None = None,
    block_k: int = 0,
    rows_per_program: int = 0,
    num_warps: int = 0,
    split_k: int = 0,
    row_sums: torch.Tensor | None = None,
    validated: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Host function of the forward kernel (no autograd): returns ``(loss, grad)``; updates ``bank``.

    ``grad`` is the gradient of the returned loss for ``grad_output = 1`` (for ``"mean"`` already divided by
    the number of valid rows), in the logits dtype. Pass ``grad`` (``[B, K]``, logits dtype, unit column
    stride; may be ``logits`` itself) and ``loss_rows`` (``[B]`` fp32, ``"none"`` only) to choose the output
    buffers. No host synchronisation; one kernel launch for every reduction (plus the index sort when
    ``params.refine`` and not ``params.assume_unique``). ``validated``: the caller has checked the inputs and
    the output buffers already (the autograd paths and the custom ops: the checks run once per call).
    ``split_k``: 0 picks the split-K path (two launches, one program per row chunk) where rows alone would
    leave the GPU under-filled and K needs more than one sweep (:func:`split_chunk`); a power of two forces
    chunks of that many columns, -1 turns it off. Never used when duplicates must be chained (refinement
    without ``assume_unique``).
    ``row_sums``: optional ``[N]`` fp32 tensor holding each bank row's sum (``bank.float().sum(1)``), kept
    exact by the kernel (every bank write stores the written row's new sum). With it, paths that sweep K twice
    (``K > 8192``: the two-sweep and split-K paths) read ``sum_k t_k`` from it instead of reading the bank row
    an extra time: ``B*K*s_bank`` bytes less. The caller owns it: recompute it after any write to the bank
    that does not go through this function (initialisation, loading a checkpoint, the torch backends).
    """
    if not validated:
        _check_forward_call(logits, bank, index, params, grad, loss_rows)
    if row_sums is not None:
        _check_row_sums(row_sums, bank, "alr_forward")
    with _device_guard(logits.device):  # Triton launches on the current CUDA device
        B, K = logits.shape
        device = logits.device
        if K > 1 and logits.stride(1) != 1:
            if grad is not None and grad.data_ptr() == logits.data_ptr():
                raise ValueError("alr_forward: writing the gradient into logits needs logits with unit column stride")
            logits = logits.contiguous()  # one copy; any row stride is fine, a column stride is not
        if grad is None:
            grad = torch.empty((B, K), dtype=logits.dtype, device=device)
        red = REDUCTIONS[params.reduction]
        if red == 0:
            loss = torch.empty((B,), dtype=torch.float32, device=device) if loss_rows is None else loss_rows
        else:
            loss = torch.empty((), dtype=torch.float32, device=device)
        if B == 0:  # static shape: nothing to launch
            return loss.zero_(), grad
        cfg = _config_for(B, K, device, block_k, rows_per_program, num_warps)
        dedup = params.refine and not params.assume_unique
        if dedup:
            # Stable sort on the device (no host sync): equal indices become adjacent, in batch order.
            key, order = torch.sort(index, stable=True)
        else:
            key = order = index  # order is unused without DEDUP
        align = _row_align(K, logits.stride(0), grad.stride(0), bank.stride(0))
        chunk = 0 if dedup else split_chunk(B, K, device, split_k)
        if chunk:
            _launch_split(logits, bank, index, grad, loss, params, red, chunk, align, row_sums)
            return loss, grad
        n_prog = _cdiv(B, cfg.rows)
        if red:
            # Per-program partials: torch.empty launches nothing (caching allocator; stream-ordered, and taken
            # from the graph's private pool under CUDA graph capture). The ticket counter must be 0 on entry:
            # a cached per-stream (per-capture) slot that the kernel leaves at 0; see _TicketCounters.
            partials = torch.empty((2 * n_prog,), dtype=torch.float32, device=device)
            counter = _TICKETS.get(device)
        else:
            partials = counter = loss  # unused by the kernel ("none")
        with _counter_reset_on_failure(counter if red else None):
            _alr_fwd_kernel[(n_prog,)](
                logits, logits.stride(0),
                bank, bank.stride(0),
                key, order,
                grad, grad.stride(0),
                loss, loss if row_sums is None else row_sums,
                partials, counter, _bad_index_flag(device),
                B, bank.shape[0], K // align, params.alpha, 1.0 - params.alpha, params.lam,
                REFINE=params.refine, HAS_ENTROPY=params.has_entropy, DEDUP=dedup, REDUCTION=red,
                ONE_SWEEP=cfg.one_sweep, ROWS=cfg.rows, BLOCK_K=cfg.block_k,
                ROW_ALIGN=align, RED_BLOCK=_red_block(cfg.num_warps), HAS_ROWSUM=row_sums is not None,
                num_warps=cfg.num_warps,
            )  # fmt: skip
        return loss, grad


@contextlib.contextmanager
def _counter_reset_on_failure(counter: torch.Tensor | None):
    """Around a launch that uses a ticket counter: the interpreter runs the programs inside the call, so an
    exception (or Ctrl-C) part-way through the grid would leave the counter non-zero for the next call; reset
    it then. On a GPU nothing has run when the launch raises (a device fault mid-kernel is fatal to the CUDA
    context anyway)."""
    try:
        yield
    except BaseException:
        if counter is not None and INTERPRETED:
            counter.zero_()
        raise


SPLIT_CHUNK = 4096  # columns per program on the split-K path (held in registers: 8 per thread, 16 warps)


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
    if K > MAX_ONE_SWEEP_BLOCK and B < _num_programs_target(device):
        return SPLIT_CHUNK
    return 0


def _launch_split(logits, bank, index, grad, loss, params: ALRParams, red: int, chunk: int, align: int,
                  row_sums: torch.Tensor | None) -> None:
    """The split-K path's two launches (see ``_alr_split_stats_kernel``); no host synchronisation."""
    B, K = logits.shape
    device = logits.device
    C = _cdiv(K, chunk)
    n_prog = B * C
    num_warps = max(2, min(32, chunk // (32 * ELEMS_PER_THREAD)))
    has_rowsum = row_sums is not None
    stats = torch.empty((n_prog * SPLIT_STATS.value,), dtype=torch.float32, device=device)
    partials = torch.empty((3 * n_prog,), dtype=torch.float32, device=device)
    counter = _TICKETS.get(device)
    _alr_split_stats_kernel[(n_prog,)](
        logits, logits.stride(0), bank, bank.stride(0), index, stats, bank.shape[0], K // align, C,
        HAS_ENTROPY=params.has_entropy, CHUNK=chunk, ROW_ALIGN=align, HAS_ROWSUM=has_rowsum, num_warps=num_warps,
    )  # fmt: skip
    with _counter_reset_on_failure(counter):
        _alr_split_apply_kernel[(n_prog,)](
            logits, logits.stride(0), bank, bank.stride(0), index, stats, grad, grad.stride(0), loss,
            row_sums if has_rowsum else loss, partials, counter, _bad_index_flag(device), B, bank.shape[0],
            K // align, C, params.alpha, 1.0 - params.alpha, params.lam,
            REFINE=params.refine, HAS_ENTROPY=params.has_entropy, REDUCTION=red, CHUNK=chunk,
            C_BLOCK=_next_pow2(C), ROW_ALIGN=align, RED_BLOCK=_red_block(num_warps), HAS_ROWSUM=has_rowsum,
            num_warps=num_warps,
        )  # fmt: skip


def _check_row_sums(row_sums: torch.Tensor, bank: torch.Tensor, where: str) -> None:
    N = bank.shape[0]
    if (row_sums.shape != (N,) or row_sums.dtype != torch.float32 or not row_sums.is_contiguous()
            or row_sums.device != bank.device):
        raise ValueError(
            f"{where}: row_sums must be a contiguous float32 [{N}] tensor on {bank.device} "
            f"(bank.float().sum(1)), got {describe(row_sums)}"
        )


def _check_forward_call(logits, bank, index, params: ALRParams, grad, loss_rows) -> None:
    """What :func:`alr_forward` checks unless ``validated``: the inputs and the caller's output buffers."""
    validate_inputs(logits, bank, index, where="alr_forward")
    validate_fused_inputs(logits, bank, "alr_forward")
    _check_device(logits, "alr_forward")
    B, K = logits.shape
    if grad is not None and (grad.shape != (B, K) or grad.dtype != logits.dtype or (K > 1 and grad.stride(1) != 1)):
        raise ValueError(
            f"alr_forward: grad must be [{B}, {K}] of dtype {logits.dtype} with unit column stride, got "
            f"{describe(grad)} with strides {grad.stride()}"
        )
    if loss_rows is not None and (
        params.reduction != "none" or loss_rows.shape != (B,) or loss_rows.dtype != torch.float32
        or not loss_rows.is_contiguous()
    ):
        raise ValueError(f"alr_forward: loss_rows must be a contiguous [{B}] float32 tensor (reduction='none')")


def alr_grad_scale(grad: torch.Tensor, grad_output: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
    """``grad *= grad_output / prev`` in place (``prev``: the factor a previous backward applied, default 1);
    returns ``grad``. ``grad_output`` is a scalar, or ``[B]`` for ``"none"``. One launch that returns at once
    where the factor is 1."""
    B = grad.shape[0]
    for name, t in (("grad_output", grad_output), ("prev", prev)):
        if t is not None and (t.dim() not in (0, 1) or (t.dim() == 1 and t.shape[0] != B)):
            raise ValueError(f"alr_grad_scale: {name} must be a scalar or [{B}], got {describe(t)}")
    with _device_guard(grad.device):
        _launch_grad_scale(grad, grad_output, prev)
    return grad


def _check_device(logits: torch.Tensor, where: str) -> None:
    if logits.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"{where}: tensors on {logits.device} need a CUDA device, or TRITON_INTERPRET=1 set before "
            "alr_fast.loss.triton is imported (the Triton interpreter, for tests)"
        )


def _check_inplace(logits: torch.Tensor, where: str) -> None:
    """``inplace_grad`` overwrites the logits buffer with the gradient: refuse buffers where that is wrong."""
    B, K = logits.shape
    if K > 1 and logits.stride(1) != 1:
        raise ValueError(f"{where}: inplace_grad=True needs logits with unit column stride, got {logits.stride()}")
    if B > 1 and logits.stride(0) == 0:
        raise ValueError(f"{where}: inplace_grad=True needs logits whose rows do not alias (row stride 0)")
    if logits.is_leaf and logits.requires_grad:
        raise ValueError(
            f"{where}: inplace_grad=True would overwrite a leaf tensor that requires grad (its .grad is a "
            "separate buffer); pass a network output, or use inplace_grad=False"
        )


# ------------------------------------------------------------------------------------ eager autograd (thin)
class _EagerFusedALR(torch.autograd.Function):
    """The eager path: the launches called directly (no custom-op dispatch). The forward writes the final
    gradient; the backward is one launch that returns at once when ``grad_output`` is 1 (decided on the
    device) and otherwise scales the gradient buffer in place."""

    @staticmethod
    def forward(ctx, logits, bank, index, params, inplace_grad, block_k, rows, row_sums=None):
        out = logits if inplace_grad else None
        loss, grad = alr_forward(
            logits, bank, index, params, grad=out, block_k=block_k, rows_per_program=rows, row_sums=row_sums,
            validated=True,
        )
        if inplace_grad:
            # The logits now hold the gradient: bump their version so autograd refuses a backward through
            # anything that saved them.
            torch.autograd.graph.increment_version(logits)
        ctx.save_for_backward(grad)
        ctx.prev_grad_output = None
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        # In place: the buffer becomes the gradient. A second backward of a retained graph rescales by
        # grad_output / the previous grad_output (autograd copied the first result, since the graph still held
        # the buffer). A previous grad_output of 0 cannot be undone: the second result is then NaN.
        with _device_guard(grad.device):
            _launch_grad_scale(grad, grad_output, ctx.prev_grad_output)
        ctx.prev_grad_output = grad_output
        return grad, None, None, None, None, None, None, None


# ------------------------------------------------------------------------------------------ torch custom ops
# Used only under torch.compile (torch.compiler.is_compiling()): opaque ops with fake implementations, the
# bank (and the logits for the in-place variant) declared mutated. The ticket counter, the partials and the
# bad-index flag are internal scratch, not arguments: the partials are fresh per call, the counter holds 0
# before and after every call, and the flag only ever records an error; so nothing observable by the caller
# or by functionalization changes (concurrency: _TicketCounters).
def _define_forward_op(name: str, inplace_grad: bool) -> torch.library.CustomOpDef:
    """The forward launch as a torch custom op (real and fake implementation). Custom ops take primitive
    arguments only, so :class:`ALRParams` travels as its fields and is rebuilt (cached) inside.

    ``inplace_grad`` False: returns ``(loss, grad)``, mutates ``bank``. True: writes the gradient into the
    logits buffer and returns ``loss`` only (an op output may not alias an input), mutates ``logits`` and
    ``bank``. Two ops rather than one with a flag: the mutated arguments are part of the schema, and declaring
    ``logits`` mutated on the out-of-place path would make functionalization copy it.
    """

    def forward(
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
    ):
        p = ALRParams.of(alpha, lam, refine, reduction, assume_unique)
        out = logits if inplace_grad else None
        loss, grad = alr_forward(
            logits, bank, index, p, grad=out, block_k=block_k, rows_per_program=rows_per_program, validated=True
        )
        return loss if inplace_grad else (loss, grad)

    def fake(logits, bank, index, alpha, lam, refine, reduction, *_sizes):
        B, K = logits.shape
        loss = logits.new_empty((B,) if reduction == "none" else (), dtype=torch.float32)
        return loss if inplace_grad else (loss, logits.new_empty((B, K)))

    forward.__annotations__["return"] = torch.Tensor if inplace_grad else tuple[torch.Tensor, torch.Tensor]
    mutated = ("logits", "bank") if inplace_grad else ("bank",)
    op = torch.library.custom_op(name, forward, mutates_args=mutated)
    op.register_fake(fake)
    return op


_fused_alr_fwd_op = _define_forward_op("alr_fast::fused_alr_fwd", inplace_grad=False)
_fused_alr_fwd_inplace_op = _define_forward_op("alr_fast::fused_alr_fwd_inplace_grad", inplace_grad=True)


class FusedALRFunction(torch.autograd.Function):
    """The traced path (torch.compile): the forward is a custom op that writes the final gradient; the backward
    multiplies it by ``grad_output`` with plain torch ops, which the compiler fuses with what follows."""

    @staticmethod
    def forward(ctx, logits, bank, index, alpha, lam, refine, reduction, assume_unique, inplace_grad, block_k, rows):
        if inplace_grad:
            loss = torch.ops.alr_fast.fused_alr_fwd_inplace_grad(
                logits, bank, index, alpha, lam, refine, reduction, assume_unique, block_k, rows
            )
            grad = logits  # the logits buffer now holds dL/dz
        else:
            loss, grad = torch.ops.alr_fast.fused_alr_fwd(
                logits, bank, index, alpha, lam, refine, reduction, assume_unique, block_k, rows
            )
        ctx.save_for_backward(grad)
        ctx.per_row = reduction == "none"
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        factor = grad_output[:, None] if ctx.per_row else grad_output
        dz = (grad.float() * factor).to(grad.dtype)
        return dz, None, None, None, None, None, None, None, None, None, None


# ------------------------------------------------------------------------------------------------ public API
def fused_alr_loss(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    params: ALRParams,
    *,
    inplace_grad: bool = False,
    block_k: int = 0,
    rows_per_program: int = 0,
    row_sums: torch.Tensor | None = None,
    validated: bool = False,
) -> torch.Tensor:
    """Fused ALR loss (differentiable w.r.t. ``logits``); updates ``bank`` in place when ``params.refine``.

    Same semantics as :func:`alr_fast.loss.reference.alr_loss_reference`. The index range is not checked on the
    host (that would sync): an index ``>= N`` never touches the bank, gets a NaN loss and gradient row and is
    recorded for :func:`raise_on_bad_index` (``alr_fast.alr_loss(check_index=True)`` checks before the launch).

    Args:
        params: the hyper-parameters (validated when built). With ``params.assume_unique`` the device sort
            that serialises duplicate indices is skipped: the forward is then a single kernel launch for every
            reduction, and with duplicate indices the results are undefined.
        inplace_grad: write the gradient into the logits buffer instead of a new ``[B, K]`` buffer (saves
            memory). The logits values are destroyed by the forward, so nothing else may use them afterwards
            (autograd raises if something saved them), and backward can run once. Refused for a leaf tensor
            that requires grad and for logits whose rows alias (row stride 0).
        block_k, rows_per_program: override the block along K / rows per program (powers of two; 0 = auto).
        row_sums: the bank's row sums, kept exact by the kernel (see :func:`alr_forward`): one bank read less
            per element when K > 8192. Eager mode only (not under torch.compile).
        validated: the caller has already run :func:`alr_fast.loss.contract.validate_inputs` and
            :func:`~alr_fast.loss.contract.validate_fused_inputs` (``alr_loss`` and :class:`ALRLoss` do, so the
            inputs are checked once per call).
    """
    if not validated:
        validate_inputs(logits, bank, index, where="fused_alr_loss")
        validate_fused_inputs(logits, bank, "fused_alr_loss")
    _check_device(logits, "fused_alr_loss")
    if inplace_grad:
        _check_inplace(logits, "fused_alr_loss")
    if row_sums is not None:
        _check_row_sums(row_sums, bank, "fused_alr_loss")
    if torch.compiler.is_compiling():
        if row_sums is not None:
            raise NotImplementedError("fused_alr_loss: row_sums is not supported under torch.compile")
        return FusedALRFunction.apply(
            logits, bank, index, params.alpha, params.lam, params.refine, params.reduction, params.assume_unique,
            bool(inplace_grad), int(block_k), int(rows_per_program),
        )  # fmt: skip
    with _device_guard(logits.device):
        return _EagerFusedALR.apply(
            logits, bank, index, params, bool(inplace_grad), block_k, rows_per_program, row_sums
        )


class ALRLoss(nn.Module):
    """Thin module around the fused loss; the bank is passed in (it is model state owned elsewhere)."""

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
        self.params = ALRParams(alpha, lam, True, reduction, assume_unique)  # validated here, once
        self.warmup_params = ALRParams(alpha, lam, False, reduction, assume_unique)
        self.inplace_grad = inplace_grad

    def forward(
        self, logits: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, refine: bool = True
    ) -> torch.Tensor:
        validate_inputs(logits, bank, index, where="ALRLoss")
        validate_fused_inputs(logits, bank, "ALRLoss")
        params = self.params if refine else self.warmup_params
        return fused_alr_loss(logits, bank, index, params, inplace_grad=self.inplace_grad, validated=True)

    def extra_repr(self) -> str:
        p = self.params
        return f"alpha={p.alpha}, lam={p.lam}, reduction={p.reduction!r}"
