"""Split-K: the fused ALR forward for few rows of a large K, in two launches of one program per (row, chunk).

When K needs two sweeps (``K > 8192``) and the batch alone cannot fill the GPU (fewer rows than 4 programs
per SM), each row is cut into chunks of ``CHUNK`` columns. Launch 1 stores per-chunk statistics (max ``m_c``,
``s_c = sum exp(z - m_c)``, ``a_c = sum exp(z - m_c)(z - m_c)``, ``sum t``, non-finite count); launch 2
combines its row's C statistics, then writes its chunk's bank update and gradient, and the last program (ticket)
reduces the loss. Same bytes as the two-sweep path. Used only where no bank row is read after another
program's write: ``assume_unique=True`` or warm-up (duplicates need the one-launch kernel's sequential chain).
The case it serves: a bank over a label set larger than 8,192 classes (ImageNet-21k, 21,841 classes, through
the ImageFolder reader) at a per-GPU batch below 4 x SMs (528 rows on an H200); its speed-up over the
two-sweep path is not yet measured (benchmarks/bench_loss.py's "large_k" rows measure both).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from alr_fast.loss.contract import ALRParams

from . import heuristics as H
from .reduction import TICKETS, counter_reset_on_failure, mean_grad_scale, sum_partials
from .rows import load_rows, row_offsets, row_status, store_grad_rows, store_rows

SPLIT_STATS = tl.constexpr(5)  # statistics per (row, chunk)


@triton.jit
def _alr_split_stats_kernel(
    logits_ptr, stride_lb, bank_ptr, stride_nb, index_ptr, stats_ptr, N, K_DIV, C,
    HAS_ENTROPY: tl.constexpr, CHUNK: tl.constexpr, ROW_ALIGN: tl.constexpr,
):  # fmt: skip
    """Launch 1 of the split-K path: statistics of chunk ``pid % C`` of row ``pid // C`` into ``stats``."""
    pid = tl.program_id(0)
    row = tl.zeros([1], tl.int64) + pid // C
    chunk = pid % C
    K = K_DIV * ROW_ALIGN
    idx = tl.load(index_ptr + row)
    inb = (idx >= 0) & (idx < N)
    c = chunk * CHUNK + tl.arange(0, CHUNK)
    lmask = inb[:, None] & (c[None, :] < K)
    l_off, _, b_off = row_offsets(row, idx, inb, stride_lb, stride_nb, 0, ROW_ALIGN)
    z = load_rows(logits_ptr, l_off, c, lmask)
    t = tl.sum(load_rows(bank_ptr, b_off, c, lmask), axis=1)
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
    out = stats_ptr + pid.to(tl.int64) * SPLIT_STATS + tl.zeros([1], tl.int64)
    tl.store(out, m)
    tl.store(out + 1, s)
    tl.store(out + 2, a)
    tl.store(out + 3, t)
    tl.store(out + 4, n_bad)


@triton.jit
def _alr_split_apply_kernel(
    logits_ptr, stride_lb, bank_ptr, stride_nb, index_ptr, stats_ptr, grad_ptr, stride_gb, loss_ptr,
    partial_ptr, counter_ptr, nvalid_ptr, err_ptr, B, N, K_DIV, C, alpha, one_minus_alpha, lam,
    REFINE: tl.constexpr, HAS_ENTROPY: tl.constexpr, REDUCTION: tl.constexpr, CHUNK: tl.constexpr,
    C_BLOCK: tl.constexpr, ROW_ALIGN: tl.constexpr, RED_BLOCK: tl.constexpr,
):  # fmt: skip
    """Launch 2 of the split-K path: chunk ``pid % C`` of row ``pid // C``: bank write, gradient, loss."""
    pid = tl.program_id(0)
    row = tl.zeros([1], tl.int64) + pid // C
    chunk = pid % C
    K = K_DIV * ROW_ALIGN
    gscale = mean_grad_scale(nvalid_ptr, REDUCTION == 2)
    act = row < B
    idx = tl.load(index_ptr + row)
    valid, oob, inb = row_status(act, idx, N)
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
    l_off, g_off, b_off = row_offsets(row, idx, inb, stride_lb, stride_nb, stride_gb, ROW_ALIGN)
    z = load_rows(logits_ptr, l_off, c, lmask)
    t = load_rows(bank_ptr, b_off, c, lmask)
    logp = (z - m[:, None]) - log_s[:, None]
    p = tl.exp(logp)
    if REFINE:
        t = alpha * t + one_minus_alpha * p
        store_rows(bank_ptr, b_off, c, t, lmask)
    loss = -tl.sum(tl.where(lmask, t * logp, 0.0), axis=1)
    if HAS_ENTROPY:
        loss = loss + tl.where(chunk == 0, lam * ent, 0.0)  # the row's entropy term, counted once
        g = t_sum[:, None] * p - t - lam * p * (logp + ent[:, None])
    else:
        g = t_sum[:, None] * p - t
    store_grad_rows(grad_ptr, g_off, c, kmask, g, gscale, act, valid, bad)
    loss = tl.where(bad, float("nan"), tl.where(valid, loss, 0.0))
    first = chunk == 0
    if first:
        worst = tl.max(tl.where(oob, idx, -1), axis=0)
        if worst >= 0:
            tl.atomic_max(err_ptr, worst + 1)
    n_valid = tl.sum(tl.where(valid & first, 1.0, 0.0), axis=0)
    _split_finish(partial_ptr, counter_ptr, loss_ptr, tl.sum(loss, axis=0), n_valid, B, C, REDUCTION, RED_BLOCK)


