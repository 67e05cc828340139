"""EvalPlan unit by unit (written after mutation testing, docs/mutation.md): which sets a plan holds and which
one selects the model, the running selection, its state, the summary fields and the noisy validation slice with
and without a ``rows_source``. Tiny in-memory data, no training."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alr_fast.data.loaders.wrappers import EvalSet, ExcludeRows, noisy_val_rows
from alr_fast.data.train_data import TrainData
from alr_fast.loss.sharding import Sharding
from alr_fast.train.evaluation import EvalPlan


def _set(name, role, n=3):
    return EvalSet(name, role, source=lambda bs: None, labels=np.zeros(n, dtype=np.int64), count=n)


def test_plan_holds_its_sets_and_chooses_the_selection_split():
    sets = [_set("test", "test"), _set("noisy_val", "val")]
    plan = EvalPlan(sets, num_classes=5, val_rows=np.array([1, 2]), num_train=9)
    assert plan.sets is sets and plan.num_train == 9 and plan.val_rows.tolist() == [1, 2]
    assert plan.ks == (1, 5)  # K = 5 has a top-5
    assert EvalPlan(sets, num_classes=4, val_rows=None, num_train=0).ks == (1,)
    assert plan.selected_by == "noisy_val" and plan.test_name == "test"
    assert (plan.best_epoch, plan.best_score, plan.best_row, plan.peak_test, plan.peak_epoch) == (-1, -1.0, {}, -1.0, -1)
    # the clean 'val' split wins over the noisy slice, whatever the order; the first test set is the test split
    for order in ([_set("noisy_val", "val"), _set("val", "val")], [_set("val", "val"), _set("noisy_val", "val")]):
        p = EvalPlan([_set("webvision_val", "test"), _set("ilsvrc_val", "test"), *order], 10, None, 0)
        assert p.selected_by == "val" and p.test_name == "webvision_val"
    bare = EvalPlan([_set("noisy_val", "val")], 10, None, 0)
    assert bare.selected_by == "noisy_val" and bare.test_name is None
    with pytest.raises(ValueError, match=r"duplicate evaluation set names \['test', 'test'\]"):
        EvalPlan([_set("test", "test"), _set("test", "val")], 10, None, 0)


def test_observe_selects_the_first_best_and_tracks_the_test_peak():
    plan = EvalPlan([_set("test", "test"), _set("noisy_val", "val")], num_classes=10, val_rows=None, num_train=0)
    rows = [  # (val top-1, test top-1)
        (0.0, 0.0), (0.4, 0.5), (0.4, 0.7), (0.3, 0.7), (0.6, 0.2),
    ]
    got = []
    for e, (v, t) in enumerate(rows):
        row = {"noisy_val_top1": v, "noisy_val_top5": v + 0.1, "test_top1": t, "test_top5": t + 0.1, "loss": 9.0,
               "test_acc": t}
        got.append(plan.observe(e, row))
        if e == 0:  # a zero accuracy still beats the initial -1
            assert plan.best_row == {"noisy_val_top1": 0.0, "noisy_val_top5": 0.1, "test_top1": 0.0, "test_top5": 0.1}
    assert got == [True, True, False, False, True]
    assert plan.best_epoch == 4 and plan.best_score == 0.6
    assert plan.best_row == {"noisy_val_top1": 0.6, "noisy_val_top5": 0.7, "test_top1": 0.2, "test_top5": 0.30000000000000004}
    assert plan.peak_test == 0.7 and plan.peak_epoch == 2  # the earliest epoch of a tie on the test set too

    # K < 5: only top-1 keys are kept; no test set: no peak and no KeyError
    small = EvalPlan([_set("noisy_val", "val")], num_classes=3, val_rows=None, num_train=0)
    assert small.observe(0, {"noisy_val_top1": 0.5, "noisy_val_top5": 1.0, "x_top1": 0.25})
    assert small.best_row == {"noisy_val_top1": 0.5, "x_top1": 0.25} and small.peak_epoch == -1
    # no selection split: never selects, but the peak is tracked
    test_only = EvalPlan([_set("test", "test")], num_classes=10, val_rows=None, num_train=0)
    assert [test_only.observe(e, {"test_top1": a, "test_top5": 1.0}) for e, a in enumerate([0.3, 0.6, 0.5])] == [False] * 3
    assert (test_only.best_epoch, test_only.best_row, test_only.peak_test, test_only.peak_epoch) == (-1, {}, 0.6, 1)


def test_state_dict_round_trip_continues_the_selection():
    sets = [_set("test", "test"), _set("noisy_val", "val")]
    a = EvalPlan(sets, 10, None, 0)
    for e, (v, t) in enumerate([(0.2, 0.3), (0.5, 0.4), (0.4, 0.9)]):
        a.observe(e, {"noisy_val_top1": v, "noisy_val_top5": 1.0, "test_top1": t, "test_top5": 1.0})
    state = a.state_dict()
    assert state == {"best_epoch": 1, "best_score": 0.5, "best_row": {"noisy_val_top1": 0.5, "noisy_val_top5": 1.0,
                                                                     "test_top1": 0.4, "test_top5": 1.0},
                     "peak_test": 0.9, "peak_epoch": 2}
    b = EvalPlan(sets, 10, None, 0)
    b.load_state_dict(state)
    assert b.state_dict() == state
    # after the resume, a tie is not a new best and a lower test accuracy is not a new peak
    assert not b.observe(3, {"noisy_val_top1": 0.5, "noisy_val_top5": 1.0, "test_top1": 0.8, "test_top5": 1.0})
    assert (b.best_epoch, b.peak_epoch) == (1, 2)


def test_summary_fields_with_and_without_a_selection_split():
    sets = [_set("test", "test", n=7), _set("noisy_val", "val", n=2)]
    plan = EvalPlan(sets, num_classes=10, val_rows=np.array([3, 5]), num_train=20)
    plan.observe(0, {"noisy_val_top1": 0.5, "noisy_val_top5": 1.0, "test_top1": 0.25, "test_top5": 0.75})
    plan.observe(1, {"noisy_val_top1": 0.0, "noisy_val_top5": 0.5, "test_top1": 0.5, "test_top5": 1.0})
    last = {"noisy_val_top1": 0.0, "noisy_val_top5": 0.5, "test_top1": 0.5, "test_top5": 1.0, "test_acc": 0.5}
    assert plan.summary(last) == {
        "evaluation": [
            {"set": "test", "role": "test", "count": 7, "last_top1": 0.5, "best_top1": 0.25, "last_top5": 1.0,
             "best_top5": 0.75},
            {"set": "noisy_val", "role": "val", "count": 2, "last_top1": 0.0, "best_top1": 0.5, "last_top5": 0.5,
             "best_top5": 1.0},
        ],
        "selected_by": "noisy_val",
        "selection_note": "best_* = the epoch with the highest noisy_val top-1 (model_best.pt); test sets never "
                          "consulted",
        "peak_test_acc": 0.5, "peak_test_epoch": 1,
        "peak_note": "highest test top-1 over epochs: an oracle that looks at the test set, not a selection",
        "last_test_top1": 0.5, "last_test_top5": 1.0,
        "best_epoch": 0, "best_val_acc": 0.5, "best_test_acc": 0.25, "best_test_top1": 0.25, "best_test_top5": 0.75,
        "noisy_val_rows": 2,
    }
    bare = EvalPlan([_set("test", "test", n=4)], num_classes=3, val_rows=None, num_train=4)
    bare.observe(0, {"test_top1": 0.75})
    assert bare.summary({"test_top1": 0.75}) == {
        "evaluation": [{"set": "test", "role": "test", "count": 4, "last_top1": 0.75}],
        "selected_by": None,
        "selection_note": "no validation split (set data.val_fraction > 0): no best_*, report last_*",
        "peak_test_acc": 0.75, "peak_test_epoch": 0,
        "peak_note": "highest test top-1 over epochs: an oracle that looks at the test set, not a selection",
        "last_test_top1": 0.75,
    }


def _tiny_data(n=23, k=4, rows_source=True) -> TrainData:
    g = torch.Generator().manual_seed(n)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    given = torch.randint(0, k, (n,), generator=g).numpy()
    test = torch.randint(0, 256, (9, 1, 4, 4), generator=g, dtype=torch.uint8)
    data = TrainData.from_arrays(images, given, None, test, np.arange(9) % k, num_classes=k, mean=(0.5,), std=(0.25,))
    if not rows_source:
        data.rows_source = None  # a TrainData built by hand: the slice is read by filtering predict_source
    return data


@pytest.mark.parametrize("dataset,test_name", [("digits", "test"), ("cifar10", "test"), ("webvision", "webvision_val"),
                                               ("mini-webvision", "webvision_val"), ("my_images", "test")])
def test_build_names_the_test_split_and_adds_the_noisy_slice(dataset, test_name):
    data = _tiny_data()
    cfg = SimpleNamespace(data=SimpleNamespace(dataset=dataset, val_fraction=0.0, val_seed=0))
    plan = EvalPlan.build(cfg, data, "cpu")
    assert [(s.name, s.role, s.count) for s in plan.sets] == [(test_name, "test", 9)]
    assert plan.val_rows is None and plan.selected_by is None and plan.ks == (1,) and plan.num_train == 23
    assert plan.wrap_train("the source", "cpu") == "the source"  # no slice: the train source as it is

    cfg.data.val_fraction, cfg.data.val_seed = 0.3, 5
    data.eval_sets = [_set("ilsvrc_val", "test", n=4), _set("val", "val", n=5)]  # the extra sets a reader provides
    plan = EvalPlan.build(cfg, data, "cpu")
    rows = noisy_val_rows(data.given_labels, 0.3, 5)
    assert plan.val_rows.tolist() == rows.tolist() and plan.selected_by == "val"  # the clean split wins
    assert [(s.name, s.role) for s in plan.sets] == [(test_name, "test"), ("ilsvrc_val", "test"), ("val", "val"),
                                                     ("noisy_val", "val")]
    data.eval_sets = []
    plan = EvalPlan.build(cfg, data, "cpu")
    assert plan.selected_by == "noisy_val"
    (test, val) = plan.sets
    assert (val.name, val.role, val.count) == ("noisy_val", "val", rows.size)
    assert np.array_equal(val.labels, data.given_labels) and np.array_equal(test.labels, data.test_labels)


@pytest.mark.parametrize("rows_source", [True, False])
def test_the_noisy_slice_is_exactly_its_rows_with_or_without_rows_source(rows_source):
    data = _tiny_data(rows_source=rows_source)
    calls = []
    if rows_source:  # the slice is read through rows_source when the data has one (no pass over the whole table)
        real = data.rows_source
        data.rows_source = lambda rows, bs: calls.append(rows.tolist()) or real(rows, bs)
    cfg = SimpleNamespace(data=SimpleNamespace(dataset="digits", val_fraction=0.4, val_seed=1))
    plan = EvalPlan.build(cfg, data, "cpu")
    val = plan.sets[1]
    seen, images = [], []
    for x, idx in val.source(4).epoch(0):
        seen += idx[idx >= 0].tolist()
        images.append(x[idx >= 0])
    assert sorted(seen) == plan.val_rows.tolist()
    full = torch.cat([x for x, _ in data.predict_source(Sharding(), 64).epoch(0)])
    assert torch.equal(torch.cat(images), full[torch.as_tensor(seen)])
    # evaluate() scores the slice against its given labels: a model that outputs the given label scores 1 (the
    # test images are not in the lookup: class 0)
    given = torch.as_tensor(data.given_labels)
    lookup = {tuple(full[i].flatten().tolist()): int(given[i]) for i in range(full.shape[0])}

    class Oracle(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.tensor([lookup.get(tuple(r.flatten().tolist()), 0) for r in x]), 4).float()

    out = plan.evaluate(Oracle(), "cpu", 4)
    assert out["noisy_val_top1"] == 1.0 and val.count == plan.val_rows.size
    assert calls == ([plan.val_rows.tolist()] * 2 if rows_source else [])


def test_wrap_train_pads_exactly_the_slice_rows():
    data = _tiny_data()
    cfg = SimpleNamespace(data=SimpleNamespace(dataset="digits", val_fraction=0.3, val_seed=2))
    plan = EvalPlan.build(cfg, data, "cpu")
    wrapped = plan.wrap_train(data.train_source(Sharding(), 5, 0), "cpu")
    assert isinstance(wrapped, ExcludeRows) and wrapped.num_rows == 23
    kept = [i for _, idx in wrapped.epoch(0) for i in idx.tolist() if i >= 0]
    assert sorted(kept) == sorted(set(range(23)) - set(plan.val_rows.tolist()))


def test_build_takes_a_data_object_without_the_optional_fields():
    """A data object with only the required fields (no eval_sets, no rows_source): the test split and the slice,
    read by filtering predict_source."""
    full = _tiny_data()
    data = SimpleNamespace(test_source=full.test_source, test_labels=full.test_labels, given_labels=full.given_labels,
                           predict_source=full.predict_source, num_classes=4, num_train=23)
    cfg = SimpleNamespace(data=SimpleNamespace(dataset="cifar10", val_fraction=0.3, val_seed=0))
    plan = EvalPlan.build(cfg, data, "cpu")
    assert [s.name for s in plan.sets] == ["test", "noisy_val"]
    seen = sorted(i for _, idx in plan.sets[1].source(8).epoch(0) for i in idx.tolist() if i >= 0)
    assert seen == plan.val_rows.tolist()
