"""Fault injection for the reliability tests: a hook the trainer loads only when the environment asks for one.

Never active in a real run: :func:`from_env` returns None unless one of the variables below is set, and the
trainer then skips every hook call (``if hooks is not None``). The tests (tests/test_reliability.py,
tests/test_rehearsal.py) set them on the training processes they start:

* ``ALR_FAST_FAULT_AT_STEP=N`` acts right after global step N, on every rank or only on rank
  ``ALR_FAST_FAULT_RANK``; ``ALR_FAST_FAULT_SIGNAL`` says how: KILL (default: SIGKILL after that step's
  checkpoint, if any), STOP (SIGSTOP there: a rank that hangs, its peers hit the collective timeout), TERM or
  INT (that signal, before the step's stop check), TERM2 (SIGTERM twice, 2.5 s apart);
* ``ALR_FAST_NAN_AT_STEP=k`` feeds NaN images to global step k (counting from 1), so its loss is NaN.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import torch

__all__ = ["FaultHook", "from_env", "ENV_VARS"]

ENV_VARS = ("ALR_FAST_FAULT_AT_STEP", "ALR_FAST_FAULT_RANK", "ALR_FAST_FAULT_SIGNAL", "ALR_FAST_NAN_AT_STEP")
_HOW = ("KILL", "STOP", "TERM", "INT", "TERM2")


@dataclass
class FaultHook:
    """What to inject, and where; the trainer calls :meth:`batch` before each step's forward pass and
    :meth:`after_step` twice after it (phase 'signal' before the stop check, 'kill' after the checkpoint)."""

    at_step: int = -1
    how: str = "KILL"
    nan_at_step: int = -1

    def batch(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """The batch of global step ``step`` (1-based), NaN images at ``nan_at_step``."""
        return x * float("nan") if step == self.nan_at_step else x

    def after_step(self, step: int, phase: str) -> None:
        if step != self.at_step or (phase == "kill") != (self.how in ("KILL", "STOP")):
            return
        if self.how in ("KILL", "STOP"):
            os.kill(os.getpid(), signal.SIGKILL if self.how == "KILL" else signal.SIGSTOP)
            return
        signum = signal.SIGINT if self.how == "INT" else signal.SIGTERM
        os.kill(os.getpid(), signum)
        if self.how == "TERM2":  # a second one, later than a repeated delivery of the first (StopSignals.REPEAT_S)
            from alr_fast.train.runtime import StopSignals

            time.sleep(StopSignals.REPEAT_S + 0.5)
            os.kill(os.getpid(), signum)


def from_env(rank: int, env=None) -> FaultHook | None:
    """The hook the environment asks for on rank ``rank``, or None (every real run) when none of
    :data:`ENV_VARS` is set. A malformed value is an error naming the variable."""
    env = os.environ if env is None else env
    if not any(v in env for v in ENV_VARS):
        return None

    def step_of(name: str) -> int:
        raw = env.get(name, "-1")
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r}: expected a step number") from None

    how = env.get("ALR_FAST_FAULT_SIGNAL", "KILL").upper()
    if how not in _HOW:
        raise ValueError(f"ALR_FAST_FAULT_SIGNAL={how!r}: expected one of {_HOW}")
    mine = env.get("ALR_FAST_FAULT_RANK", str(rank)) == str(rank)
    return FaultHook(at_step=step_of("ALR_FAST_FAULT_AT_STEP") if mine else -1, how=how,
                     nan_at_step=step_of("ALR_FAST_NAN_AT_STEP"))
