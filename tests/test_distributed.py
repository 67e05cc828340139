"""Data-parallel training through the real launcher: 2 CPU ranks (gloo), checkpoints, exact resume, exports."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast.train.checkpoint import complete_checkpoints
from conftest import free_port

pytestmark = pytest.mark.slow  # end-to-end runs through the launchers: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = str(ROOT / "launchers" / "train.py")
# Small and fast: scikit-learn's 1,797 real digits (1,438 train), an MLP, 64 per rank per step.
BASE = ["--recipe", "demo", "--method", "alr", "--set", "data.dataset=digits", "--set", "model.name=mlp",
        "--set", "method.warmup_epochs=1", "--batch-size", "64", "--no-progress"]


def run(cmd, cwd, env_extra=None, expect=0):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    if expect is not None:
        assert proc.returncode == expect, f"rc={proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def torchrun(nproc, args, cwd, **kw):
    return run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), LAUNCHER, *args], cwd, **kw)


def single(args, cwd, **kw):
    return run([sys.executable, LAUNCHER, *args], cwd, **kw)


def read_exports(out: Path):
    with open(out / "refined_labels.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, np.load(out / "pred_probs.npy"), np.load(out / "labels.npy")


def test_two_ranks(tmp_path):
    out = tmp_path / "two"
    proc = torchrun(2, [*BASE, "--epochs", "2", "--out", str(out)], tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    # Every rank hashed its final weights; the trainer raises if they differ, and reports them.
    assert len(summary["rank_weight_digests"]) == 2 and len(set(summary["rank_weight_digests"])) == 1
    rows, probs, labels = read_exports(out)
    n = labels.shape[0]
    assert n > 1000
    # The bank shards in the last checkpoint are disjoint and cover every sample.
    ckpt = complete_checkpoints(out)[0]
    shards = [torch.load(ckpt / f"bank_rank{r}.pt", weights_only=True) for r in range(2)]
    owned = [set(s["global_index"].tolist()) for s in shards]
    assert owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == set(range(n))
    assert all(abs(len(o) - n / 2) <= 1 for o in owned)
    # Exports are complete and consistent with the assembled bank.
    assert len(rows) == n and probs.shape == (n, 10)
    assert [int(r["global_index"]) for r in rows] == list(range(n))
    assert sorted(int(r["suspect_rank"]) for r in rows) == list(range(1, n + 1))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    soft = torch.from_numpy(np.load(out / "soft_labels.npy"))
    for s in shards:
        assert torch.equal(soft[s["global_index"]], s["soft"].float())
    assert [int(r["refined_label"]) for r in rows] == soft.argmax(1).tolist()
    # suspect_rank 1 = least soft-label mass left on the given label
    given_mass = soft.gather(1, torch.from_numpy(labels)[:, None]).squeeze(1)
    first = min(rows, key=lambda r: int(r["suspect_rank"]))
    assert given_mass[int(first["global_index"])] == given_mass.min()
    assert not (out / ".export_parts").exists()
    assert "Traceback" not in proc.stderr
    # Output (docs/output.md): stdout is the summary alone (DeepSpeed's "comm op built" print() of each rank is a
    # debug message); rank 0 alone writes the epoch lines; train.log has the same lines.
    printed = json.loads(proc.stdout)  # the whole of stdout parses
    assert printed["weights_sha256_prefix"] == summary["weights_sha256_prefix"] and printed["world_size"] == 2
    epoch_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[alr_fast] epoch ")]
    assert [ln.split(":")[0] for ln in epoch_lines] == ["[alr_fast] epoch 0 (1 of 2, warmup)",
                                                        "[alr_fast] epoch 1 (2 of 2, refine)"]
    assert "[alr_fast rank 1]" not in proc.stderr and "built successfully" not in proc.stdout + proc.stderr
    assert (out / "train.log").read_text().count(" INFO alr_fast.train: epoch ") == 2


def _same_run(a: Path, b: Path):
    ma, mb = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    for name in ("refined_labels.csv", "pred_probs.npy", "soft_labels.npy", "labels.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    timing = ("images_per_s", "epoch_time_s", "data_time_s", "step_time_s")
    ra = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(ra) == strip(rb)


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path):
    args = [*BASE, "--epochs", "3", "--save-every", "5"]
    single([*args, "--out", str(tmp_path / "ref")], tmp_path)
    # 1,438 samples / 64 = 23 steps per epoch; step 33 is in the middle of epoch 1 (checkpoint at 30).
    killed = single([*args, "--out", str(tmp_path / "cut")], tmp_path, env_extra={"ALR_FAST_FAULT_AT_STEP": "33"},
                    expect=None)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed = single([*args, "--out", str(tmp_path / "cut"), "--resume"], tmp_path)
    assert "resumed from" in resumed.stderr and "step 7 of the epoch" in resumed.stderr
    _same_run(tmp_path / "ref", tmp_path / "cut")


def _cosine_lr(lr0, epoch, step_in_epoch, steps_per_epoch, epochs):
    return lr0 * 0.5 * (1.0 + math.cos(math.pi * (epoch * steps_per_epoch + step_in_epoch) / (epochs * steps_per_epoch)))


def test_two_rank_checkpoint_resumes_on_one_rank(tmp_path):
    out = tmp_path / "r"
    torchrun(2, [*BASE, "--epochs", "2", "--out", str(out)], tmp_path)
    (ckpt,) = complete_checkpoints(out)[:1]
    shards = [torch.load(ckpt / f"bank_rank{r}.pt", weights_only=True) for r in range(2)]
    saved_bank = torch.zeros_like(torch.from_numpy(np.load(out / "soft_labels.npy")))
    for s in shards:
        saved_bank[s["global_index"]] = s["soft"].float()
    # 1. Same epochs: nothing left to train, so the exports show the re-sharded bank as it was loaded.
    proc = single([*BASE, "--epochs", "2", "--out", str(out), "--resume"], tmp_path)
    assert "world size 2 -> 1" in proc.stderr
    resharded = torch.from_numpy(np.load(out / "soft_labels.npy"))
    assert torch.equal(resharded, saved_bank)  # every row, from the right shard and position
    assert len(complete_checkpoints(out)) == 2  # no epoch ran, nothing new written (the 2-rank run kept 2)
    # 2. One more epoch on one rank: the LR schedule continues from epoch 2 (not from the 2-rank step count).
    single([*BASE, "--epochs", "3", "--out", str(out), "--resume"], tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["epochs"] == 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    n = 1438
    spe2, spe1 = math.ceil(math.ceil(n / 2) / 64), math.ceil(n / 64)  # steps per epoch on 2 ranks / 1 rank
    lr0 = 0.05  # the demo recipe's
    expected = [_cosine_lr(lr0, e, spe2 - 1, spe2, 2) for e in (0, 1)] + [_cosine_lr(lr0, 2, spe1 - 1, spe1, 3)]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-12)
    # The newest checkpoint is the one-rank run's, counted in its own steps per epoch.
    newest = json.loads((complete_checkpoints(out)[0] / "trainer.json").read_text())
    assert (newest["world_size"], newest["loop"]["epoch"], newest["step"], newest["loop"]["step"]) == (1, 3, 3 * spe1,
                                                                                                   3 * spe1)
    rows_csv, probs, labels = read_exports(out)
    assert len(rows_csv) == labels.shape[0] == n and probs.shape == (n, 10)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    proc = single([*BASE, "--epochs", "2", "--out", str(tmp_path / "x"), "--resume"], tmp_path)
    assert "no complete checkpoint" in proc.stderr


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--set", "train.global_batch_size=100"], "train.global_batch_size=100 but train.batch_size (64)"),
        (["--batch-size", "0"], "train.batch_size: must be >= 1"),
    ],
)
def test_inconsistent_batch_configuration(tmp_path, extra, match):
    proc = single([*BASE, "--epochs", "2", "--out", str(tmp_path / "b"), *extra], tmp_path, expect=2)
    assert match in proc.stderr


def test_deepspeed_launcher_two_ranks(tmp_path):
    """How users start runs: `deepspeed --num_gpus N launchers/...` (it appends --local_rank=N)."""
    deepspeed_bin = Path(sys.executable).parent / "deepspeed"
    out = tmp_path / "ds"
    proc = run([str(deepspeed_bin), "--num_gpus", "2", "--master_port", str(free_port()), LAUNCHER,
                *BASE, "--epochs", "2", "--out", str(out)], tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["rank_weight_digests"])) == 1
    assert proc.stdout.count('"method": "alr"') == 1  # the summary is printed by rank 0 only


# --- ZeRO 1/2 checkpoints resumed on another number of ranks (issue 22 item 2) ---------------------------------
# The probe resumes through the trainer itself (_Loop: load_latest, the re-partition), then gathers the state the
# run's first step would start from and rank 0 writes it: the test compares it with what the 2-rank run saved.
PROBE = """
import sys
import torch
from alr_fast.config import apply_overrides, load_config_file
from alr_fast.train.checkpoint import full_optimizer_state
from alr_fast.train.trainer import _Loop

