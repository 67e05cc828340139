"""``--method elr|gce|sce|bootstrap`` end to end: 2 gloo ranks through the real launcher (torchrun +
launchers/train.py), the demo recipe's backbone (small_cnn, BatchNorm) at a tiny width on the embedded digits,
one warm-up epoch then one epoch of the method; checkpoints, exports, evaluation."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast.recipes import get_recipe
from alr_fast.train.checkpoint import complete_checkpoints
from test_distributed import torchrun

pytestmark = pytest.mark.slow

ARGS = ["--recipe", "demo", "--set", "data.dataset=digits", "--set", "model.width=4", "--set", "method.warmup=fixed",
        "--set", "method.warmup_epochs=1", "--set", "data.val_fraction=0.1", "--set", "train.threads=1",
        "--set", "train.tensorboard=false", "--epochs", "2", "--batch-size", "128", "--no-progress"]


@pytest.mark.parametrize("method", ["elr", "gce", "sce", "bootstrap"])
def test_baseline_two_ranks_through_the_launcher(tmp_path, method):
    out = tmp_path / method
    proc = torchrun(2, [*ARGS, "--method", method, "--out", str(out)], tmp_path)
    assert "Traceback" not in proc.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"]["name"] == method and cfg["model"]["name"] == get_recipe("demo").model.name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["world_size"] == 2 and summary["epochs"] == 2
    assert len(set(summary["rank_weight_digests"])) == 1 and len(summary["rank_weight_digests"]) == 2
    assert summary["selected_by"] is not None and 0.0 < summary["best_test_acc"] <= 1.0  # evaluation + selection
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "refine"] and all(np.isfinite(r["train_loss"]) for r in rows)
    if method == "gce":  # (1 - p_y^q) / q <= 1 / q: not a cross-entropy any more
        assert rows[1]["train_loss"] <= 1 / cfg["method"]["gce_q"]
    if method == "sce":  # alpha CE + beta (-A) (1 - p_y): CE <= -log(1e-7) in practice, RCE <= 4
        assert rows[1]["train_loss"] <= cfg["method"]["sce_alpha"] * 16.2 + 4 * cfg["method"]["sce_beta"]
    # Exports: one row per training sample; the assembled bank equals the last checkpoint's two shards.
    labels = np.load(out / "labels.npy")
    n = labels.shape[0]
    soft = torch.from_numpy(np.load(out / "soft_labels.npy"))
    assert soft.shape == (n, 10) and len((out / "refined_labels.csv").read_text().splitlines()) == n + 1
    shards = [torch.load(complete_checkpoints(out)[0] / f"bank_rank{r}.pt", weights_only=True) for r in range(2)]
    assert set(shards[0]["global_index"].tolist()).isdisjoint(shards[1]["global_index"].tolist())
    for s in shards:
        assert torch.equal(soft[s["global_index"]], s["soft"].float())
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).float()
    trained = ~torch.all(soft == onehot, dim=1)
    if method == "elr":  # the bank is ELR's running average of the predictions: rows moved, still distributions
        assert int(trained.sum()) > 0.8 * n
        np.testing.assert_allclose(soft.sum(1).numpy(), 1.0, atol=1e-4)
    else:  # no per-sample state: the bank stays at the given labels
        assert int(trained.sum()) == 0
