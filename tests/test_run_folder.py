"""A run folder nothing corrupts (issue 22, item 3): --resume compares before it writes; every file a run leaves
is whole or absent, also when the disk fills up (a real full file system: a small tmpfs, where the machine lets
the tests mount one); no part files left; retention keeps the newest good checkpoint after a fallback; no
checkpoint after a non-finite update. scikit-learn's digits, an MLP, 23 steps per epoch, in-process."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from alr_fast import cli
from alr_fast.config import apply_overrides
from alr_fast.recipes import get_recipe
from alr_fast.train import trainer as trainer_module
from alr_fast.train.checkpoint import CheckpointError, complete_checkpoints
from alr_fast.train.trainer import train

pytestmark = pytest.mark.slow

SETS = ["data.dataset=digits", "model.name=mlp", "method.name=alr", "method.warmup_epochs=1", "train.batch_size=64",
        "train.epochs=2", "train.progress=false", "train.tensorboard=false"]
ARGS = [a for s in SETS for a in ("--set", s)]
RUN_FILES = ("config.json", "noise.json", "noisy_labels.npy", "provenance.json")


def cfg(out, *sets):
    return apply_overrides(get_recipe("demo"), [*SETS, f"train.out={out}", *sets])


def step_of(ckpt: Path) -> int:
    return json.loads((ckpt / "trainer.json").read_text())["step"]


@pytest.fixture(autouse=True)
def _no_faults(monkeypatch):
    for var in ("ALR_FAST_FAULT_AT_STEP", "ALR_FAST_FAULT_RANK", "ALR_FAST_FAULT_SIGNAL", "ALR_FAST_NAN_AT_STEP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli, "shutdown_distributed", lambda: None)  # keep the in-process group for later runs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run checkpointing every 10 steps (keeps the newest 2: steps 40 and 46)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(cfg(out, "train.save_every=10"))
    return out


def snapshot(out: Path) -> dict:
    return {name: (out / name).read_bytes() for name in RUN_FILES}


def test_resume_with_another_config_names_the_field_and_writes_nothing(finished, tmp_path, capsys):
    import shutil

    out = Path(shutil.copytree(finished, tmp_path / "run"))
    before, listing = snapshot(out), sorted(p.name for p in out.iterdir())
    assert cli.main(["train", *ARGS, "--set", "method.lam=0.5", "--set", "data.noise_seed=3", "--out", str(out),
                     "--resume"]) == 2
    err = capsys.readouterr().err
    assert "the checkpoint was written with a different config" in err
    assert "method.lam: saved 1.0, now 0.5" in err and "data.noise_seed: saved 0, now 3" in err
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == listing


def test_retention_after_a_fallback_keeps_the_newest_good_checkpoint(finished, tmp_path, capsys):
    import shutil

    out = Path(shutil.copytree(finished, tmp_path / "run"))
    corrupt, good = complete_checkpoints(out)
    assert (step_of(corrupt), step_of(good)) == (46, 40)
    (corrupt / "bank_rank0.pt").write_bytes(b"garbage")
    train(cfg(out, "train.save_every=10", "train.resume=true"))  # keep_checkpoints=2
    assert "WARNING alr_fast.train: refusing checkpoint" in (out / "train.log").read_text()
    kept = complete_checkpoints(out)
    assert [p.name for p in kept[1:]] == [good.name]  # the good one it resumed from survives retention
    assert step_of(kept[0]) == 46 and kept[0].name != corrupt.name
    assert (out / "checkpoints" / "refused" / corrupt.name / "bank_rank0.pt").read_bytes() == b"garbage"


def test_no_checkpoint_after_a_non_finite_update(tmp_path, monkeypatch):
    """The loss of step 12 is finite but its update leaves an infinite weight: the checkpoint due at step 12 is not
    written and the error names the newest complete checkpoint (step 8) truly."""
    import deepspeed

    real_step, count = deepspeed.DeepSpeedEngine.step, {"n": 0}

    def step(self, *a, **kw):
        result = real_step(self, *a, **kw)
        count["n"] += 1
        if count["n"] == 12:
            with torch.no_grad():
                next(self.module.parameters()).view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(deepspeed.DeepSpeedEngine, "step", step)
    out = tmp_path / "inf"
    with pytest.raises(FloatingPointError, match=r"non-finite weights or soft labels after global step 12 .*the "
                                                 r"newest complete checkpoint, .*ckpt_000001_step_000000008, was "
                                                 r"written before them"):
        train(cfg(out, "train.save_every=4", "train.nan_check_every=100"))
    assert [step_of(c) for c in complete_checkpoints(out)] == [8, 4]


# ------------------------------------------------------------------------------------------------- full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (a real file system that fills up), or skip where this machine may not mount one."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:100]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill ``disk`` up to ``leave`` bytes free."""
    with open(disk / "filler", "ab") as f:
        block = b"\0" * (1 << 16)
        while (free := os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize) > leave:
            try:
                f.write(block[: max(1, min(len(block), free - leave))])
                f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break


