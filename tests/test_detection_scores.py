"""benchmarks/detection.py's detector scores against scikit-learn's metrics, on random flags and scores."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from detection import cleanlab_detector, scores  # noqa: E402


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random(301) < 0.4
    flagged = np.where(rng.random(301) < 0.8, truth, ~truth)
    suspicion = truth + rng.normal(0, 0.7, 301)
    s = scores(truth, flagged, suspicion)
    assert s["precision"] == pytest.approx(precision_score(truth, flagged))
    assert s["recall"] == pytest.approx(recall_score(truth, flagged))
    assert s["f1"] == pytest.approx(f1_score(truth, flagged))
    assert s["auroc"] == pytest.approx(roc_auc_score(truth, suspicion))
    assert s["flagged"] == int(flagged.sum())


def test_cleanlab_detector_finds_planted_flips():
    rng = np.random.default_rng(0)
    n, k = 400, 4
    clean = rng.integers(0, k, n)
    probs = np.full((n, k), 0.02)
    probs[np.arange(n), clean] = 1 - 0.02 * (k - 1)
    given = clean.copy()
    flip = rng.random(n) < 0.2
    given[flip] = (clean[flip] + 1) % k
    s = cleanlab_detector(given, probs, given != clean)
    assert s["f1"] > 0.95 and s["auroc"] > 0.99


def _row(detector, f1, auroc, seed, rate=0.4):
    return {"dataset": "mnist5k", "noise": "sym-incl", "requested_rate": rate, "actual_rate": rate * 0.9,
            "seed": seed, "detector": detector, "f1": f1, "precision": f1, "recall": f1, "auroc": auroc,
            "flagged": 10, "sample_passes": 100}


def test_goal_lines_and_compact_table_on_hand_made_rows():
    from detection import compact_table, goal_lines

    rows = [_row("(a) ALR bank", 0.95, 0.99, s) for s in (0, 1)]
    rows += [_row("(c) cleanlab on CE cross-fit probs", 0.80, 0.90, s) for s in (0, 1)]
    rows += [_row("(a) ALR bank", 0.85, 0.97, 0, 0.6), _row("(c) cleanlab on CE cross-fit probs", 0.80, 0.9, 0, 0.6)]
    goals = goal_lines(rows)
    assert "+15.0 points" in goals[0] and goals[0].count("**holds**") == 2
    assert "+5.0 points" in goals[1] and goals[1].count("**does not hold**") == 2  # F1 gap and AUROC 0.97
    table = compact_table(rows)
    assert "| mnist5k sym-incl 40% (36 %) | 2 | 95.0 ± 0.0 | - | 80.0 ± 0.0 | - | 0.9900 ± 0.0000 |" in table


@pytest.mark.slow
def test_detection_study_runs_and_resumes(tmp_path, capsys):
    """The study end to end at a tiny size (digits, asymmetric noise, 2 epochs, 2 folds), then resumed: the
    second invocation reads the finished rows and trains nothing."""
    import json

    import torch
    from detection import main

    threads = torch.get_num_threads()  # the study sets 1 thread for the process; give the other tests theirs back
    try:
        args = ["--datasets", "digits", "--settings", "asym-digits@0.4", "--seeds", "0", "--epochs", "2",
                "--folds", "2", "--out", str(tmp_path)]
        assert main(args) == 0
        first = json.loads((tmp_path / "detection.json").read_text())["rows"]
        assert sorted(r["detector"][:3] for r in first) == ["(a)", "(b)", "(c)", "(d)"]
        assert all(r["noise"] == "asym-digits" and r["model"] == "mlp" for r in first)
        passes = {r["detector"][:3]: r["sample_passes"] for r in first}
        assert passes["(b)"] == passes["(c)"] == passes["(a)"]  # 2 folds on 1/2 of the data: one run's passes
        capsys.readouterr()
        assert main(args) == 0
        assert "resuming: 4 rows" in capsys.readouterr().out
        assert json.loads((tmp_path / "detection.json").read_text())["rows"] == first
        assert "## Goals" in (tmp_path / "detection.md").read_text()
    finally:
        torch.set_num_threads(threads)
