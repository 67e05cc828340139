"""The soft-label bank: one row of class probabilities per training sample, addressed by global index.

Sharded across data-parallel ranks by the project's one rule (:class:`alr_fast.loss.sharding.Sharding`: rank r of W
owns the samples whose global index i has ``i % W == r``, stored at local row ``i // W``; for tar shards, with
``blocks``, a contiguous run of whole shards). The data loaders give
each rank only the samples it owns, so no bank row ever travels between ranks during training; the global bank
is assembled only for checkpoints' re-sharding and for exports. With W = 1 the local row is the global index.

It is model state: an ``nn.Module`` whose buffers move with ``.to()`` and round-trip through
``state_dict``. It is deliberately *not* a submodule of the network that DeepSpeed wraps, so mixed-precision
casting of the model never touches it; the trainer checkpoints it beside the engine.
"""

from __future__ import annotations

import torch
from torch import nn

from alr_fast.util.dtypes import choose_dtype
from alr_fast.loss.sharding import Sharding

__all__ = ["SoftLabelBank"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class SoftLabelBank(nn.Module):
    """Soft labels ``soft[N, K]`` initialised to the one-hot given (noisy) labels ``given[N]``."""

    soft: torch.Tensor
    given: torch.Tensor
    global_index: torch.Tensor

    def __init__(
        self,
        given_labels: torch.Tensor,
        num_classes: int,
        dtype: torch.dtype | str = torch.float32,
        *,
        sharding: Sharding = Sharding(),
    ):
        """``given_labels`` are the labels of *all* N samples; this bank keeps the rows ``sharding`` owns (the
        caller's rank of its world size, with the dataset's shard blocks if it has them: built once by
        :class:`alr_fast.loss.alr.ALR`, then read from ``bank.sharding`` by the checkpoint)."""
        super().__init__()
        dtype = choose_dtype(dtype, _DTYPES, "SoftLabelBank")
        given_labels = torch.as_tensor(given_labels)
        if given_labels.dim() != 1 or given_labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(
                f"SoftLabelBank: given labels must be a 1-D integer tensor, got shape {tuple(given_labels.shape)} "
                f"dtype {given_labels.dtype}"
            )
        if num_classes < 2:
            raise ValueError(f"SoftLabelBank: num_classes must be >= 2, got {num_classes}")
        if not isinstance(sharding, Sharding):
            raise TypeError(f"SoftLabelBank: sharding must be a Sharding, got {type(sharding).__name__}")
        self.sharding = sharding
        given_labels = given_labels.long()
        if given_labels.numel() and (int(given_labels.min()) < 0 or int(given_labels.max()) >= num_classes):
            bad = int(torch.nonzero((given_labels < 0) | (given_labels >= num_classes))[0])
            raise ValueError(
                f"SoftLabelBank: label {int(given_labels[bad])} at global index {bad} is outside [0, {num_classes})"
            )
        self.total_samples = int(given_labels.numel())
        owned = torch.from_numpy(self.sharding.owned(given_labels.numel())).to(given_labels.device)
        given_labels = given_labels[owned]
        soft = torch.zeros(given_labels.numel(), num_classes, dtype=dtype, device=given_labels.device)
        soft.scatter_(1, given_labels[:, None], 1.0)
        self.register_buffer("soft", soft)
        self.register_buffer("given", given_labels.clone())
        self.register_buffer("global_index", owned)

    @property
    def num_samples(self) -> int:
        """Rows held here (all N when world_size is 1)."""
        return self.soft.shape[0]

    def local_index(self, index: torch.Tensor) -> torch.Tensor:
        """Global indices of owned samples -> local rows; padding (-1) stays -1. No host sync."""
        return self.sharding.local(index)

    def owns(self, index: torch.Tensor) -> torch.Tensor:
        """[B] bool: a real row (>= 0) this rank owns; padding (-1) is not owned (the rule of
        :meth:`alr_fast.loss.sharding.Sharding.owns`, which this is)."""
        return self.sharding.owns(index)

    def load_rows_from(self, shards: list[dict]) -> None:
        """Fill the owned rows from the state dicts of a bank saved with *any* sharding (re-sharding)."""
        filled = torch.zeros(self.num_samples, dtype=torch.bool, device=self.soft.device)
        for sd in shards:
            gidx = sd["global_index"].to(self.soft.device)
            mine = self.sharding.owns(gidx)
            local = self.sharding.local(gidx[mine])
            self.soft[local] = sd["soft"].to(self.soft.device, self.soft.dtype)[mine]
            if not torch.equal(self.given[local], sd["given"].to(self.given.device)[mine]):
                raise ValueError("SoftLabelBank: the checkpoint's given labels differ from this run's labels")
            filled[local] = True
        if not bool(filled.all()):
            raise ValueError(
                f"SoftLabelBank: the checkpoint shards cover {int(filled.sum())} of this rank's {self.num_samples} rows"
            )

    def load_other_world(self, shards) -> None:
        """Checkpoint hook (:mod:`alr_fast.train.checkpoint`): the checkpoint was written with another world
        size; ``shards()`` returns every saved rank's state dict, and this rank takes its rows from them."""
        self.load_rows_from(shards())

    @property
    def num_classes(self) -> int:
        return self.soft.shape[1]

    def refined_labels(self) -> torch.Tensor:
        """Argmax of each soft label, ``[N]`` int64 (ties go to the lowest class id)."""
        return self.soft.float().argmax(dim=1)

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples} of {self.total_samples}, num_classes={self.num_classes}, "
                f"dtype={self.soft.dtype}, rank={self.sharding.rank}/{self.sharding.world}")
