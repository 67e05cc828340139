"""Per-row building blocks of a fused softmax loss with a soft-label bank (``@triton.jit`` helpers).

A program holds ``ROWS`` batch rows as a ``[ROWS, BLOCK]`` tile; lane ``r`` pairs batch row ``row[r]`` with bank
row ``idx[r]`` (``< 0``: a padded row). These helpers are what any per-row loss over softmax(logits) and a bank
row needs, written once: the row status and int64 offsets, masked fp32 loads, the one-sweep softmax, the
online (two-sweep) softmax statistics with the entropy sum, stores rounded to the buffer's dtype, the gradient
store with the padding / NaN conventions, and the per-row loss epilogue. The ALR kernels (``alr_kernels.py``,
``split_k.py``) are built from them; so can other losses (see benchmarks/KERNEL_NOTES.md, "Reusing the row
machinery"). Conventions: math in fp32; masked and non-finite elements become 0 before any arithmetic, so
nothing leaks into other rows' statistics; a row with a non-finite logit is "bad" (NaN loss and gradient).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_to(x, dtype: tl.constexpr):
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
def row_status(act, idx, N):
    """``(valid, oob, inb)`` per lane: an active lane with ``idx >= 0``; of those, ``idx >= N`` (never touches
    the bank; NaN row) and ``idx < N`` (the only rows whose logits and bank row are read)."""
    valid = act & (idx >= 0)
    return valid, valid & (idx >= N), valid & (idx < N)


@triton.jit
def row_offsets(row, idx, inb, stride_lb, stride_nb, stride_gb, ROW_ALIGN: tl.constexpr):
    """int64 element offsets of the logits, gradient and bank rows (``row * stride`` overflows int32 once
    ``B*K`` or ``N*K`` exceeds 2**31). ``ROW_ALIGN`` (a power of two dividing K and every row stride) tells the
    compiler that rows start on aligned elements, so loads and stores vectorise."""
    l_off = tl.multiple_of(row.to(tl.int64) * stride_lb, ROW_ALIGN)
    g_off = tl.multiple_of(row.to(tl.int64) * stride_gb, ROW_ALIGN)
    b_off = tl.multiple_of(tl.where(inb, idx, 0).to(tl.int64) * stride_nb, ROW_ALIGN)
    return l_off, g_off, b_off


@triton.jit
def load_rows(ptr, off, c, mask):
    """``ptr[off[r] + c[j]]`` as fp32 on ``mask`` (``[ROWS, BLOCK]``), 0 elsewhere."""
    return tl.load(ptr + off[:, None] + c[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_rows(ptr, off, c, x, mask):
    """Store fp32 ``x`` at ``ptr[off[r] + c[j]]`` on ``mask``, rounded (RNE) to the buffer's dtype."""
    tl.store(ptr + off[:, None] + c[None, :], round_to(x, ptr.dtype.element_ty), mask=mask)


@triton.jit
def softmax_rows(z, kmask):
    """One-sweep softmax of whole rows held in registers: ``(logp, p, nonfinite)``.

    ``z``: fp32 ``[ROWS, BLOCK]``, 0 where not loaded; ``kmask``: the columns ``< K``. A non-finite logit
    (NaN, +-inf) counts as 0 in the statistics and sets ``nonfinite`` for its row. ``p`` is exactly 0 on
    masked columns.
    """
    finite = tl.abs(z) < float("inf")  # False for NaN and +-inf; masked elements are 0.0
    nonfinite = tl.max(tl.where(finite, 0, 1), axis=1) > 0
    zs = tl.where(finite, z, 0.0)
    zm = tl.where(kmask, zs, float("-inf"))
    m = tl.max(zm, axis=1)
    e = tl.exp(zm - m[:, None])  # exp(z - m); exactly 0 on masked columns
    s = tl.sum(e, axis=1)
    # log p = (z - m) - log sum_k exp(z_k - m)
    logp = (zs - m[:, None]) - tl.log(s)[:, None]
    p = e / s[:, None]
    return logp, p, nonfinite


