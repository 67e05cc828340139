"""Pure-PyTorch references of the loss-based baselines: ELR, GCE, SCE and soft bootstrapping (the specification).

Every backend (the fused Triton kernels in ``alr_fast.loss.triton``, ELR's closed-form CPU path in
``alr_fast.loss.torch_fast``) and the tests compare against these functions, as ALR's backends compare against
:mod:`alr_fast.loss.reference`. The conventions are ALR's:

* math in fp32 (fp64 stays fp64, for tests); ``p = softmax(z)`` per row;
* a row is **valid** when its index (ELR) or its label (GCE, SCE, bootstrap: no per-sample state, so the label is
  the row's address) is ``>= 0``; ``-1`` marks padding: no loss (0 under ``reduction="none"``), zero gradient,
  no bank write; ``"mean"`` divides by the number of valid rows (a batch with no valid row has loss 0);
* a valid row with a NaN or +-inf logit gets a NaN loss and a NaN gradient and leaves the bank untouched;
* ELR's bank rows are written rounded to the bank's dtype (fp32 or bf16); the loss uses the unrounded row;
  duplicate indices are applied sequentially in batch order, exactly as :mod:`alr_fast.loss.reference` does.

Per valid row, with ``y`` the given label, ``e_y`` its one-hot vector, ``H(p) = -sum_k p_k log p_k``:

**ELR** (Liu et al., NeurIPS 2020, "Early-learning regularization prevents memorization of noisy labels"). The
bank row ``t`` is the running average of the model's predictions. Refinement (``refine=True``):
``c = clamp(p, eps, 1 - eps)`` (``eps = 1e-4``, as in the authors' code), ``t_new = beta t + (1 - beta) c / sum(c)``
(``p`` detached; written into the bank), ``loss = -log p_y + lam * log(1 - <c, t_new>)``. Gradient:
``p - e_y - lam / (1 - s) * (u - p sum(u))`` with ``s = <c, t_new>``, ``u_k = t_new_k p_k [eps <= p_k <= 1 - eps]``
(the clamp passes no gradient outside its range). Warm-up (``refine=False``): ``-log p_y``, no bank write.
The bank starts at the one-hot given label (the project's bank), not at 0 as in the authors' code: after ``m``
visits the given label keeps weight ``beta**m`` in ``t`` (0.7**5 = 0.17).

**GCE** (Zhang & Sabuncu, NeurIPS 2018, "Generalized cross entropy loss..."): ``loss = (1 - p_y**q) / q``,
``q`` in (0, 1] (q -> 0 is CE, q = 1 is MAE up to a factor). Gradient ``p_y**q (p - e_y)``.

**SCE** (Wang et al., ICCV 2019, "Symmetric cross entropy for robust learning with noisy labels"):
``loss = alpha * (-log p_y) + beta * RCE``, ``RCE = -sum_k p_k log e_y,k`` with ``log 0`` replaced by ``A``
(``log_zero``, the paper's A = -4): ``RCE = -A (1 - p_y)``. Gradient ``(alpha - A beta p_y) (p - e_y)``.

**Soft bootstrapping** (Reed et al., ICLR 2015 workshop, "Training deep neural networks on noisy labels with
bootstrapping"): target ``beta e_y + (1 - beta) p`` with the gradient flowing through ``p`` in the target as in the
paper (it is CE plus minimum-entropy regularisation): ``loss = -beta log p_y + (1 - beta) H(p)``. Gradient
``beta (p - e_y) - (1 - beta) p (log p + H(p))``. No per-sample state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from alr_fast.loss.contract import BANK_DTYPES, LOGIT_DTYPES, REDUCTIONS, describe
from alr_fast.loss.reference import sequential_rank

__all__ = [
    "BASELINES",
    "STATEFUL",
    "ELRParams",
    "GCEParams",
    "SCEParams",
    "BootstrapParams",
    "ELR_CLAMP",
    "elr_loss_reference",
    "gce_loss_reference",
    "sce_loss_reference",
    "bootstrap_loss_reference",
    "validate_labels",
    "BaselineParamError",
]

BASELINES = ("elr", "gce", "sce", "bootstrap")
"""The loss-based baselines, by their ``method.name``."""
STATEFUL = ("elr",)
"""Baselines that keep a per-sample row in the bank (the others leave it at the one-hot given label)."""
ELR_CLAMP = 1e-4
"""ELR's clamp of the predictions, ``[eps, 1 - eps]``: the authors' code (``torch.clamp(y_pred, 1e-4, 1 - 1e-4)``)."""


class BaselineParamError(ValueError):
    """A hyper-parameter a baseline's params refuse; ``field`` names it ('beta', 'lam', 'q', 'alpha', 'log_zero' or
    'reduction') so that a caller holding it under another name (the config's ``method.elr_beta``) can say where
    it came from."""

    def __init__(self, where: str, field: str, requirement: str, value):
        self.where, self.field, self.requirement, self.value = where, field, requirement, value
        super().__init__(f"{where}: {field} {requirement}, got {value!r}")


def _number(where: str, field: str, value, lo: float, hi: float, *, lo_open: bool = False,
            hi_open: bool = False) -> float:
    """``value`` as a float in the interval, or :class:`BaselineParamError` naming the field."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    requirement = (f"must be in {left}{lo:g}, {hi:g}{right}" if math.isfinite(lo) and math.isfinite(hi) else
                   f"must be a finite number {'>' if lo_open else '>='} {lo:g}" if math.isfinite(lo) else
                   f"must be a finite number {'<' if hi_open else '<='} {hi:g}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise BaselineParamError(where, field, requirement, value) from None
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi)
    if not ok:
        raise BaselineParamError(where, field, requirement, value)
    return x


