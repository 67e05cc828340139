"""The fused ALR loss as a differentiable op: eager ``autograd.Function``, the torch custom op used under
``torch.compile``, the public ``fused_alr_loss`` and the ``ALRLoss`` module.

The forward launch writes the final gradient (for ``grad_output = 1``); the backward only scales it.
"""

from __future__ import annotations

import torch
from torch import nn

from alr_fast.loss.contract import ALRParams, validate_fused_inputs, validate_inputs

from .launch import alr_forward, check_device, check_n_valid, device_guard, launch_grad_scale


class _EagerFusedALR(torch.autograd.Function):
    """The eager path: the launches called directly (no custom-op dispatch). The forward writes the final
    gradient; the backward is one launch that returns at once when ``grad_output`` is 1 (decided on the
    device) and otherwise scales the gradient buffer in place."""

    @staticmethod
    def forward(ctx, logits, bank, index, params, block_k, rows, n_valid=None):
        loss, grad = alr_forward(logits, bank, index, params, block_k=block_k, rows_per_program=rows, n_valid=n_valid,
                                 validated=True)
        ctx.save_for_backward(grad)
        ctx.prev_grad_output = None
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        # In place: the buffer becomes the gradient. A second backward of a retained graph rescales by
        # grad_output / the previous grad_output (autograd copied the first result, since the graph still held
        # the buffer). A previous grad_output of 0 cannot be undone: the second result is then NaN.
        with device_guard(grad.device):
            launch_grad_scale(grad, grad_output, ctx.prev_grad_output)
        ctx.prev_grad_output = grad_output
        return grad, None, None, None, None, None, None


# Used only under torch.compile (torch.compiler.is_compiling()): an opaque op with a fake implementation, the
# bank declared mutated. The ticket counter, the partials and the bad-index flag are internal scratch, not
# arguments: the partials are fresh per call, the counter holds 0 before and after every call, and the flag
# only ever records an error; so nothing observable by the caller or by functionalization changes
# (concurrency: reduction.TicketCounters). Custom ops take primitive arguments only, so ALRParams travels as
# its fields and is rebuilt (cached) inside.
@torch.library.custom_op("alr_fast::fused_alr_fwd", mutates_args=("bank",))
def _fused_alr_fwd_op(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    alpha: float,
    lam: float,
    refine: bool,
    reduction: str,
    assume_unique: bool,
    block_k: int,
    rows_per_program: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    p = ALRParams.of(alpha, lam, refine, reduction, assume_unique)
    return alr_forward(logits, bank, index, p, block_k=block_k, rows_per_program=rows_per_program, validated=True)


@_fused_alr_fwd_op.register_fake
def _(logits, bank, index, alpha, lam, refine, reduction, *_sizes):
    B, K = logits.shape
    loss = logits.new_empty((B,) if reduction == "none" else (), dtype=torch.float32)
    return loss, logits.new_empty((B, K))


class FusedALRFunction(torch.autograd.Function):
    """The traced path (torch.compile): the forward is a custom op that writes the final gradient; the backward
    multiplies it by ``grad_output`` with plain torch ops, which the compiler fuses with what follows."""

    @staticmethod
    def forward(ctx, logits, bank, index, alpha, lam, refine, reduction, assume_unique, block_k, rows):
        loss, grad = torch.ops.alr_fast.fused_alr_fwd(
            logits, bank, index, alpha, lam, refine, reduction, assume_unique, block_k, rows
        )
        ctx.save_for_backward(grad)
        ctx.per_row = reduction == "none"
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        factor = grad_output[:, None] if ctx.per_row else grad_output
        dz = (grad.float() * factor).to(grad.dtype)
        return dz, None, None, None, None, None, None, None, None, None


def fused_alr_loss(
    logits: torch.Tensor,
    bank: torch.Tensor,
    index: torch.Tensor,
    params: ALRParams,
    *,
    block_k: int = 0,
    rows_per_program: int = 0,
    n_valid: torch.Tensor | None = None,
    validated: bool = False,
) -> torch.Tensor:
    """Fused ALR loss (differentiable w.r.t. ``logits``); updates ``bank`` in place when ``params.refine``.

    Same semantics as :func:`alr_fast.loss.reference.alr_loss_reference`. The index range is not checked on the
    host (that would sync): an index ``>= N`` never touches the bank, gets a NaN loss and gradient row and is
    recorded for :func:`~.launch.raise_on_bad_index` (``alr_fast.alr_loss(check_index=True)`` checks before
    the launch).

    Args:
        params: the hyper-parameters (validated when built). With ``params.assume_unique`` the device sort
            that serialises duplicate indices is skipped: the forward is then a single kernel launch ("mean":
            given ``n_valid``; else with a tiny counting pre-pass), and with duplicate indices the results are
            undefined.
        block_k, rows_per_program: override the block along K / rows per program (powers of two; 0 = auto).
        n_valid: for ``"mean"``, ``(index >= 0).sum()`` as a device tensor if the caller has it (see
            :func:`~.launch.alr_forward`): saves the counting pre-pass. Ignored under torch.compile.
        validated: the caller has already run :func:`alr_fast.loss.contract.validate_inputs` and
            :func:`~alr_fast.loss.contract.validate_fused_inputs` (``alr_loss`` and :class:`ALRLoss` do, so the
            inputs are checked once per call).
    """
    if not validated:
        validate_inputs(logits, bank, index, where="fused_alr_loss")
        validate_fused_inputs(logits, bank, "fused_alr_loss")
    check_device(logits, "fused_alr_loss")
    if n_valid is not None:
        check_n_valid(n_valid, logits.device, "fused_alr_loss")
    if torch.compiler.is_compiling():
        return FusedALRFunction.apply(
            logits, bank, index, params.alpha, params.lam, params.refine, params.reduction, params.assume_unique,
            int(block_k), int(rows_per_program),
        )  # fmt: skip
    with device_guard(logits.device):
        return _EagerFusedALR.apply(logits, bank, index, params, block_k, rows_per_program, n_valid)


class ALRLoss(nn.Module):
    """Thin module around the fused loss; the bank is passed in (it is model state owned elsewhere)."""

    def __init__(self, alpha: float, lam: float, reduction: str = "mean", *, assume_unique: bool = False):
        super().__init__()
        self.params = ALRParams(alpha, lam, True, reduction, assume_unique)  # validated here, once
        self.warmup_params = ALRParams(alpha, lam, False, reduction, assume_unique)

    def forward(
        self, logits: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, refine: bool = True
    ) -> torch.Tensor:
        validate_inputs(logits, bank, index, where="ALRLoss")
        validate_fused_inputs(logits, bank, "ALRLoss")
        params = self.params if refine else self.warmup_params
        return fused_alr_loss(logits, bank, index, params, validated=True)

    def extra_repr(self) -> str:
        p = self.params
        return f"alpha={p.alpha}, lam={p.lam}, reduction={p.reduction!r}"
