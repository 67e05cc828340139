"""The readers and loaders drive the real training loop: a 2-epoch run on fixtures (DALI and torchvision)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_fixtures import fixture_root, needs_dali

from alr_fast.config import apply_overrides
from alr_fast.data.train_data import reader_train_data
from alr_fast.loss.sharding import Sharding
from alr_fast.recipes import get_recipe


def _cfg(name, tmp_path, *extra, layout="a"):
    return apply_overrides(get_recipe(name), [
        f"data.data_root={fixture_root(name, layout=layout)}", "model.name=small_cnn", "model.width=8",
        "train.epochs=2", "method.warmup_epochs=1", "train.batch_size=16", f"train.out={tmp_path / name}",
        "data.workers=1", *extra,
    ])


@pytest.mark.parametrize("name, loader, extra", [
    pytest.param("cifar10", "dali", ["data.noise_kind=sym-incl", "data.noise_rate=0.4"], marks=needs_dali),
    ("clothing1m", "torch", ["data.subset_size=28", "data.image_size=64"]),
    pytest.param("animal10n", "dali", [], marks=needs_dali),
])
def test_two_epochs_of_training_on_a_fixture(tmp_path, name, loader, extra):
    from alr_fast.train.trainer import train

    cfg = _cfg(name, tmp_path, f"data.loader={loader}", *extra)
    data = reader_train_data(cfg)
    summary = train(cfg, data)
    assert summary["epochs"] == 2 and 0.0 <= summary["last_test_acc"] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["train_loss"]) for r in rows)
    if name == "cifar10":
        assert data.noise_manifest["kind"] == "sym-incl" and data.clean_labels is not None
    if name == "clothing1m":
        # Partly known clean labels are passed on with -1 where unknown; metrics rest on the known ones.
        known = data.extra["clean_labels_known"]
        assert 0 < known < data.num_train and int((data.clean_labels >= 0).sum()) == known
        assert rows[-1]["num_clean_known"] == known
        assert data.image_size == 64 and len(data.train_source(Sharding(), 16, 0)) == 2  # 28-row subset per epoch


def test_reader_train_data_errors(tmp_path):
    with pytest.raises(ValueError, match="data.data_root: required"):
        reader_train_data(apply_overrides(get_recipe("animal10n"), []))
    with pytest.raises(ValueError, match="synthetic noise is for CIFAR"):
        reader_train_data(_cfg("animal10n", tmp_path, "data.noise_kind=pair"))
