"""Long-run reliability: planted/corrupt checkpoints, SIGTERM/SIGINT, a dead or hung rank, a NaN step, a failing
disk. Small and fast: scikit-learn's digits (1,438 train), an MLP, 64 per step = 23 steps per epoch, 2 epochs.

Most runs are in-process (``train()`` / ``cli.main``); what needs a real process (a second signal that kills,
two ranks) goes through the launcher.
"""

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast import cli
from alr_fast.util.atomic import atomic_path, write_text_atomic
from alr_fast.train.checkpoint import CheckpointError, complete_checkpoints
from alr_fast.config import apply_overrides
from alr_fast.recipes import get_recipe
from alr_fast.train.runtime import EXIT_PREEMPTED
from alr_fast.train.trainer import train
from conftest import free_port

pytestmark = pytest.mark.slow  # end-to-end runs through the launchers: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = str(ROOT / "launchers" / "train.py")
SETS = ["data.dataset=digits", "model.name=mlp", "method.name=alr", "method.warmup_epochs=1", "train.batch_size=64",
        "train.epochs=2", "train.progress=false", "train.tensorboard=false"]
ARGS = ["--recipe", "demo", "--method", "alr", "--set", "data.dataset=digits", "--set", "model.name=mlp",
        "--set", "method.warmup_epochs=1", "--batch-size", "64", "--epochs", "2", "--no-progress",
        "--set", "train.tensorboard=false"]
FAULT_VARS = ("ALR_FAST_FAULT_AT_STEP", "ALR_FAST_FAULT_RANK", "ALR_FAST_FAULT_SIGNAL", "ALR_FAST_NAN_AT_STEP")


def cfg(out, *sets):
    return apply_overrides(get_recipe("demo"), [*SETS, f"train.out={out}", *sets])


def weights(out: Path) -> dict:
    return torch.load(out / "model.pt", weights_only=True)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def trainer_json(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer.json").read_text())


@pytest.fixture(autouse=True)
def _no_faults(monkeypatch):
    for var in FAULT_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run, checkpointing every 10 steps (keeps the newest 2: steps 40 and 46)."""
    out = tmp_path_factory.mktemp("reference")
    train(cfg(out, "train.save_every=10"))
    return out


def copy_run(reference: Path, dst: Path) -> Path:
    shutil.copytree(reference, dst)
    (dst / "model.pt").unlink()  # the resumed run must write its own
    return dst


# --- 1. checkpoints that are safe to load ----------------------------------------------------------------------
def test_everything_alr_fast_writes_loads_weights_only(reference):
    newest = complete_checkpoints(reference)
    assert [trainer_json(c)["step"] for c in newest] == [46, 40]
    for f in (newest[0] / "bank_rank0.pt", newest[0] / "epoch_rank0.pt", reference / "model.pt"):
        torch.load(f, weights_only=True)  # raises on anything but tensors and plain types
    manifest = trainer_json(newest[0])["manifest"]
    assert set(manifest) == {"bank_rank0.pt", "epoch_rank0.pt", "engine/mp_rank_00_model_states.pt"}


class _Planted:
    """Unpickling this runs code: it creates the file named in the payload."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("strict", [True, False])
def test_planted_pickle_never_runs_and_is_refused(reference, tmp_path, strict, capsys):
    out = copy_run(reference, tmp_path / "run")
    marker = tmp_path / "PWNED"
    target = complete_checkpoints(out)[0] / "engine" / "mp_rank_00_model_states.pt"
    target.write_bytes(pickle.dumps(_Planted(str(marker))))
    # Control: the planted file is live, i.e. DeepSpeed's full unpickling would run it.
    probe = subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(target)!r}, 'rb'))"],
                           cwd=ROOT, env=dict(os.environ, PYTHONPATH=f"{ROOT / 'tests'}:{ROOT}"))
    assert probe.returncode == 0 and marker.exists()
    marker.unlink()
    if strict:
        with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states\.pt: .*(sha256|bytes)"):
            train(cfg(out, "train.resume=true", "train.resume_strict=true"))
        assert not (out / "model.pt").exists()
    else:
        train(cfg(out, "train.resume=true"))
        log = (out / "train.log").read_text()  # the run's messages (alr_fast/util/logs.py)
        assert "WARNING alr_fast.train: refusing checkpoint" in log and "mp_rank_00_model_states.pt" in log
        assert "resumed from" in log and "ckpt_000004_step_000000040" in log
        assert same_weights(out, reference)  # resumed from step 40: the same result as the uninterrupted run
    assert not marker.exists()


def test_unlisted_file_is_refused(reference, tmp_path):
    out = copy_run(reference, tmp_path / "run")
    (complete_checkpoints(out)[0] / "engine" / "extra.pt").write_bytes(b"anything")
    with pytest.raises(CheckpointError, match=r"engine/extra\.pt: not in the manifest"):
        train(cfg(out, "train.resume=true", "train.resume_strict=true"))


