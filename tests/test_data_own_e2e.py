"""The user's own data end to end, as a newcomer runs it: ``data make-fixture`` -> ``launchers/train.py`` on 1 rank
(python) and 2 ranks (torchrun) with the own-data recipe and a real torchvision backbone, both loaders, then
``crossval`` and ``review``: the review rows name the image files and the real class names.

CI budget: one fixture per form (module scope), 12 training images, 2 epochs at 32 px.
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import free_port
from test_distributed import run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "launchers" / "train.py")
NUM_TRAIN = 13  # odd: 2 ranks own 7 and 6 rows
NAMES = ["café, crème", "cat", "dog", "guinea pig"]
TINY = ["--recipe", "own-data", "--epochs", "2", "--batch-size", "4", "--image-size", "32", "--no-progress",
        "--set", "model.name=resnet18", "--set", "train.threads=1", "--set", "data.workers=1",
        "--set", "train.tensorboard=false", "--set", "data.val_fraction=0.2"]


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    from alr_fast.cli import main

    base = tmp_path_factory.mktemp("own_forms")
    roots = {}
    for name, extra in (("imagefolder", []), ("manifest", []), ("manifest-jsonl", ["--format", "jsonl"])):
        roots[name] = base / name
        assert main(["data", "make-fixture", "--dataset", name.split("-")[0], "--out", str(roots[name]),
                     "--num-train", str(NUM_TRAIN), "--num-test", "4", "--image-size", "40x36", *extra]) == 0
    return roots


def _train(args, cwd, nproc=1):
    if nproc == 1:
        return run([sys.executable, TRAIN, *args], cwd)
    return run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                str(free_port()), TRAIN, *args], cwd)


def _check(out: Path, world: int, dataset: str):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == world and summary["epochs"] == 2
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["recipe"] == "own-data" and cfg["data"]["dataset"] == dataset and cfg["method"]["warmup"] == "auto"
    assert json.loads((out / "class_names.json").read_text()) == NAMES
    rows = list(csv.DictReader(open(out / "refined_labels.csv")))
    assert [int(r["global_index"]) for r in rows] == list(range(NUM_TRAIN))
    soft = np.load(out / "soft_labels.npy")
    assert soft.shape == (NUM_TRAIN, 4) and np.allclose(soft.sum(1), 1, atol=1e-2)
    assert summary["selected_by"] == ("val" if dataset == "manifest" else "noisy_val")
    return summary


def _review_rows(out: Path, root: Path, by: str):
    from alr_fast.cli import main

    assert main(["review", str(out), "--top", "5", "--by", by, "--html"]) == 0
    rows = list(csv.DictReader(open(out / "review.csv", encoding="utf-8")))
    assert len(rows) == 5
    for r in rows:
        path = Path(r["path"])
        assert path.is_file() and root in path.parents  # the image file itself, not a list-file:line
        assert r["given_name"] in NAMES and r["suggested_name"] in NAMES
    page = (out / "review.html").read_text(encoding="utf-8")
    assert all(r["path"].replace("&", "&amp;") in page or r["path"] in page for r in rows)
    return rows


def test_imagefolder_two_ranks_dali_then_one_rank_torch_and_review(tmp_path, forms):
    root = forms["imagefolder"]
    two = tmp_path / "two"
    _train([*TINY, "--data-root", str(root), "--out", str(two), "--set", "data.loader=dali"], tmp_path, nproc=2)
    _check(two, 2, "imagefolder")
    one = tmp_path / "one"
    _train([*TINY, "--data-root", str(root), "--out", str(one), "--set", "data.loader=torch"], tmp_path)
    _check(one, 1, "imagefolder")
    for r in _review_rows(two, root, "bank"):
        # ImageFolder: the given label is the class folder the file sits in
        assert Path(r["path"]).relative_to(root / "train").parts[0] == r["given_name"]
        assert r["source"] == ""


def test_manifest_two_ranks_torch_one_rank_dali_crossval_and_review(tmp_path, forms):
    root = forms["manifest"]
    two = tmp_path / "two"
    _train([*TINY, "--data-root", str(root), "--out", str(two), "--set", "data.dataset=manifest",
            "--set", "data.loader=torch"], tmp_path, nproc=2)
    _check(two, 2, "manifest")
    jroot = forms["manifest-jsonl"]
    one = tmp_path / "one"
    _train([*TINY, "--data-root", str(jroot), "--out", str(one), "--set", "data.dataset=manifest",
            "--set", "data.loader=dali"], tmp_path)
    _check(one, 1, "manifest")
    run([sys.executable, "-m", "alr_fast", "crossval", *TINY, "--folds", "2", "--data-root", str(root), "--out",
         str(two), "--set", "data.dataset=manifest", "--set", "data.loader=torch"], tmp_path)
    oos = np.load(two / "oos_pred_probs.npy")
    assert oos.shape == (NUM_TRAIN, 4) and np.allclose(oos.sum(1), 1, atol=1e-3)
    manifest = list(csv.DictReader(open(root / "manifest.csv", encoding="utf-8")))
    train_rows = [m for m in manifest if m["split"] == "train"]
    for r in _review_rows(two, root, "oos"):
        listed = train_rows[int(r["global_index"])]  # global index = position among the train rows
        assert r["path"] == str(root / listed["path"]) and r["given_name"] == listed["label"]
        assert r["source"].startswith(f"{root / 'manifest.csv'}:")
