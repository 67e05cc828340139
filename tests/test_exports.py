"""Streamed exports equal an in-memory computation: chunked assembly, CSV columns, class names, cleanlab."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alr_fast.loss.bank import SoftLabelBank
from alr_fast.loss.sharding import Sharding
from alr_fast.train.exports import RowPart, assemble_rows, iter_rows, predict_probs, write_exports
from alr_fast.train.runtime import Runtime
from alr_fast.data.train_data import TrainData

RT = Runtime(device=torch.device("cpu"), precision="fp32", backend="torch", rank=0, world_size=1)


@pytest.mark.parametrize("n,k,world,chunk_rows", [(1, 2, 1, 1), (37, 5, 3, 4), (101, 13, 4, 7), (64, 3, 2, 1000)])
def test_assemble_rows_matches_in_memory_scatter(tmp_path, n, k, world, chunk_rows):
    rng = np.random.default_rng(n * 31 + k)
    full = rng.random((n, k), dtype=np.float32)
    missing = rng.random(n) < 0.15  # e.g. unreadable images: never written, must read back as 0
    parts = []
    for r in range(world):
        rows = np.arange(r, n, world)
        rows = rows[~missing[rows]]
        rows = rows[rng.permutation(rows.size)] if r % 2 else rows  # any file order, not only increasing
        path = tmp_path / f"p{r}.f32"
        path.write_bytes(full[rows].tobytes())
        parts.append(RowPart(rows.astype(np.int64), path))
    filled = assemble_rows(tmp_path / "out.npy", n, k, parts, chunk_bytes=chunk_rows * k * 4)
    expect = np.where(missing[:, None], 0.0, full).astype(np.float32)
    got = np.load(tmp_path / "out.npy")
    assert got.dtype == np.float32 and got.shape == (n, k)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(filled, ~missing)
    chunks = list(iter_rows(tmp_path / "out.npy", chunk_bytes=chunk_rows * k * 4))
    assert [a for a, _ in chunks] == list(range(0, n, chunk_rows))
    np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), expect)


def test_assemble_rows_rejects_a_row_held_twice(tmp_path):
    a, b = tmp_path / "a.f32", tmp_path / "b.f32"
    a.write_bytes(np.ones((2, 3), np.float32).tobytes())
    b.write_bytes(np.ones((1, 3), np.float32).tobytes())
    with pytest.raises(ValueError, match="two parts"):
        assemble_rows(tmp_path / "o.npy", 4, 3, [RowPart(np.array([0, 1]), a), RowPart(np.array([1]), b)])


def _tiny(n=53, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, k, (n,), generator=g).numpy()
    data = TrainData.from_arrays(images, labels, labels, images[:5], labels[:5], num_classes=k, mean=(0.5,),
                                 std=(0.25,))
    data.extra["class_names"] = [f"c{i}" for i in range(k)]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, k))
    bank = SoftLabelBank(torch.from_numpy(labels), k, torch.bfloat16)
    bank.soft.copy_(torch.softmax(torch.randn(n, k, generator=g) * 3, dim=1))
    return data, model, bank


def test_write_exports_matches_in_memory_reference(tmp_path):
    data, model, bank = _tiny()
    n, k = data.num_train, data.num_classes
    info = write_exports(tmp_path, SimpleNamespace(module=model), bank, data, RT, 8, chunk_bytes=5 * k * 4)
    gidx, probs = predict_probs(model, data.predict_source(Sharding(), 8), RT)
    ref_pred = np.zeros((n, k), np.float32)
    ref_pred[gidx.numpy()] = probs.numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "pred_probs.npy"), ref_pred)
    soft = bank.soft.double()
    np.testing.assert_array_equal(np.load(tmp_path / "soft_labels.npy"), bank.soft.float().numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), data.given_labels)
    assert json.loads((tmp_path / "class_names.json").read_text()) == [f"c{i}" for i in range(k)]
    with open(tmp_path / "refined_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    mass = soft[torch.arange(n), torch.from_numpy(data.given_labels)].numpy()
    ref_rank = {i: r + 1 for r, i in enumerate(sorted(range(n), key=lambda i: (mass[i], i)))}
    for i, row in enumerate(rows):
        assert int(row["global_index"]) == i and int(row["given_label"]) == data.given_labels[i]
        assert int(row["refined_label"]) == int(soft[i].argmax())
        assert float(row["confidence"]) == pytest.approx(float(soft[i].max()), abs=1e-6)
        assert int(row["suspect_rank"]) == ref_rank[i]
    assert info["files"]["pred_probs.npy"]["kind"] == "in-sample"
    assert info["num_changed"] == int((soft.argmax(1).numpy() != data.given_labels).sum())
    assert not (tmp_path / ".export_parts").exists()


def test_oos_columns_streamed_match_in_memory_and_replace_old_ones(tmp_path):
    from alr_fast.train.exports import add_oos_columns

    rng = np.random.default_rng(5)
    n, k = 45, 6
    given = rng.integers(0, k, n)
    oos = rng.dirichlet(np.ones(k), n).astype(np.float32)
    oos[3] = oos[4]  # a tie on the given-label probability is broken by index
    given[3] = given[4]
    np.save(tmp_path / "oos_pred_probs.npy", oos)
    with pytest.raises(ValueError, match="no finished crossval"):
        add_oos_columns(tmp_path, given)
    (tmp_path / "crossval.json").write_text(json.dumps({"complete": True}))
    with open(tmp_path / "refined_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["global_index", "given_label", "refined_label"])
        w.writerows((i, int(given[i]), 7) for i in range(n))
    for _ in range(2):  # a second crossval replaces the oos columns instead of appending them again
        add_oos_columns(tmp_path, given, chunk_bytes=4 * k * 4)
    with open(tmp_path / "refined_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["global_index", "given_label", "refined_label", "oos_label", "oos_confidence",
                             "oos_given_prob", "oos_suspect_rank"]
    p_given = oos.astype(np.float64)[np.arange(n), given]
    ref_rank = {i: r + 1 for r, i in enumerate(sorted(range(n), key=lambda i: (p_given[i], i)))}
    for i, r in enumerate(rows):
        assert int(r["refined_label"]) == 7 and int(r["oos_label"]) == int(np.argmax(oos[i]))
        assert float(r["oos_confidence"]) == pytest.approx(float(oos[i].max()), abs=1e-6)
        assert float(r["oos_given_prob"]) == pytest.approx(p_given[i], abs=1e-6)
        assert int(r["oos_suspect_rank"]) == ref_rank[i]


def test_write_exports_after_a_crossval_keeps_the_oos_columns(tmp_path):
    data, model, bank = _tiny(n=19, k=4, seed=2)
    oos = np.random.default_rng(0).dirichlet(np.ones(4), 19).astype(np.float32)
    np.save(tmp_path / "oos_pred_probs.npy", oos)
    (tmp_path / "crossval.json").write_text(json.dumps({"complete": True}))
    info = write_exports(tmp_path, SimpleNamespace(module=model), bank, data, RT, 8)
    with open(tmp_path / "refined_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert "suspect_rank" in rows[0] and [int(r["oos_label"]) for r in rows] == oos.argmax(1).tolist()
    assert info["files"]["oos_pred_probs.npy"]["kind"] == "out-of-sample"
    assert "oos_pred_probs.npy" in info["cleanlab"] and "find_label_issues_batched" in info["cleanlab_batched"]
