"""When refinement starts and how it comes in: automatic end of warm-up, the lambda / alpha ramp, a collapse guard.

Three pieces, all decided from what training has *without* clean labels, and all cheap: the rule and the guard
run once per epoch on a handful of numbers the trainer already reduces at the end of an epoch; the ramp is
Python arithmetic on the step counter (no tensor, no host sync).

**Automatic end of warm-up** (``method.warmup="auto"``, :class:`AutoWarmupRule`). Under cross-entropy on noisy
labels a network first learns the pattern shared by the correctly labelled majority (fast), then slows down
on a plateau, then slowly memorises the wrong labels (Arpit et al., 2017: "deep networks learn easy patterns
first"). Refinement should start on the plateau: after the predictions became informative and before
memorisation. The rule watches one per-epoch signal ``v_e`` (default ``train_acc_given``: the share of this
epoch's training forward passes whose argmax equals the *given* label; or, when the metrics carry one, the
accuracy on a held-out *noisy* validation slice, whose peak is where memorisation starts) and declares the
warm-up over at the end of epoch ``e`` when

* the signal has risen: ``max(v_0..v_e) - v_0 >= min_rise`` (learning has started; a flat start is not a
  plateau), and
* it has stalled: its smoothed gain ``(v_e - v_{e-w}) / w`` (``w = window`` epochs) is at most
  ``stall_ratio`` times the largest one-epoch gain seen so far - this covers a plateau (gain near 0), a
  noisy plateau (the window averages the wiggles out) and a peak (gain negative) alike -
  for ``patience`` consecutive epochs,

and ``e + 1 >= min_epochs``. Refinement then starts at epoch ``e + 1``. If the rule has not fired after
``max_epochs`` warm-up epochs, refinement starts at ``max_epochs`` (logged as such). Signals whose name
contains ``loss`` are minimised (the rule works on ``-v``). The decision is a pure function of the sequence of
signal values, so it is deterministic; its state (:class:`WarmupState`) is a small dict in the checkpoint.

**Ramp** (``method.ramp_epochs``, :func:`ramp_factor`). Over the first ``ramp_epochs`` epochs of refinement,
measured in optimizer steps, a factor ``r`` rises linearly from ``1 / ramp_steps`` to 1; the entropy weight
used is ``r * lam`` and, with ``method.ramp_alpha``, the EMA momentum is ``1 - r (1 - alpha)`` (so the step
before refinement, ``r = 0``, is exactly warm-up: ``alpha = 1``, ``lam = 0``). It keeps the entropy term from
hardening the near-uniform predictions that high noise leaves at the switch. Measured on digits at 80 %
symmetric noise, where lam = 1 after a fixed 4-epoch warm-up collapses 2 of 3 seeds: with the automatic
switch and a 5-epoch ramp none of 3 seeds collapses, nor did the fixed 4-epoch switch with the ramp in the two
collapsing seeds (benchmarks/results/quality/NOTES.md).

**Collapse guard** (:class:`CollapseGuard`). Once per epoch it looks at the histogram of the training-pass
predictions: ``pred_max_share`` is the share of samples predicted as the most predicted class. A refinement
epoch is flagged as a collapse when that share reaches ``max(ratio * ref, ref + min_jump)``, where ``ref`` is
the larger of the given labels' largest class share and the share at the last warm-up epoch. The flag is
reported (``collapse`` in the metrics row, a warning on rank 0, ``collapse_epochs`` in the summary); the
guard does not change training.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import torch

from alr_fast.loss.contract import ALRParams

__all__ = [
    "AutoWarmupRule",
    "auto_warmup_errors",
    "WarmupState",
    "CollapseGuard",
    "RefinementSchedule",
    "ramp_factor",
    "prediction_counts",
    "NOISY_VAL_KEYS",
    "WARMUP_DEFAULTS",
]

NOISY_VAL_KEYS = ("noisy_val_acc", "val_noisy_acc", "noisy_val_top1")
"""Metric names under which a held-out noisy-validation accuracy is looked for by ``signal="auto"`` (it must be
in the epoch's metrics row before :meth:`RefinementSchedule.end_epoch` is called)."""
TRAIN_SIGNAL = "train_acc_given"


WARMUP_DEFAULTS = {"signal": "auto", "min_epochs": 1, "max_epochs": 0, "min_rise": 0.05, "stall_ratio": 0.3,
                   "window": 1, "patience": 1}
"""Defaults of the automatic warm-up's parameters, the one place they are written (the config's
``method.warmup_<name>`` fields take theirs from here; ``max_epochs`` 0 means half the epochs there)."""


def auto_warmup_errors(min_epochs: int, max_epochs: int | None, stall_ratio: float, window: int,
                       patience: int) -> list[tuple[str, str, object]]:
    """The constraints on the automatic warm-up's parameters, written once for :class:`alr_fast.config.MethodConfig`
    (its ``warmup_*`` fields) and for :class:`AutoWarmupRule`, which word the errors each their own
    way: ``(field, requirement, value)`` per broken one. ``max_epochs`` None: not resolved yet, not checked."""
    errors = []
    if min_epochs < 0:
        errors.append(("min_epochs", "must be >= 0", min_epochs))
    if max_epochs is not None and max_epochs < max(min_epochs, 1):
        errors.append(("max_epochs", f"must be >= the fewest warm-up epochs ({min_epochs}) and >= 1", max_epochs))
    if not 0.0 <= stall_ratio < 1.0:
        errors.append(("stall_ratio", "must be in [0, 1)", stall_ratio))
    if window < 1:
        errors.append(("window", "must be >= 1", window))
    if patience < 1:
        errors.append(("patience", "must be >= 1", patience))
    return errors


class AutoWarmupRule:
    """Parameters of the automatic end of warm-up (the rule: the module docstring).

    The parameters are the config's ``method.warmup_<name>`` fields, declared and documented once in
    :class:`alr_fast.config.MethodConfig`; a parameter not given takes that field's default. One difference:
    ``max_epochs`` here is a plain epoch count (default 10), where the config's 0 means "half the epochs"
    (resolved by :meth:`RefinementSchedule.from_config`)."""

    PARAMS = ("signal", "min_epochs", "max_epochs", "min_rise", "stall_ratio", "window", "patience")
    DEFAULT_MAX_EPOCHS = 10

    def __init__(self, **params):
        unknown = sorted(set(params) - set(self.PARAMS))
        if unknown:
            raise TypeError(f"AutoWarmupRule: unknown parameter(s) {unknown}; parameters: {list(self.PARAMS)}")
        for name in self.PARAMS:
            setattr(self, name, params.get(name, WARMUP_DEFAULTS[name]))
        if "max_epochs" not in params:
            self.max_epochs = self.DEFAULT_MAX_EPOCHS
        for name, requirement, value in auto_warmup_errors(self.min_epochs, self.max_epochs, self.stall_ratio,
                                                           self.window, self.patience):
            raise ValueError(f"AutoWarmupRule: {name} {requirement}, got {value}")

    def __repr__(self) -> str:
        return f"AutoWarmupRule({', '.join(f'{n}={getattr(self, n)!r}' for n in self.PARAMS)})"

    def __eq__(self, other) -> bool:
        return isinstance(other, AutoWarmupRule) and all(getattr(self, n) == getattr(other, n) for n in self.PARAMS)

    def pick_signal(self, metrics: dict) -> str:
        if self.signal != "auto":
            if self.signal not in metrics:
                raise KeyError(f"method.warmup_signal={self.signal!r}: not in the epoch metrics "
                               f"(have {sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))})")
            return self.signal
        return next((k for k in NOISY_VAL_KEYS if k in metrics), TRAIN_SIGNAL)

    def observe(self, state: WarmupState, epoch: int, metrics: dict) -> WarmupState:
        """Feed the metrics of warm-up epoch ``epoch`` (0-based, in order); sets ``state.switch_epoch`` when the
        warm-up is over. Calls after the decision, or for an epoch already seen (a resumed run), change nothing."""
        if state.switch_epoch is not None or epoch < len(state.history):
            return state
        if epoch != len(state.history):
            raise ValueError(f"AutoWarmupRule: epoch {epoch} observed after {len(state.history)} epochs")
        if state.signal is None:
            state.signal = self.pick_signal(metrics)
        value = float(metrics[state.signal])
        if not math.isfinite(value):
            raise ValueError(f"AutoWarmupRule: signal {state.signal} is {value} at epoch {epoch}")
        state.history.append(-value if "loss" in state.signal else value)
        v = state.history
        if len(v) >= 2:
            state.best_gain = max(state.best_gain, v[-1] - v[-2])
            w = min(self.window, len(v) - 1)
            gain = (v[-1] - v[-1 - w]) / w
            risen = max(v) - v[0] >= self.min_rise
            state.stalled = state.stalled + 1 if risen and gain <= self.stall_ratio * state.best_gain else 0
        if state.stalled >= self.patience and epoch + 1 >= self.min_epochs:
            state.switch_epoch, state.reason = epoch + 1, f"{state.signal} stalled"
        elif epoch + 1 >= self.max_epochs:
            state.switch_epoch, state.reason = epoch + 1, "max_epochs reached"
        return state


@dataclass
class WarmupState:
    """What the rule remembers between epochs; plain values, checkpointed as a dict."""

    switch_epoch: int | None = None
    """First refinement epoch, once decided."""
    reason: str = ""
    signal: str | None = None
    history: list[float] = field(default_factory=list)
    """Signal per warm-up epoch (negated for losses)."""
    best_gain: float = 0.0
    stalled: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WarmupState:
        return cls(**d)


def ramp_factor(step: int, start_step: int, ramp_steps: int) -> float:
    """Refinement strength r at global step ``step`` when refinement starts at ``start_step``: 0 before it,
    then (step - start_step + 1) / ramp_steps up to 1; 1 from the start when ``ramp_steps`` is 0."""
    if step < start_step:
        return 0.0
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, (step - start_step + 1) / ramp_steps)


