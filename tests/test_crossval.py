"""Cross-fitting: fold assignment, the fold-restricted loader, out-of-sample rows, resume, 1 vs 2 ranks, cleanlab."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast.labels.crossval import FoldSource, assign_folds
from alr_fast.data.loaders.arrays import ArrayLoader
from alr_fast.train.exports import RowPart
from alr_fast.loss.sharding import Sharding
from conftest import free_port

# scikit-learn's digits (1,438 train rows), an MLP, 2 epochs (1 warm-up), 2 folds: seconds per fold.
ARGS = ["--recipe", "demo", "--method", "alr", "--set", "data.dataset=digits", "--set", "model.name=mlp",
        "--set", "method.warmup_epochs=1", "--epochs", "2", "--batch-size", "64", "--no-progress"]


def cli(*args, nproc=1, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "alr_fast"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                  str(free_port()), "-m", "alr_fast"]
    proc = subprocess.run([*launch, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_folds_are_disjoint_covering_stratified_and_seeded(k):
    rng = np.random.default_rng(k)
    labels = np.repeat(np.arange(6), [1, 2, 13, 40, 7, 101])[rng.permutation(164)]
    folds = assign_folds(labels, k, seed=3)
    assert folds.shape == labels.shape and folds.min() == 0 and folds.max() == k - 1
    sizes = np.bincount(folds, minlength=k)
    assert sizes.sum() == labels.size and sizes.max() - sizes.min() <= 1  # a partition, balanced
    for c in np.unique(labels):
        per_fold = np.bincount(folds[labels == c], minlength=k)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)  # stratified
    np.testing.assert_array_equal(folds, assign_folds(labels, k, seed=3))
    assert not np.array_equal(folds, assign_folds(labels, k, seed=4))
    with pytest.raises(ValueError, match="at least 2"):
        assign_folds(labels, 1, seed=0)


@pytest.mark.parametrize("n,world,bs", [(1, 1, 4), (37, 2, 5), (50, 3, 4), (23, 2, 64)])
def test_fold_source_yields_each_kept_owned_row_exactly_once(n, world, bs):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).repeat(1, 1, 2, 2)
    keep = np.random.default_rng(n).random(n) < 0.6
    steps = max(int(np.ceil(keep[r::world].sum() / bs)) for r in range(world))
    for rank in range(world):
        inner = ArrayLoader(images, batch_size=bs, mean=(0.0,), std=(1 / 255,), shuffle=True, seed=1,
                            sharding=Sharding(rank, world))
        src = FoldSource(inner, keep, bs, steps)
        batches = list(src.epoch(2))
        assert len(batches) == len(src) == steps  # the same step count on every rank
        idx = torch.cat([i for _, i in batches])
        x = torch.cat([b for b, _ in batches])
        real = idx >= 0
        assert all(i.shape[0] == bs for _, i in batches)
        assert sorted(idx[real].tolist()) == [i for i in range(rank, n, world) if keep[i]]
        # the image travels with its index (pixel value = index), padding rows are zero images
        assert torch.equal(x[real][:, 0, 0, 0].round().long(), idx[real])
        assert bool((x[~real] == 0).all())
        # resuming at a step yields the same remaining batches
        tail = list(src.epoch(2, start_step=steps // 2))
        assert all(torch.equal(a[1], b[1]) for a, b in zip(tail, batches[steps // 2:])) and len(tail) == steps - steps // 2


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _check_layout(out: Path, k_folds: int):
    folds, labels = np.load(out / "folds.npy"), np.load(out / "labels.npy")
    oos = np.load(out / "oos_pred_probs.npy", mmap_mode="r")
    n = labels.size
    assert oos.shape == (n, 10) and oos.dtype == np.float32
    np.testing.assert_allclose(np.asarray(oos).sum(axis=1), 1.0, atol=1e-5)  # every row predicted
    seen = np.zeros(n, dtype=np.int64)
    for f in range(k_folds):
        for p in (out / f"fold{f}").glob("oos_part*.f32"):
            part = RowPart.load(p)
            assert (folds[part.index] == f).all()  # predicted only by the model that held it out
            seen[part.index] += 1
    np.testing.assert_array_equal(seen, 1)  # every row predicted exactly once, out of sample
    info = json.loads((out / "crossval.json").read_text())
    assert info["complete"] and info["num_unpredicted"] == 0
    assert info["sample_passes_trained"] == sum(int((folds != f).sum()) * 2 for f in range(k_folds))
    return folds, labels, np.asarray(oos)


def test_crossval_end_to_end_resume_and_cleanlab(tmp_path):
    """1 rank; the 2-rank cross-fit is tests/test_multirank.py::test_crossval_out_of_sample_probabilities_two_ranks_vs_one."""
    out = tmp_path / "run"
    cli("train", *ARGS, "--out", str(out), cwd=tmp_path)  # a full run first: its CSV gains the oos columns
    # --keep-fold-checkpoints: the resume below must find fold 1's checkpoints (the 2-rank run checks pruning)
    cli("crossval", *ARGS, "--folds", "2", "--out", str(out), "--keep-fold-checkpoints", cwd=tmp_path)
    folds, labels, oos = _check_layout(out, 2)
    rows = _read_csv(out / "refined_labels.csv")
    assert len(rows) == labels.size
    assert {"refined_label", "suspect_rank", "oos_label", "oos_given_prob", "oos_suspect_rank"} <= set(rows[0])
    i = 17
    assert int(rows[i]["oos_label"]) == int(oos[i].argmax())
    assert float(rows[i]["oos_given_prob"]) == pytest.approx(float(oos[i, labels[i]]), abs=1e-6)
    exports = json.loads((out / "exports.json").read_text())
    assert exports["files"]["pred_probs.npy"]["kind"] == "in-sample"
    assert exports["files"]["oos_pred_probs.npy"]["kind"] == "out-of-sample"

    # The cleanlab calls, as written in exports.json, run on the outputs.
    cwd = os.getcwd()
    os.chdir(out)
    try:
        scope = {"np": np}
        exec(exports["cleanlab"], scope)
        ranked = scope["issues"]
        exec(exports["cleanlab_batched"], scope)
        batched = scope["issues"]
    finally:
        os.chdir(cwd)
    noise = json.loads((out / "noise.json").read_text())
    assert noise["actual_rate"] > 0.3
    assert len(ranked) > 0 and len(batched) > 0
    assert set(np.asarray(ranked).tolist()) <= set(range(labels.size))

    assert (out / "fold1" / "checkpoints").is_dir()
    # Resume: fold 1 "crashed" after training (no done marker, no parts); fold 0 must not be retrained.
    model0 = (out / "fold0" / "model.pt").stat().st_mtime_ns
    (out / "fold1" / "oos_done.json").unlink()
    for p in (out / "fold1").glob("oos_part*"):
        p.unlink()
    (out / "oos_pred_probs.npy").unlink()
    proc = cli("crossval", *ARGS, "--folds", "2", "--out", str(out), "--resume", cwd=tmp_path)
    assert "fold 0/2: finished earlier, not retrained" in proc.stderr
    assert "fold 1/2: training" in proc.stderr
    assert (out / "fold0" / "model.pt").stat().st_mtime_ns == model0
    _, _, oos2 = _check_layout(out, 2)
    # fold 1 resumed from its final checkpoint: the same weights, the same out-of-sample rows
    np.testing.assert_array_equal(oos2, oos)
