"""Command-line output that scripts can read: --version, and --json leaving stdout to the summary alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import alr_fast
from alr_fast.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"alr_fast {alr_fast.__version__}"


@pytest.mark.slow
def test_train_json_stdout_is_only_the_summary(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "alr_fast", "train", "--json", "--recipe", "demo", "--model", "mlp",
           "--epochs", "2", "--batch-size", "256", "--no-progress", "--out", str(out),
           "--set", "data.dataset=digits", "--set", "method.warmup=fixed", "--set", "method.warmup_epochs=1",
           "--set", "train.tensorboard=false", "--set", "train.threads=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # the whole of stdout parses
    assert summary == json.loads((out / "summary.json").read_text()) | {"num_changed": summary["num_changed"]}
    assert summary["epochs"] == 2
    # DeepSpeed's start-up chatter is off at the default verbosity (alr_fast.train.runtime.quiet_deepspeed_import)
    assert "Setting accelerator to CPU" not in proc.stderr and "No CUDA runtime is found" not in proc.stderr
    assert "deepspeed_shm_comm_op built" not in proc.stderr  # one process: the comm op is not built
    # One refinement epoch changes few labels or none: the summary says so when none changed.
    assert (summary["refinement_note"] is not None) == (summary["num_changed"] == 0)
