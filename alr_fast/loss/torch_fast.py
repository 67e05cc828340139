"""The torch backend's fast paths for ``assume_unique=True``: no sort, no host sync, closed-form gradient.

``alr_loss_unique``: same semantics as :func:`alr_fast.loss.reference.alr_loss_reference` when no valid index
repeats (the promise an epoch permutation keeps; ``alr_loss(check_index=True)`` checks it). Where the reference
builds an autograd graph of some twenty ops and, when refining, sorts the indices and synchronises the host to
apply duplicates in batch order, this computes the loss and ``dL/dz`` in one forward (as the fused kernel does)
and the backward only multiplies by ``grad_output``:

    dL_i/dz = (sum_k t_k) p - t - lam * p * (log p + H(p))          (t = t_new when refining)

``elr_loss_unique``: the same for ELR, :func:`alr_fast.loss.baselines.elr_loss_reference` with
``assume_unique`` (the specification: fp32 math, padding, NaN rows, the clamp and its gradient mask, the bank
row rounded to its dtype while the loss uses the unrounded one):

    dL_i/dz = p - e_y - lam / (1 - s) * (u - p sum(u)),   s = <c, t_new>,  u = t_new p [eps <= p <= 1 - eps]

Both are what the trainer runs on CPU (``alr_loss`` / ``elr_loss`` dispatch to them for the torch backend with
``assume_unique``). Tested against the references and the float64 oracles (equal to rounding; a bank row may
differ from the reference's in its last bit, where a fused multiply-add rounds once instead of twice).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from alr_fast.loss.baselines import ELR_CLAMP, ELRParams
from alr_fast.loss.contract import ALRParams

__all__ = ["alr_loss_unique", "elr_loss_unique"]


class _UniqueALR(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, bank, index, alpha, lam, refine, reduction):
        z, valid, good, on_cpu, all_good = _start(logits, index)
        logp = F.log_softmax(z, dim=1)
        p = logp.exp()
        t = bank.index_select(0, index.clamp_min(0)).to(z.dtype)
        if refine:
            t = t.lerp_(p, 1.0 - alpha)  # t_new = alpha t + (1 - alpha) p = t + (1 - alpha) (p - t), in place
            if all_good:
                bank.index_copy_(0, index, t.to(bank.dtype))  # ~8x faster than bank[index] = ... here
            else:
                _write_rows(bank, index, good, t)
        # -sum_k t_k log p_k and H(p) = -sum_k p_k log p_k (einsum/bmm was 40x slower here)
        # One [B, K] buffer serves as the products' scratch and then holds the gradient (fewer allocations:
        # a fresh 1 MB temporary costs page faults on a busy CPU).
        buf = torch.mul(t, logp)
        per_row = -buf.sum(dim=1)
        has_entropy = refine and lam != 0.0
        ent = -torch.mul(p, logp, out=buf).sum(dim=1) if has_entropy else None
        if has_entropy:
            per_row = per_row + lam * ent
        scale = _mean_scale(valid, reduction, on_cpu, z.dtype)
        # dL/dz = (sum_k t_k) p - t - lam p (log p + H) = p (sum t - lam H - lam log p) - t   (times scale)
        c = t.sum(dim=1) - lam * ent if has_entropy else t.sum(dim=1)
        if isinstance(scale, float):
            c = c * scale
            if has_entropy:
                grad = torch.add(c[:, None], logp, alpha=-lam * scale, out=buf).mul_(p).sub_(t, alpha=scale)
            else:
                grad = torch.mul(p, c[:, None], out=buf).sub_(t, alpha=scale)
        else:
            c = c * scale
            grad = (c[:, None] - (lam * scale) * logp) * p if has_entropy else c[:, None] * p
            grad = grad.sub_(t * scale)
        return _finish(ctx, logits, per_row, grad, good, valid, all_good, reduction, scale)

    @staticmethod
    def backward(ctx, grad_output):
        return _scaled_grad(ctx, grad_output), None, None, None, None, None, None


def _start(logits, index):
    """The beginning of both closed-form forwards: ``(z, valid, good, on_cpu, all_good)``, with ``z`` the logits in
    the math dtype (fp64 stays fp64, else fp32) and every row that is not ``good`` (padding or non-finite) zeroed."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    valid = index >= 0
    # A row is finite iff its max and min are (NaN propagates through both). amax/amin: ~100x faster than
    # aminmax or isfinite().all() on this CPU build (measured, 256 x 1000 fp32).
    good = valid & torch.isfinite(z.amax(dim=1)) & torch.isfinite(z.amin(dim=1))
    # On a CPU reading a flag costs nothing (no device to wait for): skip the masking passes when every row
    # is valid and finite, the usual case. Elsewhere the masks are applied unconditionally (no host sync).
    on_cpu = _reads_are_free(z.device)
    all_good = on_cpu and bool(good.all())
    if not all_good:
        # Padded or non-finite rows are zeroed so their NaN/inf cannot reach the bank or a statistic; their
        # outputs are set by _finish (log_softmax is per row: other rows are never affected).
        z = torch.where(good[:, None], z, 0.0)
    return z, valid, good, on_cpu, all_good


