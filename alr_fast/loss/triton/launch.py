"""Host side of the fused ALR kernel: input checks, buffers, the launches (no autograd), the bad-index flag.

``alr_forward`` returns ``(loss, grad)`` and updates the bank, with no host synchronisation; ``alr_grad_scale``
is the backward's in-place scaling (one launch that returns at once where the factor is 1).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from alr_fast.loss.contract import REDUCTIONS as _REDUCTION_NAMES
from alr_fast.loss.contract import ALRParams, describe, validate_fused_inputs, validate_inputs

from . import heuristics as H
from .alr_kernels import _alr_fwd_kernel, _alr_grad_scale_kernel
from .reduction import TICKETS, count_valid_kernel, counter_reset_on_failure
from .rows import INTERPRETED
from .split_k import launch_split

REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}  # the kernel's codes for alr_fast.loss.contract.REDUCTIONS
assert set(REDUCTIONS) == set(_REDUCTION_NAMES)

_NULL_CONTEXT = contextlib.nullcontext()


def device_guard(device: torch.device):
    """Launch on the tensors' device: Triton launches on the current CUDA device and its current stream."""
    if device.type == "cuda" and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return _NULL_CONTEXT


# ---------------------------------------------------------------------------------------- out-of-range index
_BAD_INDEX: dict[torch.device, torch.Tensor] = {}


def bad_index_flag(device: torch.device) -> torch.Tensor:
    """Per-device int64 flag: 0, or 1 + the largest index >= N any launch on the device has seen."""
    flag = _BAD_INDEX.get(device)
    if flag is None:
        flag = _BAD_INDEX[device] = torch.zeros((1,), dtype=torch.int64, device=device)
    return flag


