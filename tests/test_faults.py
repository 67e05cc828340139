"""The fault-injection hook (alr_fast/train/faults.py): absent from real runs, exact when a test asks for it."""

import pytest
import torch

from alr_fast.train import faults


def test_no_hook_without_the_environment():
    assert faults.from_env(0, env={}) is None
    assert faults.from_env(1, env={"OMP_NUM_THREADS": "2"}) is None


def test_hook_targets_the_named_rank_and_step():
    env = {"ALR_FAST_FAULT_AT_STEP": "7", "ALR_FAST_FAULT_RANK": "1", "ALR_FAST_FAULT_SIGNAL": "term"}
    assert faults.from_env(0, env=env) == faults.FaultHook(at_step=-1, how="TERM", nan_at_step=-1)
    assert faults.from_env(1, env=env) == faults.FaultHook(at_step=7, how="TERM", nan_at_step=-1)
    hook = faults.from_env(0, env={"ALR_FAST_NAN_AT_STEP": "3"})
    x = torch.ones(2, 3)
    assert torch.equal(hook.batch(2, x), x) and torch.equal(hook.batch(4, x), x)
    assert torch.isnan(hook.batch(3, x)).all()
    hook.after_step(3, "kill")  # no fault step set: must return without signalling this process


@pytest.mark.parametrize("env, match", [({"ALR_FAST_FAULT_AT_STEP": "x"}, "ALR_FAST_FAULT_AT_STEP='x'"),
                                        ({"ALR_FAST_NAN_AT_STEP": "1.5"}, "ALR_FAST_NAN_AT_STEP='1.5'"),
                                        ({"ALR_FAST_FAULT_AT_STEP": "1", "ALR_FAST_FAULT_SIGNAL": "HUP"},
                                         "ALR_FAST_FAULT_SIGNAL='HUP'")])
def test_bad_values_name_the_variable(env, match):
    with pytest.raises(ValueError, match=match):
        faults.from_env(0, env=env)


def test_trainer_has_no_fault_code_of_its_own():
    """The trainer only calls the hook; the fault logic and its variables live in faults.py."""
    from pathlib import Path

    import alr_fast.train.trainer as trainer

    text = Path(trainer.__file__).read_text()
    assert "ALR_FAST_" not in text and "os.kill" not in text and "SIGKILL" not in text