loop = _Loop(apply_overrides(load_config_file(sys.argv[1]), ["train.resume=true"]), None, None)
full = full_optimizer_state(loop.engine)
if loop.rt.rank == 0:
    module = {k: v.detach().cpu().clone() for k, v in loop.engine.module.named_parameters()}
    torch.save({"full": full, "module": module, "step": loop.state.step, "epoch": loop.state.epoch}, sys.argv[2])
# Leave as the trainer does: every rank done, then the process group destroyed (a rank exiting with its gloo
# threads alive aborted once in CI: "terminate called without an active exception", SIGABRT).
if torch.distributed.is_initialized():
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
"""
# ZeRO 1 with AdamW (moments and a step counter), ZeRO 2 with SGD (momentum): bf16 weights, fp32 masters.
ZERO_RUNS = {1: ["--set", "optim.optimizer=adamw", "--set", "optim.lr=0.01"], 2: []}


@pytest.fixture(scope="module", params=sorted(ZERO_RUNS))
def zero_two_rank_run(request, tmp_path_factory):
    stage = request.param
    tmp = tmp_path_factory.mktemp(f"zero{stage}")
    args = [*BASE, "--set", "train.precision=bf16", "--set", f"train.zero_stage={stage}", *ZERO_RUNS[stage]]
    torchrun(2, [*args, "--epochs", "2", "--out", str(tmp / "run")], tmp)
    return stage, tmp, args


@pytest.mark.parametrize("world", [1, 3])
def test_zero_checkpoint_resumes_exactly_on_another_world_size(zero_two_rank_run, world):
    stage, tmp, _ = zero_two_rank_run
    run_dir = tmp / "run"
    ckpt = complete_checkpoints(run_dir)[0]
    saved = torch.load(ckpt / "zero_full_state.pt", weights_only=True)
    # The probe resumes a copy of the run folder (a resume writes into the folder it resumes).
    copy = tmp / f"on{world}"
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["train"]["out"] = str(copy)
    (copy / "config.json").write_text(json.dumps(config))
    probe = tmp / f"probe{world}.py"
    probe.write_text(PROBE)
    cmd = [str(probe), str(copy / "config.json"), str(tmp / f"state{world}.pt")]
    if world == 1:
        run([sys.executable, *cmd], tmp)
    else:
        run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_port",
             str(free_port()), *cmd], tmp)
    got = torch.load(tmp / f"state{world}.pt", weights_only=True)
    assert got["epoch"] == 2
    (g_saved,), (g_got,) = saved["groups"], got["full"]["groups"]
    keys = {1: ["exp_avg", "exp_avg_sq"], 2: ["momentum_buffer"]}[stage]
    assert sorted(g_saved["state"]) == keys and sorted(g_got["state"]) == keys
    assert g_got["names"] == g_saved["names"] and len(g_saved["names"]) >= 4
    for name in g_saved["names"]:
        master = g_saved["fp32"][name]
        assert master.dtype == torch.float32 and torch.equal(g_got["fp32"][name], master), name
        # Not a bf16 value: the fp32 master carries bits the bf16 weights do not (what a 2 -> n resume keeps).
        assert not torch.equal(master, master.bfloat16().float()), name
        assert got["module"][name].dtype == torch.bfloat16 and torch.equal(got["module"][name], master.bfloat16())
        for k in keys:
            value = g_saved["state"][k][name]
            assert value.abs().sum() > 0 and torch.equal(g_got["state"][k][name], value), (name, k)
    if stage == 1:  # AdamW's step counter: the 2-rank run's 2 x 12 steps (ceil(ceil(1438 / 2) / 64) per epoch)
        assert float(g_saved["step"]) == 24 and torch.equal(g_got["step"], g_saved["step"])
    # The saved file agrees with DeepSpeed's own module file (bf16 weights = the masters cast).
    module = torch.load(ckpt / "engine" / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert all(torch.equal(module[n], g_saved["fp32"][n].bfloat16()) for n in g_saved["names"])
    if stage == 2 and world == 1:  # and the resumed run trains on to the end (one stage: both re-partition alike)
        _, _, args = zero_two_rank_run
        proc = single([*args, "--epochs", "3", "--out", str(copy), "--resume"], tmp)
        assert "world size 2 -> 1" in proc.stderr
        summary = json.loads((copy / "summary.json").read_text())
        assert summary["world_size"] == 1 and summary["epochs"] == 3
        rows = [json.loads(x) for x in (copy / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [0, 1, 2] and all(math.isfinite(r["train_loss"]) for r in rows)