def raise_on_bad_index(device: torch.device | str, n_rows: int | None = None) -> None:
    """Raise ``IndexError`` if a fused call on ``device`` was given an index ``>= N`` since the last check.

    Such a row never touches the bank (its loss and gradient are NaN, so the loss shows it too). Reading the
    flag synchronises the host with the device: call it where the loop synchronises anyway (logging the loss,
    the end of an epoch), not per step. The flag is reset.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    flag = _BAD_INDEX.get(device)
    if flag is None:
        return
    worst = int(flag.item())  # host sync (the caller's chosen point)
    if worst:
        flag.zero_()
        size = f" for a bank of {n_rows} rows" if n_rows is not None else ""
        raise IndexError(f"alr_loss (fused): index {worst - 1} is out of range{size}; its rows got NaN loss")


# ------------------------------------------------------------------------------------------------ backward
@functools.lru_cache(maxsize=256)
def _scale_geometry(B: int, K: int, stride: int, device: torch.device) -> tuple[int, ...]:
    """Tiles of the backward: ~4096 elements (16 per thread), a grid of at most a few programs per SM."""
    blk = min(H.next_pow2(K), 4096)
    rows = max(1, min(4096 // blk, H.next_pow2(B)))
    n_tk = H.cdiv(K, blk)
    n_tiles = H.cdiv(B, rows) * n_tk
    return blk, rows, n_tk, n_tiles, min(n_tiles, H.num_programs_target(device)), H.row_align(K, stride), \
        max(1, min(8, rows * blk // 512))


def launch_grad_scale(grad: torch.Tensor, grad_output: torch.Tensor, prev: torch.Tensor | None) -> None:
    """``grad *= grad_output / prev`` in place (``prev`` None: 1); a no-op in traffic when the factor is 1."""
    B, K = grad.shape
    if B == 0:
        return
    per_row = grad_output.dim() == 1
    blk, rows, n_tk, n_tiles, n_prog, align, num_warps = _scale_geometry(B, K, grad.stride(0), grad.device)
    has_prev = prev is not None
    if not has_prev:
        prev = grad_output  # unused
    _alr_grad_scale_kernel[(n_prog,)](
        grad, grad.stride(0),
        grad_output, grad_output.stride(0) if per_row else 0,
        prev, prev.stride(0) if per_row else 0,
        B, K // align, n_tk, n_tiles,
        PER_ROW=per_row, HAS_PREV=has_prev, ROWS=rows, BLOCK_K=blk, ROW_ALIGN=align, num_warps=num_warps,
    )  # fmt: skip


def alr_grad_scale(grad: torch.Tensor, grad_output: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
    """``grad *= grad_output / prev`` in place (``prev``: the factor a previous backward applied, default 1);
    returns ``grad``. ``grad_output`` is a scalar, or ``[B]`` for ``"none"``. One launch that returns at once
    where the factor is 1."""
    B = grad.shape[0]
    for name, t in (("grad_output", grad_output), ("prev", prev)):
        if t is not None and (t.dim() not in (0, 1) or (t.dim() == 1 and t.shape[0] != B)):
            raise ValueError(f"alr_grad_scale: {name} must be a scalar or [{B}], got {describe(t)}")
    with device_guard(grad.device):
        launch_grad_scale(grad, grad_output, prev)
    return grad


# ------------------------------------------------------------------------------------------------- forward
def alr_forward(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    params: ALRParams,
    *,
    grad: torch.Tensor | None = None,
    loss_rows: torch.Tensor | None = None,
    block_k: int = 0,
    rows_per_program: int = 0,
    num_warps: int = 0,
    split_k: int = 0,
    n_valid: torch.Tensor | None = None,
    validated: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Host function of the forward kernel (no autograd): returns ``(loss, grad)``; updates ``bank``.

    ``grad`` is the gradient of the returned loss for ``grad_output = 1`` (for ``"mean"`` already divided by
    the number of valid rows), in the logits dtype. Pass ``grad`` (``[B, K]``, logits dtype, unit column
    stride; may be ``logits`` itself) and ``loss_rows`` (``[B]`` fp32, ``"none"`` only) to choose the output
    buffers. No host synchronisation; one kernel launch (plus the index sort when ``params.refine`` and not
    ``params.assume_unique``, and the counting pre-pass for ``"mean"`` without ``n_valid``). ``validated``:
    the caller has checked the inputs and the output buffers already (the autograd paths and the custom op:
    the checks run once per call).
    ``split_k``: 0 picks the split-K path (two launches, one program per row chunk) where rows alone would
    leave the GPU under-filled and K needs more than one sweep (:func:`~.heuristics.split_chunk`); a power of
    two forces chunks of that many columns, -1 turns it off. Never used when duplicates must be chained
    (refinement without ``assume_unique``).
    ``n_valid``: for ``"mean"``, the number of rows with ``index >= 0`` as a one-element device tensor (any
    number dtype), e.g. ``(index >= 0).sum()`` that the caller computes anyway; the kernel loads it once per
    program. Without it a one-program pre-pass counts them (one more, tiny, launch). Not checked against the
    index (that would need a sync): a wrong count scales the gradient (not the loss) wrongly.
    """
    if not validated:
        _check_forward_call(logits, bank, index, params, grad, loss_rows)
    if n_valid is not None:
        check_n_valid(n_valid, logits.device, "alr_forward")
    with device_guard(logits.device):  # Triton launches on the current CUDA device
        B, K = logits.shape
        device = logits.device
        if K > 1 and logits.stride(1) != 1:
            if grad is not None and grad.data_ptr() == logits.data_ptr():
                raise ValueError("alr_forward: writing the gradient into logits needs logits with unit column stride")
            logits = logits.contiguous()  # one copy; any row stride is fine, a column stride is not
        if grad is None:
            grad = torch.empty((B, K), dtype=logits.dtype, device=device)
        red = REDUCTIONS[params.reduction]
        if red == 0:
            loss = torch.empty((B,), dtype=torch.float32, device=device) if loss_rows is None else loss_rows
        else:
            loss = torch.empty((), dtype=torch.float32, device=device)
        if B == 0:  # static shape: nothing to launch
            return loss.zero_(), grad
        cfg = H.config_for(B, K, device, block_k, rows_per_program, num_warps)
        dedup = params.refine and not params.assume_unique
        if dedup:
            # Stable sort on the device (no host sync): equal indices become adjacent, in batch order.
            key, order = torch.sort(index, stable=True)
        else:
            key = order = index  # order is unused without DEDUP
        align = H.row_align(K, logits.stride(0), grad.stride(0), bank.stride(0))
        chunk = 0 if dedup else H.split_chunk(B, K, device, split_k)
        if red == 2 and n_valid is None:
            # "mean" folds 1/n_valid into the gradient: count the valid rows once (one program reads the index)
            # rather than in every program of the main launch.
            n_valid = torch.empty((1,), dtype=torch.float32, device=device)
            count_valid_kernel[(1,)](index, n_valid, B, BLOCK=1024, num_warps=4)
        elif red != 2:
            n_valid = loss  # unused by the kernels
        if chunk:
            launch_split(logits, bank, index, grad, loss, params, red, chunk, align, n_valid, bad_index_flag(device))
            return loss, grad
        n_prog = H.cdiv(B, cfg.rows)
        if red:
            # Per-program partials: torch.empty launches nothing (caching allocator; stream-ordered, and taken
            # from the graph's private pool under CUDA graph capture). The ticket counter must be 0 on entry:
            # a cached per-stream (per-capture) slot that the kernel leaves at 0; see TicketCounters.
            partials = torch.empty((2 * n_prog,), dtype=torch.float32, device=device)
            counter = TICKETS.get(device)
        else:
            partials = counter = loss  # unused by the kernel ("none")
        with counter_reset_on_failure(counter if red else None):
            _alr_fwd_kernel[(n_prog,)](
                logits, logits.stride(0),
                bank, bank.stride(0),
                key, order,
                grad, grad.stride(0),
                loss, partials, counter, n_valid, bad_index_flag(device),
                B, bank.shape[0], K // align, params.alpha, 1.0 - params.alpha, params.lam,
                REFINE=params.refine, HAS_ENTROPY=params.has_entropy, DEDUP=dedup, REDUCTION=red,
                ONE_SWEEP=cfg.one_sweep, ROWS=cfg.rows, BLOCK_K=cfg.block_k,
                ROW_ALIGN=align, RED_BLOCK=H.red_block(cfg.num_warps), num_warps=cfg.num_warps,
            )  # fmt: skip
        return loss, grad