@triton.jit
def _split_finish(
    partial_ptr, counter_ptr, loss_ptr, loss_part, count_part, B, C, REDUCTION: tl.constexpr,
    RED_BLOCK: tl.constexpr,
):  # fmt: skip
    """The split-K path's "last program reduces" (memory ordering as in :func:`~.reduction.last_program_reduces`).

    Program ``r * C + c`` stores its chunk's loss and valid count. The program drawing the last ticket writes
    the scalar loss ("sum"/"mean") or each row's loss, the sum of its C chunks in chunk order ("none"); in a
    fixed order (bitwise reproducible). Then it resets the counter.
    """
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    tl.store(partial_ptr + pid, loss_part)
    tl.store(partial_ptr + n_prog + pid, count_part)
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == n_prog - 1:
        if REDUCTION != 0:
            sum_partials(partial_ptr, n_prog, loss_ptr, REDUCTION == 2, RED_BLOCK)
        else:
            offs = tl.arange(0, RED_BLOCK)
            for b0 in range(0, B, RED_BLOCK):
                r = b0 + offs
                rm = r < B
                base = r.to(tl.int64) * C
                acc = tl.zeros([RED_BLOCK], tl.float32)
                for j in range(0, C):
                    acc += tl.load(partial_ptr + base + j, mask=rm, other=0.0, cache_modifier=".cg")
                tl.store(loss_ptr + r, acc, mask=rm)
        tl.store(counter_ptr, 0)


def launch_split(logits, bank, index, grad, loss, params: ALRParams, red: int, chunk: int, align: int,
                 nvalid: torch.Tensor, err_flag: torch.Tensor) -> None:
    """The split-K path's two launches; no host synchronisation."""
    B, K = logits.shape
    device = logits.device
    C = H.cdiv(K, chunk)
    n_prog = B * C
    num_warps = H.split_num_warps(chunk)
    stats = torch.empty((n_prog * SPLIT_STATS.value,), dtype=torch.float32, device=device)
    partials = torch.empty((2 * n_prog,), dtype=torch.float32, device=device)
    counter = TICKETS.get(device)
    _alr_split_stats_kernel[(n_prog,)](
        logits, logits.stride(0), bank, bank.stride(0), index, stats, bank.shape[0], K // align, C,
        HAS_ENTROPY=params.has_entropy, CHUNK=chunk, ROW_ALIGN=align, num_warps=num_warps,
    )  # fmt: skip
    with counter_reset_on_failure(counter):
        _alr_split_apply_kernel[(n_prog,)](
            logits, logits.stride(0), bank, bank.stride(0), index, stats, grad, grad.stride(0), loss,
            partials, counter, nvalid, err_flag, B, bank.shape[0], K // align, C, params.alpha, 1.0 - params.alpha,
            params.lam,
            REFINE=params.refine, HAS_ENTROPY=params.has_entropy, REDUCTION=red, CHUNK=chunk,
            C_BLOCK=H.next_pow2(C), ROW_ALIGN=align, RED_BLOCK=H.red_block(num_warps), num_warps=num_warps,
        )  # fmt: skip
