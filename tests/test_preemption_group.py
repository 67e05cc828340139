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


# Through the launchers: 2 ranks, digits and an MLP (the cheapest real run). torchrun starts each rank in a
# session of its own, so the job's group signal reaches the launcher alone, which forwards it once; the deepspeed
# launcher keeps everything in one group unless started through the wrapper (alr_fast/deepspeed.py says what
# plain `deepspeed` does). Plain torchrun / deepspeed exit 1 / 143 here (docs/reliability.md), the wrappers 75.
LAUNCHERS = {
    "torchrun": lambda port: [sys.executable, "-m", "alr_fast.torchrun", "--nproc_per_node", "2",
                              "--master_port", str(port)],
    "deepspeed": lambda port: [sys.executable, "-m", "alr_fast.deepspeed", "--num_gpus", "2",
                               "--master_port", str(port)],
}


def launcher_args(out: Path, epochs: int) -> list[str]:
    return ["--recipe", "demo", "--set", "data.dataset=digits", "--set", "model.name=mlp", "--set",
            "model.width=8", "--set", "method.warmup_epochs=1", "--batch-size", "32", "--epochs", str(epochs),
            "--save-every", "4", "--no-progress", "--set", "train.tensorboard=false",
            "--set", "train.nan_check_every=2", "--out", str(out)]


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_group_signal_through_the_launcher_exits_75_with_one_checkpoint(tmp_path, launcher):
    """SIGTERM to the launcher's whole process group (what a scheduler does to a batch job): the launcher exits
    75 with one line and no traceback; every rank stops after the same step, which the newest checkpoint holds
    (the only one written after the signal); each rank prints at most one message; --resume (2 ranks, through
    torchrun's wrapper) continues from that step and finishes."""
    from conftest import free_port

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}")
    cmd = [*LAUNCHERS[launcher](free_port()), str(ROOT / "launchers" / "train.py")]
    proc = subprocess.Popen([*cmd, *launcher_args(out, 200)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not complete_checkpoints(out) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)  # a checkpoint: a step is done, the run is past its set-up
        assert proc.poll() is None, proc.communicate()
        before = {c.name for c in complete_checkpoints(out)}
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_PREEMPTED, stderr[-3000:]
    assert stderr.count(f"every rank stopped with a checkpoint ({launcher}: ") == 1, stderr[-3000:]
    assert "Traceback" not in stderr and "killed by signal" not in stderr
    for rank in range(2):
        assert stderr.count(f"rank {rank}: SIGTERM received") <= 1, stderr[-3000:]
        assert stderr.count(f"stopped: rank {rank}: ") <= 1, stderr[-3000:]
    stopped = [line for line in stderr.splitlines() if "stopped on a signal after global step" in line]
    assert stopped and "stopped: rank 0: " in stderr, stderr[-3000:]
    steps = {int(line.split("after global step ")[1].split()[0]) for line in stopped}
    assert len(steps) == 1  # every rank stopped after the same step
    step = steps.pop()
    ckpts = {c.name: json.loads((c / "trainer.json").read_text())["step"] for c in complete_checkpoints(out)}
    newest = complete_checkpoints(out)[0]
    assert ckpts[newest.name] == step and list(ckpts.values()).count(step) == 1  # one, of the current step
    # the others written since the signal was sent are the regular ones (--save-every 4), none in between
    assert all(ckpts[name] % 4 == 0 for name in set(ckpts) - before - {newest.name}), ckpts
    # The checkpoint does not depend on the launcher: resume through torchrun's wrapper (the cheaper start-up).
    cmd = [*LAUNCHERS["torchrun"](free_port()), str(ROOT / "launchers" / "train.py")]
    resumed = subprocess.run([*cmd, *launcher_args(out, 2), "--resume"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {newest}" in resumed.stderr and f"global step {step}," in resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
