"""What papers on label noise report, computed from per-sample arrays at the end of an epoch.

All inputs are CPU int64 tensors of length N addressed by global index. A clean label of -1 means "unknown"
(e.g. most of Clothing1M's noisy train set): such samples are left out of every clean-label metric, and
``num_clean_known`` says how many samples the figures rest on.
"""

from __future__ import annotations

import torch

__all__ = ["label_quality", "memorisation_split", "refinement_note"]


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def label_quality(given: torch.Tensor, refined: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """Refined-label accuracy and precision/recall/F1 of the detector "the given label is wrong".

    The detector flags a sample when its refined label differs from the given one; the truth is
    ``given != clean``. With no flag at all precision is 0 (reported, not NaN).
    """
    known = clean >= 0
    given, refined, clean = given[known], refined[known], clean[known]
    flagged = refined != given
    wrong = given != clean
    tp = int((flagged & wrong).sum())
    precision = _ratio(tp, int(flagged.sum()))
    recall = _ratio(tp, int(wrong.sum()))
    f1 = _ratio(2 * precision * recall, precision + recall)  # 0 when both are 0
    return {
        "refined_label_acc": float((refined == clean).float().mean()) if clean.numel() else 0.0,
        "given_label_acc": float((given == clean).float().mean()) if clean.numel() else 0.0,
        "mislabel_precision": precision,
        "mislabel_recall": recall,
        "mislabel_f1": f1,
        "num_flagged": int(flagged.sum()),
        "num_mislabelled": int(wrong.sum()),
        "num_clean_known": int(known.sum()),
    }


def memorisation_split(pred: torch.Tensor, given: torch.Tensor, clean: torch.Tensor) -> dict[str, float]:
    """On mislabelled samples seen this epoch (``pred >= 0``): share predicted as the true label, as the
    wrong given label (memorised), or as something else."""
    seen = (pred >= 0) & (clean >= 0) & (given != clean)
    n = int(seen.sum())
    p, g, c = pred[seen], given[seen], clean[seen]
    true_share = _ratio(int((p == c).sum()), n)
    given_share = _ratio(int((p == g).sum()), n)
    return {
        "memo_true": true_share,
        "memo_given": given_share,
        "memo_other": _ratio(n - int((p == c).sum()) - int((p == g).sum()), n),
    }


def refinement_note(method: str, refine_from_epoch: int | None, epochs: int, num_changed: int | None) -> str | None:
    """A plain sentence when a run's refined labels cannot say anything (else None): the method never refines,
    refinement never started, or it ran but changed no label. Then the refined labels are the given ones, so
    mislabel precision/recall/F1 of 0 and a review sheet of "7 -> 7" tiles mean "not measured", not "failed"."""
    if method == "ce":
        return "method ce does not refine labels: the refined labels are the given labels"
    if refine_from_epoch is None or refine_from_epoch >= epochs:
        return (f"refinement never started (the warm-up lasted all {epochs} epochs): the refined labels are the "
                "given labels, so the mislabel scores say nothing; train for more epochs")
    if num_changed == 0:
        ran = epochs - refine_from_epoch
        return (f"refinement ran {ran} epoch{'s' if ran != 1 else ''} (from epoch {refine_from_epoch}) and changed "
                "no label yet: the refined labels are the given labels, so the mislabel scores say nothing; "
                "train for more epochs")
    return None

