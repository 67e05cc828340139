"""The benchmark scripts run end to end (tiny settings) and write what they measured."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_bench_train_smoke(tmp_path):
    _run([str(ROOT / "benchmarks" / "bench_train.py"), "--steps", "3", "--blocks", "1", "--warmup-steps", "1",
          "--out", str(tmp_path)], tmp_path)
    result = json.loads((tmp_path / "bench_train_cpu.json").read_text())
    for mode in ("ce", "alr"):
        assert result["results"][mode]["images_per_s"] > 0
        assert len(result["raw"][mode]) == 3
    assert result["git_sha"] and result["command"] and "alr_overhead_share_from_loss_timing" in result
    assert (tmp_path / "bench_train_cpu.md").read_text().startswith("# bench_train")


def test_bench_loss_smoke(tmp_path):
    # Without a GPU the script runs only as a dry run (Triton interpreter, its own tiny shape: B=8, K=5).
    _run([str(ROOT / "benchmarks" / "bench_loss.py"), "--dry-run", "--dtypes", "fp32", "--impls", "eager",
          "--reps", "2", "--warmup", "1", "--no-oracle", "--out", str(tmp_path)], tmp_path)
    report = json.loads((tmp_path / "bench_loss_cpu_dry_run.json").read_text())
    assert report["environment"]["git_sha"] and report["environment"]["command"]
    (row,) = report["rows"]  # exactly the requested dtype and implementation
    assert (row["B"], row["K"], row["dtype"], row["impl"]) == (8, 5, "fp32", "eager")
    # The byte model of forward + backward: read logits and bank rows, write bank rows and the gradient, the index.
    assert row["model_bytes"] == 8 * 5 * (2 * 4 + 2 * 4) + 8 * 8
    t = row["step"]
    assert len(t["raw"]) == 2 and all(v > 0 for v in t["raw"])
    assert min(t["raw"]) <= t["median"] <= max(t["raw"])
    # GB/s is derived from the byte count and the measured step time, not reported independently.
    assert abs(row["model_gbs"] - row["model_bytes"] / (t["median"] * 1e3)) < 1e-9
    assert (tmp_path / "bench_loss_cpu_dry_run.md").read_text().strip()


def test_bench_data_smoke(tmp_path):
    _run([str(ROOT / "benchmarks" / "bench_data.py"), "--images", "24", "--repeats", "1", "--out", str(tmp_path),
          "--tag", "smoke"], tmp_path)
    report = json.loads((tmp_path / "bench_data_smoke.json").read_text())
    assert report["environment"]["git_sha"] and report["environment"]["command"].startswith("python benchmarks/")
    assert (tmp_path / "bench_data_smoke.md").exists()
