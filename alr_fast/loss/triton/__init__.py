"""The fused ALR loss in Triton, imported as ``alr_fast.loss.triton`` (a plain subpackage: no install needed).

``HAS_FUSED_ALR`` tells whether the kernel is importable here (it needs ``triton``); importing this package
never fails without triton, the kernel names are then simply absent. One op per file:

* ``rows.py``        shared ``@triton.jit`` row helpers (row set-up, softmax, online statistics, stores)
* ``alr_kernels.py`` the ALR forward kernel (one launch) and the backward's in-place gradient scaling
* ``split_k.py``     the two-launch split-K forward for few rows of a large K
* ``reduction.py``   the deterministic "last program reduces" reduction and its ticket counters
* ``heuristics.py``  block sizes, rows per program, warps, split-K choice
* ``launch.py``      host side: checks, buffers, launches, the out-of-range index flag
* ``autograd.py``    ``fused_alr_loss``, ``ALRLoss``, the autograd functions and the torch custom op
* ``baselines.py``   the baselines' kernels (ELR, GCE, SCE, soft bootstrapping) built from ``rows.py``; imported
  lazily by :mod:`alr_fast.loss.functional`

Design notes, byte model and compile figures: benchmarks/KERNEL_NOTES.md.
"""

try:
    import triton  # noqa: F401  (only the availability of triton is tested here)
except ImportError:
    HAS_FUSED_ALR = False
    __all__ = ["HAS_FUSED_ALR"]
else:
    from .autograd import ALRLoss, FusedALRFunction, fused_alr_loss
    from .heuristics import KernelConfig, pick_config, split_chunk
    from .launch import alr_forward, alr_grad_scale, raise_on_bad_index
    from .rows import INTERPRETED

    HAS_FUSED_ALR = True
    __all__ = [
        "HAS_FUSED_ALR",
        "ALRLoss",
        "FusedALRFunction",
        "KernelConfig",
        "alr_forward",
        "alr_grad_scale",
        "fused_alr_loss",
        "pick_config",
        "raise_on_bad_index",
        "split_chunk",
        "INTERPRETED",
    ]