def _mean_scale(valid, reduction: str, on_cpu: bool, dtype: torch.dtype):
    """The factor folded into the gradient (so that the backward is a no-op for a ``grad_output`` of 1): the mean's
    1/n_valid, a Python float on CPU (no sync there) and a 0-d tensor elsewhere; 1.0 for ``"sum"``/``"none"``."""
    if reduction != "mean":
        return 1.0
    n = valid.sum().clamp_min(1)
    return 1.0 / float(n) if on_cpu else 1.0 / n.to(dtype)


def _finish(ctx, logits, per_row, grad, good, valid, all_good: bool, reduction: str, scale):
    """The end of both closed-form forwards: NaN loss and gradient on valid rows that are not good, 0 on
    padding; the reduction (``scale``: the mean's 1/n_valid, already folded into ``grad``); the gradient saved
    for :func:`_scaled_grad`."""
    if not all_good:
        nan = torch.full_like(per_row, float("nan"))
        per_row = torch.where(good, per_row, torch.where(valid, nan, 0.0))
        grad = torch.where(good[:, None], grad, torch.where(valid, nan, 0.0)[:, None])
    if reduction == "none":
        loss = per_row
    elif reduction == "sum":
        loss = per_row.sum()
    else:
        loss = per_row.sum() * scale
    ctx.save_for_backward(grad)
    ctx.per_row = reduction == "none"
    ctx.out_dtype = logits.dtype
    return loss


def _scaled_grad(ctx, grad_output):
    """dL/dz: the saved gradient times ``grad_output`` (per row for ``"none"``); no pass for a scalar 1 on CPU."""
    (grad,) = ctx.saved_tensors
    if grad.device.type == "cpu" and grad_output.dim() == 0 and float(grad_output) == 1.0:
        return grad.to(ctx.out_dtype)  # already final
    factor = grad_output[:, None] if ctx.per_row else grad_output
    return (grad * factor).to(ctx.out_dtype)


def _reads_are_free(device: torch.device) -> bool:
    """Whether reading a device value on the host costs nothing here (a CPU: there is no device to wait for).
    Then the forward reads flags and uses Python floats; elsewhere it stays on the device (no host sync).
    Both branches compute the same values; the tests run the device branch on a CPU by patching this."""
    return device.type == "cpu"


def _write_rows(bank: torch.Tensor, index: torch.Tensor, good: torch.Tensor, rows: torch.Tensor) -> None:
    """``bank[index[i]] = rows[i]`` for every ``good`` row, without a boolean mask (which would sync the host).

    Rows that are not good (padded, non-finite) are redirected to the first good row and write that row's
    value: every bank row then receives one distinct value however often it is written, so the scatter is
    deterministic. Without any good row they rewrite the value ``bank`` already holds at index ``max(i, 0)``.
    """
    if index.numel() == 0:
        return
    first = torch.argmax(good.to(torch.uint8))  # first good row (0 if none): a device op, no sync
    fallback_index = index[first].clamp_min(0)
    fallback_row = torch.where(good[first], rows[first], bank[fallback_index].to(rows.dtype))
    target_index = torch.where(good, index, fallback_index)
    values = torch.where(good[:, None], rows, fallback_row[None, :])
    bank.index_copy_(0, target_index, values.to(bank.dtype))


def alr_loss_unique(logits: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, params: ALRParams) -> torch.Tensor:
    """ALR loss for a batch without repeated valid indices (inputs assumed validated); updates ``bank``."""
    return _UniqueALR.apply(logits, bank, index, params.alpha, params.lam, params.refine, params.reduction)


