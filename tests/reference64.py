"""An independent float64 ALR oracle for the tests: a plain loop over rows, written from the method's text.

Deliberately shares no code with alr_fast: if the package's reference and this loop disagree, one is wrong.
"""

from __future__ import annotations

import math

import numpy as np


def alr_oracle(logits, bank, index, *, alpha, lam, refine, reduction="mean", store=None):
    """Returns (loss, grad [B, K], new bank [N, K]) as float64 numpy arrays; the bank is copied, not changed.

    Sequential semantics for duplicates: rows are processed in batch order; each reads the bank row as left
    by the previous occurrence. ``store`` (optional) rounds a row the way the bank's dtype stores it; the loss
    uses the unrounded row.
    """
    z = np.asarray(logits, dtype=np.float64)
    t_bank = np.array(bank, dtype=np.float64, copy=True)
    idx = np.asarray(index)
    b, k = z.shape
    per_row = np.zeros(b)
    grad = np.zeros((b, k))
    valid = idx >= 0
    for i in range(b):
        if idx[i] < 0:
            continue
        row = z[i]
        if not np.all(np.isfinite(row)):
            per_row[i] = math.nan
            grad[i] = math.nan
            continue
        m = row.max()
        e = np.exp(row - m)
        s = e.sum()
        p = e / s
        logp = row - m - math.log(s)
        t = t_bank[idx[i]].copy()
        if refine:
            t = alpha * t + (1 - alpha) * p
            t_bank[idx[i]] = t if store is None else store(t)
        ent = -(p * logp).sum()
        loss = -(t * logp).sum()
        # dL/dz = (sum t) p - t  [- lam p (log p + H)]
        g = t.sum() * p - t
        if refine:
            loss += lam * ent
            g = g - lam * p * (logp + ent)
        per_row[i] = loss
        grad[i] = g
    if reduction == "none":
        return per_row, grad, t_bank
    if reduction == "sum":
        return per_row.sum(), grad, t_bank
    n = max(int(valid.sum()), 1)
    return per_row.sum() / n, grad / n, t_bank