def _reduction(where: str, reduction) -> str:
    if reduction not in REDUCTIONS:
        raise BaselineParamError(where, "reduction", f"must be one of {REDUCTIONS}", reduction)
    return reduction


_INF = math.inf


@dataclass(frozen=True, slots=True)
class ELRParams:
    """ELR hyper-parameters; validated when built."""

    beta: float
    """EMA momentum of the target, ``t <- beta t + (1 - beta) p``; in [0, 1]. ELR's CIFAR-10 value: 0.7."""
    lam: float
    """Weight of ``log(1 - <p, t>)``; finite, >= 0. ELR's CIFAR-10 value: 3."""
    refine: bool = True
    """False: warm-up, cross-entropy on the given label, no bank write."""
    reduction: str = "mean"
    assume_unique: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", _number("elr_loss", "beta", self.beta, 0.0, 1.0))
        object.__setattr__(self, "lam", _number("elr_loss", "lam", self.lam, 0.0, _INF))
        _reduction("elr_loss", self.reduction)
        object.__setattr__(self, "refine", bool(self.refine))
        object.__setattr__(self, "assume_unique", bool(self.assume_unique))


@dataclass(frozen=True, slots=True)
class GCEParams:
    q: float
    """Exponent in (0, 1]. GCE's CIFAR value: 0.7."""
    reduction: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "q", _number("gce_loss", "q", self.q, 0.0, 1.0, lo_open=True))
        _reduction("gce_loss", self.reduction)


@dataclass(frozen=True, slots=True)
class SCEParams:
    alpha: float
    """Weight of the cross-entropy; >= 0. SCE's CIFAR-10 value: 0.1."""
    beta: float
    """Weight of the reverse cross-entropy; >= 0. SCE's CIFAR-10 value: 1.0."""
    log_zero: float = -4.0
    """A, the value that replaces log 0 in the reverse cross-entropy; < 0. SCE's value: -4."""
    reduction: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _number("sce_loss", "alpha", self.alpha, 0.0, _INF))
        object.__setattr__(self, "beta", _number("sce_loss", "beta", self.beta, 0.0, _INF))
        object.__setattr__(self, "log_zero", _number("sce_loss", "log_zero", self.log_zero, -_INF, 0.0,
                                                     hi_open=True))
        _reduction("sce_loss", self.reduction)


