"""The ALR loss contract, checked once: the hyper-parameters as one frozen type, the input checks every
backend shares, and the backend choice.

Imported by :mod:`alr_fast.loss.functional` and by the fused kernel (``alr_fast.loss.triton``); it imports neither, so
there is no import cycle (functional -> kernels -> contract, functional -> contract).

Where each check runs: :class:`ALRParams` range-checks ``alpha``/``lam``/``reduction`` when it is built (once
per distinct setting: :meth:`ALRParams.of` caches); it is the only range check of ``alpha``/``lam`` in the
project: :class:`alr_fast.config.MethodConfig` validates ``method.alpha``/``method.lam`` by building one (so a bad
value fails when the config is built, naming the field), and the trainer's schedule hands the loss one per step; :func:`validate_inputs` checks the tensors once per call
(metadata only, no device access unless ``check_index``); :func:`resolve_backend` is called once, by
:func:`alr_fast.train.runtime.resolve_runtime` (or by ``alr_loss(backend="auto")`` for a library user).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass

import torch

__all__ = [
    "ALRParams",
    "ALRParamError",
    "validate_inputs",
    "validate_fused_inputs",
    "resolve_backend",
    "fused_kernel_available",
    "describe",
    "LOGIT_DTYPES",
    "BANK_DTYPES",
    "BACKENDS",
    "REDUCTIONS",
]

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
BANK_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
BACKENDS = ("auto", "torch", "triton")
REDUCTIONS = ("mean", "sum", "none")


class ALRParamError(ValueError):
    """A hyper-parameter :class:`ALRParams` refuses; ``field`` names it ('alpha', 'lam' or 'reduction') so that a
    caller holding the value under another name (the config's ``method.lam``) can say where it came from."""

    def __init__(self, field: str, requirement: str, value):
        self.field, self.requirement, self.value = field, requirement, value
        shown = repr(value) if isinstance(value, str) else value
        super().__init__(f"alr_loss: {field} {requirement}, got {shown}")


@dataclass(frozen=True, slots=True)
class ALRParams:
    """Hyper-parameters of one ALR loss call; validated when built, immutable, hashable."""

    alpha: float
    """EMA momentum of the soft labels, ``t <- alpha t + (1 - alpha) p``; in [0, 1]."""
    lam: float
    """Weight of the entropy term ``lam * H(p)`` (refinement only); finite, >= 0; 0 gives SELC."""
    refine: bool = True
    """False for warm-up: cross-entropy against the bank rows, no update, no entropy."""
    reduction: str = "mean"
    """'mean' over valid rows, 'sum' or 'none' (per row, 0 on padded rows)."""
    assume_unique: bool = False
    """The caller promises that no index repeats in the batch (results undefined otherwise)."""

    def __post_init__(self) -> None:
        alpha, lam = float(self.alpha), float(self.lam)
        if not 0.0 <= alpha <= 1.0:
            raise ALRParamError("alpha", "must be in [0, 1]", self.alpha)
        if not math.isfinite(lam) or lam < 0.0:
            raise ALRParamError("lam", "must be a finite number >= 0", self.lam)
        if self.reduction not in REDUCTIONS:
            raise ALRParamError("reduction", f"must be one of {REDUCTIONS}", self.reduction)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "refine", bool(self.refine))
        object.__setattr__(self, "assume_unique", bool(self.assume_unique))

    @staticmethod
    @functools.lru_cache(maxsize=1024)
    def of(alpha: float, lam: float, refine: bool = True, reduction: str = "mean",
           assume_unique: bool = False) -> "ALRParams":
        """The (cached) params for these values: a training loop calling with the same settings every step
        builds and checks them once."""
        return ALRParams(alpha, lam, refine, reduction, assume_unique)

    @property
    def has_entropy(self) -> bool:
        return self.refine and self.lam != 0.0


def describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def validate_inputs(logits, bank, index, *, where: str = "alr_loss", check_index: bool = False,
                    assume_unique: bool = False) -> None:
    """Raise a clear error naming the argument (shared by every backend; ``where`` prefixes the message).

    Only metadata is read, except with ``check_index``: one host sync on CUDA, which checks ``index < N`` and,
    with ``assume_unique``, that no valid index repeats (the promise the fast paths rely on).
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
    if check_index and index.numel() > 0:
        _check_index_values(index, bank.shape[0], where, assume_unique)


def _check_index_values(index: torch.Tensor, n_rows: int, where: str, assume_unique: bool) -> None:
    """``index < N`` and, with ``assume_unique``, no repeated valid index: one host sync for both."""
    hi = index.max()
    if assume_unique and index.numel() > 1:
        s = torch.sort(index).values
        dup = ((s[1:] == s[:-1]) & (s[1:] >= 0)).any()
        hi, has_dup = torch.stack([hi, dup.to(hi.dtype)]).tolist()  # the one host sync (CUDA)
    else:
        hi, has_dup = int(hi), 0
    if hi >= n_rows:
        raise IndexError(f"{where}: index {hi} is out of range for a bank of {n_rows} rows")
    if has_dup:
        raise ValueError(
            f"{where}: assume_unique=True but index repeats a row (the duplicate-safe path needs "
            "assume_unique=False)"
        )


def validate_fused_inputs(logits, bank, where: str) -> None:
    """What only the fused kernel needs on top of :func:`validate_inputs` (metadata only)."""
    if logits.dtype == torch.float64:
        raise TypeError(
            f"{where}: logits dtype torch.float64 is not supported by the fused kernel (it computes in fp32); "
            "use backend='torch' for float64"
        )
    if (bank.shape[1] > 1 and bank.stride(1) != 1) or (bank.shape[0] > 1 and bank.stride(0) == 0):
        raise ValueError(
            f"{where}: bank must have unit column stride and distinct rows (it is updated in place), got "
            f"strides {bank.stride()}"
        )


@functools.lru_cache(maxsize=None)
def fused_kernel_available() -> bool:
    """Whether the fused kernel can be imported (it needs triton); decided without importing the kernels."""
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, device: torch.device, logits_dtype: torch.dtype | None = None) -> str:
    """Decide the backend once: ``auto`` is ``triton`` for CUDA tensors when the fused kernel exists (fp64
    logits always take the reference: the kernel computes in fp32)."""
    if backend not in BACKENDS:
        raise ValueError(f"alr_loss: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        fused_ok = device.type == "cuda" and logits_dtype != torch.float64 and fused_kernel_available()
        return "triton" if fused_ok else "torch"
    if backend == "triton" and not fused_kernel_available():
        raise RuntimeError(
            "alr_loss: backend='triton' requested but the fused kernel is not available in this install "
            "(triton is not installed); use backend='torch'"
        )
    return backend
