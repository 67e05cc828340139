"""The exports' remaining paths, unit by unit (written after mutation testing, docs/mutation.md): exports.json
word for word, the part files of a rank that owns no row, a CSV written in several chunks, a part that is
missing rows, the out-of-sample columns of a crossval that no training run preceded, a disk that fills while the
parts are written or assembled, empty prediction sources, class names. Tiny data: about a second in all."""

from __future__ import annotations

import csv
import errno
import functools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import alr_fast.train.exports as exports
from alr_fast.loss.bank import SoftLabelBank
from alr_fast.loss.bank_export import assemble_bank_files, write_bank_part
from alr_fast.loss.sharding import Sharding
from alr_fast.train.exports import add_oos_columns, class_names_of, predict_probs, stream_predictions, write_exports
from alr_fast.train.runtime import Runtime
from alr_fast.util.rowfiles import write_csv
from test_exports import _tiny

RT = Runtime(device=torch.device("cpu"), precision="fp32", backend="torch", rank=0, world_size=1)


def test_exports_json_word_for_word(tmp_path):
    data, model, bank = _tiny(n=13, k=3, seed=4)
    out = tmp_path / "run" / "nested"  # created with its parents
    info = write_exports(out, SimpleNamespace(module=model), bank, data, RT, 4)
    refined = bank.soft.float().argmax(1).numpy()
    want = {
        "num_samples": 13,
        "num_classes": 3,
        "num_changed": int((refined != data.given_labels).sum()),
        "num_unpredicted": 0,
        "files": {
            "pred_probs.npy": {"kind": "in-sample", "shape": [13, 3], "dtype": "float32",
                               "what": "softmax of the final model (eval transform) on the samples it trained on; "
                                       "NOT valid input for cleanlab.filter.find_label_issues (use a crossval's "
                                       "oos_pred_probs.npy); rows of images skipped as unreadable are 0"},
            "soft_labels.npy": {"kind": "in-sample", "shape": [13, 3], "dtype": "float32",
                                "what": "the bank's soft labels (stored as bfloat16), one row per sample"},
            "labels.npy": {"kind": "given", "shape": [13], "dtype": "int64", "what": "the given (noisy) labels"},
            "refined_labels.csv": {"kind": "in-sample",
                                   "what": "per sample: given label, the bank's refined label, its mass, and the "
                                           "suspect rank (1 = least bank mass left on the given label)"},
            "class_names.json": {"kind": "names", "what": "the class of each probability column, in order"},
        },
        "cleanlab": "run `python -m alr_fast crossval --out <this folder> ...` for out-of-sample probabilities, "
                    "then: from cleanlab.filter import find_label_issues; issues = find_label_issues("
                    "np.load('labels.npy'), np.load('oos_pred_probs.npy'), "
                    "return_indices_ranked_by='self_confidence')",
    }
    assert info == want
    assert (out / "exports.json").read_text() == json.dumps(want, indent=2) + "\n"
    assert sorted(p.name for p in out.iterdir()) == sorted([*want["files"], "exports.json"])
    # after a finished crossval: the out-of-sample file and both cleanlab recipes
    np.save(out / "oos_pred_probs.npy", np.full((13, 3), 1 / 3, np.float32))
    (out / "crossval.json").write_text(json.dumps({"complete": True}))
    info = write_exports(out, SimpleNamespace(module=model), bank, data, RT, 4)
    assert info["files"]["refined_labels.csv"]["kind"] == "in-sample + out-of-sample (oos_* columns)"
    assert info["files"]["oos_pred_probs.npy"] == {"kind": "out-of-sample", "what": "see crossval.json"}
    assert info["cleanlab"] == ("from cleanlab.filter import find_label_issues; issues = find_label_issues("
                                "np.load('labels.npy'), np.load('oos_pred_probs.npy'), "
                                "return_indices_ranked_by='self_confidence')")
    assert info["cleanlab_batched"] == (
        "from cleanlab.experimental.label_issues_batched import find_label_issues_batched; issues = "
        "find_label_issues_batched(labels_file='labels.npy', pred_probs_file='oos_pred_probs.npy', "
        "batch_size=100000, n_jobs=1)")
    assert json.loads((out / "exports.json").read_text()) == info


