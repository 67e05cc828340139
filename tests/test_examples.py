"""The integration examples under examples/, each on 2 CPU ranks, checked against the equivalent `alr_fast train`.

Each example (examples/ddp_digits.py: plain DDP; examples/lightning_digits.py: PyTorch Lightning, DDP strategy;
examples/hf_trainer_digits.py: a Hugging Face Trainer) runs under torchrun next to one `alr_fast train` run (a
module fixture) with the same data (digits, the run's own noisy_labels.npy), seed, sample order (OwnerBatchSampler
follows the trainer's epoch plan), model, optimizer, gradient clipping and schedule: the refined labels must be
equal and the soft labels equal within 1e-5. Why not bit for bit: the trainer clips the gradient norm with
DeepSpeed's implementation, the examples with torch.nn.utils.clip_grad_norm_ (Lightning's and the Trainer's
clipping call it too); the two round the norm differently (measured: 6e-8 apart in the weights after 3 epochs on
one rank; 6e-8 in the soft labels here). The three examples compute the same thing, so their weights must be
equal to each other exactly. The Lightning and Hugging Face examples run 2 epochs, then resume from their
checkpoints for the third: the resumed runs must equal the uninterrupted ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast import ALR
from conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, BATCH, LAM = 3, 64, 0.5


def _torchrun(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), script, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{script}: rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _refined(path: Path) -> np.ndarray:
    rows = path.read_text().splitlines()
    header = rows[0].split(",")
    col = header.index("refined_label")
    return np.array([int(r.split(",")[col]) for r in rows[1:]])


EXAMPLE_ARGS = ["--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--seed", "0", "--lam", str(LAM), "--warmup", "1",
                "--ramp-epochs", "1"]


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory) -> Path:
    """`alr_fast train` on 2 ranks: the run every example is compared with."""
    tmp = tmp_path_factory.mktemp("trainer")
    trainer = tmp / "trainer"
    _torchrun(str(ROOT / "launchers" / "train.py"), [
        "--recipe", "demo", "--method", "alr", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--seed", "0",
        "--noise-rate", "0.4", "--model", "mlp", "--no-progress", "--out", str(trainer),
        "--set", "data.dataset=digits", "--set", "data.augment=false", "--set", "optim.schedule=constant",
        "--set", f"method.lam={LAM}", "--set", "method.warmup=fixed", "--set", "method.warmup_epochs=1",
        "--set", "method.ramp_epochs=1", "--set", "train.threads=1", "--set", "train.tensorboard=false",
        "--set", "train.precision=fp32"], tmp)
    return trainer


def _launch(script: str, trainer: Path, out: Path, extra: tuple[str, ...] = ()) -> str:
    """Runs examples/<script> on 2 ranks with the trainer run's labels (``extra``: more arguments); its stdout."""
    return _torchrun(str(ROOT / "examples" / script), [
        "--out", str(out), "--labels", str(trainer / "noisy_labels.npy"), *EXAMPLE_ARGS, *extra], out.parent).stdout


def _check(stdout: str, trainer: Path, out: Path) -> None:
    """An example's run (its stdout, every epoch's line; its folder ``out``) against the trainer run."""
    epochs = [json.loads(line) for line in stdout.splitlines() if line.startswith('{"epoch"')]
    assert [e["phase"] for e in epochs] == ["warmup", "refine", "refine"]
    rows = [json.loads(line) for line in (trainer / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([e["train_acc_given"] for e in epochs], [r["train_acc_given"] for r in rows],
                               atol=2 / 1438)  # at most a sample or two predicted otherwise
    np.testing.assert_array_equal(np.load(out / "labels.npy"), np.load(trainer / "labels.npy"))
    soft_t, soft_e = np.load(trainer / "soft_labels.npy"), np.load(out / "soft_labels.npy")
    one_hot = np.eye(10)[np.load(trainer / "labels.npy")]
    assert np.abs(soft_t - one_hot).max() > 0.05  # refinement did move the soft labels: the check means something
    np.testing.assert_allclose(soft_e, soft_t, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(_refined(out / "refined_labels.csv"), _refined(trainer / "refined_labels.csv"))


@pytest.fixture(scope="module")
def ddp_run(trainer_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "example"
    _check(_launch("ddp_digits.py", trainer_run, out), trainer_run, out)
    return out


def test_ddp_example_matches_alr_fast_train_on_two_ranks(ddp_run):
    assert (ddp_run / "model.pt").is_file()


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
    assert list(wa) == list(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_lightning_example_resumed_matches_alr_fast_train_on_two_ranks(trainer_run, ddp_run, tmp_path):
    """Two epochs, a Lightning checkpoint, then the third epoch resumed from it: the same as one run."""
    first = _launch("lightning_digits.py", trainer_run, tmp_path / "first", ("--epochs", str(EPOCHS - 1)))
    out = tmp_path / "example"
    last = _launch("lightning_digits.py", trainer_run, out, ("--resume", str(tmp_path / "first" / "last.ckpt")))
    _check(first + last, trainer_run, out)
    _same_weights(out, ddp_run)  # the same computation as the uninterrupted plain DDP loop, step for step
    # Lightning writes rank 0's copy of a callback's state: the callback gathered both ranks' soft-label rows.
    ckpt = torch.load(out / "last.ckpt", weights_only=False)
    states = ckpt["callbacks"]["ALRCallback"]["alr_states"]
    assert [s["rank"] for s in states] == [0, 1]
    labels = np.load(out / "labels.npy")
    one = ALR(labels, 10)
    one.load_state_dict(states)  # re-sharded 2 -> 1
    np.testing.assert_array_equal(one.soft_labels.numpy(), np.load(out / "soft_labels.npy"))
    assert one.epoch == EPOCHS and one.schedule.switch_epoch == 1


def test_hf_trainer_example_resumed_matches_alr_fast_train_on_two_ranks(trainer_run, ddp_run, tmp_path):
    """Two epochs with a Trainer checkpoint after each, then the third epoch resumed from the last checkpoint."""
    first = _launch("hf_trainer_digits.py", trainer_run, tmp_path / "first", ("--epochs", str(EPOCHS - 1), "--save"))
    ckpts = sorted((tmp_path / "first").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in ckpts] == ["checkpoint-12", "checkpoint-24"]  # 12 steps per epoch on each rank
    states = torch.load(ckpts[-1] / "alr_states.pt")
    assert [s["rank"] for s in states] == [0, 1] and states[0]["epoch"] == EPOCHS - 1
    out = tmp_path / "example"
    last = _launch("hf_trainer_digits.py", trainer_run, out, ("--resume", str(ckpts[-1])))
    _check(first + last, trainer_run, out)
    _same_weights(out, ddp_run)  # the same computation as the uninterrupted plain DDP loop, step for step
