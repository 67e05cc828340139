"""Triton kernels, installed and imported as ``alr_fast.kernels``.

``HAS_FUSED_ALR`` tells whether the fused ALR kernel is importable in this install (it needs ``triton``).
Importing this package never fails without triton; the kernel names are then simply absent.
"""

try:
    import triton  # noqa: F401  (only the availability of triton is tested here)
except ImportError:
    HAS_FUSED_ALR = False
    __all__ = ["HAS_FUSED_ALR"]
else:
    from .alr_loss import (
        ALRLoss,
        FusedALRFunction,
        alr_forward,
        alr_grad_scale,
        fused_alr_loss,
        fused_alr_loss_checked,
        pick_config,
        raise_on_bad_index,
    )

    HAS_FUSED_ALR = True
    __all__ = [
        "HAS_FUSED_ALR",
        "ALRLoss",
        "FusedALRFunction",
        "alr_forward",
        "alr_grad_scale",
        "fused_alr_loss",
        "fused_alr_loss_checked",
        "pick_config",
        "raise_on_bad_index",
    ]
