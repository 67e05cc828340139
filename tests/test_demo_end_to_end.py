"""The demo path end to end, through the real CLI in a fresh process (DeepSpeed engine, gloo, CPU)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "alr_fast", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    return proc


def test_short_demo_writes_everything(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", str(out), "--epochs", "3", "--set", "method.warmup_epochs=1", "--set", "method.alpha=0.5",
                   "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"ce", "selc", "alr"}
    for name, s in summary["methods"].items():
        for key in ("last_test_acc", "peak_test_acc", "last_test_top5", "refined_label_acc", "mislabel_f1"):
            assert 0.0 <= s[key] <= 1.0, (name, key, s[key])
        assert s["peak_test_acc"] >= s["last_test_acc"]
        assert s["selected_by"] is None and "best_test_acc" not in s  # the demo has no validation split
        run = out / name
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1, 2]
        assert [r["phase"] for r in rows] == (["warmup"] * 3 if name == "ce" else ["warmup", "refine", "refine"])
        assert (run / "curves.png").stat().st_size > 1000
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["method"]["name"] == name and cfg["train"]["epochs"] == 3
        noise = json.loads((run / "noise.json").read_text())
        assert noise["kind"] == "sym-incl" and 0.45 < noise["actual_rate"] < 0.6
    # CE never refines: its "refined" labels are the given ones; the refining methods flag some samples.
    assert summary["methods"]["ce"]["mislabel_f1"] == 0.0
    assert summary["methods"]["alr"]["mislabel_f1"] > 0.0
    assert (out / "comparison.png").stat().st_size > 1000
    assert "| alr |" in proc.stdout
    # the review sheet of the most suspect labels, from ALR's bank, 40 rows in rank order
    assert (out / "alr" / "review.png").stat().st_size > 10_000 and "review.png" in proc.stdout
    review = (out / "alr" / "review.csv").read_text().splitlines()
    assert len(review) == 41 and [int(r.split(",")[0]) for r in review[1:]] == list(range(1, 41))


def test_train_command_and_bad_override(tmp_path):
    proc = run_cli("train", "--recipe", "demo", "--method", "alr", "--epochs", "2", "--set",
                   "method.warmup_epochs=1", "--set", "data.dataset=digits", "--set", "model.name=mlp",
                   "--out", str(tmp_path / "r"), "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["method"] == "alr"
    bad = run_cli("train", "--set", "method.alpha=2", cwd=tmp_path)
    assert bad.returncode == 2 and "method.alpha: must be in [0, 1]" in bad.stderr
    missing = run_cli("train", "--recipe", "cifar10", "--epochs", "1", "--set", "method.warmup_epochs=0",
                      cwd=tmp_path)
    assert missing.returncode == 2 and "data.data_root: required for the on-disk dataset 'cifar10'" in missing.stderr


def test_launcher_script_runs_from_any_directory(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launchers" / "train.py"), "--epochs", "2", "--set", "method.warmup_epochs=1",
         "--set", "data.dataset=digits", "--set", "model.name=mlp", "--out", str(tmp_path / "l"), "--no-progress",
         "--local_rank=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "l" / "summary.json").read_text())["epochs"] == 2
