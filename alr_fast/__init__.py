"""alr_fast: training with noisy labels by Adaptive Label Refinement (ALR).

The names below are imported on first use (PEP 562), so ``import alr_fast`` alone, and ``python -m alr_fast
--help``, do not load torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ALR": "alr_fast.loss.alr",
    "SoftLabelBank": "alr_fast.loss.bank",
    "alr_loss": "alr_fast.loss.functional",
    "bootstrap_loss": "alr_fast.loss.functional",
    "elr_loss": "alr_fast.loss.functional",
    "gce_loss": "alr_fast.loss.functional",
    "sce_loss": "alr_fast.loss.functional",
    "OwnerBatchSampler": "alr_fast.data.indexed",
    "OwnerSampler": "alr_fast.data.indexed",
    "WithIndex": "alr_fast.data.indexed",
    "make_noisy_labels": "alr_fast.data.noise",
}

__all__ = ["ALR", "WithIndex", "OwnerSampler", "OwnerBatchSampler", "alr_loss", "elr_loss", "gce_loss", "sce_loss",
           "bootstrap_loss", "SoftLabelBank", "make_noisy_labels", "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alr_fast' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
