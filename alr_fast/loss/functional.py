"""Public functional API: :func:`alr_loss`, input validation and backend dispatch.

The semantics (padded rows, duplicates, non-finite logits, reductions) are specified in
:mod:`alr_fast.loss.reference`; every backend implements exactly those.
"""

from __future__ import annotations

import torch

from alr_fast.loss.contract import (  # noqa: F401  (re-exported: the public names of the contract)
    BACKENDS,
    BANK_DTYPES,
    LOGIT_DTYPES,
    REDUCTIONS,
    ALRParams,
    describe,
    resolve_backend,
    validate_fused_inputs,
    validate_inputs,
)
from alr_fast.loss.baselines import (
    BootstrapParams,
    ELRParams,
    GCEParams,
    SCEParams,
    bootstrap_loss_reference,
    elr_loss_reference,
    gce_loss_reference,
    sce_loss_reference,
    validate_labels,
)
from alr_fast.loss.reference import alr_loss_reference
from alr_fast.loss.torch_fast import alr_loss_unique, elr_loss_unique

__all__ = ["alr_loss", "raise_on_bad_index", "elr_loss", "gce_loss", "sce_loss", "bootstrap_loss", "ALRParams", "resolve_backend", "validate_inputs", "describe", "LOGIT_DTYPES", "BANK_DTYPES",
           "BACKENDS", "REDUCTIONS"]


def alr_loss(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    *,
    alpha: float,
    lam: float,
    refine: bool = True,
    reduction: str = "mean",
    backend: str = "auto",
    check_index: bool = True,
    assume_unique: bool = False,
    n_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """ALR loss on a batch, updating the soft-label ``bank`` in place at rows ``index`` when ``refine``.

    Args:
        logits: ``[B, K]`` fp32/bf16/fp16 (fp64 for tests); math is done in fp32 (fp64 stays fp64 on torch).
        bank: ``[N, K]`` soft labels (fp32 or bf16 usually); rows ``index`` are overwritten when ``refine``.
        index: ``[B]`` int64 global sample indices; ``< 0`` marks a padded row (ignored everywhere).
        alpha: EMA momentum of the soft labels, ``t <- alpha t + (1 - alpha) p``.
        lam: weight of the entropy term ``lam * H(p)`` (refinement only); 0 gives SELC.
        refine: False for warm-up (cross-entropy against the bank rows, no update, no entropy).
        reduction: ``"mean"`` over valid rows, ``"sum"`` or ``"none"`` (per-row, 0 on padded rows).
        backend: ``"torch"`` (reference), ``"triton"`` (fused kernel) or ``"auto"``.
        check_index: verify ``index < N``, and with ``assume_unique`` that no valid index repeats (one host
            sync on CUDA). Without it the fused kernel still never reads or writes out of bounds: an index
            ``>= N`` gets a NaN row and sets a device flag (:func:`alr_fast.loss.triton.raise_on_bad_index`).
        assume_unique: promise that no index repeats in the batch: the fused kernel skips the device sort it
            needs for the sequential duplicate semantics, and the torch backend skips its sort and host sync
            (results are undefined if the promise is broken; ``check_index`` detects it).
        n_valid: optional, ``reduction="mean"`` on the fused kernel: the number of rows with ``index >= 0`` as a
            one-element tensor on the logits' device (e.g. ``(index >= 0).sum()`` the caller computes anyway).
            The kernel then needs no counting pre-pass: the forward is one launch (with ``assume_unique``). Not
            checked against the index (that would sync): a wrong count scales the gradient, not the loss. The
            torch backends count the rows themselves and ignore it.

    Semantics of duplicates and non-finite logits: see :mod:`alr_fast.loss.reference`.
    """
    params = ALRParams.of(alpha, lam, refine, reduction, assume_unique)  # range checks: once per setting
    validate_inputs(logits, bank, index, check_index=check_index, assume_unique=assume_unique)  # once per call
    if backend != "torch" and backend != "triton":  # the trainer passes its Runtime's resolved backend
        backend = resolve_backend(backend, logits.device, logits.dtype)
    if backend == "triton":
        from alr_fast.loss.triton import fused_alr_loss

        validate_fused_inputs(logits, bank, "alr_loss")
        return fused_alr_loss(logits, bank, index, params, n_valid=n_valid if reduction == "mean" else None,
                              validated=True)
    if params.assume_unique:  # no sort, no host sync, closed-form gradient (what the trainer runs on CPU)
        return alr_loss_unique(logits, bank, index, params)
    return alr_loss_reference(logits, bank, index, params)


def raise_on_bad_index(backend: str, device: torch.device, n_rows: int) -> None:
    """Raise ``IndexError`` naming an index ``>= n_rows`` that a fused call on ``device`` masked since the last
    check (the kernel gives such a row a NaN loss and never touches the bank). Reads a device flag: a host sync,
    so call it where the loop synchronises anyway (the trainer: once per epoch). No-op for the torch backend,
    which checks before it indexes (``check_index``) or raises from the indexing itself."""
    if backend == "triton":
        from alr_fast.loss.triton import raise_on_bad_index as check_flag

        check_flag(device, n_rows)


# --- the loss-based baselines (specification: alr_fast.loss.baselines) --------------------------------------------
def _baseline_backend(backend: str, logits: torch.Tensor, where: str, *, unique: bool = True) -> str:
    """``'torch'`` (the reference; for ELR with ``assume_unique`` its closed-form path in torch_fast) or
    ``'triton'`` (alr_fast.loss.triton.baselines). ``'auto'`` takes the fused kernel for CUDA logits when it
    applies: fp32/bf16/fp16 logits, K <= its MAX_K, and for ELR no repeated index promised (``assume_unique``);
    otherwise ``'torch'``. ``'triton'`` where it does not apply is an error."""
    if backend not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    resolved = resolve_backend(backend, logits.device, logits.dtype)  # 'triton' without triton: a clear error
    if resolved == "torch":
        return "torch"
    from alr_fast.loss.triton.baselines import MAX_K, fits

    why = ("logits dtype torch.float64 (the fused kernel computes in fp32)" if logits.dtype == torch.float64 else
           f"K = {logits.shape[1]} > {MAX_K} columns" if not fits(logits.shape[1]) else
           "repeated indices need the sequential order (pass assume_unique=True if none repeats)" if not unique
           else None)
    if why is None:
        return "triton"
    if backend == "triton":
        raise ValueError(f"{where}: backend='triton' cannot run this call: {why}; use backend='torch' or 'auto'")
    return "torch"


def elr_loss(logits: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, labels: torch.Tensor, *, beta: float,
             lam: float, refine: bool = True, reduction: str = "mean", backend: str = "auto",
             check_index: bool = True, assume_unique: bool = False) -> torch.Tensor:
    """ELR (early-learning regularisation) on a batch: ``-log p_y + lam log(1 - <p, t>)`` with ``t`` the bank row,
    a running average ``t <- beta t + (1 - beta) p`` updated in place at rows ``index`` when ``refine``.

    ``bank``/``index`` follow :func:`alr_loss` (index < 0: padding; duplicates sequential in batch order;
    ``check_index``/``assume_unique`` as there); ``labels`` ``[B]`` int64 are the given labels (a valid row's must
    be in ``[0, K)``). ``refine=False`` is plain cross-entropy on ``labels`` (no bank write).
    Backends: the fused kernel where ``_baseline_backend`` picks it; otherwise, with ``assume_unique``, the
    closed-form path :func:`alr_fast.loss.torch_fast.elr_loss_unique` (no sort, no host sync, no autograd graph:
    what the trainer runs on CPU), and without it the reference. Semantics: :mod:`alr_fast.loss.baselines`."""
    params = ELRParams(beta, lam, refine, reduction, assume_unique)
    validate_inputs(logits, bank, index, where="elr_loss", check_index=check_index, assume_unique=assume_unique)
    validate_labels(logits, labels, where="elr_loss", check_values=check_index, valid=index >= 0)
    if _baseline_backend(backend, logits, "elr_loss", unique=assume_unique) == "triton":
        from alr_fast.loss.triton.baselines import fused_elr_loss

        validate_fused_inputs(logits, bank, "elr_loss")
        return fused_elr_loss(logits, bank, index, labels, params)
    if params.assume_unique:  # no sort, no host sync, closed-form gradient (what the trainer runs on CPU)
        return elr_loss_unique(logits, bank, index, labels, params)
    return elr_loss_reference(logits, bank, index, labels, params)


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, *, q: float, reduction: str = "mean",
             backend: str = "auto", check_index: bool = True) -> torch.Tensor:
    """GCE (generalised cross-entropy) ``(1 - p_y**q) / q`` per row; ``labels`` ``[B]`` int64, ``-1`` = padding.
    ``check_index``: check every label ``< K`` (one host sync on CUDA). Semantics: :mod:`alr_fast.loss.baselines`."""
    params = GCEParams(q, reduction)
    validate_labels(logits, labels, where="gce_loss", check_values=check_index)
    if _baseline_backend(backend, logits, "gce_loss") == "triton":
        from alr_fast.loss.triton.baselines import fused_gce_loss

        return fused_gce_loss(logits, labels, params)
    return gce_loss_reference(logits, labels, params)


