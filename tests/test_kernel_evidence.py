"""The GPU evidence script rehearsed on CPU exactly as the device receives the repository.

``benchmarks/gpu_evidence.sh --dry-run`` runs in a copy of the *tracked* tree (``git ls-files``: what the device
gets, no build outputs, no ``.venv``), installs the project from that copy without network (``pip --no-deps
--no-index --target``) and imports ``alr_fast.loss.triton`` from outside it, then runs every tier with tiny
or check-only arguments under the Triton interpreter: the float64 oracle cases of bench_loss, a selection of
the interpreter kernel tests, the collection of the GPU-only tests, the whole bench_loss timing path (CUDA
graphs and L2 flush are GPU-only), bench_train --dry-run. A renamed flag, test or file fails here, not on the
GPU. ``scripts/gpu_standin.sh`` runs the same with the device's torch 2.11 / triton 3.6 (results in
benchmarks/results/gpu_standin/). ``bench_loss.py --host`` measures the fused path's host cost.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_copy(dest: Path) -> Path:
    """The working-tree content of every tracked file, as the device receives the repository."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        src = ROOT / name
        if name and src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout (git ls-files)")
    tree = _tracked_copy(tmp_path_factory.mktemp("device_tree"))
    out = tmp_path_factory.mktemp("evidence")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(PYTHON=sys.executable, TIER_A_S="1200", TIER_B_S="600", TIER_C_S="300")
    proc = subprocess.run(["bash", str(tree / "benchmarks" / "gpu_evidence.sh"), str(out), "--dry-run"],
                          cwd=tree, capture_output=True, text=True, timeout=1800, env=env)  # fmt: skip
    return tree, out, proc


def test_gpu_evidence_dry_run_in_the_tree_the_device_gets(dry_run):
    tree, out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    tiers = json.loads((out / "tiers.json").read_text())
    assert tiers["dry_run"] is True and tiers["install"].startswith("pip-target"), tiers
    assert tiers["tiers"]["install"]["status"] == "ok" and tiers["tiers"]["a"]["status"] == "ok", tiers
    assert tiers["tiers"]["b"]["status"] == "ok", tiers
    assert tiers["tiers"]["c"]["status"] in ("ok", "skipped"), tiers
    env_log = (out / "env.log").read_text()
    # imported from the pip-installed copy (not the tree), interpreted: the device's import path works
    assert "alr_fast.loss.triton from" in env_log and ".site" in env_log and "interpreted" in env_log, env_log
    oracle = json.loads((out / "bench_loss_cpu_dry_run_oracle.json").read_text())["oracle"]
    assert len(oracle) >= 18 and all(o["ok"] for o in oracle), oracle
    assert {o["case"]["mode"] for o in oracle} == {"refine_dups", "refine_unique", "warmup"}
    assert {o["case"]["logits"] for o in oracle} == {"fp32", "bf16", "fp16"}
    collected = (out / "tier_a_gpu_collect.log").read_text()
    assert "test_gpu_concurrent_streams_use_separate_counters" in collected  # the GPU tests are selected
    assert "test_matches_float64" not in collected  # and only those (-m gpu)
    tests = (out / "tier_a_tests.log").read_text()
    assert " passed" in tests and "failed" not in tests, tests[-2000:]
    timing = json.loads((out / "bench_loss_cpu_dry_run.json").read_text())
    impls = {r["impl"] for r in timing["rows"]}
    assert impls == {"fused_unique", "fused", "compile_unique", "eager", "ce"}, impls
    assert all("error" not in r and r["step"]["median"] > 0 for r in timing["rows"]), timing["rows"]
    assert timing["split_check"] and timing["split_check"][0]["same_gradient"] is True, timing["split_check"]
    summary = (out / "summary.txt").read_text()
    assert "DRY RUN" in summary and "tier a: ok" in summary and "oracle" in summary, summary


def test_gpu_evidence_rejects_bad_arguments(tmp_path):
    for args in ([str(tmp_path), "--dryrun"], [], ["--prepare", "x"]):
        proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_evidence.sh"), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode == 2 and "usage" in proc.stderr, args


def test_bench_loss_without_gpu_asks_for_dry_run(tmp_path):
    if __import__("torch").cuda.is_available():
        pytest.skip("has a GPU")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert proc.returncode == 2 and "--dry-run" in proc.stderr


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
