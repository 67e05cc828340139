"""alr_fast.loss.schedule piece by piece, with values worked out by hand: RefinementSchedule.from_config (every
MethodConfig field reaches the rule, the ramp and the label prior), end_epoch's per-epoch signals (a class nobody
predicts, one sample, an empty histogram), the collapse limit at its edge, the automatic mode driven through
end_epoch, summary(), and the checkpoint round trip. Milliseconds each (no training)."""

import json
import math

import pytest
import torch

from alr_fast.config import MethodConfig
from alr_fast.loss.contract import ALRParams
from alr_fast.loss.schedule import AutoWarmupRule, CollapseGuard, RefinementSchedule


def _counts(hist, agree):
    """What prediction_counts returns: the histogram, the number equal to the given label, the number seen."""
    return torch.tensor([*hist, agree, sum(hist)], dtype=torch.float64)


def _rule_fields(rule):
    return {n: getattr(rule, n) for n in AutoWarmupRule.PARAMS}


def test_from_config_passes_every_field():
    m = MethodConfig(name="alr", alpha=0.8, lam=0.5, warmup="auto", warmup_signal="train_acc_given",
                     warmup_min_epochs=2, warmup_max_epochs=5, warmup_min_rise=0.07, warmup_stall_ratio=0.4,
                     warmup_window=3, warmup_patience=2, ramp_epochs=1.5, ramp_alpha=True)
    labels = [0, 2, 2, 1, 2, 0, 2, 2]  # class 2 holds 5 of the 8 given labels
    sch = RefinementSchedule.from_config(m, epochs=12, steps_per_epoch=4, given_labels=labels, num_classes=4)
    assert sch.mode == "auto" and sch.switch_epoch is None
    assert _rule_fields(sch.rule) == dict(signal="train_acc_given", min_epochs=2, max_epochs=5, min_rise=0.07,
                                          stall_ratio=0.4, window=3, patience=2)
    assert sch.label_prior_max == 5 / 8
    assert (sch.ramp_epochs, sch.ramp_alpha, sch.steps_per_epoch, sch.ramp_steps) == (1.5, True, 4, 6)
    assert sch.base == ALRParams(0.8, 0.5)
    # ramp_alpha reaches params(): one step into the 6-step ramp, alpha = 1 - (1/6)(1 - 0.8)
    sch.state.switch_epoch = 2
    assert sch.params(8, 2).alpha == pytest.approx(1 - (1 / 6) * 0.2, rel=1e-12)


def test_from_config_resolves_max_epochs_and_the_missing_label_prior():
    # warmup_max_epochs = 0: half the epochs, rounded down, at least 1; min_epochs is capped by it.
    for epochs, expect in ((7, 3), (1, 1), (2, 1)):
        sch = RefinementSchedule.from_config(MethodConfig(name="alr", warmup="auto", warmup_min_epochs=2),
                                             epochs=epochs, steps_per_epoch=1)
        assert (sch.rule.max_epochs, sch.rule.min_epochs) == (expect, min(2, expect)), epochs
        assert sch.label_prior_max == 0.0  # no given labels: no prior
    no_labels = RefinementSchedule.from_config(MethodConfig(name="alr"), epochs=10, steps_per_epoch=1,
                                               given_labels=None, num_classes=10)
    assert no_labels.label_prior_max == 0.0
    no_k = RefinementSchedule.from_config(MethodConfig(name="alr"), epochs=10, steps_per_epoch=1, given_labels=[0, 0, 1])
    assert no_k.label_prior_max == 0.0  # labels without num_classes: no prior either
    # class ids above the labels present (num_classes pads the histogram): the share is over all labels
    padded = RefinementSchedule.from_config(MethodConfig(name="alr"), epochs=10, steps_per_epoch=1,
                                            given_labels=torch.tensor([1, 1, 0]), num_classes=6)
    assert padded.label_prior_max == 2 / 3


def test_rule_equality_and_repr():
    base = dict(min_epochs=2, max_epochs=6)
    a = AutoWarmupRule(**base)
    assert a == AutoWarmupRule(**base)
    for name, other in (("signal", "noisy_val_acc"), ("min_epochs", 3), ("max_epochs", 7), ("min_rise", 0.1),
                        ("stall_ratio", 0.5), ("window", 2), ("patience", 2)):
        assert a != AutoWarmupRule(**{**base, name: other}), name
    assert a != "AutoWarmupRule()"
    assert repr(a) == ("AutoWarmupRule(signal='auto', min_epochs=2, max_epochs=6, min_rise=0.05, stall_ratio=0.3, "
                       "window=1, patience=1)")


