"""alr_fast.train.schedule: the automatic end of warm-up on synthetic metric sequences, the lam/alpha ramp per step,
the collapse guard, and a seconds-long run where warmup='auto' switches and logs the epoch (and resumes)."""

import json

import numpy as np
import pytest
import torch

from alr_fast.config import Config, DataConfig, MethodConfig, ModelConfig, OptimConfig, TrainConfig
from alr_fast.loss.contract import ALRParams
from alr_fast.train.schedule import (
    AutoWarmupRule,
    CollapseGuard,
    RefinementSchedule,
    WarmupState,
    prediction_counts,
    ramp_factor,
)


def decide(rule, values, key="train_acc_given", state=None, start=0):
    """Feed values (epoch start, start+1, ...) until the rule decides; returns the state."""
    state = state or WarmupState()
    for e, v in enumerate(values, start=start):
        rule.observe(state, e, {key: v, "test_acc": 0.5})
        if state.switch_epoch is not None:
            break
    return state


# --- the rule on synthetic sequences (expected epochs worked out by hand from the documented rule) -----------

def test_plateau_fires_at_the_first_flat_epoch():
    # gains .20 .10 .03: .03 <= 0.3 x .20 -> stalled at epoch 3, refinement from epoch 4
    s = decide(AutoWarmupRule(max_epochs=20), [0.1, 0.3, 0.4, 0.43, 0.44, 0.45])
    assert (s.switch_epoch, s.reason) == (4, "train_acc_given stalled")
    assert s.history == [0.1, 0.3, 0.4, 0.43]


def test_peak_of_a_noisy_validation_accuracy():
    # A held-out noisy-val accuracy is preferred by signal='auto'; it falls after its peak at epoch 3.
    rule = AutoWarmupRule(max_epochs=20, stall_ratio=0.0)  # 0: only a drop (or an exactly flat epoch) stalls
    vals = [0.2, 0.35, 0.45, 0.5, 0.48, 0.40]
    state = WarmupState()
    for e, v in enumerate(vals):
        rule.observe(state, e, {"train_acc_given": 0.1 + 0.05 * e, "noisy_val_acc": v})
        if state.switch_epoch is not None:
            break
    assert state.signal == "noisy_val_acc"
    assert state.switch_epoch == 5  # epoch 4 is the first below the peak


def test_noisy_plateau_window_smooths_the_wiggles():
    # Rise with one noisy epoch (gain .01 at epoch 3), then a plateau wiggling by +-0.02.
    vals = [0.10, 0.25, 0.40, 0.41, 0.55, 0.60, 0.58, 0.61, 0.59, 0.62]
    # Window 1 is fooled by the wiggle in the rise: stalled at epoch 3.
    assert decide(AutoWarmupRule(max_epochs=20), vals).switch_epoch == 4
    # Window 2 averages it out: 2-epoch gains/2 = .15 .08 .075 .095 .015 -> .015 <= .3 x .15 at epoch 6.
    assert decide(AutoWarmupRule(max_epochs=20, window=2), vals).switch_epoch == 7
    # Patience 2 on window 1: stalled at 3, reset by .14 and .05 (> .045), stalled at 6 (-.02) and 7 (.03).
    s = decide(AutoWarmupRule(max_epochs=20, patience=2), vals)
    assert s.switch_epoch == 8 and s.stalled == 2


def test_no_stall_means_max_epochs_and_no_rise_means_no_stall():
    rising = [0.1 + 0.05 * e for e in range(12)]  # steady gains: never stalls
    s = decide(AutoWarmupRule(max_epochs=6), rising)
    assert (s.switch_epoch, s.reason) == (6, "max_epochs reached")
    flat = [0.1, 0.1, 0.11, 0.1, 0.11, 0.1, 0.1, 0.1]  # never rises by min_rise: untrained, not a plateau
    assert decide(AutoWarmupRule(max_epochs=7), flat).switch_epoch == 7


def test_min_epochs_and_loss_signals():
    vals = [0.1, 0.3, 0.31, 0.31, 0.31]
    assert decide(AutoWarmupRule(max_epochs=9), vals).switch_epoch == 3
    assert decide(AutoWarmupRule(max_epochs=9, min_epochs=4), vals).switch_epoch == 4
    # A loss falls: the rule minimises it (2.3 -> 1.9 -> 1.88 stalls at epoch 2).
    s = decide(AutoWarmupRule(max_epochs=9, signal="train_loss"), [2.3, 1.9, 1.88, 1.87], key="train_loss")
    assert s.switch_epoch == 3 and s.history == [-2.3, -1.9, -1.88]


