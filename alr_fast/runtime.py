"""Where the run happens: device, precision, loss backend and process group, decided once and passed down."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

__all__ = ["Runtime", "resolve_runtime", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str
    """'fp32', 'bf16' or 'fp16'."""
    backend: str
    """Loss backend actually used: 'torch' or 'triton'."""
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join (or create) the process group DeepSpeed uses; a plain ``python`` run becomes a group of one.

    Under ``deepspeed``/``torchrun`` the launcher's RANK/WORLD_SIZE/MASTER_* variables are used as they are.
    """
    import deepspeed
    import torch.distributed as dist

    # DeepSpeed's engine insists on LOCAL_RANK (set by every launcher); a plain process is local rank 0. A child
    # process ignores an inherited LOCAL_RANK unless RANK is set too.
    os.environ.setdefault("LOCAL_RANK", "0")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "RANK" in os.environ:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
        else:
            # A group of one on a free local port, passed directly rather than through MASTER_PORT so that child
            # processes started later (tests, tools) do not inherit a port this process holds.
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                       init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def shutdown_distributed() -> None:
    """Leave the process group cleanly: every rank meets at a barrier first (a rank that tears down gloo while
    a peer is still talking to it can abort with 'terminate called without an active exception')."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_runtime(device: str, precision: str, backend: str) -> Runtime:
    from alr_fast.contract import resolve_backend  # the backend is decided here, once; alr_loss takes it as is

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device='cuda' but torch sees no CUDA device; use train.device=cpu")
    if device == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    if dev.type == "cpu" and precision == "fp16":
        raise ValueError("train.precision='fp16' needs a GPU (loss scaling on CPU is not supported); use fp32")
    rank, world = init_distributed(dev)
    return Runtime(device=dev, precision=precision, backend=resolve_backend(backend, dev), rank=rank,
                   world_size=world)
