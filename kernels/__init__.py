"""Triton kernels, installed and imported as ``alr_fast.kernels``.

``HAS_FUSED_ALR`` tells whether the fused ALR kernel is importable in this install.
"""

HAS_FUSED_ALR = False
