"""Preemption as schedulers and terminals deliver it (issue 22, item 1): SIGTERM / SIGINT to the whole process
group - the trainer and its torchvision DataLoader workers - gives one checkpoint of the current step, one message
and exit status 75; --resume then finishes. Through the launcher, in a session of its own (the signal must not
reach pytest)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alr_fast.cli import main
from alr_fast.train.checkpoint import complete_checkpoints
from alr_fast.train.runtime import EXIT_PREEMPTED

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def animal10n(tmp_path_factory):
    root = tmp_path_factory.mktemp("group_signal") / "animal10n"
    assert main(["data", "make-fixture", "--dataset", "animal10n", "--out", str(root), "--num-train", "40",
                 "--num-test", "8", "--image-size", "32x32"]) == 0
    return root


def args(root: Path, out: Path, epochs: int) -> list[str]:
    return ["--recipe", "demo", "--data-root", str(root), "--set", "data.dataset=animal10n", "--set",
            "model.name=mlp", "--set", "model.width=4", "--set", "method.warmup_epochs=1", "--epochs", str(epochs),
            "--batch-size", "4", "--set", "data.loader=torch", "--set", "data.workers=2", "--save-every", "3",
            "--no-progress", "--set", "train.tensorboard=false", "--set", "train.nan_check_every=1",
            "--set", "data.noise_kind=none",
            "--out", str(out)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_group_signal_with_dataloader_workers_checkpoints_once_and_exits_75(animal10n, tmp_path, sig):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, str(ROOT / "launchers" / "train.py"), *args(animal10n, out, 200)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a batch job's
    try:
        deadline = time.time() + 300
        while not complete_checkpoints(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        workers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) >= 3  # the trainer and its two DataLoader workers share the group
        os.killpg(proc.pid, sig)  # what SLURM's scancel / a preemption and Ctrl-C in a terminal do
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert stderr.count(f"{signal.Signals(sig).name} received") == 1, stderr[-3000:]
    assert "killed by signal" not in stderr and "Traceback" not in stderr
    stopped = [line for line in stderr.splitlines() if "stopped on a signal after global step" in line]
    assert len(stopped) == 1
    step = int(stopped[0].split("after global step ")[1].split()[0])
    newest = complete_checkpoints(out)[0]
    assert json.loads((newest / "trainer.json").read_text())["step"] == step  # the current step's checkpoint
    assert newest.name in stopped[0]
    resumed = subprocess.run([sys.executable, str(ROOT / "launchers" / "train.py"), *args(animal10n, out, 2),
                              "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"global step {step}" in resumed.stderr and (out / "summary.json").exists()


def test_sigterm_to_torchrun_exits_75_through_the_wrapper(tmp_path):
    """Plain torchrun exits 1 with a traceback after forwarding SIGTERM, although both ranks checkpoint and exit
    75; ``python -m alr_fast.torchrun`` (same options) exits 75. The signal goes to the launcher only (torchrun
    forwards it once to each rank)."""
    from conftest import free_port

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    train_args = ["--recipe", "demo", "--set", "data.dataset=digits", "--set", "model.name=mlp", "--set",
                  "method.warmup_epochs=1", "--batch-size", "16", "--epochs", "200", "--save-every", "4",
                  "--no-progress", "--set", "train.tensorboard=false", "--set", "train.nan_check_every=2",
                  "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "alr_fast.torchrun", "--nproc_per_node", "2", "--master_port",
                             str(free_port()), str(ROOT / "launchers" / "train.py"), *train_args],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while not complete_checkpoints(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert "every rank stopped with a checkpoint" in stderr
    stopped = [line for line in stderr.splitlines() if "stopped on a signal after global step" in line]
    assert len(stopped) == 2  # one per rank, the same step
    steps = {int(line.split("after global step ")[1].split()[0]) for line in stopped}
    assert len(steps) == 1
    assert json.loads((complete_checkpoints(out)[0] / "trainer.json").read_text())["step"] == steps.pop()
