"""The refinement schedule as the trainer imports it: the rule itself lives in :mod:`alr_fast.loss.schedule`
(the automatic end of warm-up, the lambda / alpha ramp, the collapse guard), one layer down, so that the
public :class:`alr_fast.loss.alr.ALR` object of a user's own loop and the trainer run the same code."""

from alr_fast.loss.schedule import (  # noqa: F401  (re-exported)
    NOISY_VAL_KEYS,
    WARMUP_DEFAULTS,
    AutoWarmupRule,
    CollapseGuard,
    RefinementSchedule,
    WarmupState,
    auto_warmup_errors,
    prediction_counts,
    ramp_factor,
)

__all__ = ["AutoWarmupRule", "auto_warmup_errors", "WarmupState", "CollapseGuard", "RefinementSchedule",
           "ramp_factor", "prediction_counts", "NOISY_VAL_KEYS", "WARMUP_DEFAULTS"]