def assert_whole_or_absent(out: Path) -> None:
    """Nothing partial: no temporary or part file, no empty file, every JSON/npy file parses."""
    left = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in left if p.name.startswith(".") or ".tmp" in p.name or ".export_parts" in str(p)], left
    for p in left:
        assert p.stat().st_size > 0 or p.name == "metrics.jsonl", p  # (no epoch finished yet: no row)
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".npy":
            np.load(p)
        elif p.name == "metrics.jsonl":
            [json.loads(x) for x in p.read_text().splitlines()]


@pytest.mark.parametrize("leave", [0, 6000])  # nothing fits / config.json fits, then the rest does not
def test_disk_full_at_start_names_the_path_and_leaves_nothing_partial(small_disk, leave, capsys):
    fill(small_disk, leave)
    out = small_disk / "run"
    out.mkdir()
    assert cli.main(["train", *ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: writing {out}/" in err and "No space left on device" in err
    assert_whole_or_absent(out)


@pytest.mark.parametrize("when", ["checkpoint", "exports"])
def test_disk_full_later_names_the_path_and_leaves_nothing_partial(small_disk, when, monkeypatch, capsys):
    out = small_disk / "run"
    if when == "checkpoint":
        real = trainer_module.save_checkpoint
        calls = []

        def full_then_save(*a, **kw):
            calls.append(1)
            if len(calls) == 2:
                fill(small_disk)
            return real(*a, **kw)

        monkeypatch.setattr(trainer_module, "save_checkpoint", full_then_save)
        with pytest.raises(CheckpointError, match=r"No space left on device.*nothing was replaced, the newest "
                                                  r"complete checkpoint is still .*ckpt_000000_step_000000010"):
            train(cfg(out, "train.save_every=10"))
        assert [step_of(c) for c in complete_checkpoints(out)] == [10]
    else:
        real = trainer_module.write_exports

        def full_then_export(*a, **kw):
            fill(small_disk, 20000)  # the part files start, then the disk is full
            return real(*a, **kw)

        monkeypatch.setattr(trainer_module, "write_exports", full_then_export)
        assert cli.main(["train", *ARGS, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: writing {out}/" in err and "No space left on device" in err
        assert not (out / "summary.json").exists()
    (small_disk / "filler").unlink()
    assert_whole_or_absent(out)


# --------------------------------------------------------------------------------- planted checkpoint folder
class _Planted:
    """Unpickling this runs code: it creates the file named in the payload."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def plant_folder(out: Path, marker: Path, mac_key: bytes | None) -> Path:
    """A whole new newest checkpoint folder: a good one's files, the engine's model file replaced by a pickle that
    runs code, and a trainer.json whose manifest (sha256, sizes) matches every file - as a planter would make it;
    signed with ``mac_key`` (a key that is not the user's) or unsigned."""
    import hashlib
    import hmac
    import pickle
    import shutil

    good = complete_checkpoints(out)[0]
    planted = good.with_name(f"ckpt_{999:06d}_step_{46:09d}")
    shutil.copytree(good, planted)
    (planted / "engine" / "mp_rank_00_model_states.pt").write_bytes(pickle.dumps(_Planted(str(marker))))
    state = json.loads((planted / "trainer.json").read_text())
    for name in state["manifest"]:
        data = (planted / name).read_bytes()
        state["manifest"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    state.pop("mac", None)
    if mac_key is not None:
        body = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
        state["mac"] = hmac.new(mac_key, body, hashlib.sha256).hexdigest()
    (planted / "trainer.json").write_text(json.dumps(state))
    return planted


@pytest.mark.parametrize("mac_key", [None, b"0" * 64], ids=["unsigned", "other-key"])
@pytest.mark.parametrize("strict", [True, False])
def test_a_planted_folder_with_a_consistent_manifest_never_runs(finished, tmp_path, mac_key, strict, capsys):
    import shutil
    import subprocess
    import sys

    out = Path(shutil.copytree(finished, tmp_path / "run"))
    marker = tmp_path / "PWNED"
    planted = plant_folder(out, marker, mac_key)
    assert complete_checkpoints(out)[0] == planted  # the newest complete checkpoint
    # Control: the planted file is live (an unpickler runs it).
    probe = subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
                            str(planted / "engine" / "mp_rank_00_model_states.pt")],
                           env=dict(os.environ, PYTHONPATH=f"{Path(__file__).parent}:{os.environ.get('PYTHONPATH', '')}"))
    assert probe.returncode == 0 and marker.exists()
    marker.unlink()
    what = "not signed" if mac_key is None else "signed with another key"
    if strict:
        with pytest.raises(CheckpointError, match=rf"refusing {planted}: {planted}/trainer.json: {what}"):
            train(cfg(out, "train.resume=true", "train.resume_strict=true"))
    else:
        train(cfg(out, "train.resume=true"))
        log = (out / "train.log").read_text()  # the run's messages (alr_fast/util/logs.py)
        assert f"WARNING alr_fast.train: refusing checkpoint {planted}: {planted}/trainer.json: {what}" in log
        assert "resumed from" in log and "ckpt_000005_step_000000046" in log  # the genuine newest one
    assert not marker.exists()


@pytest.mark.parametrize("stage, saved_world, world, has_full, expect", [
    (1, 2, 1, False, "refused"), (2, 2, 3, False, "refused"),  # an older checkpoint without zero_full_state.pt
    (1, 2, 1, True, "module only"), (2, 2, 3, True, "module only"),  # re-partitioned from zero_full_state.pt
    (2, 2, 2, True, "deepspeed"), (2, 2, 2, False, "deepspeed"), (0, 2, 1, False, "deepspeed")])
def test_zero_checkpoint_on_another_world_size_takes_the_full_state(tmp_path, stage, saved_world, world, has_full,
                                                                    expect):
    """Which loader a checkpoint takes (the end-to-end re-partition: tests/test_distributed.py): DeepSpeed's own
    files on the same world size or for ZeRO 0; on another world size a ZeRO 1/2 engine loads the module only and
    the optimizer from zero_full_state.pt; an older checkpoint without that file is a clear error."""
    from alr_fast.loss.sharding import Sharding
    from alr_fast.train.checkpoint import load_checkpoint

    class Engine:
        def load_checkpoint(self, *a, **kw):
            raise AssertionError(f"reached DeepSpeed's loader with {kw}")

    manifest = {"zero_full_state.pt": {}} if has_full else {}
    state = {"world_size": saved_world, "config": {"train": {"zero_stage": stage}}, "manifest": manifest}
    if expect == "refused":
        with pytest.raises(CheckpointError, match=rf"written by {saved_world} ranks with ZeRO stage {stage} by an "
                                                  rf"older alr_fast, without zero_full_state.pt; .*resumes only on "
                                                  rf"{saved_world} ranks, not {world}"):
            load_checkpoint(tmp_path, state, Engine(), shared={}, per_rank={}, sharding=Sharding(0, world),
                            device="cpu")
        return
    module_only = expect == "module only"
    with pytest.raises(AssertionError, match=rf"'load_optimizer_states': {not module_only}, .*"
                                             rf"'load_module_only': {module_only}"):
        load_checkpoint(tmp_path, state, Engine(), shared={}, per_rank={}, sharding=Sharding(0, world),
                        device="cpu")
