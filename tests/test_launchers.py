"""The dataset launchers on fixtures in each dataset's real layout (real JPEG bytes), through python, torchrun
and the data commands; plus clear errors for a bad --data-root."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "small_cnn", "--epochs", "2", "--set", "method.warmup_epochs=1", "--batch-size", "16",
         "--no-progress", "--set", "data.workers=1"]


def run(cmd, cwd, expect=0):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if expect is not None:
        assert proc.returncode == expect, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def fixture(tmp_path, name, *extra):
    out = tmp_path / f"fx_{name}"
    run([sys.executable, "-m", "alr_fast", "data", "make-fixture", "--dataset", name, "--out", str(out), *extra],
        tmp_path)
    return out


def launcher(name):
    return str(ROOT / "launchers" / f"train_{name}.py")


def check_run(out: Path, world: int):
    """What a finished run must hold: its summary, 2 logged epochs, and exports with one row per training sample
    (every sample predicted, soft labels and probabilities that are distributions)."""
    import numpy as np

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == world and summary["epochs"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(np.isfinite(r["train_loss"]) for r in rows)
    labels = np.load(out / "labels.npy")
    n = len(labels)
    csv_rows = (out / "refined_labels.csv").read_text().splitlines()[1:]
    assert n > 0 and len(csv_rows) == n
    assert [int(line.split(",")[0]) for line in csv_rows] == list(range(n))
    probs, soft = np.load(out / "pred_probs.npy"), np.load(out / "soft_labels.npy")
    assert probs.shape == soft.shape and probs.shape[0] == n and labels.max() < probs.shape[1]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)  # every row predicted (an unwritten row is 0)
    np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-4)
    return summary


def test_cifar_launcher_with_synthetic_noise(tmp_path):
    root = fixture(tmp_path, "cifar10")
    out = tmp_path / "c10"
    run([sys.executable, launcher("cifar"), "--data-root", str(root), "--out", str(out), *SMALL,
         "--set", "data.noise_rate=0.4"], tmp_path)
    s = check_run(out, 1)
    assert "refined_label_acc" in s  # clean labels are known for synthetic noise
    assert json.loads((out / "noise.json").read_text())["requested_rate"] == 0.4


def test_clothing1m_launcher_two_ranks_torch_loader(tmp_path):
    root = fixture(tmp_path, "clothing1m", "--layout", "b")
    out = tmp_path / "c1m"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
         str(free_port()), launcher("clothing1m"), "--data-root", str(root), "--out", str(out),
         "--image-size", "64", "--set", "data.loader=torch", "--set", "data.subset_size=40", *SMALL], tmp_path)
    s = check_run(out, 2)
    assert len(set(s["rank_weight_digests"])) == 1
    # Clothing1M knows the clean label of only some noisy-train images: metrics rest on those.
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < last["num_clean_known"] < len((out / "refined_labels.csv").read_text().splitlines()) - 1


def test_mini_webvision_launcher(tmp_path):
    root = fixture(tmp_path, "webvision")
    out = tmp_path / "mwv"
    run([sys.executable, launcher("webvision"), "--recipe", "mini-webvision", "--data-root", str(root),
         "--out", str(out), "--image-size", "64", *SMALL], tmp_path)
    check_run(out, 1)


@pytest.mark.parametrize("name", ["cifar", "animal10n", "clothing1m", "webvision"])
def test_bad_data_root_is_a_clear_error(tmp_path, name):
    missing = tmp_path / "nowhere"
    proc = run([sys.executable, launcher(name), "--data-root", str(missing), "--out", str(tmp_path / "o"),
                *SMALL], tmp_path, expect=2)
    assert "error:" in proc.stderr and str(missing) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cifar_n_labels_and_noise_file_through_the_launcher(tmp_path):
    import numpy as np

    root = fixture(tmp_path, "cifar10")
    out = tmp_path / "c10n"
    run([sys.executable, launcher("cifar"), "--data-root", str(root), "--out", str(out), *SMALL,
         "--set", "data.noise_kind=none", "--set", f"data.cifar_n={root / 'CIFAR-10_human.pt'}",
         "--set", "data.label_set=worst"], tmp_path)
    check_run(out, 1)
    labels = np.load(out / "labels.npy")
    # A noise file by global index: every label shifted by one class.
    noise = tmp_path / "shifted.json"
    noise.write_text(json.dumps([int((x + 1) % 10) for x in labels]))
    out2 = tmp_path / "c10f"
    run([sys.executable, launcher("cifar"), "--data-root", str(root), "--out", str(out2), *SMALL,
         "--set", "data.noise_kind=none", "--set", f"data.noise_file={noise}"], tmp_path)
    assert np.array_equal(np.load(out2 / "labels.npy"), (labels + 1) % 10)
    bad = run([sys.executable, launcher("cifar"), "--data-root", str(root), "--out", str(tmp_path / "x"), *SMALL,
               "--set", f"data.noise_file={noise}"], tmp_path, expect=2)
    assert "must be 'none' when data.cifar_n or data.noise_file" in bad.stderr
