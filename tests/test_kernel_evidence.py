"""The kernel's benchmark and GPU-evidence scripts run on CPU with their real paths and arguments.

``benchmarks/gpu_evidence.sh --dry-run`` runs every tier's command with tiny or check-only arguments (pytest
--collect-only of the GPU tests, a one-point bench_loss, bench_train --dry-run, bench_data --help), so a
renamed flag, test file or config field fails here before the GPU run; ``bench_loss.py --host`` measures the
fused path's host cost with stubbed launches.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_evidence_dry_run(tmp_path):
    out = tmp_path / "evidence"
    env = dict(os.environ, PYTHON=sys.executable, TIER_A_S="120", TIER_B_S="120", TIER_C_S="60")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_evidence.sh"), str(out), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tiers = json.loads((out / "tiers.json").read_text())
    assert tiers["dry_run"] is True
    assert tiers["tiers"]["a"]["status"] == "ok" and tiers["tiers"]["b"]["status"] in ("ok", "skipped"), tiers
    collected = (out / "tier_a_tests.log").read_text()
    assert "test_gpu_concurrent_streams_use_separate_counters" in collected  # the GPU tests are selected
    assert "test_matches_float64" not in collected  # and only those (-m gpu)
    rows = json.loads((out / "bench_loss_cpu_dry_run.json").read_text())["rows"]
    assert rows and all("error" not in r for r in rows) and rows[0]["step"]["device_us"]["median"] > 0
    summary = (out / "summary.txt").read_text()
    assert "DRY RUN" in summary and "tier a: ok" in summary


def test_gpu_evidence_rejects_bad_arguments(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_evidence.sh"), str(tmp_path), "--dryrun"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_bench_loss_host_mode(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--host", "--host-shapes",
                           "16x5", "--host-calls", "5", "--host-rounds", "2", "--out", str(tmp_path), "--tag", "t"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "bench_loss_host_t.json").read_text())
    impls = {r["impl"] for r in result["rows"]}
    assert impls == {"fused_assume_unique", "fused_default", "eager_cross_entropy"}
    assert all(r["median_us"] > 0 and len(r["rounds_us"]) == 2 for r in result["rows"])
    assert "InterpretedFunction.run" in result["settings"]["method"]