def test_end_epoch_signals_by_hand():
    sch = RefinementSchedule("fixed", ALRParams(0.9, 0.5), warmup_epochs=5)
    row = sch.end_epoch(0, {}, _counts([6, 0, 2], 3))  # 8 seen; nobody predicts class 1
    eff = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert row.keys() == {"train_acc_given", "pred_max_share", "pred_classes_eff", "refine_from_epoch"}
    assert (row["train_acc_given"], row["pred_max_share"], row["refine_from_epoch"]) == (3 / 8, 6 / 8, 5)
    assert row["pred_classes_eff"] == pytest.approx(eff, rel=1e-12)
    one = sch.end_epoch(1, {}, _counts([0, 1, 0], 1))  # a single sample seen
    assert one == {"train_acc_given": 1.0, "pred_max_share": 1.0, "pred_classes_eff": 1.0, "refine_from_epoch": 5}
    empty = sch.end_epoch(2, {}, _counts([0, 0, 0], 0))  # nothing seen (a rank with no batch)
    assert empty == {"train_acc_given": 0.0, "pred_max_share": 0.0, "pred_classes_eff": 0.0, "refine_from_epoch": 5}
    assert sch.end_epoch(3, {"train_loss": 1.0}) == {"refine_from_epoch": 5}  # no counts: nothing measured


def test_collapse_at_exactly_the_limit():
    assert CollapseGuard().threshold(0.02) == pytest.approx(0.07, abs=1e-15)  # ref + min_jump is the larger
    assert CollapseGuard().threshold(0.25) == 0.5  # ratio * ref is the larger
    sch = RefinementSchedule("fixed", ALRParams(0.9, 1.0), warmup_epochs=1, label_prior_max=0.125)
    sch.end_epoch(0, {}, _counts([2, 2, 2, 2], 0))  # warm-up share 0.25 > prior: ref 0.25, limit 0.5
    row = sch.end_epoch(1, {}, _counts([4, 2, 1, 1], 0))  # share exactly 0.5: a collapse ("reaches")
    assert row["collapse"] is True
    assert sch.messages == ["epoch 1: collapse? 50.0 % of the training predictions are one class (limit 50.0 %; "
                            "alr_fast/loss/schedule.py CollapseGuard)"]
    assert sch.state_dict() == {"warmup": {"switch_epoch": 1, "reason": "fixed", "signal": None, "history": [],
                                           "best_gain": 0.0, "stalled": 0},
                                "collapse_ref": 0.25, "collapse_epochs": [1]}
    # the checkpoint round trip restores the guard's memory: the next collapse epoch is not reported again
    fresh = RefinementSchedule("fixed", ALRParams(0.9, 1.0), warmup_epochs=1, label_prior_max=0.125)
    fresh.load_state_dict(json.loads(json.dumps(sch.state_dict())))
    assert fresh.state_dict() == sch.state_dict() and fresh.summary() == sch.summary()
    again = fresh.end_epoch(2, {}, _counts([4, 2, 1, 1], 0))
    assert again["collapse"] is True and fresh.messages == [] and fresh.collapse_epochs == [1, 2]
    fresh.load_state_dict(None)  # no saved schedule (an old checkpoint): nothing changes
    fresh.load_state_dict({})
    assert fresh.collapse_epochs == [1, 2] and fresh.collapse_ref == 0.25


def test_auto_mode_decides_through_end_epoch_and_never_mode_does_not():
    def run(mode):
        sch = RefinementSchedule(mode, ALRParams(0.9, 0.5), rule=AutoWarmupRule(max_epochs=10))
        rows, msgs = [], []
        # train_acc_given 0.20, 0.50, 0.52 (from the counts): risen by 0.3, then a gain of 0.02 <= 0.3 x 0.3
        for e, agree in enumerate((20, 50, 52, 90)):
            rows.append(sch.end_epoch(e, {"test_acc": 0.1}, _counts([25, 25, 25, 25], agree))["refine_from_epoch"])
            msgs.append(list(sch.messages))
        return sch, rows, msgs

    sch, rows, msgs = run("auto")
    assert rows == [None, None, 3, 3]
    assert msgs == [[], [], ["warm-up ends after epoch 2 (train_acc_given stalled); refinement from epoch 3"], []]
    assert sch.state.history == pytest.approx([0.2, 0.5, 0.52], abs=1e-15)
    assert sch.summary() == {"warmup_mode": "auto", "refine_from_epoch": 3, "warmup_reason": "train_acc_given stalled",
                             "warmup_signal": "train_acc_given", "ramp_steps": 0, "collapse_epochs": []}
    restored = RefinementSchedule("auto", ALRParams(0.9, 0.5), rule=AutoWarmupRule(max_epochs=10))
    restored.load_state_dict(json.loads(json.dumps(sch.state_dict())))
    assert restored.summary() == sch.summary() and restored.state == sch.state

    never, rows, msgs = run("never")  # cross-entropy: the rule is never asked, whatever the signal does
    assert rows == [None] * 4 and msgs == [[]] * 4 and never.state.history == []
    assert not any(never.refine_at(e) for e in range(4))


