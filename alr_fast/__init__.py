"""alr_fast: training with noisy labels by Adaptive Label Refinement (ALR)."""

from alr_fast.loss.alr import ALR
from alr_fast.loss.bank import SoftLabelBank
from alr_fast.loss.functional import alr_loss, bootstrap_loss, elr_loss, gce_loss, sce_loss
from alr_fast.data.indexed import OwnerBatchSampler, OwnerSampler, WithIndex
from alr_fast.data.noise import make_noisy_labels

__version__ = "0.1.0"
__all__ = ["ALR", "WithIndex", "OwnerSampler", "OwnerBatchSampler", "alr_loss", "elr_loss", "gce_loss", "sce_loss",
           "bootstrap_loss", "SoftLabelBank", "make_noisy_labels", "__version__"]