@dataclass
class CollapseGuard:
    """Flags a refinement epoch whose predictions pile up on one class (see the module docstring)."""

    ratio: float = 2.0
    min_jump: float = 0.05

    def threshold(self, ref: float) -> float:
        return max(self.ratio * ref, ref + self.min_jump)


def prediction_counts(train_pred: torch.Tensor, given: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K + 2]`` float64 on ``train_pred``'s device: histogram of the predictions, number equal to the given
    label, number of samples with a prediction (``train_pred`` is -1 for samples not seen). No host sync; the
    caller all-reduces it over ranks."""
    seen = train_pred >= 0
    hist = torch.bincount(train_pred.clamp_min(0)[seen], minlength=num_classes).double()
    agree = ((train_pred == given) & seen).sum().double()
    return torch.cat([hist, agree[None], seen.sum().double()[None]])


class RefinementSchedule:
    """The run's refinement timing: which epochs refine, alpha and lam per step, per-epoch signals and guard.

    ``mode`` 'fixed' starts refinement at ``warmup_epochs``; 'auto' asks ``rule`` once per warm-up epoch;
    'never' (CE) never refines.
    """

    def __init__(self, mode: str, params: ALRParams, *, warmup_epochs: int = 0,
                 rule: AutoWarmupRule | None = None, ramp_epochs: float = 0.0, ramp_alpha: bool = False,
                 steps_per_epoch: int = 1, label_prior_max: float = 0.0, guard: CollapseGuard | None = None):
        """``params``: the refinement-phase loss parameters (alpha, lam; validated when they were built, e.g.
        by the config: :attr:`alr_fast.config.MethodConfig.loss_params`)."""
        if mode not in ("fixed", "auto", "never"):
            raise ValueError(f"RefinementSchedule: mode must be 'fixed', 'auto' or 'never', got {mode!r}")
        if not isinstance(params, ALRParams):
            raise TypeError(f"RefinementSchedule: params must be an ALRParams, got {type(params).__name__}")
        self.mode, self.base = mode, params
        self.rule = rule or AutoWarmupRule()
        self.guard = guard or CollapseGuard()
        self.ramp_epochs = float(ramp_epochs)
        self.ramp_alpha = bool(ramp_alpha)
        self.set_steps_per_epoch(steps_per_epoch)
        self.label_prior_max = float(label_prior_max)
        self.state = WarmupState()
        if mode == "fixed":
            self.state.switch_epoch, self.state.reason = int(warmup_epochs), "fixed"
        self.collapse_ref: float | None = None
        self.collapse_epochs: list[int] = []
        self.messages: list[str] = []
        """What the last end_epoch() wants the log to say (the warm-up decision, a collapse onset)."""

    @classmethod
    def from_config(cls, method, epochs: int, steps_per_epoch: int, given_labels=None, num_classes: int = 0):
        """From a :class:`alr_fast.config.MethodConfig` (``warmup``, ``warmup_*``, ``ramp_*`` fields)."""
        prior = 0.0
        if given_labels is not None and len(given_labels) and num_classes:
            counts = torch.bincount(torch.as_tensor(given_labels).long(), minlength=num_classes)
            prior = float(counts.max()) / float(counts.sum())
        mode = "never" if method.name == "ce" else method.warmup
        max_epochs = method.warmup_max_epochs or max(1, epochs // 2)
        rule = AutoWarmupRule(signal=method.warmup_signal, min_epochs=min(method.warmup_min_epochs, max_epochs),
                              max_epochs=max_epochs, min_rise=method.warmup_min_rise,
                              stall_ratio=method.warmup_stall_ratio, window=method.warmup_window,
                              patience=method.warmup_patience)
        return cls(mode, method.loss_params, warmup_epochs=method.warmup_epochs,
                   rule=rule, ramp_epochs=method.ramp_epochs, ramp_alpha=method.ramp_alpha,
                   steps_per_epoch=steps_per_epoch,
                   label_prior_max=prior)

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        """Steps (loss calls) per epoch: the unit of the ramp (``ramp_epochs`` x this many steps)."""
        self.steps_per_epoch = int(steps_per_epoch)
        self.ramp_steps = round(self.ramp_epochs * self.steps_per_epoch)

    # -- per step ---------------------------------------------------------------------------------------------
    @property
    def switch_epoch(self) -> int | None:
        return self.state.switch_epoch

    def refine_at(self, epoch: int) -> bool:
        return self.mode != "never" and self.switch_epoch is not None and epoch >= self.switch_epoch

    def params(self, step: int, epoch: int) -> ALRParams:
        """The loss parameters of global step ``step`` in epoch ``epoch``: ``refine`` (warm-up or not), and alpha
        and lam with the ramp applied (Python arithmetic: no tensor, no host sync). Outside refinement alpha and
        lam are unused by the loss."""
        alpha, lam = self.base.alpha, self.base.lam
        if self.switch_epoch is not None and self.mode != "never":
            r = ramp_factor(step, self.switch_epoch * self.steps_per_epoch, self.ramp_steps)
            alpha, lam = (1.0 - r * (1.0 - alpha) if self.ramp_alpha else alpha), r * lam
        return dataclasses.replace(self.base, alpha=alpha, lam=lam, refine=self.refine_at(epoch))

    # -- per epoch --------------------------------------------------------------------------------------------
    def end_epoch(self, epoch: int, metrics: dict, counts: torch.Tensor | None = None) -> dict:
        """Called once at the end of epoch ``epoch`` with that epoch's metrics and the all-reduced
        :func:`prediction_counts`; returns the fields to add to the metrics row."""
        extra: dict = {}
        self.messages = []
        if counts is not None:
            c = counts.double().cpu()  # one host sync per epoch, K + 2 numbers
            hist, agree, seen = c[:-2], float(c[-2]), float(c[-1])
            share = float(hist.max()) / seen if seen else 0.0
            p = hist / max(seen, 1.0)
            nz = p[p > 0]
            extra = {
                TRAIN_SIGNAL: agree / seen if seen else 0.0,
                "pred_max_share": share,
                "pred_classes_eff": float(torch.exp(-(nz * nz.log()).sum())) if nz.numel() else 0.0,
            }
            refine = self.refine_at(epoch)
            if not refine:
                self.collapse_ref = max(self.label_prior_max, share)
            else:  # no warm-up epoch seen (warmup_epochs=0): the label prior alone is the reference
                ref = self.collapse_ref if self.collapse_ref is not None else self.label_prior_max
                limit = self.guard.threshold(ref)
                extra["collapse"] = share >= limit
                if extra["collapse"] and epoch not in self.collapse_epochs:
                    if epoch - 1 not in self.collapse_epochs:
                        self.messages.append(
                            f"epoch {epoch}: collapse? {100 * share:.1f} % of the training predictions are one "
                            f"class (limit {100 * limit:.1f} %; alr_fast/loss/schedule.py CollapseGuard)")
                    self.collapse_epochs.append(epoch)
        if self.mode == "auto" and self.switch_epoch is None:
            self.rule.observe(self.state, epoch, {**metrics, **extra})
            if self.switch_epoch is not None:
                self.messages.append(f"warm-up ends after epoch {epoch} ({self.state.reason}); refinement from "
                                     f"epoch {self.switch_epoch}")
        extra["refine_from_epoch"] = self.switch_epoch
        return extra

    def summary(self) -> dict:
        return {
            "warmup_mode": self.mode,
            "refine_from_epoch": self.switch_epoch,
            "warmup_reason": self.state.reason,
            "warmup_signal": self.state.signal,
            "ramp_steps": self.ramp_steps,
            "collapse_epochs": list(self.collapse_epochs),
        }

    # -- checkpoint -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"warmup": self.state.to_dict(), "collapse_ref": self.collapse_ref,
                "collapse_epochs": list(self.collapse_epochs)}

    def load_state_dict(self, d: dict | None) -> None:
        if not d:
            return
        self.state = WarmupState.from_dict(d["warmup"])
        self.collapse_ref = d.get("collapse_ref")
        self.collapse_epochs = list(d.get("collapse_epochs", []))
