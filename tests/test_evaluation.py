"""Evaluation protocol: top-k, the noisy validation slice, model selection blind to the test set, eval sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alr_fast.config import apply_overrides
from alr_fast.data.loaders.arrays import ArrayLoader
from alr_fast.data.loaders.wrappers import ExcludeRows, noisy_val_rows
from alr_fast.train.evaluation import EvalPlan, topk_correct
from alr_fast.recipes import get_recipe
from alr_fast.loss.sharding import Sharding


def test_topk_hand_computed():
    logits = torch.tensor([
        [0.1, 0.9, 0.3, 0.2, 0.0, 0.5],  # order 1, 5, 2, 3, 0, 4
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # order 0, 1, 2, 3, 4, 5
        [0.0, 0.0, 0.0, 0.0, 1.0, 2.0],  # order 5, 4, ...
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # order 5, 4, 3, 2, 1, 0
    ])
    labels = torch.tensor([1, 5, 4, 0])
    # row 0: label 1 is top-1; row 1: label 5 is 6th (neither); row 2: label 4 is 2nd (top-5 only);
    # row 3: label 0 is last (neither).
    assert topk_correct(logits, labels, (1, 5)).tolist() == [1, 2]
    assert topk_correct(logits, torch.tensor([1, 5, 4, -1]), (1, 5)).tolist() == [1, 2]  # -1: not counted
    assert topk_correct(logits[:, :3], torch.tensor([1, 2, 0, 0]), (1, 5)).tolist() == [2, 4]  # k capped at K=3


@pytest.mark.parametrize("b,k", [(1, 1), (7, 3), (33, 5), (64, 101)])
def test_topk_matches_a_sort_reference(b, k):
    g = torch.Generator().manual_seed(b * 1000 + k)
    logits = torch.randn(b, k, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k, (b,), generator=g)
    got = topk_correct(logits.float(), labels, (1, 5))
    order = np.argsort(-logits.numpy(), axis=1, kind="stable")
    rank = np.array([int(np.nonzero(order[i] == labels[i].item())[0][0]) for i in range(b)])
    assert got.tolist() == [int((rank < 1).sum()), int((rank < 5).sum())]


def test_noisy_val_rows_are_stratified_deterministic_and_proper():
    rng = np.random.default_rng(0)
    given = rng.integers(0, 7, size=1001)
    rows = noisy_val_rows(given, 0.1, seed=3)
    assert np.array_equal(rows, noisy_val_rows(given, 0.1, seed=3))
    assert not np.array_equal(rows, noisy_val_rows(given, 0.1, seed=4))
    assert np.all(np.diff(rows) > 0)
    for c in range(7):
        n_c = int((given == c).sum())
        assert int((given[rows] == c).sum()) == round(0.1 * n_c)
    with pytest.raises(ValueError, match="data.val_fraction"):
        noisy_val_rows(given, 0.0, seed=0)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_noisy_val_slice_is_disjoint_from_training_rows(world):
    n = 203
    images = torch.randint(0, 255, (n, 1, 4, 4), dtype=torch.uint8)
    given = np.random.default_rng(1).integers(0, 10, size=n)
    val = noisy_val_rows(given, 0.2, seed=0)
    trained, steps = [], set()
    for rank in range(world):
        base = ArrayLoader(images, batch_size=16, mean=(0.5,), std=(0.5,), shuffle=True, seed=5,
                           sharding=Sharding(rank, world))
        loader = ExcludeRows(base, val, n, "cpu")
        assert len(loader) == len(base)  # same steps: ranks stay in step
        steps.add(len(loader))
        for epoch in (0, 1):
            for (x, idx), (x_in, idx_in) in zip(loader.epoch(epoch), base.epoch(epoch)):
                keep = idx >= 0
                assert torch.equal(x[keep], x_in[keep])
                if keep.any():  # a dropped row carries a copy of a training row of its batch, never its own image
                    for row in x[~keep]:
                        assert (row == x[keep]).flatten(1).all(1).any()
                    for j in torch.nonzero((idx_in >= 0) & ~keep).flatten():
                        assert not (x_in[j] == x[keep]).flatten(1).all(1).any() or (x_in[j] == 0).all()
                if epoch == 0:
                    trained.append(idx[keep])
                assert not np.isin(idx[keep].numpy(), val).any()
    trained = torch.cat(trained).numpy()
    assert len(steps) == 1
    assert np.array_equal(np.sort(trained), np.setdiff1d(np.arange(n), val))  # every other row exactly once


def _digits_cfg(tmp_path, name, *extra):
    return apply_overrides(get_recipe("demo"), [
        "data.dataset=digits", "train.epochs=4", "method.warmup_epochs=1", "train.batch_size=64",
        "model.width=8", "data.val_fraction=0.2", "train.progress=false", "train.tensorboard=false",
        "train.save_every_epoch=false", f"train.out={tmp_path / name}", *extra,
    ])


def _digits_data(cfg, test_shuffle_seed=None):
    from alr_fast.data.train_data import build_train_data

    data = build_train_data(cfg)
    if test_shuffle_seed is not None:  # another test set: same images, different labels
        data.test_labels = np.random.default_rng(test_shuffle_seed).permutation(data.test_labels)
    return data


def test_selection_ignores_the_test_set_and_slice_rows_are_never_trained(tmp_path):
    from alr_fast.train.trainer import train

    cfg_a = _digits_cfg(tmp_path, "a")
    cfg_b = _digits_cfg(tmp_path, "b")
    data_a = _digits_data(cfg_a)
    sa = train(cfg_a, data_a)
    sb = train(cfg_b, _digits_data(cfg_b, test_shuffle_seed=7))
    assert sa["selected_by"] == "noisy_val"
    assert sa["last_test_acc"] != sb["last_test_acc"]  # the test set did change what is reported
    for key in ("best_epoch", "best_val_acc"):
        assert sa[key] == sb[key], key
    ra = {r["set"]: r for r in sa["evaluation"]}
    rb = {r["set"]: r for r in sb["evaluation"]}
    assert ra["noisy_val"] == rb["noisy_val"]
    best_a = torch.load(tmp_path / "a" / "model_best.pt", weights_only=True)
    best_b = torch.load(tmp_path / "b" / "model_best.pt", weights_only=True)
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    # best_* is the selected epoch's row, reported next to the last epoch
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    sel = rows[sa["best_epoch"]]
    assert sa["best_val_acc"] == max(r["noisy_val_top1"] for r in rows) == sel["noisy_val_top1"]
    assert sa["best_test_acc"] == sel["test_top1"] and ra["test"]["best_top5"] == sel["test_top5"]
    assert ra["test"]["last_top1"] == rows[-1]["test_top1"] == sa["last_test_acc"]
    # the slice's bank rows were never updated: still one-hot on the given label; other rows moved
    val = noisy_val_rows(data_a.given_labels, 0.2, seed=0)
    assert sa["noisy_val_rows"] == val.size == ra["noisy_val"]["count"]
    soft = np.load(tmp_path / "a" / "soft_labels.npy")
    onehot = np.eye(10, dtype=np.float32)[data_a.given_labels]
    assert np.array_equal(soft[val], onehot[val])
    others = np.setdiff1d(np.arange(len(soft)), val)
    assert (np.abs(soft[others] - onehot[others]).sum(1) > 0).mean() > 0.9


def test_selection_state_tie_and_no_validation_split():
    plan = EvalPlan([], num_classes=10, val_rows=None, num_train=0)
    plan.selected_by, plan.test_name = "val", "test"  # as if it had a 'val' and a 'test' set
    seq = [0.5, 0.7, 0.7, 0.6]
    for e, v in enumerate(seq):
        plan.observe(e, {"val_top1": v, "val_top5": 1.0, "test_top1": 0.1 * e, "test_top5": 1.0})
    assert plan.best_epoch == 1 and plan.peak_epoch == 3  # earliest epoch wins a tie; peak is the oracle
    none = EvalPlan([], num_classes=3, val_rows=None, num_train=0)
    assert none.selected_by is None and none.ks == (1,)  # K < 5: no top-5


def test_clothing1m_selects_on_clean_val_and_reports_val_and_test(tmp_path):
    pytest.importorskip("nvidia.dali")
    from test_data_fixtures import fixture_root

    from alr_fast.train.trainer import train

    cfg = apply_overrides(get_recipe("clothing1m"), [
        f"data.data_root={fixture_root('clothing1m')}", "model.name=small_cnn", "model.width=8", "train.epochs=2",
        "method.warmup_epochs=1", "train.batch_size=16", f"train.out={tmp_path / 'c1m'}", "data.workers=1",
        "data.loader=torch", "data.subset_size=28", "data.image_size=32", "train.progress=false",
    ])
    s = train(cfg)
    assert s["selected_by"] == "val"
    sets = {r["set"]: r for r in s["evaluation"]}
    assert set(sets) == {"test", "val"} and sets["val"]["role"] == "val" and sets["test"]["role"] == "test"
    assert {"last_top1", "last_top5", "best_top1", "best_top5"} <= set(sets["test"])
    assert (tmp_path / "c1m" / "model_best.pt").is_file()
    row = json.loads((tmp_path / "c1m" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_top1", "val_top5", "test_top1", "test_top5"} <= set(row)


def test_mini_webvision_evaluates_webvision_val_and_ilsvrc_val(tmp_path):
    pytest.importorskip("nvidia.dali")
    from test_data_fixtures import fixture_root

    from alr_fast.data.tools.fixtures import ILSVRC_DIR_NAME, ILSVRC_LIST_NAME
    from alr_fast.train.trainer import train

    root = fixture_root("mini-webvision")
    cfg = apply_overrides(get_recipe("mini-webvision"), [
        f"data.data_root={root}", "model.name=small_cnn", "model.width=8", "train.epochs=2",
        "method.warmup_epochs=1", "train.batch_size=16", f"train.out={tmp_path / 'wv'}", "data.workers=1",
        "data.loader=torch", "data.image_size=32", "train.progress=false", "data.val_fraction=0.25",
        f"data.ilsvrc_val_list={root / ILSVRC_LIST_NAME}", f"data.ilsvrc_root={root / ILSVRC_DIR_NAME}",
    ])
    s = train(cfg)
    sets = {r["set"]: r for r in s["evaluation"]}
    assert set(sets) == {"webvision_val", "ilsvrc_val", "noisy_val"} and s["selected_by"] == "noisy_val"
    assert sets["ilsvrc_val"]["role"] == "test" and sets["ilsvrc_val"]["count"] > 0
    assert all(0.0 <= sets[n]["last_top5"] <= 1.0 for n in sets)


def test_selection_survives_a_crash_and_resume(tmp_path, monkeypatch):
    """The selection state (best epoch, its rows) is checkpointed: a run killed in its last epoch and resumed
    reports the same best_* as an uninterrupted one."""
    from alr_fast.train.trainer import train

    keep = ["train.save_every_epoch=true"]
    full = train(_digits_cfg(tmp_path, "full", *keep))
    # Only epoch 3 is redone after the resume: had the selection not been restored, it would be selected.
    assert full["best_epoch"] < 3
    real, calls = EvalPlan.evaluate, []

    def crash_in_last_epoch(self, *args, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected crash")
        return real(self, *args, **kw)

    monkeypatch.setattr(EvalPlan, "evaluate", crash_in_last_epoch)
    with pytest.raises(RuntimeError, match="injected crash"):
        train(_digits_cfg(tmp_path, "part", *keep))
    monkeypatch.setattr(EvalPlan, "evaluate", real)
    resumed = train(_digits_cfg(tmp_path, "part", *keep, "train.resume=true"))
    for key in ("best_epoch", "best_val_acc", "best_test_acc", "peak_test_acc", "peak_test_epoch", "evaluation"):
        assert resumed[key] == full[key], key


def test_noisy_val_slice_on_two_ranks_through_torchrun(tmp_path):
    """2 ranks (torchrun, gloo): both ranks skip the slice, evaluate the same sets, agree on the selection."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port

    from alr_fast.data.train_data import build_train_data

    out = tmp_path / "two"
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(root / "launchers" / "train.py"), "--recipe", "demo", "--set", "data.dataset=digits",
           "--epochs", "3", "--set", "method.warmup_epochs=1", "--batch-size", "32", "--set", "model.width=8",
           "--set", "data.val_fraction=0.2", "--no-progress", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["selected_by"] == "noisy_val" and (out / "model_best.pt").is_file()
    cfg = apply_overrides(get_recipe("demo"), ["data.dataset=digits"])
    given = build_train_data(cfg).given_labels
    val = noisy_val_rows(given, 0.2, seed=0)
    assert s["noisy_val_rows"] == val.size
    soft = np.load(out / "soft_labels.npy")
    assert np.array_equal(soft[val], np.eye(10, dtype=np.float32)[given[val]])  # never updated on either rank
    others = np.setdiff1d(np.arange(len(given)), val)
    assert (soft[others].max(1) < 1).mean() > 0.9


def test_fill_padding_rows_copies_valid_rows_without_a_host_sync_shape():
    from alr_fast.data.loaders.wrappers import fill_padding_rows

    g = torch.Generator().manual_seed(0)
    for b in (1, 2, 5, 17):
        x = torch.randn(b, 3, 2, 2, generator=g)
        valid = torch.rand(b, generator=g) < 0.6
        y = fill_padding_rows(x, valid)
        assert y.shape == x.shape
        assert torch.equal(y[valid], x[valid])  # valid rows untouched
        if valid.any():
            rows = x[valid].flatten(1)
            for r in y[~valid].flatten(1):  # every padding row is one of the batch's valid rows
                assert (rows == r).all(1).any()
        else:
            assert torch.equal(y, x)  # nothing to copy from: unchanged
