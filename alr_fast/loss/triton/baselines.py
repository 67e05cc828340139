"""Fused Triton kernels of the loss-based baselines (ELR, GCE, SCE, soft bootstrapping), built from the ALR
kernel's row machinery (:mod:`alr_fast.loss.triton.rows`).

One launch computes, per row, the loss and ``dL/dz`` (and for ELR writes the bank row) in one pass over the
logits held in registers; the backward only scales the stored gradient by ``grad_output``. Semantics are the
references' (:mod:`alr_fast.loss.baselines`), with two limits, both routed to the reference by
:func:`alr_fast.loss.functional`: K up to :data:`MAX_K` columns (one tile per row), and ELR only with
``assume_unique`` (the reference applies repeated indices in batch order; this kernel does not sort).
A valid row whose index (ELR) or label (GCE, SCE, bootstrapping) is ``>= N`` / ``>= K``, or (ELR) whose label is
outside ``[0, K)``, gets a NaN loss and gradient and never touches the bank (the functional API checks indices and
labels on the host when ``check_index``; these rows are what an unchecked call gets).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from alr_fast.loss.baselines import ELR_CLAMP, BootstrapParams, ELRParams, GCEParams, SCEParams
from alr_fast.loss.triton.rows import finish_rows, load_rows, row_status, softmax_rows, store_grad_rows, store_rows

__all__ = ["fused_elr_loss", "fused_gce_loss", "fused_sce_loss", "fused_bootstrap_loss", "MAX_K", "fits"]

MAX_K = 4096
"""Widest row the one-tile kernels take (larger K: the reference). At 16384 columns one tile per row spills
registers on sm_90 even with 16 warps (tests/test_kernel_baselines_compile.py)."""
_GCE, _SCE, _BOOT = 0, 1, 2


def fits(k: int) -> bool:
    return 1 <= k <= MAX_K


def _tile(k: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, num_warps): one power-of-two tile per row, up to 1024 elements per program in all (several
    rows of a small K), 4 or 8 warps: at most 16 elements per thread and tensor (no register spills: the compile
    test; 16 warps cap a thread at 64 registers, which spills ELR at K = 4096)."""
    block = triton.next_power_of_2(max(k, 2))
    rows = max(1, min(16, 1024 // block))
    warps = max(4, min(8, rows * block // 512))
    return block, rows, warps


@triton.jit
def _label_rows(logp, p, y, c):
    """``(onehot [ROWS, BLOCK], log p_y, p_y)`` of the rows' labels ``y`` (a label outside [0, K): no column,
    log p_y = 0; such rows are padding or NaN rows, whose outputs the caller masks)."""
    onehot = c[None, :] == y[:, None]
    lpy = tl.sum(tl.where(onehot, logp, 0.0), axis=1)
    return onehot, lpy, tl.exp(lpy)


@triton.jit
def _stateless_kernel(z_ptr, y_ptr, g_ptr, loss_ptr, B, K, stride_zb, stride_gb, c1, c2, c3,
                      METHOD: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    act = row < B
    y = tl.load(y_ptr + row, mask=act, other=-1)
    valid, oob, inb = row_status(act, y, K)  # label < 0: padding; label >= K: a NaN row
    c = tl.arange(0, BLOCK)
    kmask = c < K
    z_off = row.to(tl.int64) * stride_zb
    g_off = row.to(tl.int64) * stride_gb
    z = load_rows(z_ptr, z_off, c, inb[:, None] & kmask[None, :])
    logp, p, nonfinite = softmax_rows(z, kmask[None, :])
    onehot, lpy, py = _label_rows(logp, p, y, c)
    diff = p - tl.where(onehot, 1.0, 0.0)
    if METHOD == 0:  # GCE, c1 = q: (1 - p_y^q) / q, gradient p_y^q (p - e_y)
        pq = tl.exp(c1 * lpy)
        loss = (1.0 - pq) / c1
        g = pq[:, None] * diff
    elif METHOD == 1:  # SCE, c1 = alpha, c2 = beta, c3 = A: alpha CE - A beta (1 - p_y), gradient (alpha - A beta p_y)(p - e_y)
        loss = -c1 * lpy - c3 * c2 * (1.0 - py)
        g = (c1 - c3 * c2 * py)[:, None] * diff
    else:  # soft bootstrapping, c1 = beta: -beta log p_y + (1 - beta) H(p)
        ent = -tl.sum(tl.where(kmask[None, :], p * logp, 0.0), axis=1)
        loss = -c1 * lpy + (1.0 - c1) * ent
        g = c1 * diff - (1.0 - c1) * p * (logp + ent[:, None])
    bad = (valid & nonfinite) | oob
    store_grad_rows(g_ptr, g_off, c, kmask[None, :], g, 1.0, act, valid, bad)
    finish_rows(loss, bad, valid, act, row, loss_ptr, 0.0, True)


@triton.jit
def _elr_kernel(z_ptr, bank_ptr, idx_ptr, y_ptr, g_ptr, loss_ptr, B, K, N, stride_zb, stride_nb, stride_gb,
                beta, lam, eps, REFINE: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    act = row < B
    idx = tl.load(idx_ptr + row, mask=act, other=-1)
    y = tl.load(y_ptr + row, mask=act, other=0)
    valid, oob, inb = row_status(act, idx, N)
    c = tl.arange(0, BLOCK)
    kmask = c < K
    m2 = inb[:, None] & kmask[None, :]
    z_off = row.to(tl.int64) * stride_zb
    g_off = row.to(tl.int64) * stride_gb
    b_off = tl.where(inb, idx, 0).to(tl.int64) * stride_nb
    z = load_rows(z_ptr, z_off, c, m2)
    logp, p, nonfinite = softmax_rows(z, kmask[None, :])
    onehot, lpy, py = _label_rows(logp, p, y, c)
    loss = -lpy
    g = p - tl.where(onehot, 1.0, 0.0)
    ybad = inb & ((y < 0) | (y >= K))  # a valid row's label outside [0, K): a NaN row, as an index >= N is
    if REFINE:
        t = load_rows(bank_ptr, b_off, c, m2)
        cl = tl.where(kmask[None, :], tl.minimum(tl.maximum(p, eps), 1.0 - eps), 0.0)
        t_new = beta * t + (1.0 - beta) * (cl / tl.sum(cl, axis=1)[:, None])
        good = inb & ~nonfinite & ~ybad
        store_rows(bank_ptr, b_off, c, t_new, good[:, None] & kmask[None, :])  # rounded to the bank's dtype
        s = tl.sum(cl * t_new, axis=1)
        loss = loss + lam * tl.log(1.0 - s)
        inside = (p >= eps) & (p <= 1.0 - eps) & kmask[None, :]
        u = tl.where(inside, t_new * p, 0.0)
        g = g - (lam / (1.0 - s))[:, None] * (u - p * tl.sum(u, axis=1)[:, None])
    bad = (valid & nonfinite) | oob | ybad
    store_grad_rows(g_ptr, g_off, c, kmask[None, :], g, 1.0, act, valid, bad)
    finish_rows(loss, bad, valid, act, row, loss_ptr, 0.0, True)


class _FusedRows(torch.autograd.Function):
    """Per-row losses and their stored gradient; ``reduction`` applied in torch (mean over valid rows)."""

    @staticmethod
    def forward(ctx, logits, valid, launch, reduction):
        per_row, grad = launch()
        if reduction == "none":
            out, scale = per_row, None
        else:
            total = per_row.sum()
            scale = None if reduction == "sum" else 1.0 / valid.sum().clamp_min(1).to(torch.float32)
            out = total if scale is None else total * scale
        ctx.save_for_backward(grad, scale if scale is not None else torch.ones((), device=logits.device))
        ctx.per_row = reduction == "none"
        return out

    @staticmethod
    def backward(ctx, grad_output):
        grad, scale = ctx.saved_tensors
        factor = grad_output[:, None] if ctx.per_row else grad_output * scale
        return (grad.float() * factor).to(grad.dtype), None, None, None


def _outputs(logits):
    b = logits.shape[0]
    return torch.empty(b, dtype=torch.float32, device=logits.device), torch.empty_like(logits)


def _stateless(logits, labels, method: int, c1: float, c2: float, c3: float, reduction: str):
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    labels = labels.contiguous()
    b, k = logits.shape

    def launch():
        per_row, grad = _outputs(logits)
        if b:
            block, rows, warps = _tile(k)
            _stateless_kernel[(triton.cdiv(b, rows),)](logits, labels, grad, per_row, b, k, logits.stride(0),
                                                       grad.stride(0), c1, c2, c3, METHOD=method, ROWS=rows,
                                                       BLOCK=block, num_warps=warps)
        return per_row, grad

    return _FusedRows.apply(logits, labels >= 0, launch, reduction)


def fused_gce_loss(logits, labels, params: GCEParams):
    return _stateless(logits, labels, _GCE, params.q, 0.0, 0.0, params.reduction)


def fused_sce_loss(logits, labels, params: SCEParams):
    return _stateless(logits, labels, _SCE, params.alpha, params.beta, params.log_zero, params.reduction)


def fused_bootstrap_loss(logits, labels, params: BootstrapParams):
    return _stateless(logits, labels, _BOOT, params.beta, 0.0, 0.0, params.reduction)


def fused_elr_loss(logits, bank, index, labels, params: ELRParams):
    """ELR for a batch without repeated valid indices (``params.assume_unique``); updates ``bank``."""
    if not params.assume_unique:
        raise ValueError("fused_elr_loss: needs assume_unique=True (repeated indices: the torch reference)")
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    index, labels = index.contiguous(), labels.contiguous()
    b, k = logits.shape

    def launch():
        per_row, grad = _outputs(logits)
        if b:
            block, rows, warps = _tile(k)
            _elr_kernel[(triton.cdiv(b, rows),)](logits, bank, index, labels, grad, per_row, b, k, bank.shape[0],
                                                 logits.stride(0), bank.stride(0), grad.stride(0), params.beta,
                                                 params.lam, ELR_CLAMP, REFINE=params.refine, ROWS=rows,
                                                 BLOCK=block, num_warps=warps)
        return per_row, grad

    return _FusedRows.apply(logits, index >= 0, launch, params.reduction)