def test_unpredicted_rows_are_counted(tmp_path):
    data, model, bank = _tiny(n=11, k=3, seed=6)
    full = data.predict_source

    class Skip2:  # a source that loses two rows (unreadable images)
        def __init__(self, src):
            self.src = src

        def epoch(self, e, start_step=0):
            for x, idx in self.src.epoch(e, start_step):
                yield x, torch.where((idx == 3) | (idx == 7), -1, idx)

    data.predict_source = lambda sharding, bs: Skip2(full(sharding, bs))
    info = write_exports(tmp_path, SimpleNamespace(module=model), bank, data, RT, 4)
    assert info["num_unpredicted"] == 2
    pred = np.load(tmp_path / "pred_probs.npy")
    assert not pred[[3, 7]].any() and np.allclose(np.delete(pred, [3, 7], 0).sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("stage", ["parts", "assemble"])
def test_a_full_disk_raises_names_the_folder_and_leaves_no_part(tmp_path, monkeypatch, stage):
    data, model, bank = _tiny(n=9, k=3, seed=1)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(exports, "write_bank_part" if stage == "parts" else "assemble_bank_files", full)
    with pytest.raises(OSError) as e:
        write_exports(tmp_path, SimpleNamespace(module=model), bank, data, RT, 4)
    assert e.value.errno == errno.ENOSPC
    if stage == "parts":
        assert str(tmp_path / ".export_parts") in str(e.value)
    assert not (tmp_path / ".export_parts").exists() and not (tmp_path / "exports.json").exists()


def test_another_ranks_failure_is_raised_on_this_rank(tmp_path, monkeypatch):
    data, model, bank = _tiny(n=9, k=3, seed=2)
    votes = iter([1])  # the first vote: another rank could not write its parts
    monkeypatch.setattr(exports, "all_reduce_sum", lambda t: torch.tensor(next(votes)))
    with pytest.raises(OSError, match=r"^exports: another rank could not write its part files in .*\.export_parts "
                                      r"\(see its message\)$"):
        write_exports(tmp_path, SimpleNamespace(module=model), bank, data, RT, 4)
    assert not (tmp_path / ".export_parts").exists()
    votes = iter([0, 1])  # the parts are whole, then rank 0's assembly failed (as seen from any rank)
    monkeypatch.setattr(exports, "all_reduce_sum", lambda t: torch.tensor(next(votes)))
    with pytest.raises(OSError, match=r"^exports: rank 0 could not write the exports in .* \(see its message\)$"):
        write_exports(tmp_path, SimpleNamespace(module=model), bank, data, RT, 4)


def test_a_rank_other_than_0_writes_its_parts_and_returns_nothing(tmp_path):
    data, model, _ = _tiny(n=9, k=3, seed=3)
    rt1 = Runtime(device=torch.device("cpu"), precision="fp32", backend="torch", rank=1, world_size=2)
    bank1 = SoftLabelBank(torch.from_numpy(data.given_labels), 3, torch.float32, sharding=Sharding(1, 2))
    (tmp_path / ".export_parts").mkdir()  # rank 0 makes the folder
    assert write_exports(tmp_path, SimpleNamespace(module=model), bank1, data, rt1, 4) == {}
    assert sorted(p.name for p in (tmp_path / ".export_parts").iterdir()) == [
        "bank1.npz", "pred1.f32", "pred1.index.npy", "soft1.f32", "soft1.index.npy"]
    assert not (tmp_path / "exports.json").exists()


def test_a_rank_without_rows_and_a_csv_in_several_chunks(tmp_path, monkeypatch):
    import alr_fast.loss.bank_export as bank_export

    monkeypatch.setattr(bank_export, "write_csv", functools.partial(write_csv, block=2))  # the CSV in 3 blocks
    labels = torch.tensor([2, 0, 1, 1, 0])
    n, k, world = 5, 3, 7  # more ranks than rows: ranks 5 and 6 own nothing
    g = torch.Generator().manual_seed(0)
    table = torch.softmax(torch.randn(n, k, generator=g) * 2, 1)
    parts = tmp_path / "parts"
    parts.mkdir()
    for r in range(world):
        bank = SoftLabelBank(labels, k, torch.float32, sharding=Sharding(r, world))
        bank.soft.copy_(table[bank.global_index])
        write_bank_part(parts, bank, chunk_bytes=2 * k * 4)
    with np.load(parts / "bank6.npz") as z:
        assert z["refined"].dtype == np.int64 and z["confidence"].dtype == np.float32 and z["refined"].size == 0
        assert z["given_mass"].dtype == np.float32 and z["index"].size == 0
    refined = assemble_bank_files(tmp_path, parts, labels.numpy().astype(np.int32), k, world, chunk_bytes=2 * k * 4)
    assert refined.tolist() == table.argmax(1).tolist() and refined.dtype == np.int64
    assert np.load(tmp_path / "labels.npy").dtype == np.int64
    rows = list(csv.reader(open(tmp_path / "refined_labels.csv")))
    assert rows[0] == ["global_index", "given_label", "refined_label", "confidence", "suspect_rank"]
    mass = table[torch.arange(n), labels]
    rank = {i: r + 1 for r, i in enumerate(sorted(range(n), key=lambda i: (float(mass[i]), i)))}
    assert rows[1:] == [[str(i), str(int(labels[i])), str(int(table[i].argmax())), f"{float(table[i].max()):.6f}",
                         str(rank[i])] for i in range(n)]
    # parts that miss rows (one rank's of two): named, with the count
    one = SoftLabelBank(labels, k, torch.float32, sharding=Sharding(0, 2))
    sub = tmp_path / "sub"
    sub.mkdir()
    (tmp_path / "o2").mkdir()
    write_bank_part(sub, one)
    with pytest.raises(ValueError, match=r"soft_labels.npy: the 1 bank part\(s\) in .*sub cover 3 of 5 rows$"):
        assemble_bank_files(tmp_path / "o2", sub, labels.numpy(), k, 1)


def test_oos_columns_without_a_training_run(tmp_path, monkeypatch):
    monkeypatch.setattr(exports, "write_csv", functools.partial(write_csv, block=3))  # the CSV in 3 blocks
    n, k = 7, 3
    given = np.array([0, 2, 1, 1, 0, 2, 2])
    oos = np.random.default_rng(1).dirichlet(np.ones(k), n).astype(np.float32)
    np.save(tmp_path / "oos_pred_probs.npy", oos)
    (tmp_path / "crossval.json").write_text(json.dumps({"complete": True}))
    add_oos_columns(tmp_path, given, chunk_bytes=2 * k * 4)  # no refined_labels.csv yet: created, in 4 chunks
    rows = list(csv.reader(open(tmp_path / "refined_labels.csv", newline="")))
    p = oos[np.arange(n), given]
    rank = {i: r + 1 for r, i in enumerate(sorted(range(n), key=lambda i: (float(p[i]), i)))}
    assert rows[0] == ["global_index", "given_label", "oos_label", "oos_confidence", "oos_given_prob",
                       "oos_suspect_rank"]
    assert rows[1:] == [[str(i), str(given[i]), str(int(oos[i].argmax())), f"{float(oos[i].max()):.6f}",
                         f"{float(p[i]):.6f}", str(rank[i])] for i in range(n)]
    add_oos_columns(tmp_path, given, chunk_bytes=2 * k * 4)  # again: the oos columns are replaced, not added
    assert list(csv.reader(open(tmp_path / "refined_labels.csv", newline=""))) == rows
    np.save(tmp_path / "oos_pred_probs.npy", oos[:5])
    with pytest.raises(ValueError, match=r"oos_pred_probs.npy: 5 rows but this run has 7 samples$"):
        add_oos_columns(tmp_path, given)
    (tmp_path / "crossval.json").write_text(json.dumps({"complete": False}))
    with pytest.raises(ValueError, match="no finished crossval"):
        add_oos_columns(tmp_path, given)


def test_empty_prediction_sources_and_class_names(tmp_path):
    class Empty:
        def epoch(self, e, start_step=0):
            return iter(())

    model = torch.nn.Linear(4, 3)
    idx, probs = predict_probs(model, Empty(), RT)
    assert idx.dtype == torch.long and idx.shape == (0,) and probs.shape == (0,)
    part = stream_predictions(model, Empty(), RT, tmp_path / "p.f32")
    assert part.index.dtype == np.int64 and part.index.size == 0 and (tmp_path / "p.f32").read_bytes() == b""
    data = SimpleNamespace(extra={"class_names": ["a", "b", 3]}, num_classes=3)
    assert class_names_of(data) == ["a", "b", "3"]
    assert class_names_of(SimpleNamespace(extra={"class_names": ["a", "b"]}, num_classes=3)) == ["0", "1", "2"]
    assert class_names_of(SimpleNamespace(extra={}, num_classes=2)) == ["0", "1"]
    assert class_names_of(SimpleNamespace(extra=None, num_classes=2)) == ["0", "1"]