@dataclass(frozen=True, slots=True)
class BootstrapParams:
    beta: float
    """Weight of the given label in the target ``beta e_y + (1 - beta) p``; in [0, 1]. Soft bootstrapping: 0.95."""
    reduction: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "beta", _number("bootstrap_loss", "beta", self.beta, 0.0, 1.0))
        _reduction("bootstrap_loss", self.reduction)


def validate_labels(logits, labels, *, where: str, check_values: bool = True, valid=None) -> None:
    """The checks every baseline shares (metadata only, plus one host sync with ``check_values``): logits
    ``[B, K]`` of a supported dtype, labels ``[B]`` int64 on the same device, and with ``check_values`` every label
    of a valid row (``valid``: a bool mask; default ``labels >= 0``) is ``< K``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"{where}: logits must be a 2-D tensor [B, K], got {describe(logits)}")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"{where}: logits dtype must be one of {LOGIT_DTYPES}, got {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"{where}: need at least one class (K >= 1)")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"{where}: labels must be a 1-D int64 tensor [B], got {describe(labels)}")
    if labels.dtype != torch.int64:
        raise TypeError(f"{where}: labels dtype must be torch.int64, got {labels.dtype}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"{where}: labels has {labels.shape[0]} entries but logits has B={logits.shape[0]} rows")
    if labels.device != logits.device:
        raise ValueError(f"{where}: logits ({logits.device}) and labels ({labels.device}) must be on the same device")
    if check_values and labels.numel():
        k = logits.shape[1]
        mask = labels >= 0 if valid is None else valid
        bad = mask & (labels >= k) if valid is None else mask & ((labels < 0) | (labels >= k))
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise IndexError(f"{where}: label {int(labels[i])} at row {i} is outside [0, {k}) (K = {k} classes)")


# --- shared pieces of the references ----------------------------------------------------------------------------
def _prepare(logits: torch.Tensor, valid: torch.Tensor):
    """(z, good, logp, p): fp32 math (fp64 kept); padded and non-finite rows zeroed before the softmax so no NaN
    leaks into another row's gradient."""
    z = logits if logits.dtype == torch.float64 else logits.float()
    good = valid & torch.isfinite(z).all(dim=1)
    logp = F.log_softmax(torch.where(good[:, None], z, torch.zeros_like(z)), dim=1)
    return z, good, logp, logp.exp()