def test_truncated_shard_falls_back_to_the_previous_checkpoint(reference, tmp_path, capsys):
    out = copy_run(reference, tmp_path / "run")
    shard = complete_checkpoints(out)[0] / "bank_rank0.pt"
    shard.write_bytes(shard.read_bytes()[:1000])
    train(cfg(out, "train.resume=true"))
    log = (out / "train.log").read_text()  # the run's messages (alr_fast/util/logs.py)
    assert f"{shard}: 1000 bytes, the manifest says" in log
    assert "resumed from" in log and "ckpt_000004_step_000000040" in log  # the previous complete checkpoint
    assert same_weights(out, reference)


def test_latest_is_the_most_recent_write_not_the_highest_step(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("ckpt_000000_step_000000046", "ckpt_000001_step_000000024", "ckpt_000002_step_000000036"):
        (root / name).mkdir(parents=True)
        (root / name / "COMPLETE").write_text("ok\n")
    (root / "ckpt_000003_step_000000099").mkdir()  # incomplete: never chosen
    assert [p.name for p in complete_checkpoints(tmp_path)] == [
        "ckpt_000002_step_000000036", "ckpt_000001_step_000000024", "ckpt_000000_step_000000046"]


# --- 2. preemption ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_signal_checkpoints_exits_75_and_resume_equals_uninterrupted(reference, tmp_path, monkeypatch, capsys, sig):
    out = tmp_path / "cut"
    # In-process: keep the process group (and DeepSpeed's groups built on it) for the later runs of this session.
    monkeypatch.setattr(cli, "shutdown_distributed", lambda: None)
    monkeypatch.setenv("ALR_FAST_FAULT_AT_STEP", "30")  # mid-epoch 1 (23 steps per epoch)
    monkeypatch.setenv("ALR_FAST_FAULT_SIGNAL", sig)
    assert cli.main(["train", *ARGS, "--out", str(out)]) == EXIT_PREEMPTED == 75
    assert "stopped on a signal after global step 30" in capsys.readouterr().err
    newest = complete_checkpoints(out)
    assert len(newest) == 2 and trainer_json(newest[0])["step"] == 30  # end of epoch 0, then step 30
    assert not (out / "summary.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the run
    monkeypatch.delenv("ALR_FAST_FAULT_AT_STEP")
    assert cli.main(["train", *ARGS, "--out", str(out), "--resume"]) == 0
    assert "step 7 of the epoch" in capsys.readouterr().err  # the command line's messages: stderr
    assert same_weights(out, reference)
    for name in ("soft_labels.npy", "pred_probs.npy", "refined_labels.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    timing = ("images_per_s", "epoch_time_s", "data_time_s", "step_time_s")
    rows = lambda p: [{k: v for k, v in json.loads(x).items() if k not in timing}  # noqa: E731
                      for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert rows(out) == rows(reference)


def run_launcher(args, env_extra=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run([sys.executable, LAUNCHER, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_second_signal_exits_at_once(tmp_path):
    out = tmp_path / "twice"
    proc = run_launcher([*ARGS, "--out", str(out)],
                        {"ALR_FAST_FAULT_AT_STEP": "5", "ALR_FAST_FAULT_SIGNAL": "TERM2"})
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-2000:]
    assert "SIGTERM received" in proc.stderr
    assert complete_checkpoints(out) == []  # killed by the second signal before any checkpoint


def test_two_ranks_agree_on_the_stop_step(tmp_path):
    """SIGTERM reaches rank 1 only, after step 3; ranks compare flags every 4 steps, so both stop after step 4.
    The resumed run equals an uninterrupted one bitwise: every rank's final weights and buffers, each read
    from the file that rank saved (tests/rank_states_launcher.py: launchers/train.py plus that save), model.pt,
    the exports and the metrics."""
    out, ref = tmp_path / "two", tmp_path / "ref"
    launcher = str(ROOT / "tests" / "rank_states_launcher.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", ALR_FAST_FAULT_AT_STEP="3", ALR_FAST_FAULT_RANK="1",
               ALR_FAST_FAULT_SIGNAL="TERM")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           launcher, *ARGS, "--set", "train.nan_check_every=4"]
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode != 0
    assert proc.stderr.count("stopped on a signal after global step 4 ") == 2, proc.stderr[-3000:]
    (ckpt,) = complete_checkpoints(out)
    state = trainer_json(ckpt)
    assert (state["step"], state["world_size"]) == (4, 2)
    assert {p.name for p in ckpt.glob("epoch_rank*.pt")} == {"epoch_rank0.pt", "epoch_rank1.pt"}
    for var in FAULT_VARS:
        env.pop(var, None)
    for dst, extra in ((out, ["--resume"]), (ref, [])):
        cmd[cmd.index("--master_port") + 1] = str(free_port())
        proc = subprocess.run([*cmd, "--out", str(dst), *extra], cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        if extra:
            assert "step 4 of the epoch" in proc.stderr
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    for r in range(2):
        got = torch.load(out / "rank_states" / f"rank{r}.pt", weights_only=True)
        want = torch.load(ref / "rank_states" / f"rank{r}.pt", weights_only=True)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got), f"rank {r}"
    assert same_weights(out, ref)
    for name in ("soft_labels.npy", "pred_probs.npy", "refined_labels.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    timing = ("images_per_s", "epoch_time_s", "data_time_s", "step_time_s")
    rows = lambda p: [{k: v for k, v in json.loads(x).items() if k not in timing}  # noqa: E731
                      for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert rows(out) == rows(ref)


# --- 3. a dead or hung rank ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["KILL", "STOP"])
def test_survivor_exits_within_the_collective_timeout(tmp_path, how):
    """Two ranks started by hand (no torchrun, which would kill the survivor itself); rank 1 dies (SIGKILL) or
    hangs (SIGSTOP) after step 7. Rank 0 must exit non-zero within train.collective_timeout_s, naming step 8."""
    timeout_s = 6
    out = tmp_path / "dead"
    base = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", ALR_FAST_FAULT_AT_STEP="7", ALR_FAST_FAULT_RANK="1",
                ALR_FAST_FAULT_SIGNAL=how)
    args = [sys.executable, LAUNCHER, *ARGS, "--out", str(out), "--save-every", "5",
            "--set", f"train.collective_timeout_s={timeout_s}"]
    procs = [subprocess.Popen(args, cwd=ROOT, env=dict(base, RANK=str(r), LOCAL_RANK=str(r)), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in range(2)]
    try:
        t_fault = None
        deadline = time.monotonic() + 600
        while procs[0].poll() is None and time.monotonic() < deadline:
            if t_fault is None and (procs[1].poll() is not None or _stopped(procs[1].pid)):
                t_fault = time.monotonic()
            time.sleep(0.1)
        t_exit = time.monotonic()
        if t_fault is None and (procs[1].poll() is not None or _stopped(procs[1].pid)):
            # A killed peer is noticed at once: rank 0 can exit within the same 0.1 s poll interval.
            t_fault = t_exit
        assert t_fault is not None, "rank 1 never died/stopped"
        _, err0 = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 2, err0[-3000:]
    assert "rank 0: a collective failed during global step 8 (epoch 0, step 8 of the epoch)" in err0
    assert t_exit - t_fault < timeout_s + 15  # the timeout plus polling and interpreter exit
    # The last checkpoint (step 5) is intact: a one-rank --resume finishes the run.
    assert [trainer_json(c)["step"] for c in complete_checkpoints(out)] == [5]
    proc = run_launcher([*ARGS, "--out", str(out), "--resume"])
    assert proc.returncode == 0 and "world size 2 -> 1" in proc.stderr, proc.stderr[-2000:]


def _stopped(pid: int) -> bool:
    try:
        return "\nState:\tT" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# --- 4. non-finite training ---------------------------------------------------------------------------------------
def test_nan_step_stops_the_run_before_any_checkpoint_holds_it(tmp_path, monkeypatch):
    out = tmp_path / "nan"
    monkeypatch.setenv("ALR_FAST_NAN_AT_STEP", "9")  # NaN images at step 9; checks every 5 steps, saves every 4
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at global step 9 .*detected at step 10"):
        train(cfg(out, "train.save_every=4", "train.nan_check_every=5"))
    newest = complete_checkpoints(out)
    assert [trainer_json(c)["step"] for c in newest] == [8, 4]
    states = torch.load(newest[0] / "engine" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert all(torch.isfinite(v).all() for v in states.values())


# --- 5. disk full / write errors ----------------------------------------------------------------------------------
def test_write_failure_mid_checkpoint_keeps_the_previous_one(reference, tmp_path, monkeypatch):
    out = tmp_path / "full"
    real_save, calls = torch.save, []

    def failing_save(obj, f, *a, **kw):
        if str(getattr(f, "name", f)).endswith("bank_rank0.pt"):  # a path, or alr_fast's file object
            calls.append(f)
            if len(calls) == 2:  # the second checkpoint: after DeepSpeed wrote its files, before ours
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"No space left on device; nothing was replaced, the newest "
                                              r"complete checkpoint is still .*ckpt_000000_step_000000005"):
        train(cfg(out, "train.save_every=5"))
    monkeypatch.setattr(torch, "save", real_save)
    assert [c.name for c in complete_checkpoints(out)] == ["ckpt_000000_step_000000005"]
    assert not list((out / "checkpoints").glob(".*tmp"))  # the partial write is gone
    train(cfg(out, "train.save_every=5", "train.resume=true"))
    assert same_weights(out, reference)


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "exports.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(OSError, match="exports.json"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["exports.json"]
    with atomic_path(tmp_path / "a.npy") as tmp:
        np.save(tmp, np.arange(3))  # np.save keeps the name: the temporary keeps the .npy suffix
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
