"""Multi-rank results checked from the outside: every rank's weights and buffers read from files the run leaves
(tests/rank_states_launcher.py: launchers/train.py plus one save per rank), 2 ranks against 1 rank on the same
global batches, the metrics of a 2-rank run recomputed from its exports, crossval's out-of-sample
probabilities on 2 ranks against 1 rank and against the fold models, and ``all_gather_rows`` itself. (The
2-rank SIGTERM + resume against an uninterrupted run, each rank's weights read from its file, is
tests/test_reliability.py::test_two_ranks_agree_on_the_stop_step.)

Why 2 ranks and 1 rank can agree: the trainer's epoch plan shuffles each rank's own shard (seeded by rank),
so with ordinary batches a 2-rank run sees other global batches than a 1-rank run and the trajectories
differ. With one batch per epoch (1 rank: B = N = 1,438; 2 ranks: B = 719 = each rank's shard) every step's
global batch is the whole training set on both, DeepSpeed averages the two ranks' mean gradients (equal
shard sizes: the global mean), the MLP has no BatchNorm (no per-rank batch statistics) and no dropout, and
the bank update is per row. What remains is the order of the rows inside the batch and the all-reduce:
float32 summation order, hence a tolerance instead of bitwise equality.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast.config import apply_overrides
from alr_fast.data.train_data import build_train_data
from alr_fast.loss.sharding import Sharding
from alr_fast.recipes import get_recipe
from alr_fast.train.models import build_model
from conftest import free_port

pytestmark = pytest.mark.slow  # end-to-end runs through the launcher: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = str(ROOT / "tests" / "rank_states_launcher.py")
N = 1438  # scikit-learn's digits, training split
SETS = ["data.dataset=digits", "model.name=mlp", "method.warmup_epochs=1", "data.augment=false",
        "train.tensorboard=false"]
BASE = ["--recipe", "demo", "--method", "alr", "--no-progress", *(a for s in SETS for a in ("--set", s))]
TIMING = ("images_per_s", "epoch_time_s", "data_time_s", "step_time_s")


def run(cmd, cwd, env_extra=None, expect=0):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if expect is not None:
        assert proc.returncode == expect, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def launch(nproc: int, args: list[str], cwd, module: str | None = None, **kw):
    target = ["-m", module] if module else [LAUNCHER]
    if nproc == 1:
        return run([sys.executable, *target, *args], cwd, **kw)
    return run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                str(free_port()), *target, *args], cwd, **kw)


def rank_states(out: Path, world: int) -> list[dict]:
    return [torch.load(out / "rank_states" / f"rank{r}.pt", weights_only=True) for r in range(world)]


def assert_bitwise(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k}"


def metric_rows(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING}
            for x in (out / "metrics.jsonl").read_text().splitlines()]


def demo_data(*sets):
    return build_train_data(apply_overrides(get_recipe("demo"), [*SETS, *sets]))


def model_from(path: Path, data) -> torch.nn.Module:
    model = build_model("mlp", num_classes=data.num_classes, in_channels=data.in_channels,
                        image_size=data.image_size, width=get_recipe("demo").model.width)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


@torch.no_grad()
def probs_of(model, source) -> tuple[np.ndarray, np.ndarray]:
    """(global index, softmax) of every real row a source yields."""
    idx, probs = [], []
    for x, i in source.epoch(0):
        keep = i >= 0
        probs.append(torch.softmax(model(x[keep]).float(), dim=1))
        idx.append(i[keep])
    return torch.cat(idx).numpy(), torch.cat(probs).numpy()


# ------------------------------------------------------------------ 2 ranks against 1 rank, same global batches
@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    base = tmp_path_factory.mktemp("one_and_two")
    # 30 full-batch steps at lr 0.5 (5 of warm-up): enough to train the MLP and refine hundreds of labels
    args = [*BASE, "--epochs", "30", "--set", "method.warmup_epochs=5", "--set", "optim.lr=0.5"]
    launch(1, [*args, "--batch-size", str(N), "--out", str(base / "one")], base)
    launch(2, [*args, "--batch-size", str(N // 2), "--out", str(base / "two")], base)
    return base / "one", base / "two"


def test_every_rank_leaves_the_same_weights_and_buffers(one_and_two):
    """Rank 0's and rank 1's final module state, each saved by its own process, are bitwise equal, and equal
    to model.pt (written by rank 0)."""
    _, two = one_and_two
    r0, r1 = rank_states(two, 2)
    assert_bitwise(r0, r1, "rank 0 vs rank 1")
    assert_bitwise(r0, torch.load(two / "model.pt", weights_only=True), "rank 0 vs model.pt")


def test_two_ranks_agree_with_one_rank(one_and_two):
    """Same global batch every step (module docstring): weights, soft labels, predictions and every epoch's
    metrics agree within float32 summation-order tolerances."""
    one, two = one_and_two
    w1 = torch.load(one / "model.pt", weights_only=True)
    w2 = torch.load(two / "model.pt", weights_only=True)
    assert w1.keys() == w2.keys()
    for k in w1:
        # weights are ~0.1-1 in size and move by ~1e-2 per step; fp32 reassociation differences stay ~1e-8
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
    np.testing.assert_allclose(np.load(two / "soft_labels.npy"), np.load(one / "soft_labels.npy"), atol=1e-5)
    np.testing.assert_allclose(np.load(two / "pred_probs.npy"), np.load(one / "pred_probs.npy"), atol=1e-4)
    rows1, rows2 = metric_rows(one), metric_rows(two)
    assert [r["epoch"] for r in rows2] == list(range(30))
    assert [r["phase"] for r in rows2] == [r["phase"] for r in rows1] == ["warmup"] * 5 + ["refine"] * 25
    for a, b in zip(rows1, rows2):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float):
                # accuracies are counts / N: at most one sample may flip on a near tie
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1.5 / N), (a["epoch"], k)
            else:
                assert b[k] == a[k], (a["epoch"], k)
    # The runs trained (well above chance on the clean test split) and the refinement changed labels, so the
    # agreement is not that of two untouched models.
    assert rows2[-1]["test_acc"] > 0.8
    refined = [int(r["refined_label"]) for r in csv.DictReader(open(two / "refined_labels.csv"))]
    assert sum(a != b for a, b in zip(refined, np.load(two / "labels.npy").tolist())) > 500


def test_two_rank_metrics_recomputed_from_the_exports(one_and_two):
    """The last epoch's label metrics and test accuracy of the 2-rank run, recomputed here from its files
    (soft_labels.npy, labels.npy, model.pt) and the clean labels, with plain numpy (not alr_fast.train.metrics);
    pred_probs.npy (assembled from both ranks' parts) equals the model's probabilities recomputed here."""
    _, two = one_and_two
    data = demo_data()
    given = np.load(two / "labels.npy")
    np.testing.assert_array_equal(given, data.given_labels)  # the same data as the run's
    clean = data.clean_labels
    soft = np.load(two / "soft_labels.npy")
    refined = soft.argmax(1)
    rows = list(csv.DictReader(open(two / "refined_labels.csv")))
    assert [int(r["refined_label"]) for r in rows] == refined.tolist()
    flagged, wrong = refined != given, given != clean
    tp = int((flagged & wrong).sum())
    precision, recall = tp / flagged.sum(), tp / wrong.sum()
    last = metric_rows(two)[-1]
    # the trainer averages in float32 (1e-6 here is far below one sample's 1/N = 7e-4)
    assert last["refined_label_acc"] == pytest.approx(float((refined == clean).mean()), abs=1e-6)
    assert last["given_label_acc"] == pytest.approx(float((given == clean).mean()), abs=1e-6)
    assert last["num_flagged"] == int(flagged.sum()) and last["num_mislabelled"] == int(wrong.sum())
    assert last["mislabel_precision"] == pytest.approx(precision, abs=1e-12)
    assert last["mislabel_recall"] == pytest.approx(recall, abs=1e-12)
    assert last["mislabel_f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-12)
    model = model_from(two / "model.pt", data)
    idx, probs = probs_of(model, data.test_source(512))
    test_acc = float((probs.argmax(1) == data.test_labels[idx]).mean())
    assert len(idx) == len(data.test_labels)
    assert last["test_acc"] == pytest.approx(test_acc, abs=1e-12)
    idx, probs = probs_of(model, data.predict_source(Sharding(), 512))
    np.testing.assert_allclose(np.load(two / "pred_probs.npy")[idx], probs, atol=2e-6)
    assert sorted(idx.tolist()) == list(range(N))


# ------------------------------------------------------------------ crossval: 2 ranks against 1 rank
def test_crossval_out_of_sample_probabilities_two_ranks_vs_one(tmp_path):
    """2 folds, one batch per epoch (1 rank: B = N; 2 ranks: B = N/2, at least each rank's rows of a fold).
    Each out-of-sample row equals its fold model's prediction recomputed here, on both runs; the two runs
    agree within a tolerance. Not to rounding: a fold's training rows split unevenly between the ranks
    (owner i % 2, folds drawn per class), and DeepSpeed averages the ranks' mean gradients with weight 1/2
    each, where 1 rank weights by row counts (n0 / (n0 + n1), about 0.5 +- 0.005 here)."""
    args = [*BASE, "--epochs", "3", "--folds", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    launch(1, ["crossval", *args, "--batch-size", str(N), "--out", str(one)], tmp_path, module="alr_fast")
    launch(2, ["crossval", *args, "--batch-size", str(N // 2), "--out", str(two)], tmp_path, module="alr_fast")
    data = demo_data()
    oos = {}
    for out in (one, two):
        folds = np.load(out / "folds.npy")
        oos[out] = np.load(out / "oos_pred_probs.npy")
        for f in range(2):
            model = model_from(out / f"fold{f}" / "model.pt", data)
            idx, probs = probs_of(model, data.predict_source(Sharding(), 512))
            held = folds[idx] == f
            np.testing.assert_allclose(oos[out][idx[held]], probs[held], atol=2e-6)
    np.testing.assert_array_equal(np.load(one / "folds.npy"), np.load(two / "folds.npy"))
    p1, p2 = oos[one], oos[two]
    diff = np.abs(p1 - p2).max(axis=1)
    assert float(np.median(diff)) < 5e-3 and float(diff.max()) < 0.1, (np.median(diff), diff.max())
    assert float((p1.argmax(1) == p2.argmax(1)).mean()) > 0.98
    # What the 2-rank run leaves: each rank predicted its own held-out rows of each fold; by default a finished
    # fold's checkpoints are deleted (they only serve resuming it), its model stays; the CSV of a cross-fit alone.
    for f in range(2):
        assert len(list((two / f"fold{f}").glob("oos_part*.f32"))) == 2
        assert not (two / f"fold{f}" / "checkpoints").exists() and (two / f"fold{f}" / "model.pt").exists()
    rows = {}
    for out in (one, two):
        with open(out / "refined_labels.csv", newline="") as fh:
            rows[out] = list(csv.DictReader(fh))
        assert list(rows[out][0]) == ["global_index", "given_label", "oos_label", "oos_confidence",
                                      "oos_given_prob", "oos_suspect_rank"]
    assert [r["given_label"] for r in rows[one]] == [r["given_label"] for r in rows[two]]


# ------------------------------------------------------------------ all_gather_rows
def _gather_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from alr_fast.train.distributed import all_gather_rows

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        rows = {0: 3, 1: 0, 2: 5}[rank]  # uneven, one rank empty
        result = {}
        for name, dtype in (("f32", torch.float32), ("i64", torch.int64), ("bf16", torch.bfloat16)):
            local = (torch.arange(rows * 2 * 3).view(rows, 2, 3) + 100 * rank + 1).to(dtype)
            result[name] = all_gather_rows(local)
        result["vector"] = all_gather_rows(torch.arange(rank + 1, dtype=torch.int64) * (rank + 1))
        torch.save(result, Path(out) / f"gathered{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_gather_rows_three_ranks_uneven_and_empty(tmp_path):
    """3 gloo processes with 3, 0 and 5 rows: every rank receives every rank's tensor, in rank order, with its
    own length, values and dtype (no padding left in, nothing from another rank)."""
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(3, free_port(), str(tmp_path)), nprocs=3, join=True)
    rows = {0: 3, 1: 0, 2: 5}
    for r in range(3):
        got = torch.load(tmp_path / f"gathered{r}.pt", weights_only=True)
        for name, dtype in (("f32", torch.float32), ("i64", torch.int64), ("bf16", torch.bfloat16)):
            assert len(got[name]) == 3
            for src in range(3):
                want = (torch.arange(rows[src] * 6).view(rows[src], 2, 3) + 100 * src + 1).to(dtype)
                assert got[name][src].dtype == dtype and torch.equal(got[name][src], want), (r, name, src)
        assert [t.tolist() for t in got["vector"]] == [[0], [0, 2], [0, 3, 6]]
