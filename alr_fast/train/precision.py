"""Mixed precision, in one place: the DeepSpeed settings for ``train.precision``, the cast a batch needs on its
way in, and the autocast context of the forward passes that are not training steps.

**Training steps** use DeepSpeed's own ``bf16`` / ``fp16`` modes, with each batch cast to the model's dtype at
the door (:func:`model_input`), and no ``torch.autocast``:

* the engine keeps the model's parameters in bf16/fp16 and fp32 master weights inside its optimizer (ZeRO 0, 1
  and 2 alike); gradients are all-reduced in bf16/fp16, half the bytes of fp32. Buffers (BatchNorm running
  statistics) are cast to the same dtype (``data_types.buffer_dtype``), since BatchNorm needs its weights and
  statistics in one dtype; :func:`alr_fast.train.distributed.sync_buffers` averages them across ranks in fp32;
* fp16 gets DeepSpeed's dynamic loss scaling (:func:`ds_precision_config`), tested with ZeRO; autocast in the
  training step would need a separate ``GradScaler`` wired into every ZeRO stage;
* DeepSpeed casts parameters but never inputs, so a float32 batch meets bf16 weights and the first convolution
  fails ("Input type (float) and bias type (c10::BFloat16) should be the same"). :func:`model_input` casts
  floating-point batches to the dtype of the model's parameters, whatever the precision, so evaluation,
  ``predict_probs`` and training all take the same path.

**Evaluation and prediction** (:meth:`alr_fast.train.evaluation.EvalPlan.evaluate`, the exports'
``predict_probs``) run their forward pass inside :func:`autocast` at the run's precision: with bf16/fp16 the
ops that autocast keeps in fp32 (softmax, norms, reductions) run in fp32 there; with fp32 it is a no-op. It is
the project's only ``torch.autocast``.

The loss and the bank stay in fp32 math: ``alr_loss`` accepts bf16/fp16 logits and computes the softmax, the
EMA update and the loss in fp32 (the kernel contract in :mod:`alr_fast.loss.reference`); the bank's dtype is
``method.bank_dtype``, independent of the model's.
"""

from __future__ import annotations

import torch

__all__ = ["PRECISION_DTYPES", "ds_precision_config", "model_dtype", "model_input", "autocast"]

PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def ds_precision_config(precision: str) -> dict:
    """The ``bf16`` / ``fp16`` sections of a DeepSpeed config for a resolved precision ('fp32', 'bf16', 'fp16')."""
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"train.precision: expected one of {sorted(PRECISION_DTYPES)} once resolved, "
                         f"got {precision!r}")
    section = {
        "bf16": {"enabled": precision == "bf16"},
        # loss_scale 0 = dynamic: start at 2**16, halve on overflow (the step is skipped), double after 1,000
        # clean steps; DeepSpeed's defaults, spelled out so that a run's config.json shows them.
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
    }
    if precision != "fp32":
        # DeepSpeed casts parameters only and leaves buffers in fp32; BatchNorm then meets bf16 weights and fp32
        # running statistics ("expected scalar type BFloat16 but found Float"). Buffers follow the parameters.
        section["data_types"] = {"buffer_dtype": precision}
    return section


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The floating-point dtype the model computes in: that of its first floating-point parameter."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_input(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``x`` in the dtype ``model`` expects (floating-point batches only; a no-op when it already matches)."""
    if not x.is_floating_point():
        return x
    return x.to(model_dtype(model))


def autocast(precision: str, device: torch.device):
    """The autocast context of a non-training forward pass at a resolved precision ('fp32', 'bf16', 'fp16'):
    disabled for fp32, ``torch.autocast`` at that dtype otherwise (one dtype table: :data:`PRECISION_DTYPES`)."""
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"train.precision: expected one of {sorted(PRECISION_DTYPES)} once resolved, "
                         f"got {precision!r}")
    dtype = PRECISION_DTYPES[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=precision != "fp32")