def test_resume_in_the_middle_gives_the_same_decision():
    rule = AutoWarmupRule(max_epochs=20, window=2, patience=2)
    vals = [0.10, 0.25, 0.40, 0.41, 0.55, 0.60, 0.58, 0.61, 0.59, 0.62, 0.6, 0.6]
    whole = decide(rule, vals)
    assert whole.switch_epoch == 8
    for cut in range(1, 8):
        first = decide(rule, vals[:cut])
        assert first.switch_epoch is None
        saved = json.loads(json.dumps(first.to_dict()))  # what a checkpoint stores
        restored = WarmupState.from_dict(saved)
        rule.observe(restored, cut - 1, {"train_acc_given": 0.99})  # an epoch already seen changes nothing
        assert restored.to_dict() == saved
        again = decide(rule, vals[cut:], state=restored, start=cut)
        assert again == whole, cut
    with pytest.raises(ValueError, match="epoch 5 observed after 2 epochs"):
        rule.observe(decide(rule, vals[:2]), 5, {"train_acc_given": 0.5})


def test_rule_errors_name_the_problem():
    with pytest.raises(KeyError, match="method.warmup_signal='noisy_val_loss': not in the epoch metrics"):
        AutoWarmupRule(signal="noisy_val_loss").observe(WarmupState(), 0, {"train_loss": 1.0})
    with pytest.raises(ValueError, match=r"max_epochs must be >= the fewest warm-up epochs \(5\)"):
        AutoWarmupRule(min_epochs=5, max_epochs=3)
    with pytest.raises(ValueError, match="is nan at epoch 0"):
        AutoWarmupRule().observe(WarmupState(), 0, {"train_acc_given": float("nan")})


# --- ramp ----------------------------------------------------------------------------------------------------