def _finish(z: torch.Tensor, per_row: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """Non-finite valid rows -> NaN loss and NaN gradient (the factor is NaN only there, so other rows' gradients
    stay exactly 0 from it); padded rows -> 0; then the reduction."""
    finite = torch.isfinite(z).all(dim=1)
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


def _label_logp(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logp.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)


# --- the references ----------------------------------------------------------------------------------------------
def elr_loss_reference(logits: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, labels: torch.Tensor,
                       params: ELRParams) -> torch.Tensor:
    """Reference ELR loss; updates ``bank`` (the EMA targets) in place when ``params.refine``. Inputs are assumed
    validated. ``labels[i]`` is row i's given label (ignored on padded rows, ``index[i] < 0``). With
    ``params.assume_unique`` the duplicate ordering is skipped (no sort, no host sync)."""
    beta, lam, eps = params.beta, params.lam, ELR_CLAMP
    valid = index >= 0
    z, good, logp, p = _prepare(logits, valid)
    per_row = -_label_logp(logp, torch.where(valid, labels, torch.zeros_like(labels)))  # a padded row's label: any
    if params.refine:
        c = p.clamp(eps, 1.0 - eps)  # gradient passes where eps <= p <= 1 - eps (torch.clamp's rule)
        c_det = c.detach()
        step = c_det / c_det.sum(dim=1, keepdim=True)
        target = torch.zeros_like(z)
        if params.assume_unique:
            rows = torch.where(good, index, torch.zeros_like(index))
            t_new = beta * bank[rows].to(z.dtype) + (1.0 - beta) * step
            target = torch.where(good[:, None], t_new, target)
            _write_good_rows(bank, index, good, t_new)
        else:
            rank = sequential_rank(torch.where(good, index, torch.full_like(index, -1)))
            rank = torch.where(good, rank, torch.full_like(rank, -1))
            n_rounds = int(rank.max().item()) + 1 if rank.numel() else 0  # host sync: reference only
            for r in range(n_rounds):
                pos = torch.nonzero(rank == r).squeeze(1)
                rows = index[pos]
                t_new = beta * bank[rows].to(z.dtype) + (1.0 - beta) * step[pos]
                bank[rows] = t_new.to(bank.dtype)
                target[pos] = t_new
        s = (c * target).sum(dim=1)
        # log(1 - s): s <= max(c) <= 1 - eps for a target that sums to <= 1, so the log stays finite.
        per_row = per_row + lam * torch.log1p(-s)
    return _finish(z, per_row, valid, params.reduction)


def _write_good_rows(bank: torch.Tensor, index: torch.Tensor, good: torch.Tensor, rows: torch.Tensor) -> None:
    """``bank[index[i]] = rows[i]`` for good rows (unique indices), without a host sync: the other rows rewrite
    what the bank already holds at their (clamped) index... unless that index is also a good row's, so they are
    sent to a good row's index with that row's value instead (deterministic: one value per bank row)."""
    if index.numel() == 0:
        return
    first = torch.argmax(good.to(torch.uint8))
    fb_index = index[first].clamp_min(0)
    fb_row = torch.where(good[first], rows[first], bank[fb_index].to(rows.dtype))
    target_index = torch.where(good, index, fb_index)
    values = torch.where(good[:, None], rows, fb_row[None, :])
    bank.index_copy_(0, target_index, values.detach().to(bank.dtype))


def gce_loss_reference(logits: torch.Tensor, labels: torch.Tensor, params: GCEParams) -> torch.Tensor:
    """Reference GCE loss ``(1 - p_y**q) / q``; padding: ``labels < 0``. Inputs are assumed validated."""
    valid = labels >= 0
    z, _, logp, _ = _prepare(logits, valid)
    q = params.q
    per_row = -torch.expm1(q * _label_logp(logp, labels)) / q  # (1 - p_y^q) / q, accurate for p_y near 1
    return _finish(z, per_row, valid, params.reduction)


def sce_loss_reference(logits: torch.Tensor, labels: torch.Tensor, params: SCEParams) -> torch.Tensor:
    """Reference SCE loss ``alpha CE + beta RCE``, ``RCE = -A (1 - p_y)``; padding: ``labels < 0``."""
    valid = labels >= 0
    z, _, logp, _ = _prepare(logits, valid)
    lp_y = _label_logp(logp, labels)
    rce = -params.log_zero * -torch.expm1(lp_y)  # -A (1 - p_y)
    per_row = params.alpha * -lp_y + params.beta * rce
    return _finish(z, per_row, valid, params.reduction)


def bootstrap_loss_reference(logits: torch.Tensor, labels: torch.Tensor, params: BootstrapParams) -> torch.Tensor:
    """Reference soft-bootstrapping loss ``-sum_k (beta e_y + (1 - beta) p)_k log p_k`` (gradient through both
    ``p``); padding: ``labels < 0``."""
    valid = labels >= 0
    z, _, logp, p = _prepare(logits, valid)
    beta = params.beta
    per_row = -beta * _label_logp(logp, labels) - (1.0 - beta) * (p * logp).sum(dim=1)
    return _finish(z, per_row, valid, params.reduction)
