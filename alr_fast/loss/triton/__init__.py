"""Triton kernels, installed and imported as ``alr_fast.loss.triton``.

``HAS_FUSED_ALR`` tells whether the fused ALR kernel is importable in this install (it needs ``triton``).
Importing this package never fails without triton; the kernel names are then simply absent.
"""

try:
    import triton  # noqa: F401  (only the availability of triton is tested here)
except ImportError:
    HAS_FUSED_ALR = False
    __all__ = ["HAS_FUSED_ALR"]
else:
    from . import alr_loss as _alr_loss
    from .alr_loss import *  # noqa: F403  (the public names are alr_loss.__all__)

    HAS_FUSED_ALR = True
    __all__ = ["HAS_FUSED_ALR", *_alr_loss.__all__]
