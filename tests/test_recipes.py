"""Per-setting recipe values (resolved after overrides), saved-config re-runs, strict config files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from alr_fast.cli import main
from alr_fast.config import config_to_dict, load_config_file
from alr_fast.recipes import RECIPE_SOURCES, RECIPES, SELC_CIFAR_WARMUP, resolve_recipe


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("kind,mode", [("sym-incl", "sym"), ("asym", "asym")])
def test_cifar_warmup_follows_selc_table_after_overrides(dataset, kind, mode):
    if kind == "asym":
        kind = f"asym-{dataset}"
    for (d, m, rate), es in SELC_CIFAR_WARMUP.items():
        if d != dataset or m != mode:
            continue
        cfg = resolve_recipe(dataset, [f"data.noise_kind={kind}", f"data.noise_rate={rate}"])
        assert cfg.method.warmup_epochs == es, (dataset, kind, rate)


def test_explicit_warmup_wins_and_other_kinds_get_selc_idn_value():
    assert resolve_recipe("cifar10", ["data.noise_rate=0.8", "method.warmup_epochs=7"]).method.warmup_epochs == 7
    assert resolve_recipe("cifar10", ["data.noise_rate=0.8"]).method.warmup_epochs == 40
    assert resolve_recipe("cifar10", ["data.noise_rate=0.4"]).method.warmup_epochs == 30
    assert resolve_recipe("cifar100", ["data.noise_rate=0.5"]).method.warmup_epochs == 20  # nearest: 0.4
    assert resolve_recipe("cifar10", ["data.noise_kind=instance"]).method.warmup_epochs == 40


def test_config_command_shows_resolved_values_and_sources(capsys):
    assert main(["config", "--recipe", "cifar10", "--set", "data.noise_rate=0.8"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["data"]["noise_rate"] == 0.8 and shown["method"]["warmup_epochs"] == 40
    assert shown["optim"]["weight_decay"] == 1e-3 and shown["model"]["name"] == "cifar_resnet34"
    assert "estimated_es[cifar10_sym0.8]" in shown["_sources"]["method.warmup_epochs"]
    assert "unpublished" in shown["_sources"]["method.lam"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_has_a_source_and_shows(name, capsys):
    assert name in RECIPE_SOURCES
    assert main(["config", "--recipe", name]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["recipe"] == name and shown["method"]["warmup_epochs"] < shown["train"]["epochs"]


def test_literature_values():
    a = resolve_recipe("animal10n")
    assert (a.optim.momentum, a.optim.gamma, a.optim.milestones, a.method.warmup_epochs) == (0.0, 0.2, (50, 75), 40)
    c = resolve_recipe("clothing1m")
    assert (c.optim.lr, c.train.epochs, c.method.warmup_epochs, c.method.alpha, c.data.subset_size) == \
        (0.01, 40, 5, 0.8, 128_000)
    w = resolve_recipe("mini-webvision")
    assert (w.model.name, w.data.image_size, w.train.batch_size, w.method.warmup_epochs) == \
        ("inception_resnet_v2", 227, 32, 40)


def _write(tmp_path, d):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(d))
    return p


def test_config_file_refuses_unknown_and_mistyped_fields(tmp_path):
    d = config_to_dict(resolve_recipe("demo"))
    d["optim"]["lr"] = "fast"
    with pytest.raises(ValueError, match=r"optim\.lr: expected float, got str 'fast'"):
        load_config_file(_write(tmp_path, d))
    d = config_to_dict(resolve_recipe("demo"))
    d["method"]["lamda"] = 0.5
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['method\.lamda'\].*did you mean method\.lam\?"):
        load_config_file(_write(tmp_path, d))
    d = config_to_dict(resolve_recipe("demo"))
    d["trian"] = {}
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['trian'\]"):
        load_config_file(_write(tmp_path, d))
    d = config_to_dict(resolve_recipe("demo"))
    d["train"]["progress"] = 1
    with pytest.raises(ValueError, match=r"train\.progress: expected bool, got int 1"):
        load_config_file(_write(tmp_path, d))
    (tmp_path / "broken.json").write_text('{"data": {\n  "noise_rate": 0.4,\n}')
    with pytest.raises(ValueError, match=r"broken\.json:3: not valid JSON"):
        load_config_file(tmp_path / "broken.json")


def test_hand_written_partial_config_takes_defaults(tmp_path):
    p = _write(tmp_path, {"recipe": "mine", "data": {"dataset": "digits", "noise_rate": 0.2},
                          "optim": {"lr": 1, "milestones": [2, 3]}, "_comment": "anything"})
    cfg = load_config_file(p)
    assert cfg.recipe == "mine" and cfg.data.noise_rate == 0.2 and cfg.optim.lr == 1.0
    assert isinstance(cfg.optim.lr, float) and cfg.optim.milestones == (2, 3)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "alr_fast", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_rerun_from_run_folder_reproduces_it(tmp_path):
    from alr_fast.train.trainer import train

    first = tmp_path / "first"
    want = train(resolve_recipe("demo", [
        "data.dataset=digits", "train.epochs=3", "method.warmup_epochs=1", "model.width=8", "train.progress=false",
        f"train.out={first}", "train.save_every_epoch=false",
        "train.threads=1"]))  # saved in config.json: the rerun uses the same thread count, whatever this process's
    labels = np.load(first / "noisy_labels.npy")
    assert labels.dtype == np.int64 and len(labels) == json.loads((first / "noise.json").read_text())["num_samples"]
    prov = json.loads((first / "provenance.json").read_text())
    assert prov["packages"]["torch"] and "git_sha" in prov
    # The saved config through the CLI, with the saved labels imported through data.noise_file: same run.
    proc = _cli("train", "--config", str(first / "config.json"), "--out", str(tmp_path / "imported"), "--set",
                "data.noise_kind=none", "--set", f"data.noise_file={first / 'noisy_labels.npy'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "imported" / "summary.json").read_text())
    assert got["weights_sha256_prefix"] == want["weights_sha256_prefix"]
    assert got["last_test_acc"] == want["last_test_acc"]
    assert np.array_equal(np.load(tmp_path / "imported" / "noisy_labels.npy"), labels)
    manifest = json.loads((tmp_path / "imported" / "noise.json").read_text())
    assert manifest["kind"] == "file" and manifest["noisy_hash"] == json.loads(
        (first / "noise.json").read_text())["noisy_hash"]
    bad = tmp_path / "bad.json"
    d = json.loads((first / "config.json").read_text())
    d["train"]["epoch"] = 2
    bad.write_text(json.dumps(d))
    proc = _cli("train", "--config", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and "train.epoch" in proc.stderr and "did you mean train.epochs" in proc.stderr
