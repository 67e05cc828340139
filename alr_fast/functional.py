"""Public functional API: :func:`alr_loss`, input validation and backend dispatch.

The semantics (padded rows, duplicates, non-finite logits, reductions) are specified in
:mod:`alr_fast.reference`; every backend implements exactly those.
"""

from __future__ import annotations

import math

import torch

from alr_fast.reference import alr_loss_reference

__all__ = ["alr_loss", "resolve_backend", "validate_inputs", "describe", "LOGIT_DTYPES", "BANK_DTYPES", "BACKENDS", "REDUCTIONS"]

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
BANK_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
BACKENDS = ("auto", "torch", "triton")
REDUCTIONS = ("mean", "sum", "none")


def _triton_available() -> bool:
    try:
        import alr_fast.kernels as kernels
    except ImportError:
        return False
    return bool(getattr(kernels, "HAS_FUSED_ALR", False))


def resolve_backend(backend: str, device: torch.device, logits_dtype: torch.dtype | None = None) -> str:
    """Decide the backend once: ``auto`` is ``triton`` for CUDA tensors when the fused kernel exists (fp64
    logits always take the reference: the kernel computes in fp32)."""
    if backend not in BACKENDS:
        raise ValueError(f"alr_loss: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        fused_ok = device.type == "cuda" and logits_dtype != torch.float64 and _triton_available()
        return "triton" if fused_ok else "torch"
    if backend == "triton" and not _triton_available():
        raise RuntimeError(
            "alr_loss: backend='triton' requested but the fused kernel is not available in this install "
            "(alr_fast.kernels.HAS_FUSED_ALR is False); use backend='torch'"
        )
    return backend


def validate_inputs(logits, bank, index, *, alpha, lam, reduction, where: str = "alr_loss",
                    check_index: bool = False) -> None:
    """Raise a clear error naming the argument (shared by every backend; ``where`` prefixes the message).

    Only metadata is read, except with ``check_index`` (a host sync on CUDA: ``index.max()``).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"{where}: logits must be a 2-D tensor [B, K], got {describe(logits)}")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"{where}: logits dtype must be one of {LOGIT_DTYPES}, got {logits.dtype}")
    if not isinstance(bank, torch.Tensor) or bank.dim() != 2:
        raise ValueError(f"{where}: bank must be a 2-D tensor [N, K], got {describe(bank)}")
    if bank.dtype not in BANK_DTYPES:
        raise TypeError(f"{where}: bank dtype must be one of {BANK_DTYPES}, got {bank.dtype}")
    if bank.requires_grad:
        raise ValueError(f"{where}: bank must not require grad (it is updated in place, outside autograd)")
    if logits.shape[1] != bank.shape[1]:
        raise ValueError(f"{where}: logits has K={logits.shape[1]} classes but bank has K={bank.shape[1]} columns")
    if logits.shape[1] < 1:
        raise ValueError(f"{where}: need at least one class (K >= 1)")
    if not isinstance(index, torch.Tensor) or index.dim() != 1:
        raise ValueError(f"{where}: index must be a 1-D int64 tensor [B], got {describe(index)}")
    if index.dtype != torch.int64:
        raise TypeError(f"{where}: index dtype must be torch.int64, got {index.dtype}")
    if index.shape[0] != logits.shape[0]:
        raise ValueError(f"{where}: index has {index.shape[0]} entries but logits has B={logits.shape[0]} rows")
    if not (logits.device == bank.device == index.device):
        raise ValueError(
            f"{where}: logits ({logits.device}), bank ({bank.device}) and index ({index.device}) "
            "must be on the same device"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"{where}: alpha must be in [0, 1], got {alpha}")
    if not math.isfinite(float(lam)) or float(lam) < 0.0:
        raise ValueError(f"{where}: lam must be a finite number >= 0, got {lam}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if check_index and index.numel() > 0:
        # Host sync on CUDA; the trainer's loaders give in-range indices by construction and pass False there.
        hi = int(index.max().item())
        if hi >= bank.shape[0]:
            raise IndexError(f"{where}: index {hi} is out of range for a bank of {bank.shape[0]} rows")


def describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


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
        check_index: verify ``index < N`` (a host sync on CUDA).
        assume_unique: promise that no index repeats in the batch; the fused kernel then skips the device sort
            it needs for the sequential duplicate semantics (results are undefined if the promise is broken).
            Ignored by the torch backend.

    Semantics of duplicates and non-finite logits: see :mod:`alr_fast.reference`.
    """
    validate_inputs(logits, bank, index, alpha=alpha, lam=lam, reduction=reduction, check_index=check_index)
    chosen = resolve_backend(backend, logits.device, logits.dtype)
    if chosen == "triton":
        from alr_fast.kernels import fused_alr_loss

        return fused_alr_loss(
            logits, bank, index, alpha=float(alpha), lam=float(lam), refine=refine, reduction=reduction,
            assume_unique=assume_unique,
        )
    return alr_loss_reference(
        logits, bank, index, alpha=float(alpha), lam=float(lam), refine=refine, reduction=reduction
    )
