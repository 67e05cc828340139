"""Independent float64 oracles of the baseline losses (ELR, GCE, SCE, soft bootstrapping) for the tests.

A plain loop over rows in numpy, written from the papers' formulas with the gradient derived by hand; shares no
code with alr_fast. Each returns (loss, grad [B, K], new bank or None); reductions as alr_fast's: 'mean' over
valid rows (a row is valid when its index, ELR, or its label, the others, is >= 0), 'sum', 'none' (0 on padding).
A valid row with a non-finite logit gets a NaN loss and a NaN gradient (and no bank write).
"""

from __future__ import annotations

import math

import numpy as np

ELR_EPS = 1e-4


def _softmax(row):
    m = row.max()
    e = np.exp(row - m)
    s = e.sum()
    return e / s, row - m - math.log(s)


def _reduce(per_row, grad, valid, reduction):
    if reduction == "none":
        return per_row, grad
    if reduction == "sum":
        return per_row.sum(), grad
    n = max(int(valid.sum()), 1)
    return per_row.sum() / n, grad / n


def _rows(logits, valid):
    """Yields (i, z_i) for valid finite rows; marks valid non-finite rows NaN."""
    z = np.asarray(logits, dtype=np.float64)
    b, k = z.shape
    per_row, grad = np.zeros(b), np.zeros((b, k))
    todo = []
    for i in range(b):
        if not valid[i]:
            continue
        if not np.all(np.isfinite(z[i])):
            per_row[i], grad[i] = math.nan, math.nan
            continue
        todo.append(i)
    return z, per_row, grad, todo


def gce_oracle(logits, labels, *, q, reduction="mean"):
    y = np.asarray(labels)
    z, per_row, grad, todo = _rows(logits, y >= 0)
    for i in todo:
        p, _ = _softmax(z[i])
        py = p[y[i]]
        per_row[i] = (1.0 - py**q) / q
        onehot = np.zeros_like(p)
        onehot[y[i]] = 1.0
        grad[i] = py**q * (p - onehot)  # d/dz (1 - p_y^q)/q = -p_y^(q-1) dp_y/dz, dp_y/dz = p_y (e_y - p)
    return (*_reduce(per_row, grad, y >= 0, reduction), None)


def sce_oracle(logits, labels, *, alpha, beta, log_zero=-4.0, reduction="mean"):
    y = np.asarray(labels)
    z, per_row, grad, todo = _rows(logits, y >= 0)
    for i in todo:
        p, logp = _softmax(z[i])
        k = len(p)
        log_label = np.full(k, log_zero)  # log of the one-hot label with log 0 := A
        log_label[y[i]] = 0.0
        ce = -logp[y[i]]
        rce = -(p * log_label).sum()
        per_row[i] = alpha * ce + beta * rce
        onehot = np.zeros(k)
        onehot[y[i]] = 1.0
        # d rce / dz_j = -sum_k log_label_k p_k (delta_kj - p_j)
        d_rce = -(log_label * p - p * (log_label * p).sum())
        grad[i] = alpha * (p - onehot) + beta * d_rce
    return (*_reduce(per_row, grad, y >= 0, reduction), None)


def bootstrap_oracle(logits, labels, *, beta, reduction="mean"):
    y = np.asarray(labels)
    z, per_row, grad, todo = _rows(logits, y >= 0)
    for i in todo:
        p, logp = _softmax(z[i])
        onehot = np.zeros(len(p))
        onehot[y[i]] = 1.0
        target = beta * onehot + (1 - beta) * p
        per_row[i] = -(target * logp).sum()
        ent = -(p * logp).sum()
        # -beta log p_y: beta (p - e_y); (1 - beta) H(p): dH/dz = -p (log p + H)
        grad[i] = beta * (p - onehot) - (1 - beta) * p * (logp + ent)
    return (*_reduce(per_row, grad, y >= 0, reduction), None)


def elr_oracle(logits, bank, index, labels, *, beta, lam, refine=True, reduction="mean", store=None):
    """Sequential in batch order: a repeated index reads the row as the previous occurrence left it. ``store``
    rounds a row as the bank's dtype stores it; the loss uses the unrounded row."""
    idx = np.asarray(index)
    y = np.asarray(labels)
    t_bank = np.array(bank, dtype=np.float64, copy=True)
    z, per_row, grad, todo = _rows(logits, idx >= 0)
    for i in todo:
        p, logp = _softmax(z[i])
        onehot = np.zeros(len(p))
        onehot[y[i]] = 1.0
        loss = -logp[y[i]]
        g = p - onehot
        if refine:
            c = np.minimum(np.maximum(p, ELR_EPS), 1 - ELR_EPS)
            t = beta * t_bank[idx[i]] + (1 - beta) * c / c.sum()
            t_bank[idx[i]] = t if store is None else store(t)
            s = (c * t).sum()
            loss += lam * math.log(1 - s)
            inside = (p >= ELR_EPS) & (p <= 1 - ELR_EPS)  # the clamp's derivative
            # ds/dz_j = sum_k t_k inside_k p_k (delta_kj - p_j)
            u = t * inside * p
            ds = u - p * u.sum()
            g = g - lam / (1 - s) * ds
        per_row[i] = loss
        grad[i] = g
    return (*_reduce(per_row, grad, idx >= 0, reduction), t_bank)