def _check_forward_call(logits, bank, index, params: ALRParams, grad, loss_rows) -> None:
    """What :func:`alr_forward` checks unless ``validated``: the inputs and the caller's output buffers."""
    validate_inputs(logits, bank, index, where="alr_forward")
    validate_fused_inputs(logits, bank, "alr_forward")
    check_device(logits, "alr_forward")
    B, K = logits.shape
    if grad is not None and (grad.shape != (B, K) or grad.dtype != logits.dtype or (K > 1 and grad.stride(1) != 1)):
        raise ValueError(
            f"alr_forward: grad must be [{B}, {K}] of dtype {logits.dtype} with unit column stride, got "
            f"{describe(grad)} with strides {grad.stride()}"
        )
    if loss_rows is not None and (
        params.reduction != "none" or loss_rows.shape != (B,) or loss_rows.dtype != torch.float32
        or not loss_rows.is_contiguous()
    ):
        raise ValueError(f"alr_forward: loss_rows must be a contiguous [{B}] float32 tensor (reduction='none')")


def check_n_valid(n_valid: torch.Tensor, device: torch.device, where: str) -> None:
    if not isinstance(n_valid, torch.Tensor) or n_valid.numel() != 1 or n_valid.device != device \
            or n_valid.dtype == torch.bool or n_valid.is_complex():
        raise ValueError(f"{where}: n_valid must be a one-element real tensor on {device} (the number of rows with "
                         f"index >= 0), got {describe(n_valid) if isinstance(n_valid, torch.Tensor) else n_valid!r}")


def check_device(logits: torch.Tensor, where: str) -> None:
    if logits.device.type != "cuda" and not INTERPRETED:
        raise ValueError(
            f"{where}: tensors on {logits.device} need a CUDA device, or TRITON_INTERPRET=1 set before "
            "alr_fast.loss.triton is imported (the Triton interpreter, for tests)"
        )