class _UniqueELR(torch.autograd.Function):
    """ELR (:func:`alr_fast.loss.baselines.elr_loss_reference`, ``assume_unique``): the loss and ``dL/dz`` in the
    forward; the backward scales the saved gradient."""

    @staticmethod
    def forward(ctx, logits, bank, index, labels, beta, lam, refine, reduction):
        z, valid, good, on_cpu, all_good = _start(logits, index)
        logp = F.log_softmax(z, dim=1)
        # a padded row's label may be anything (it is never checked): read label 0 there
        y = (labels if all_good else torch.where(valid, labels, 0)).clamp_min(0)[:, None]
        per_row = logp.gather(1, y).squeeze(1).neg_()  # -log p_y
        p = torch.exp(logp)
        scale = _mean_scale(valid, reduction, on_cpu, z.dtype)
        if refine:
            eps = ELR_CLAMP
            # logp is not needed any more: its buffer holds c, then the gradient (each fresh [B, K] buffer costs
            # page faults on a busy CPU)
            c = torch.clamp(p, eps, 1.0 - eps, out=logp)
            # t_new = beta t + (1 - beta) c / sum(c): the row the bank stores (rounded) and the loss uses
            t = bank.index_select(0, index.clamp_min(0)).to(z.dtype)
            t = t.mul_(beta).addcmul_(c, c.sum(dim=1, keepdim=True).reciprocal_(), value=1.0 - beta)
            if all_good:
                bank.index_copy_(0, index, t.to(bank.dtype))
            else:
                _write_rows(bank, index, good, t)
            s = torch.mul(c, t, out=c).sum(dim=1)  # <c, t_new> <= max(c) <= 1 - eps: log1p(-s) is finite
            per_row = per_row.add_(torch.log1p(s.neg()), alpha=lam)
            # dL/dz = p - e_y - f (u - p sum(u)) = p (1 + f sum(u)) - f u - e_y  with  f = lam / (1 - s) and
            # u = t_new p [eps <= p <= 1 - eps]. The mask is torch.clamp's gradient rule, applied by
            # hardtanh_backward (zero where p <= lo or p >= hi) with lo, hi the neighbours of eps, 1 - eps in the
            # math dtype: the same inclusive bounds, in one pass and without a boolean tensor.
            lo, hi = _clamp_bounds(z.dtype)
            u = _HARDTANH_BACKWARD(t.mul_(p), p, lo, hi, grad_input=t)
            fs = s.sub_(1.0).reciprocal_().mul_(-lam * scale)  # f * scale (s is not needed any more)
            coef = u.sum(dim=1).mul_(fs).add_(scale)  # (1 + f sum(u)) * scale
            grad = torch.mul(p, coef[:, None], out=c).sub_(u.mul_(fs[:, None]))
        else:
            grad = p if isinstance(scale, float) and scale == 1.0 else p.mul_(scale)
        # - e_y (times scale)
        ey = torch.full_like(per_row, -scale) if isinstance(scale, float) else (-scale).expand_as(per_row)
        grad.scatter_add_(1, y, ey[:, None])
        return _finish(ctx, logits, per_row, grad, good, valid, all_good, reduction, scale)

    @staticmethod
    def backward(ctx, grad_output):
        return _scaled_grad(ctx, grad_output), None, None, None, None, None, None, None


_HARDTANH_BACKWARD = torch.ops.aten.hardtanh_backward.grad_input


@functools.cache
def _clamp_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """(lo, hi): the floats of ``dtype`` just below ``eps`` and just above ``1 - eps`` (both as ``dtype`` rounds
    them), so that ``lo < p < hi`` is exactly ``eps <= p <= 1 - eps`` there."""
    eps, one = torch.tensor(ELR_CLAMP, dtype=dtype), torch.tensor(1.0 - ELR_CLAMP, dtype=dtype)
    return (float(torch.nextafter(eps, torch.tensor(-1.0, dtype=dtype))),
            float(torch.nextafter(one, torch.tensor(2.0, dtype=dtype))))


def elr_loss_unique(logits: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, labels: torch.Tensor,
                    params: ELRParams) -> torch.Tensor:
    """ELR loss for a batch without repeated valid indices (inputs assumed validated); updates ``bank`` when
    ``params.refine``. Same values as :func:`alr_fast.loss.baselines.elr_loss_reference` (to rounding)."""
    return _UniqueELR.apply(logits, bank, index, labels, params.beta, params.lam, params.refine, params.reduction)
