"""Pure-PyTorch reference of the ALR loss: the semantics every backend must match.

This file is the specification. The fused Triton kernel (``alr_fast.loss.triton``), the tests and the
benchmarks all compare against :func:`alr_loss_reference`.

Per valid row ``i`` (``index[i] >= 0``) with ``z = logits[i]`` (math in fp32), ``p = softmax(z)``:

* warm-up (``refine=False``): ``t = bank[index[i]]`` (the one-hot noisy label), no bank write,
  ``loss_i = -sum_k t_k log p_k``.
* refinement (``refine=True``): ``t_new = alpha * t + (1 - alpha) * p.detach()`` is written into
  ``bank[index[i]]`` (rounded to the bank's dtype) and
  ``loss_i = -sum_k t_new_k log p_k + lam * H(p)``, ``H(p) = -sum_k p_k log p_k``.
  ``t_new`` enters the loss in fp32, before rounding to the bank's dtype.
* gradient: ``dL_i/dz = (sum_k t_k) p - t - lam * p * (log p + H(p))``, i.e. ``p - t - lam p (log p + H)``
  when the row sums to one.

Padded rows (``index[i] < 0``): no loss (0 under ``reduction="none"``), zero gradient, no bank write; the
``"mean"`` reduction divides by the number of valid rows (a batch with no valid row has loss 0).

Duplicate indices in one call are applied **sequentially in batch order**, exactly as if each row had been
passed in its own call one after another: the k-th occurrence of a bank row reads the row as stored after
the (k-1)-th occurrence's write, and its loss uses its own ``t_new``. The bank ends holding the last
occurrence's update. (In warm-up nothing is written, so duplicates simply read the same row.)

Non-finite logits: a valid row with any NaN or +-inf logit gets a NaN loss and a NaN gradient, and its bank
row is left untouched (so one bad step cannot poison the soft labels; the NaN still reaches the loss so the
trainer and fp16 loss scaling see it). It does not take part in the sequential duplicate chain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alr_fast.loss.contract import ALRParams

__all__ = ["alr_loss_reference", "sequential_rank"]


def sequential_rank(index: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions in ``index`` hold the same value (0 for the first).

    Used to apply duplicate rows in batch order: all positions of rank r touch distinct bank rows.
    """
    b = index.numel()
    if b == 0:
        return torch.zeros(0, dtype=torch.long, device=index.device)
    sorted_idx, order = torch.sort(index, stable=True)
    pos = torch.arange(b, device=index.device)
    is_start = torch.ones(b, dtype=torch.bool, device=index.device)
    is_start[1:] = sorted_idx[1:] != sorted_idx[:-1]
    group_start = torch.where(is_start, pos, torch.zeros_like(pos)).cummax(0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - group_start
    return rank


def alr_loss_reference(logits: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, params: ALRParams) -> torch.Tensor:
    """Reference ALR loss; updates ``bank`` in place when ``params.refine``. Inputs are assumed validated
    (``params.assume_unique`` is ignored: duplicates always get the sequential semantics above).

    Host synchronisations happen here (duplicate handling); this path is for correctness, not speed.
    """
    alpha, lam, refine, reduction = params.alpha, params.lam, params.refine, params.reduction
    z = logits if logits.dtype == torch.float64 else logits.float()  # fp32 math (fp64 kept for tests)
    valid = index >= 0
    finite = torch.isfinite(z).all(dim=1)
    safe = torch.where(valid, index, torch.zeros_like(index))
    good = valid & finite
    # Rows that are padded or non-finite are zeroed before the softmax so no NaN leaks into the gradient of
    # any other row; their loss is set below.
    logp = F.log_softmax(torch.where(good[:, None], z, torch.zeros_like(z)), dim=1)
    p = logp.exp()

    if refine:
        target = torch.zeros_like(z)
        rank = sequential_rank(torch.where(good, index, torch.full_like(index, -1)))
        rank = torch.where(good, rank, torch.full_like(rank, -1))
        n_rounds = int(rank.max().item()) + 1 if rank.numel() else 0  # host sync: reference only
        p_det = p.detach()
        for r in range(n_rounds):
            pos = torch.nonzero(rank == r).squeeze(1)
            rows = index[pos]
            t_new = alpha * bank[rows].to(z.dtype) + (1.0 - alpha) * p_det[pos]
            bank[rows] = t_new.to(bank.dtype)
            target[pos] = t_new
    else:
        target = bank[safe].to(z.dtype)

    # Where t_k = 0 and log p_k is finite the product is exactly 0, so extreme logits stay finite.
    per_row = -(target * logp).sum(dim=1)
    if refine and lam != 0.0:
        per_row = per_row + lam * (-(p * logp).sum(dim=1))

    # Non-finite valid row: NaN loss and NaN gradient. The factor is NaN only on those rows, so the product's
    # gradient is NaN there and exactly 0 elsewhere.
    bad = valid & ~finite
    nan_factor = torch.where(bad, torch.full_like(per_row, float("nan")), torch.zeros_like(per_row))
    per_row = torch.where(bad, z.sum(dim=1) * nan_factor, per_row)
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))

    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1)