def test_ramp_values_per_step():
    assert [ramp_factor(s, 8, 4) for s in range(6, 14)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert [ramp_factor(s, 8, 0) for s in (7, 8, 9)] == [0, 1, 1]
    # warm-up 2 epochs of 4 steps, ramp over 1.5 epochs = 6 steps; lam 0.6, alpha 0.9
    sch = RefinementSchedule("fixed", ALRParams(0.9, 0.6), warmup_epochs=2, ramp_epochs=1.5, steps_per_epoch=4)
    assert [sch.refine_at(e) for e in range(4)] == [False, False, True, True]
    lams = [sch.params(s, s // 4).lam for s in range(8, 16)]
    np.testing.assert_allclose(lams, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6], rtol=1e-12)
    assert all(sch.params(s, s // 4).alpha == 0.9 for s in range(8, 16))
    assert [sch.params(s, s // 4).refine for s in range(4, 12)] == [False] * 4 + [True] * 4
    sch = RefinementSchedule("fixed", ALRParams(0.9, 0.6), warmup_epochs=2, ramp_epochs=1.5, steps_per_epoch=4,
                             ramp_alpha=True)
    alphas = [sch.params(s, s // 4).alpha for s in range(8, 16)]
    np.testing.assert_allclose(alphas, [1 - 0.1 * k / 6 for k in (1, 2, 3, 4, 5, 6, 6, 6)], rtol=1e-12)
    never = RefinementSchedule("never", ALRParams(0.9, 0.0), warmup_epochs=0)
    assert not any(never.refine_at(e) for e in range(10))
    assert not any(never.params(s, s).refine for s in range(10))


def test_schedule_from_config_refines_from_the_fixed_warmup_and_never_for_ce():
    """(Was MethodConfig.refine_at, a copy of this rule; the schedule is the one place it lives.)"""
    sch = RefinementSchedule.from_config(MethodConfig(name="alr", warmup_epochs=3), epochs=10, steps_per_epoch=2)
    assert [sch.refine_at(e) for e in range(5)] == [False, False, False, True, True]
    assert [sch.params(2 * e, e).refine for e in range(5)] == [False, False, False, True, True]
    assert sch.params(6, 3) == ALRParams(0.9, 0.3, refine=True)
    ce = RefinementSchedule.from_config(MethodConfig(name="ce", warmup_epochs=3), epochs=50, steps_per_epoch=1)
    assert not any(ce.refine_at(e) for e in range(50))
    selc = RefinementSchedule.from_config(MethodConfig(name="selc", lam=0.7), epochs=10, steps_per_epoch=1)
    assert selc.params(9, 9).lam == 0.0  # SELC = ALR with lam 0, whatever method.lam says
    with pytest.raises(TypeError, match="params must be an ALRParams"):
        RefinementSchedule("fixed", 0.9)


def test_trainer_uses_the_ramp_every_step(tmp_path, monkeypatch):
    """The loop passes the schedule's alpha/lam to the loss on every step (recorded at the call: the trainer's
    loss goes through the public ALR object, which calls alr_loss)."""
    import alr_fast.loss.alr as alr_module
    import alr_fast.train.trainer as trainer

    calls = []
    real = alr_module.alr_loss

    def spy(logits, bank, index, *, alpha, lam, refine, **kw):
        calls.append((alpha, lam, refine))
        return real(logits, bank, index, alpha=alpha, lam=lam, refine=refine, **kw)

    monkeypatch.setattr(alr_module, "alr_loss", spy)
    cfg = _digits_cfg(tmp_path / "ramp", epochs=3, method=MethodConfig(name="alr", alpha=0.8, lam=0.5,
                      warmup_epochs=1, ramp_epochs=1.0, ramp_alpha=True))
    summary = trainer.train(cfg)
    spe = len(calls) // 3
    assert spe == 12 and summary["ramp_steps"] == spe  # 1,438 digits / 128 per batch
    assert all(not r for _, _, r in calls[:spe]) and all(r for _, _, r in calls[spe:])
    ramp = [(k + 1) / spe for k in range(spe)] + [1.0] * spe
    np.testing.assert_allclose([lam for _, lam, _ in calls[spe:]], [0.5 * r for r in ramp], rtol=1e-12)
    np.testing.assert_allclose([a for a, _, _ in calls[spe:]], [1 - 0.2 * r for r in ramp], rtol=1e-12)


# --- collapse guard ------------------------------------------------------------------------------------------

def test_prediction_counts_match_numpy():
    g = torch.Generator().manual_seed(3)
    for k, n in ((2, 1), (10, 37), (7, 500)):
        pred = torch.randint(-1, k, (n,), generator=g)
        given = torch.randint(0, k, (n,), generator=g)
        c = prediction_counts(pred, given, k).numpy()
        p, y = pred.numpy(), given.numpy()
        ref = [int((p == j).sum()) for j in range(k)] + [int(((p == y) & (p >= 0)).sum()), int((p >= 0).sum())]
        np.testing.assert_array_equal(c, np.asarray(ref, dtype=np.float64))


def _counts(hist, agree):
    return torch.tensor([*hist, agree, sum(hist)], dtype=torch.float64)


def test_collapse_guard_flags_a_jump_and_reports_it_once():
    sch = RefinementSchedule("fixed", ALRParams(0.9, 1.0), warmup_epochs=1, label_prior_max=0.1,
                             guard=CollapseGuard(ratio=2.0, min_jump=0.05))
    row = sch.end_epoch(0, {}, _counts([12] + [9] * 9 + [0] * 0, 30))  # warm-up: share 12/93
    assert "collapse" not in row and row["train_acc_given"] == pytest.approx(30 / 93)
    assert row["pred_max_share"] == pytest.approx(12 / 93)
    limit = max(2 * 12 / 93, 12 / 93 + 0.05)
    ok = sch.end_epoch(1, {}, _counts([24] + [8] * 9, 10))  # share 24/96 = 0.25 < limit 0.258
    assert ok["collapse"] is False and sch.messages == [] and 24 / 96 < limit
    bad = sch.end_epoch(2, {}, _counts([60] + [4] * 9, 10))
    assert bad["collapse"] is True and len(sch.messages) == 1 and "collapse?" in sch.messages[0]
    sch.end_epoch(3, {}, _counts([61] + [4] * 9, 10))
    assert sch.messages == []  # reported at the onset only; still listed
    assert sch.summary()["collapse_epochs"] == [2, 3]
    uniform = sch.end_epoch(4, {}, _counts([10] * 10, 10))
    assert uniform["collapse"] is False and uniform["pred_classes_eff"] == pytest.approx(10.0)
    # No warm-up at all: the given labels' largest class share (0.1) is the reference, limit 0.2.
    cold = RefinementSchedule("fixed", ALRParams(0.9, 1.0), warmup_epochs=0, label_prior_max=0.1)
    assert cold.end_epoch(0, {}, _counts([19] + [9] * 9, 0))["collapse"] is False  # 19 %
    assert cold.end_epoch(1, {}, _counts([21] + [9] * 9, 0))["collapse"] is True  # 21 %


# --- a seconds-long run --------------------------------------------------------------------------------------

def _digits_cfg(out, epochs, method, **train):
    return Config(
        recipe="test",
        data=DataConfig(dataset="digits", noise_kind="sym-incl", noise_rate=0.6),
        model=ModelConfig(name="mlp", width=16),
        optim=OptimConfig(lr=0.05, schedule="constant"),
        method=method,
        train=TrainConfig(epochs=epochs, batch_size=128, out=str(out), progress=False, tensorboard=False,
                          **train),
    )


def _rows(out):
    drop = ("images_per_s", "epoch_time_s", "data_time_s", "step_time_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_auto_warmup_switches_logs_and_resumes(tmp_path, monkeypatch):
    from alr_fast.train.trainer import train

    method = MethodConfig(name="alr", lam=1.0, warmup="auto", warmup_min_epochs=3, warmup_max_epochs=4,
                          ramp_epochs=1.0)
    full = train(_digits_cfg(tmp_path / "full", 6, method))
    rows = _rows(tmp_path / "full")
    switch = full["refine_from_epoch"]
    assert switch in (3, 4) and full["warmup_mode"] == "auto" and full["warmup_signal"] == "train_acc_given"
    assert [r["phase"] for r in rows] == ["warmup"] * switch + ["refine"] * (6 - switch)
    # The decision is logged in the row of the epoch that made it, and every later row.
    assert [r["refine_from_epoch"] for r in rows] == [None] * (switch - 1) + [switch] * (7 - switch)
    assert all(0 <= r["train_acc_given"] <= 1 and "pred_max_share" in r for r in rows)
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["refine_from_epoch"] == switch

    # The same run crashing in epoch 2 (the rule has seen 2 epochs and not decided), then resumed: the rule's
    # state comes back from the checkpoint and the run ends exactly like the uninterrupted one.
    from alr_fast.train.evaluation import EvalPlan

    real_evaluate, calls = EvalPlan.evaluate, []

    def crash_in_epoch_2(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected crash")
        return real_evaluate(self, *args, **kw)

    part = tmp_path / "part"
    monkeypatch.setattr(EvalPlan, "evaluate", crash_in_epoch_2)
    with pytest.raises(RuntimeError, match="injected crash"):
        train(_digits_cfg(part, 6, method))
    monkeypatch.setattr(EvalPlan, "evaluate", real_evaluate)
    from alr_fast.train.checkpoint import complete_checkpoints

    saved = json.loads((complete_checkpoints(part)[0] / "trainer.json").read_text())
    assert saved["schedule"]["warmup"]["switch_epoch"] is None and len(saved["schedule"]["warmup"]["history"]) == 2
    resumed = train(_digits_cfg(part, 6, method, resume=True))
    assert resumed["refine_from_epoch"] == switch
    assert _rows(part) == rows


@pytest.mark.parametrize("override, match", [
    ("method.warmup=sometimes", "method.warmup: must be one of"),
    ("method.warmup_max_epochs=40", "warmup_max_epochs: 40 leaves no refinement epoch"),
    ("method.warmup_stall_ratio=1.5", r"warmup_stall_ratio: must be in \[0, 1\)"),
    ("method.ramp_epochs=-1", "ramp_epochs: must be >= 0"),
])
def test_config_fields_are_validated(override, match):
    from alr_fast.config import apply_overrides
    from alr_fast.recipes import get_recipe

    with pytest.raises(ValueError, match=match):
        apply_overrides(get_recipe("demo"), ["method.warmup=auto", override])


def test_two_ranks_through_the_launcher(tmp_path):
    """The real path: torchrun, 2 CPU ranks (gloo); the decision logged matches the rule replayed on the logged
    (all-reduced) signal, and every rank trained with the same schedule (equal final weights)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(root / "launchers" / "train.py"), "--recipe", "demo", "--method", "alr", "--set", "data.dataset=digits",
           "--set", "model.name=mlp", "--batch-size", "64", "--epochs", "4", "--no-progress", "--out", str(out),
           "--set", "method.warmup=auto", "--set", "method.warmup_max_epochs=3", "--set", "method.ramp_epochs=1"]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["rank_weight_digests"])) == 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    replay = decide(AutoWarmupRule(max_epochs=3), [r["train_acc_given"] for r in rows])
    assert summary["refine_from_epoch"] == replay.switch_epoch
    assert [r["phase"] == "refine" for r in rows] == [e >= replay.switch_epoch for e in range(4)]
    assert summary["ramp_steps"] == 12  # 1,438 digits over 2 ranks x 64: 12 steps per epoch


def test_warmup_study_report_checks_each_goal():
    """benchmarks/quality.py --study warmup: the goal lines on hand-made records (no training)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    def rec(dataset, noise, arm, seed, acc, refined=0.9, switch=3, collapse=()):
        return {"dataset": dataset, "noise": noise, "arm": arm, "seed": seed, "last_test_acc": acc,
                "peak_test_acc": acc, "refined_label_acc": refined, "refine_from_epoch": switch,
                "collapse_epochs": list(collapse), "actual_rate": 0.5}

    recs = []
    for seed, (a, s, f1, f4) in enumerate([(0.90, 0.80, 0.91, 0.5), (0.86, 0.81, 0.905, 0.6), (0.88, 0.79, 0.9, 0.7)]):
        recs += [rec("mnist5k", "sym-incl@0.6", "alr-auto", seed, a, refined=0.96),
                 rec("mnist5k", "sym-incl@0.6", "selc", seed, s),
                 rec("mnist5k", "sym-incl@0.6", "alr-fixed1", seed, f1),
                 rec("mnist5k", "sym-incl@0.6", "alr-fixed4", seed, f4, collapse=(5,) if seed else ())]
    recs += [rec("digits", "pair@0.45", "alr-auto", 0, 0.74, collapse=(7,)), rec("digits", "pair@0.45", "selc", 0, 0.6)]
    meta = {"command": "python benchmarks/quality.py --study warmup", "git_sha": "0" * 40, "date_utc": "now",
            "machine": "test", "device": "cpu", "torch": "x", "total_time_s": 60.0, "auto_recipe": {"warmup": "auto"},
            "fixed_warmups": [1, 4], "fixed_ramp_epochs": 0.0, "seeds": [0, 1, 2]}
    md = quality.warmup_report(recs, meta)
    goals = [line for line in md.splitlines() if line.startswith("- ")]
    assert "ALR-auto 88.0 vs SELC 80.0 (goal ≥ SELC + 5): **holds**" in goals[0]
    assert "std over seeds 2.0 (goal ≤ 3): **holds**" in goals[1]
    assert "collapse flag: 0 of 3 (goal 0): **holds**" in goals[2]
    assert "88.0 vs best fixed warm-up (alr-fixed1) 90.5 (goal within 1 point): **does not hold**" in goals[3]
    assert "refined-label acc 96.0 % (goal ≥ 95 %): **holds**" in goals[4]
    assert "digits pair@0.45: ALR-auto 74.0 vs SELC 60.0 (goal ≥ SELC + 5): **holds**" in goals[5]
    assert "not measured (1 seed)" in goals[6] and "1 of 1 (goal 0): **does not hold**" in goals[7]
    assert "ALR-auto 74.0 (goal ≥ 75): **does not hold**" in goals[8]
    assert "| mnist5k | sym-incl@0.6 | 50.0 % | alr-fixed4 | 60.0 ± 10.0 |" in md and "| 2 of 3 |" in md


def test_auto_warmup_watches_the_noisy_validation_slice_when_there_is_one(tmp_path):
    from alr_fast.train.trainer import train

    cfg = _digits_cfg(tmp_path / "val", 4, MethodConfig(name="alr", warmup="auto", warmup_max_epochs=3,
                                                        warmup_window=2))
    cfg.data.val_fraction = 0.2
    summary = train(cfg)
    assert summary["warmup_signal"] == "noisy_val_top1" and summary["refine_from_epoch"] in (1, 2, 3)
    rows = _rows(tmp_path / "val")
    replay = decide(AutoWarmupRule(max_epochs=3, window=2), [r["noisy_val_top1"] for r in rows],
                    key="noisy_val_top1")
    assert replay.switch_epoch == summary["refine_from_epoch"]