def sce_loss(logits: torch.Tensor, labels: torch.Tensor, *, alpha: float, beta: float, log_zero: float = -4.0,
             reduction: str = "mean", backend: str = "auto", check_index: bool = True) -> torch.Tensor:
    """SCE (symmetric cross-entropy) ``alpha CE + beta RCE``, ``RCE = -A (1 - p_y)`` with ``A = log_zero``;
    ``labels`` ``[B]`` int64, ``-1`` = padding. Semantics: :mod:`alr_fast.loss.baselines`."""
    params = SCEParams(alpha, beta, log_zero, reduction)
    validate_labels(logits, labels, where="sce_loss", check_values=check_index)
    if _baseline_backend(backend, logits, "sce_loss") == "triton":
        from alr_fast.loss.triton.baselines import fused_sce_loss

        return fused_sce_loss(logits, labels, params)
    return sce_loss_reference(logits, labels, params)


def bootstrap_loss(logits: torch.Tensor, labels: torch.Tensor, *, beta: float, reduction: str = "mean",
                   backend: str = "auto", check_index: bool = True) -> torch.Tensor:
    """Soft bootstrapping: cross-entropy against ``beta e_y + (1 - beta) p`` (gradient through ``p``, as in Reed
    et al.), i.e. ``-beta log p_y + (1 - beta) H(p)``; ``labels`` ``[B]`` int64, ``-1`` = padding.
    Semantics: :mod:`alr_fast.loss.baselines`."""
    params = BootstrapParams(beta, reduction)
    validate_labels(logits, labels, where="bootstrap_loss", check_values=check_index)
    if _baseline_backend(backend, logits, "bootstrap_loss") == "triton":
        from alr_fast.loss.triton.baselines import fused_bootstrap_loss

        return fused_bootstrap_loss(logits, labels, params)
    return bootstrap_loss_reference(logits, labels, params)
