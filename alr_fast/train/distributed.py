"""Small collective helpers used once per epoch, every ``train.nan_check_every`` steps or at the end (never per
step)."""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_rows", "barrier", "all_reduce_sum", "all_reduce_min", "sync_buffers"]


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


@torch.no_grad()
def sync_buffers(module: torch.nn.Module) -> None:
    """Make every rank's buffers identical: floating-point ones (BatchNorm running mean and variance) become
    their mean over ranks, the others (``num_batches_tracked``) rank 0's. A collective; call it on every rank.

    DeepSpeed all-reduces gradients only, so running statistics drift apart per rank (each sees its own data).
    The trainer calls this at the end of every epoch and before every checkpoint, so evaluation, checkpoints
    and ``model.pt`` use one set of statistics, and a resumed run (which loads rank 0's copy of the module)
    continues the same trajectory. The mean of per-rank running variances leaves out the spread of the per-rank
    means (small when shards are drawn from the same distribution); ``SyncBatchNorm`` would be exact but runs
    on GPUs only. One all-reduce of all float buffers packed in fp32 (bf16 buffers are averaged in fp32 and
    rounded once), one broadcast of the others.
    """
    world = _world()
    if world == 1:
        return
    buffers = [b for b in module.buffers() if b.numel()]
    floats = [b for b in buffers if b.is_floating_point()]
    others = [b for b in buffers if not b.is_floating_point()]
    if floats:
        flat = torch.cat([b.detach().reshape(-1).float() for b in floats])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world
        offset = 0
        for b in floats:
            b.copy_(flat[offset: offset + b.numel()].view_as(b))
            offset += b.numel()
    if others:
        flat = torch.cat([b.detach().reshape(-1).long() for b in others])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in others:
            b.copy_(flat[offset: offset + b.numel()].view_as(b))
            offset += b.numel()
