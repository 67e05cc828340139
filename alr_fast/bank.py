"""The soft-label bank: one row of class probabilities per training sample, addressed by global index.

It is model state: an ``nn.Module`` whose buffers move with ``.to()`` and round-trip through
``state_dict``. It is deliberately *not* a submodule of the network that DeepSpeed wraps, so mixed-precision
casting of the model never touches it; the trainer checkpoints it beside the engine.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SoftLabelBank"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SoftLabelBank(nn.Module):
    """Soft labels ``soft[N, K]`` initialised to the one-hot given (noisy) labels ``given[N]``."""

    soft: torch.Tensor
    given: torch.Tensor

    def __init__(self, given_labels: torch.Tensor, num_classes: int, dtype: torch.dtype | str = torch.float32):
        super().__init__()
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ValueError(f"SoftLabelBank: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
            dtype = _DTYPES[dtype]
        if dtype not in _DTYPES.values():
            raise ValueError(f"SoftLabelBank: dtype must be float32 or bfloat16, got {dtype}")
        given_labels = torch.as_tensor(given_labels)
        if given_labels.dim() != 1 or given_labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(
                f"SoftLabelBank: given labels must be a 1-D integer tensor, got shape {tuple(given_labels.shape)} "
                f"dtype {given_labels.dtype}"
            )
        if num_classes < 2:
            raise ValueError(f"SoftLabelBank: num_classes must be >= 2, got {num_classes}")
        given_labels = given_labels.long()
        if given_labels.numel() and (int(given_labels.min()) < 0 or int(given_labels.max()) >= num_classes):
            bad = int(torch.nonzero((given_labels < 0) | (given_labels >= num_classes))[0])
            raise ValueError(
                f"SoftLabelBank: label {int(given_labels[bad])} at global index {bad} is outside [0, {num_classes})"
            )
        soft = torch.zeros(given_labels.numel(), num_classes, dtype=dtype, device=given_labels.device)
        soft.scatter_(1, given_labels[:, None], 1.0)
        self.register_buffer("soft", soft)
        self.register_buffer("given", given_labels.clone())

    @property
    def num_samples(self) -> int:
        return self.soft.shape[0]

    @property
    def num_classes(self) -> int:
        return self.soft.shape[1]

    def refined_labels(self) -> torch.Tensor:
        """Argmax of each soft label, ``[N]`` int64 (ties go to the lowest class id)."""
        return self.soft.float().argmax(dim=1)

    def confidence(self) -> torch.Tensor:
        """Soft-label mass of the refined class, ``[N]`` fp32."""
        return self.soft.float().max(dim=1).values

    def changed(self) -> torch.Tensor:
        """``[N]`` bool: the refined label differs from the given (noisy) label."""
        return self.refined_labels() != self.given

    def reset(self) -> None:
        """Back to the one-hot given labels."""
        self.soft.zero_()
        self.soft.scatter_(1, self.given[:, None], 1.0)

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, num_classes={self.num_classes}, dtype={self.soft.dtype}"
