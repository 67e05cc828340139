"""``data make-fixture`` and ``data check``: as a user runs them (subprocess) and in-process for the variants."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_data_fixtures import fixture_root, fresh_copy

from alr_fast.data.tools.cli import main

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alr_fast.data.tools.cli", "data", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_make_fixture_then_check_as_a_user(tmp_path):
    # Layout c: the release archives extracted into one folder (.txt files and images/0/00/... in the root), the
    # layout `data check` used to call unusable (it looked for <root>/0/00/x.jpg).
    made = _run("make-fixture", "--dataset", "clothing1m", "--out", str(tmp_path / "c1m"), "--layout", "c")
    assert made.returncode == 0, made.stderr
    root = json.loads(made.stdout)["root"]
    assert (Path(root) / "noisy_train_key_list.txt").is_file() and (Path(root) / "images").is_dir()
    checked = _run("check", "--dataset", "clothing1m", "--root", root)
    assert checked.returncode == 0, checked.stderr
    summary = json.loads(checked.stdout)
    assert summary["usable"] and summary["num_classes"] == 14 and not summary["errors"]
    assert {k: v["count"] for k, v in summary["splits"].items()} == {"train": 70, "clean-train": 28, "val": 28,
                                                                     "test": 28}
    train = summary["splits"]["train"]
    assert train["images_checked"] == 70 and train["unreadable"] == 0 and 0 < train["noise_rate"] < 1
    assert train["extra"]["layout"] == "c"
    assert summary["layout"]["train"]["image_keys"] == f"as written ({root}/images/...)"
    s = summary["samples"][0]
    assert s["split"] == "train" and s["index"] == 0 and Path(s["path"]).is_file() and 0 <= s["label"] < 14
    assert "usable" in checked.stderr


def test_check_exits_nonzero_on_a_broken_dataset(tmp_path):
    root = fresh_copy("animal10n", tmp_path)
    victim = sorted((root / "training").iterdir())[4]
    victim.write_bytes(victim.read_bytes()[:200])
    checked = _run("check", "--dataset", "animal10n", "--root", str(root), "--unreadable-out",
                   str(tmp_path / "bad.json"))
    assert checked.returncode == 1
    summary = json.loads(checked.stdout)
    assert not summary["usable"] and summary["splits"]["train"]["unreadable"] == 1
    assert str(victim) in checked.stderr and "NOT usable" in checked.stderr
    assert json.loads((tmp_path / "bad.json").read_text()) == {"train": [4]}


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "animal10n", "webvision", "mini-webvision"])
def test_check_every_dataset_in_process(name, capsys):
    root = fixture_root("webvision" if name == "mini-webvision" else name)
    assert main(["data", "check", "--dataset", name, "--root", str(root), "--samples", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["usable"] and summary["dataset"] == name
    assert len(summary["samples"]) == 2 * len(summary["splits"])
    if name.startswith("cifar"):
        assert summary["splits"]["train"]["storage"] == "array" and summary["splits"]["train"]["noise_rate"] == 0.0
    if name == "mini-webvision":
        assert summary["num_classes"] == 50 and summary["source"] == "google"


def test_check_with_label_overrides_and_ilsvrc(tmp_path, capsys):
    root = fixture_root("cifar10")
    assert main(["data", "check", "--dataset", "cifar10", "--root", str(root), "--cifar-n",
                 str(root / "CIFAR-10_human.pt"), "--label-set", "worst"]) == 0
    train = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert train["label_source"].endswith("CIFAR-10_human.pt:worst") and train["noise_rate"] > 0.2

    np.save(tmp_path / "labels.npy", np.zeros(60, dtype=np.int64))
    assert main(["data", "check", "--dataset", "animal10n", "--root", str(fixture_root("animal10n")),
                 "--noise-file", str(tmp_path / "labels.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["train"]["class_counts"] == [60] + [0] * 9

    np.save(tmp_path / "short.npy", np.zeros(5, dtype=np.int64))
    assert main(["data", "check", "--dataset", "animal10n", "--root", str(fixture_root("animal10n")),
                 "--noise-file", str(tmp_path / "short.npy")]) == 1
    assert "short.npy: 5 labels, but the split has 60 samples" in capsys.readouterr().err

    wv = fixture_root("webvision")
    assert main(["data", "check", "--dataset", "mini-webvision", "--root", str(wv), "--ilsvrc-list",
                 str(wv / "ilsvrc2012_val_list.txt"), "--ilsvrc-root", str(wv / "ilsvrc2012_val")]) == 0
    ilsvrc = json.loads(capsys.readouterr().out)["splits"]["ilsvrc-val"]
    assert ilsvrc["count"] > 0 and ilsvrc["unreadable"] == 0


def test_check_max_images_and_missing_root(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "clothing1m", "--root", str(fixture_root("clothing1m")),
                 "--split", "train", "--max-images", "10"]) == 0
    train = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert train["images_checked"] == 10 and not train["images_checked_all"]
    assert main(["data", "check", "--dataset", "webvision", "--root", str(tmp_path / "nope")]) == 1
    assert "dataset root not found" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["cifar10", "animal10n", "webvision"])
def test_make_fixture_in_process(tmp_path, capsys, name):
    assert main(["data", "make-fixture", "--dataset", name, "--out", str(tmp_path / name), "--num-train", "20",
                 "--num-test", "10", "--seed", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert Path(out["root"]).is_dir()
    assert main(["data", "check", "--dataset", name, "--root", out["root"]]) == 0
    summary = json.loads(capsys.readouterr().out)
    # webvision's check reads the 'all' list: 20 Google + 10 Flickr lines.
    assert summary["splits"]["train"]["count"] == (30 if name == "webvision" else 20)


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "check", "--dataset", "imagenet", "--root", "x"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["data", "make-fixture", "--dataset", "animal10n", "--out", "x", "--image-size", "big"])
    assert e.value.code == 2 and "expected WIDTHxHEIGHT" in capsys.readouterr().err
