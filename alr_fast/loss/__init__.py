"""The loss and its per-sample state: everything a training loop needs to use ALR, on torch and numpy alone.

``contract`` (parameters and input checks), ``reference`` (the specification), ``torch_fast`` (CPU path),
``triton/`` (the fused CUDA kernel), ``functional`` (``alr_loss``: checks once, then dispatches),
``sharding`` (the owner rule) and ``bank`` (this rank's rows of the soft labels).
"""
