"""The ALR forward kernel (softmax, bank update, loss and final gradient in one pass) and the backward's
in-place gradient scaling. Built from the row helpers of ``rows.py``; reduction tail from ``reduction.py``.

Per valid row (``index >= 0``), ``z = logits[row]`` in fp32, ``p = softmax(z)``, ``t = bank[index]``:
refinement writes ``t_new = alpha t + (1 - alpha) p`` into the bank (rounded to its dtype) and its loss is
``-sum t_new log p + lam H(p)``; warm-up (``REFINE=False``) is ``-sum t log p`` with no write. The gradient
``(sum t) p - t - lam p (log p + H(p))`` is written by the forward. Design: benchmarks/KERNEL_NOTES.md.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .reduction import last_program_reduces, mean_grad_scale
from .rows import (
    finish_rows,
    load_rows,
    online_finish,
    online_init,
    online_update,
    round_to,
    row_offsets,
    row_status,
    softmax_rows,
    store_grad_rows,
    store_rows,
)


@triton.jit
def _alr_grad(p, t, logp, t_sum, ent, lam, HAS_ENTROPY: tl.constexpr):
    """``dL/dz = (sum_k t_k) p - t - lam p (log p + H(p))`` (without the entropy term: ``(sum_k t_k) p - t``)."""
    if HAS_ENTROPY:
        return t_sum[:, None] * p - t - lam * p * (logp + ent[:, None])
    else:
        return t_sum[:, None] * p - t


@triton.jit
def _alr_rows(
    logits_ptr, stride_lb, bank_ptr, stride_nb, grad_ptr, stride_gb, loss_ptr,
    row, idx, act, N, K_DIV, alpha, one_minus_alpha, lam, gscale, loss_acc,
    REFINE: tl.constexpr, HAS_ENTROPY: tl.constexpr, STORE_ROWS: tl.constexpr, ONE_SWEEP: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, ROW_ALIGN: tl.constexpr,
):  # fmt: skip
    """One row per lane: lanes ``act`` process batch row ``row`` against bank row ``idx`` (< 0: padded).

    ``gscale`` multiplies the stored gradient (``1 / n_valid`` for "mean", else 1): the gradient is final when
    the loss's ``grad_output`` is 1. An index ``>= N`` never touches the bank: its row gets a NaN loss and a
    NaN gradient (like a non-finite row). The per-lane loss (0 for padded or inactive lanes, NaN for
    non-finite or out-of-range rows) is stored with ``STORE_ROWS``; returns the program's running loss
    ``loss_acc + loss``. (The valid-row count and the out-of-range flag depend on the index only: the caller
    takes them from its keys, so nothing else is carried from one call to the next.)
    """
    valid, oob, inb = row_status(act, idx, N)
    # K = K_DIV * ROW_ALIGN tells the compiler that the column mask is constant in groups of ROW_ALIGN, so
    # loads and stores vectorise even when K is not a multiple of 16 (K=1000: groups of 8).
    K = K_DIV * ROW_ALIGN
    l_off, g_off, b_off = row_offsets(row, idx, inb, stride_lb, stride_nb, stride_gb, ROW_ALIGN)
    cols = tl.arange(0, BLOCK_K)

    if ONE_SWEEP:
        kmask = cols[None, :] < K
        lmask = inb[:, None] & kmask
        z = load_rows(logits_ptr, l_off, cols, lmask)
        t = load_rows(bank_ptr, b_off, cols, lmask)  # issued right after the logits: both loads in flight
        logp, p, nonfinite = softmax_rows(z, kmask)
        bad = nonfinite | oob
        if REFINE:
            # t_new = alpha t + (1 - alpha) p   (p detached); enters the loss in fp32, stored in the bank dtype
            t = alpha * t + one_minus_alpha * p
            store_rows(bank_ptr, b_off, cols, t, (inb & ~bad)[:, None] & kmask)
        t_sum = tl.sum(t, axis=1)
        # CE against the target: -sum_k t_k log p_k (t_k = 0 contributes exactly 0, masked columns too)
        loss = -tl.sum(tl.where(kmask, t * logp, 0.0), axis=1)
        if HAS_ENTROPY:
            # H(p) = -sum_k p_k log p_k
            ent = -tl.sum(tl.where(kmask, p * logp, 0.0), axis=1)
            loss = loss + lam * ent
        else:
            ent = tl.zeros([ROWS], tl.float32)  # not read without the entropy term
        store_grad_rows(grad_ptr, g_off, cols, kmask, _alr_grad(p, t, logp, t_sum, ent, lam, HAS_ENTROPY),
                        gscale, act, valid, bad)  # fmt: skip
    else:
        # Sweep 1: online softmax statistics per lane, and sum_k t_k.
        m_l, s_l, a_l, bad_l = online_init(ROWS, BLOCK_K)
        t_l = tl.zeros([ROWS, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            c = k0 + cols
            kmask = c[None, :] < K
            lmask = inb[:, None] & kmask
            z = load_rows(logits_ptr, l_off, c, lmask)
            t_l += load_rows(bank_ptr, b_off, c, lmask)
            m_l, s_l, a_l, bad_l = online_update(m_l, s_l, a_l, bad_l, z, kmask, HAS_ENTROPY)
        m, log_s, ent, nonfinite = online_finish(m_l, s_l, a_l, bad_l, inb, HAS_ENTROPY)
        t_sum = tl.sum(t_l, axis=1)
        bad = nonfinite | oob
        if REFINE:
            # sum_k t_new_k = alpha sum_k t_k + (1 - alpha) sum_k p_k, and sum_k p_k = 1
            t_sum = alpha * t_sum + one_minus_alpha
        # Sweep 2: bank write, loss and gradient.
        loss = tl.zeros([ROWS], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            c = k0 + cols
            kmask = c[None, :] < K
            lmask = (inb & ~bad)[:, None] & kmask
            z = load_rows(logits_ptr, l_off, c, lmask)
            t = load_rows(bank_ptr, b_off, c, lmask)
            # log p = (z - m) - log s
            logp = (z - m[:, None]) - log_s[:, None]
            p = tl.exp(logp)
            if REFINE:
                # t_new = alpha t + (1 - alpha) p   (p detached); stored in the bank dtype
                t = alpha * t + one_minus_alpha * p
                store_rows(bank_ptr, b_off, c, t, lmask)
            # -sum_k t_k log p_k
            loss -= tl.sum(tl.where(lmask, t * logp, 0.0), axis=1)
            store_grad_rows(grad_ptr, g_off, c, kmask, _alr_grad(p, t, logp, t_sum, ent, lam, HAS_ENTROPY),
                            gscale, act, valid, bad)  # fmt: skip
        if HAS_ENTROPY:
            loss = loss + lam * ent

    return finish_rows(loss, bad, valid, act, row, loss_ptr, loss_acc, STORE_ROWS)


@triton.jit
def _alr_fwd_kernel(
    logits_ptr, stride_lb, bank_ptr, stride_nb, key_ptr, order_ptr, grad_ptr, stride_gb, loss_ptr,
    partial_ptr, counter_ptr, nvalid_ptr, err_ptr, B, N, K_DIV, alpha, one_minus_alpha, lam,
    REFINE: tl.constexpr, HAS_ENTROPY: tl.constexpr, DEDUP: tl.constexpr, REDUCTION: tl.constexpr,
    ONE_SWEEP: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, ROW_ALIGN: tl.constexpr,
    RED_BLOCK: tl.constexpr,
):  # fmt: skip
    """Forward: loss, bank update, final gradient. ``key`` is the sorted index (DEDUP) or the index itself.

    REDUCTION: 0 "none" (per-row losses into ``loss_ptr[B]``), 1 "sum", 2 "mean" (the scalar loss into
    ``loss_ptr[0]`` by the last program, see :func:`~.reduction.last_program_reduces`). For "mean" every
    program loads the batch's valid-row count (``nvalid_ptr``: one scalar, counted once per call by the caller
    or a pre-pass) so that it can store the gradient already divided by ``n_valid``. An index ``>= N`` is recorded
    in ``err_ptr`` (``atomic_max`` of ``index + 1``; the host reads it where it synchronises anyway).

    DEDUP (duplicate indices chained in batch order): a lane that heads a group of equal sorted keys
    processes every occurrence of its group one after another, re-reading the bank row after each write.
    """
    pid = tl.program_id(0)
    pos = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)  # sorted positions (DEDUP) or batch rows
    in_batch = pos < B
    key = tl.load(key_ptr + pos, mask=in_batch, other=-1)
    loss_acc = tl.zeros([ROWS], tl.float32)
    gscale = mean_grad_scale(nvalid_ptr, REDUCTION == 2)
    if DEDUP:
        prev = tl.load(key_ptr + pos - 1, mask=in_batch & (pos > 0), other=-1)
        # A lane works if it heads a group of equal valid indices, or holds a padded row (zeroes its outputs).
        act = in_batch & ((key < 0) | (pos == 0) | (prev != key))
        while tl.max(act.to(tl.int32), axis=0) > 0:
            row = tl.load(order_ptr + pos, mask=act, other=0)
            loss_acc = _alr_rows(
                logits_ptr, stride_lb, bank_ptr, stride_nb, grad_ptr, stride_gb, loss_ptr,
                row, key, act, N, K_DIV, alpha, one_minus_alpha, lam, gscale, loss_acc,
                REFINE, HAS_ENTROPY, REDUCTION == 0, ONE_SWEEP, ROWS, BLOCK_K, ROW_ALIGN,
            )  # fmt: skip
            # The next occurrence of this bank row must read this occurrence's write: make the write visible
            # to every thread of the program (bar.sync orders global memory within the CTA).
            tl.debug_barrier()
            nxt = pos + 1
            nkey = tl.load(key_ptr + nxt, mask=act & (nxt < B), other=-1)
            act = act & (key >= 0) & (nkey == key)
            pos = nxt
    else:
        loss_acc = _alr_rows(
            logits_ptr, stride_lb, bank_ptr, stride_nb, grad_ptr, stride_gb, loss_ptr,
            pos, key, in_batch, N, K_DIV, alpha, one_minus_alpha, lam, gscale, loss_acc,
            REFINE, HAS_ENTROPY, REDUCTION == 0, ONE_SWEEP, ROWS, BLOCK_K, ROW_ALIGN,
        )  # fmt: skip
    # The program's valid-row count and largest out-of-range index depend on the index only: taken here from
    # the keys it loaded (each batch row's index is at exactly one position of one program, its own row or,
    # with DEDUP, its sorted position) rather than carried through the row loop, whose live state is then
    # just the loss and the positions (triton 3.6's ptxas spilled two duplicate-safe variants carrying more).
    worst_idx = tl.max(tl.where(key >= N, key, -1), axis=0)
    if worst_idx >= 0:
        tl.atomic_max(err_ptr, worst_idx + 1)  # only when a bad index is present: no cost otherwise
    if REDUCTION != 0:
        last_program_reduces(
            partial_ptr, counter_ptr, loss_ptr, tl.sum(loss_acc, axis=0),
            tl.sum((key >= 0).to(tl.float32), axis=0), REDUCTION == 2, RED_BLOCK,
        )  # fmt: skip


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
            tl.store(grad_ptr + g_off[:, None] + cols[None, :], round_to(g, grad_ptr.dtype.element_ty), mask=mask)
