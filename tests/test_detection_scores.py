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
