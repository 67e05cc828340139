"""Dtype arguments given by name (``"bfloat16"``) or as a ``torch.dtype``: one parser, errors that name the owner."""

from __future__ import annotations

import torch

__all__ = ["choose_dtype"]


def choose_dtype(dtype: torch.dtype | str, allowed: dict[str, torch.dtype], who: str) -> torch.dtype:
    """The ``torch.dtype`` that ``dtype`` names, which must be one of ``allowed`` (name -> dtype)."""
    if isinstance(dtype, str):
        if dtype not in allowed:
            raise ValueError(f"{who}: dtype must be one of {sorted(allowed)}, got {dtype!r}")
        return allowed[dtype]
    if dtype not in allowed.values():
        raise ValueError(f"{who}: dtype must be one of {sorted(allowed)}, got {dtype}")
    return dtype
