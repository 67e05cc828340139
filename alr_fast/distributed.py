"""Small collective helpers used once per epoch, every ``train.nan_check_every`` steps or at the end (never per
step)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_rows", "barrier", "all_reduce_sum", "all_reduce_min"]


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if _world() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    if _world() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def all_gather_rows(local: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``local`` tensor (first dimension may differ by rank), in rank order, on every rank.

    Communication-backend friendly: pads to the longest first dimension, all-gathers, trims.
    """
    world = _world()
    if world == 1:
        return [local]
    n = torch.tensor([local.shape[0]], dtype=torch.long, device=local.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[: int(s.item())] for o, s in zip(out, sizes)]