@triton.jit
def online_init(ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Per-lane accumulators of :func:`online_update`: ``(m, s, a, n_bad)``."""
    return (tl.full([ROWS, BLOCK], float("-inf"), tl.float32), tl.zeros([ROWS, BLOCK], tl.float32),
            tl.zeros([ROWS, BLOCK], tl.float32), tl.zeros([ROWS, BLOCK], tl.int32))


@triton.jit
def online_update(m_l, s_l, a_l, bad_l, z, kmask, HAS_ENTROPY: tl.constexpr):
    """One block of sweep 1 of the two-sweep softmax, per lane (no cross-thread reduction inside the loop).

    Lane ``j`` keeps, over the columns ``j, j + BLOCK, ...``: a running max ``m_j``, ``s_j = sum exp(z - m_j)``,
    ``a_j = sum exp(z - m_j) (z - m_j)`` (with ``HAS_ENTROPY``) and a count of non-finite logits; they are
    combined once after the loop by :func:`online_finish`.
    """
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
    return m_new, s_l, a_l, bad_l


@triton.jit
def online_finish(m_l, s_l, a_l, bad_l, inb, HAS_ENTROPY: tl.constexpr):
    """Combine the lanes of :func:`online_update`: ``(m, log_s, ent, nonfinite)`` per row, with
    ``log p = (z - m) - log_s`` and ``ent = H(p)`` (0 without ``HAS_ENTROPY``). Rows not read (``~inb``) get
    finite placeholders (their outputs are masked by the caller)."""
    # One reduction across lanes per statistic: m = max_j m_j, s = sum_j s_j exp(m_j - m), etc.
    m = tl.max(m_l, axis=1)
    w = tl.where(s_l > 0.0, tl.exp(m_l - m[:, None]), 0.0)
    s = tl.sum(s_l * w, axis=1)
    nonfinite = tl.sum(bad_l, axis=1) > 0
    m = tl.where(inb, m, 0.0)  # rows not read: any finite value (their outputs are masked below)
    s = tl.where(inb, s, 1.0)
    log_s = tl.log(s)
    if HAS_ENTROPY:
        # a = sum_k exp(z_k - m) (z_k - m) = sum_j w_j (a_j + (m_j - m) s_j);  H(p) = log s - a / s
        a = tl.sum(w * (a_l + tl.where(s_l > 0.0, m_l - m[:, None], 0.0) * s_l), axis=1)
        ent = log_s - a / s
    else:
        ent = tl.zeros_like(log_s)
    return m, log_s, ent, nonfinite


@triton.jit
def store_grad_rows(grad_ptr, g_off, c, kmask, g, gscale, act, valid, bad):
    """Store ``dL/dz`` of the lanes' rows for columns ``c``: ``g * gscale`` on valid rows, NaN on ``bad`` rows,
    0 on padded ones; written for every active lane."""
    g = tl.where(bad[:, None], float("nan"), tl.where(valid[:, None], g * gscale, 0.0))
    store_rows(grad_ptr, g_off, c, g, act[:, None] & kmask)


@triton.jit
def finish_rows(loss, bad, valid, act, row, loss_ptr, loss_acc, STORE_ROWS: tl.constexpr):
    """Per-row loss epilogue: NaN on ``bad`` rows, 0 on padded or inactive lanes; stored at ``loss_ptr[row]``
    with ``STORE_ROWS``; returns the program's running loss ``loss_acc`` plus these rows'."""
    loss = tl.where(bad, float("nan"), tl.where(valid, loss, 0.0))
    if STORE_ROWS:
        tl.store(loss_ptr + row, loss, mask=act)
    return loss_acc + tl.where(act, loss, 0.0)


INTERPRETED = not isinstance(round_to, triton.runtime.JITFunction)
"""True when the kernels run under the Triton interpreter (TRITON_INTERPRET=1 at import): CPU tensors."""