def test_constructor_defaults_and_errors():
    p = ALRParams(0.9, 0.5)
    sch = RefinementSchedule("fixed", p)
    assert (sch.switch_epoch, sch.state.reason, sch.ramp_steps, sch.steps_per_epoch, sch.messages) == (0, "fixed", 0, 1,
                                                                                                       [])
    assert sch.refine_at(0) and sch.params(0, 0) == ALRParams(0.9, 0.5, refine=True)
    auto = RefinementSchedule("auto", p)
    assert auto.rule == AutoWarmupRule() and auto.switch_epoch is None
    assert auto.params(3, 0) == ALRParams(0.9, 0.5, refine=False)  # undecided: warm-up, no ramp arithmetic
    # ramp_epochs counts epochs of the default one step: lam 0.25, 0.5 at the first two refinement steps
    ramped = RefinementSchedule("fixed", p, warmup_epochs=1, ramp_epochs=2)
    assert [ramped.params(s, s).lam for s in (1, 2, 3)] == [0.25, 0.5, 0.5]
    # no warm-up and no label prior given: the reference is 0, the limit min_jump = 0.05
    cold = RefinementSchedule("fixed", p)
    assert cold.end_epoch(0, {}, _counts([1, 1, 1, 1], 0))["collapse"] is True
    with pytest.raises(ValueError, match="RefinementSchedule: mode must be 'fixed', 'auto' or 'never', got 'sometimes'"):
        RefinementSchedule("sometimes", p)
    with pytest.raises(TypeError, match="RefinementSchedule: params must be an ALRParams, got float"):
        RefinementSchedule("fixed", 0.9)


def test_auto_warmup_errors_name_each_field_and_allow_the_boundaries():
    from alr_fast.loss.schedule import auto_warmup_errors

    assert auto_warmup_errors(0, 1, 0.0, 1, 1) == []  # every boundary value is allowed
    assert auto_warmup_errors(2, 2, 0.99, 1, 1) == []  # max_epochs may equal min_epochs
    assert auto_warmup_errors(-1, None, 1.0, 0, 0) == [("min_epochs", "must be >= 0", -1),
                                                       ("stall_ratio", "must be in [0, 1)", 1.0),
                                                       ("window", "must be >= 1", 0),
                                                       ("patience", "must be >= 1", 0)]
    assert auto_warmup_errors(3, 2, 0.3, 1, 1) == [
        ("max_epochs", "must be >= the fewest warm-up epochs (3) and >= 1", 2)]
    assert auto_warmup_errors(0, 0, 0.3, 1, 1) == [
        ("max_epochs", "must be >= the fewest warm-up epochs (0) and >= 1", 0)]


def test_rule_edges_worked_out_by_hand():
    import re

    from alr_fast.loss.schedule import WarmupState

    def switch(rule, values):
        state = WarmupState()
        for e, v in enumerate(values):
            rule.observe(state, e, {"train_acc_given": v})
        return state

    # the largest one-epoch gain is the largest so far (0.4 at epoch 2), not the first one (0.1): 0.06 <= 0.3 x 0.4
    s = switch(AutoWarmupRule(), [0.0, 0.1, 0.5, 0.56])
    assert (s.switch_epoch, s.best_gain) == (4, pytest.approx(0.4, abs=1e-15))
    # risen by exactly min_rise counts as risen (0.25 - 0 >= 0.25, exact in binary)
    assert switch(AutoWarmupRule(min_rise=0.25), [0.25, 0.5, 0.5]).switch_epoch == 3
    # a gain of exactly stall_ratio x the best gain counts as stalled (0.25 <= 0.5 x 0.5)
    assert switch(AutoWarmupRule(stall_ratio=0.5), [0.0, 0.5, 0.75]).switch_epoch == 3
    assert AutoWarmupRule().max_epochs == AutoWarmupRule.DEFAULT_MAX_EPOCHS == 10
    with pytest.raises(TypeError, match=re.escape(
            "AutoWarmupRule: unknown parameter(s) ['patiense']; parameters: ['signal', 'min_epochs', 'max_epochs', "
            "'min_rise', 'stall_ratio', 'window', 'patience']")):
        AutoWarmupRule(patiense=2)


def test_never_refines_whatever_the_state_and_old_checkpoints_load():
    # cross-entropy: even a state naming a switch epoch (another run's checkpoint) does not make it refine
    ce = RefinementSchedule("never", ALRParams(0.9, 0.5))
    ce.load_state_dict({"warmup": {"switch_epoch": 1, "reason": "fixed", "signal": None, "history": [],
                                   "best_gain": 0.0, "stalled": 0}})
    assert not any(ce.refine_at(e) for e in range(4))
    assert ce.params(10, 3) == ALRParams(0.9, 0.5, refine=False)  # no ramp arithmetic either
    # a checkpoint written before the collapse guard existed: no collapse_ref / collapse_epochs keys
    assert ce.collapse_ref is None and ce.collapse_epochs == []
