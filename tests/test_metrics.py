"""The label-quality metrics on hand-computed cases (every figure below is worked out in the comments)."""

import pytest
import torch

from alr_fast.train.metrics import label_quality, memorisation_split


def test_label_quality_hand_computed():
    # sample:   0  1  2  3  4  5  6  7  8
    given = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    clean = torch.tensor([0, 2, 2, 1, 1, 1, -1, 0, 0])  # sample 6 unknown: left out of everything
    refined = torch.tensor([0, 2, 1, 3, 1, 0, 0, 0, 0])
    # known samples 0-5, 7, 8 (8). wrong (given != clean): 1, 3, 4, 7 -> 4.
    # flagged (refined != given): 1, 2, 4, 5, 7 -> 5 (sample 6 is flagged too but unknown).
    # tp = flagged & wrong: 1, 4, 7 -> 3.  precision 3/5, recall 3/4, F1 = 2 pr / (p + r) = 2/3.
    # refined == clean: 0, 1, 4, 7, 8 -> 5/8.  given == clean: 0, 2, 5, 8 -> 4/8.
    q = label_quality(given, refined, clean)
    assert q["num_clean_known"] == 8
    assert q["num_flagged"] == 5
    assert q["num_mislabelled"] == 4
    assert q["mislabel_precision"] == pytest.approx(3 / 5)
    assert q["mislabel_recall"] == pytest.approx(3 / 4)
    assert q["mislabel_f1"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    assert q["mislabel_f1"] == pytest.approx(2 / 3)
    assert q["refined_label_acc"] == pytest.approx(5 / 8)
    assert q["given_label_acc"] == pytest.approx(4 / 8)


def test_label_quality_f1_differs_from_precision_and_recall():
    # precision 1/3 (one of three flags is right), recall 1 (the only wrong label is flagged): F1 = 1/2.
    given = torch.tensor([0, 0, 0, 0])
    clean = torch.tensor([1, 0, 0, 0])
    refined = torch.tensor([1, 1, 1, 0])
    q = label_quality(given, refined, clean)
    assert q["mislabel_precision"] == pytest.approx(1 / 3)
    assert q["mislabel_recall"] == 1.0
    assert q["mislabel_f1"] == pytest.approx(0.5)


def test_label_quality_degenerate_cases():
    # nothing flagged: precision 0 (not NaN), recall 0, F1 0.
    q = label_quality(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert (q["mislabel_precision"], q["mislabel_recall"], q["mislabel_f1"]) == (0.0, 0.0, 0.0)
    assert q["num_flagged"] == 0 and q["num_mislabelled"] == 1
    assert q["refined_label_acc"] == 0.5 and q["given_label_acc"] == 0.5
    # a perfect detector: F1 1.
    q = label_quality(torch.tensor([0, 1, 2]), torch.tensor([1, 1, 2]), torch.tensor([1, 1, 2]))
    assert (q["mislabel_precision"], q["mislabel_recall"], q["mislabel_f1"]) == (1.0, 1.0, 1.0)
    assert q["refined_label_acc"] == 1.0
    # no clean label known: every figure 0, nothing counted.
    q = label_quality(torch.tensor([0, 1]), torch.tensor([1, 1]), torch.tensor([-1, -1]))
    assert q == {"refined_label_acc": 0.0, "given_label_acc": 0.0, "mislabel_precision": 0.0,
                 "mislabel_recall": 0.0, "mislabel_f1": 0.0, "num_flagged": 0, "num_mislabelled": 0,
                 "num_clean_known": 0}


def test_memorisation_split_hand_computed():
    # mislabelled with a known clean label and seen (pred >= 0): samples 0, 1, 2, 3, 4 (5 is clean, 6 unseen,
    # 7 unknown).  pred == clean: 0, 3 -> 2/5; pred == given: 1 -> 1/5; other: 2, 4 -> 2/5.
    given = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    clean = torch.tensor([1, 2, 0, 0, 3, 1, 0, -1])
    pred = torch.tensor([1, 1, 1, 0, 2, 1, -1, 3])
    m = memorisation_split(pred, given, clean)
    assert m["memo_true"] == pytest.approx(2 / 5)
    assert m["memo_given"] == pytest.approx(1 / 5)
    assert m["memo_other"] == pytest.approx(2 / 5)
    assert memorisation_split(torch.tensor([0]), torch.tensor([0]), torch.tensor([0])) == {
        "memo_true": 0.0, "memo_given": 0.0, "memo_other": 0.0}


def test_label_quality_low_precision_and_recall():
    # precision + recall <= 1 with a true positive: F1 is not 0.  given right on 4 of 6 (not 1/2: an accuracy
    # computed from the wrong comparison would show).
    given = torch.tensor([0, 0, 0, 0, 0, 0])
    clean = torch.tensor([1, 1, 0, 0, 0, 0])
    refined = torch.tensor([1, 0, 1, 1, 1, 0])
    # flagged 0, 2, 3, 4; wrong 0, 1; tp 0 -> precision 1/4, recall 1/2, F1 = 2 (1/8) / (3/4) = 1/3.
    q = label_quality(given, refined, clean)
    assert q["mislabel_precision"] == pytest.approx(1 / 4)
    assert q["mislabel_recall"] == pytest.approx(1 / 2)
    assert q["mislabel_f1"] == pytest.approx(1 / 3)
    assert q["given_label_acc"] == pytest.approx(4 / 6)
    assert q["refined_label_acc"] == pytest.approx(2 / 6)  # samples 0 and 5
