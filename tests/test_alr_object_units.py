"""The public ALR object's bookkeeping, unit by unit (written after mutation testing, docs/mutation.md):
from_config's wiring, the epoch counters, state loading on the same and on another world size, the export's
files and summary, the collectives it calls (recorded through patched torch.distributed functions) and its
messages. Tiny objects, no training loop: the whole file takes about a second."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

import alr_fast.loss.alr as alr_module
from alr_fast import ALR
from alr_fast.config import MethodConfig
from alr_fast.loss.bank_export import BANK_FILES
from alr_fast.loss.schedule import RefinementSchedule
from alr_fast.loss.sharding import Sharding

LABELS = torch.tensor([0, 2, 1, 2, 2, 0, 1, 2, 0, 2, 1])  # N = 11, K = 4 (class 3 never given)


@pytest.fixture(autouse=True)
def _no_process_group(monkeypatch):
    """Whatever process group an earlier test in this process left behind, these objects see none (a test that
    needs one patches ``_dist_world`` itself)."""
    monkeypatch.setattr(alr_module, "_dist_world", lambda: None)


def _obj(**kw):
    kw.setdefault("backend", "torch")
    return ALR(LABELS, 4, **kw)


def _drive(obj, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = obj.global_index
    obj(torch.randn(idx.numel(), 4, generator=g) * 3, idx)


def test_from_config_passes_every_field():
    cfg = MethodConfig(name="elr", alpha=0.8, lam=0.5, warmup="fixed", warmup_epochs=3, ramp_epochs=2.0,
                       ramp_alpha=True, bank_dtype="bfloat16", elr_beta=0.6, elr_lam=2.5)
    o = ALR.from_config(cfg, LABELS, 4, epochs=10, steps_per_epoch=7, sharding=Sharding(1, 2), backend="torch",
                        assume_unique=True, check_index=True)
    assert (o.method, o.alpha, o.lam, o.num_classes, o.num_samples) == ("elr", 0.8, 0.5, 4, 11)
    assert o.hparams["elr_beta"] == 0.6 and o.hparams["elr_lam"] == 2.5 and o.hparams["gce_q"] == cfg.gce_q
    assert (o.rank, o.world_size, o.sharding) == (1, 2, Sharding(1, 2))
    assert o.global_index.tolist() == [1, 3, 5, 7, 9]
    assert o.bank.soft.dtype == torch.bfloat16
    assert (o.steps_per_epoch, o.backend, o.assume_unique, o._check_index) == (7, "torch", True, True)
    want = RefinementSchedule.from_config(cfg, 10, 7, LABELS.numpy(), 4)
    s = o.schedule
    assert (s.mode, s.switch_epoch, s.ramp_epochs, s.ramp_alpha, s.label_prior_max) == ("fixed", 3, 2.0, True, 5 / 11)
    assert (s.mode, s.switch_epoch, s.label_prior_max, s.rule) == (want.mode, want.switch_epoch, want.label_prior_max,
                                                                   want.rule)
    d = ALR.from_config(MethodConfig(), LABELS, 4, epochs=10, steps_per_epoch=7)  # the defaults
    assert (d.backend, d.assume_unique, d._check_index, d.rank, d.world_size) == ("auto", False, None, 0, 1)
    assert d.schedule.mode == MethodConfig().warmup and d.schedule.rule.max_epochs == 5  # epochs // 2


def test_refine_at_and_end_epoch_counters(caplog):
    o = _obj(warmup=2, ramp_epochs=0, steps_per_epoch=3)
    assert not o.refine_at() and o.refine_at(2) and not o.refine_at(1)
    _drive(o)
    assert o.calls_in_epoch == 1
    sig = o.end_epoch()
    assert (o.epoch, o.step, o.calls_in_epoch, o.steps_per_epoch) == (1, 3, 0, 3)  # given: not re-learnt
    assert bool((o.train_pred == -1).all()) and sig["phase"] == "warmup" and o.last_signals is sig
    o.end_epoch(epoch=5)
    assert (o.epoch, o.step) == (6, 18) and o.refine_at()
    learn = _obj(warmup=2, ramp_epochs=0)
    learn.end_epoch()  # no call this epoch: nothing to learn from
    assert learn.steps_per_epoch is None and learn.step == 0
    _drive(learn)
    _drive(learn, 1)
    learn.end_epoch()
    assert learn.steps_per_epoch == 2 and learn.step == 2 * 2
    # the schedule's messages are logged by rank 0 only, as they are
    caplog.set_level(logging.INFO, logger="alr_fast")
    for rank in (0, 1):
        caplog.clear()
        r = _obj(warmup="auto", ramp_epochs=0, rank=rank, world_size=2, warmup_rule={"max_epochs": 1, "min_epochs": 1})
        r.end_epoch()
        msgs = [rec.getMessage() for rec in caplog.records if rec.name == "alr_fast"]
        assert msgs == (r.schedule.messages if rank == 0 else []) and (rank == 1 or msgs)


def test_end_epoch_all_reduces_only_across_several_ranks(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: calls.append(t.clone()))
    monkeypatch.setattr(alr_module, "_dist_world", lambda: (0, 1))
    _obj(warmup=1).end_epoch()
    assert calls == []  # one rank: nothing to reduce
    monkeypatch.setattr(alr_module, "_dist_world", lambda: (0, 2))
    two = _obj(warmup=1, rank=0, world_size=2)
    _drive(two)
    two.end_epoch()
    assert len(calls) == 1 and calls[0].numel() == 4 + 2


def test_state_dict_fields_and_load_errors():
    o = _obj(method="elr", warmup=1)
    sd = o.state_dict()
    assert (sd["format"], sd["method"], sd["rank"], sd["world_size"], sd["num_samples"], sd["num_classes"]) == (
        alr_module.STATE_FORMAT, "elr", 0, 1, 11, 4)
    with pytest.raises(ValueError, match=r"^ALR.load_state_dict: no state given$"):
        o.load_state_dict([])
    with pytest.raises(ValueError, match=r"^ALR.load_state_dict: not an ALR state dict \(format 'alr_fast.ALR/1' "
                                         r"expected\)$"):
        o.load_state_dict(["a string"])
    other = _obj(rank=1, world_size=2).state_dict()
    with pytest.raises(ValueError, match=r"^ALR.load_state_dict: the states come from runs with different world "
                                         r"sizes$"):
        o.load_state_dict([sd, other])


def test_load_state_dict_resets_the_epoch_and_restores_the_counters():
    src = _obj(warmup=1, ramp_epochs=0, steps_per_epoch=3)
    for e in range(2):
        _drive(src, e)
        src.end_epoch()
    state = src.state_dict()
    dst = _obj(warmup=1, ramp_epochs=0)  # steps_per_epoch not given: taken from the state
    _drive(dst, 5)
    dst.load_state_dict(state)
    assert (dst.epoch, dst.step, dst.steps_per_epoch, dst.calls_in_epoch) == (2, 6, 3, 0)
    assert bool((dst.train_pred == -1).all()) and torch.equal(dst.soft_labels, src.soft_labels)
    assert dst.schedule.steps_per_epoch == 3
    # a one-rank state fills any rank of any world size (it holds every row)
    half = _obj(warmup=1, ramp_epochs=0, rank=1, world_size=2, steps_per_epoch=2)
    half.load_state_dict(state)
    assert torch.equal(half.soft_labels, src.soft_labels[half.global_index]) and half.step == 2 * 2


def test_load_state_dict_on_another_world_size_estimates_the_steps(caplog):
    two = [_obj(warmup=1, ramp_epochs=0, rank=r, world_size=2, steps_per_epoch=5) for r in (0, 1)]
    for o in two:
        _drive(o)
        o.end_epoch()
        o.end_epoch()
    states = [o.state_dict() for o in two]
    caplog.set_level(logging.WARNING, logger="alr_fast")
    one = _obj(warmup=1, ramp_epochs=0)
    one.load_state_dict(states)
    spe = max(1, math.ceil(5 * 2 / 1))
    assert (one.steps_per_epoch, one.step, one.epoch, one.schedule.steps_per_epoch) == (spe, 2 * spe, 2, spe)
    assert [r.getMessage() for r in caplog.records] == [
        f"ALR.load_state_dict: world size 2 -> 1 and steps_per_epoch not given; estimated as {spe} (pass "
        "steps_per_epoch=len(loader) for the exact lam ramp)"]
    three = _obj(warmup=1, ramp_epochs=0, rank=2, world_size=3)
    three.load_state_dict(states)
    assert three.steps_per_epoch == math.ceil(5 * 2 / 3) == 4 and three.step == 8
    given = _obj(warmup=1, ramp_epochs=0, steps_per_epoch=7)
    caplog.clear()
    given.load_state_dict(states)
    assert (given.steps_per_epoch, given.step) == (7, 14) and caplog.records == []
    unknown = [dict(s, steps_per_epoch=None) for s in states]
    none = _obj(warmup=1, ramp_epochs=0)
    none.step = 9
    none.load_state_dict(unknown)
    assert none.steps_per_epoch is None and none.step == 0 and none.epoch == 2


def test_gather_state_dicts_calls_the_collective_with_its_own_state(monkeypatch):
    monkeypatch.setattr(alr_module, "_dist_world", lambda: (1, 2))
    seen = []

    def fake_all_gather_object(out, obj):
        seen.append(obj)
        out[0], out[1] = {"from": "rank 0"}, obj

    monkeypatch.setattr(torch.distributed, "all_gather_object", fake_all_gather_object)
    r1 = _obj(rank=1, world_size=2, warmup=0)
    _drive(r1)
    got = r1.gather_state_dicts()
    assert len(got) == 2 and got[0] == {"from": "rank 0"} and torch.equal(got[1]["bank"]["soft"], r1.soft_labels)
    assert seen[0]["rank"] == 1
    monkeypatch.setattr(alr_module, "_dist_world", lambda: None)
    with pytest.raises(RuntimeError, match=r"torch.distributed is not initialised; save each rank's state_dict\(\) "
                                           r"instead$"):
        r1.gather_state_dicts()


def test_export_files_summary_and_collectives(tmp_path, monkeypatch):
    o = _obj(warmup=0, ramp_epochs=0, alpha=0.1)  # one call moves the rows most of the way to the predictions
    _drive(o)
    info = o.export(tmp_path / "a")
    refined = o.soft_labels.argmax(1).numpy()
    want = {"num_samples": 11, "num_classes": 4, "num_changed": int((refined != LABELS.numpy()).sum()),
            "refine_from_epoch": 0, "files": [*BANK_FILES, "class_names.json"]}
    assert info == want and info["num_changed"] > 0
    assert (tmp_path / "a" / "exports.json").read_text() == json.dumps(want, indent=2) + "\n"
    assert (tmp_path / "a" / "class_names.json").read_text() == '["0", "1", "2", "3"]\n'
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(want["files"] + ["exports.json"])
    o.export(tmp_path / "b", class_names=["cat", "dog", 7, "=x"])
    assert json.loads((tmp_path / "b" / "class_names.json").read_text()) == ["cat", "dog", "7", "=x"]
    with pytest.raises(ValueError, match=r"^ALR.export: 3 class names for 4 classes$"):
        o.export(tmp_path / "c", class_names=["a", "b", "c"])
    # the barriers: none on one rank, two (after the parts, after the files) across ranks
    barriers = []
    monkeypatch.setattr(torch.distributed, "barrier", lambda *a, **k: barriers.append(1))
    monkeypatch.setattr(alr_module, "_dist_world", lambda: (0, 1))
    o.export(tmp_path / "d")
    assert barriers == []
    monkeypatch.setattr(alr_module, "_dist_world", lambda: (0, 2))
    pair = [_obj(warmup=0, ramp_epochs=0, rank=r, world_size=2) for r in (0, 1)]
    for p in pair:
        _drive(p)
    pair[1].export(tmp_path / "e", parts_only=True)
    assert pair[0].export(tmp_path / "e")["num_samples"] == 11 and len(barriers) == 2
    assert pair[1].export(tmp_path / "f") == {} and len(barriers) == 4  # rank 1: its part, the barriers, no files
    assert not (tmp_path / "f" / "exports.json").exists() and (tmp_path / "f" / ".export_parts").is_dir()
    soft = np.load(tmp_path / "e" / "soft_labels.npy")
    assert np.array_equal(soft[pair[1].global_index.numpy()], pair[1].soft_labels.float().numpy())


def test_constructor_defaults_and_messages(monkeypatch, caplog):
    from alr_fast.loss.schedule import AutoWarmupRule

    d = ALR(torch.tensor([0, 2, 2, 1], dtype=torch.int32))
    s = d.schedule
    assert (d.alpha, d.lam, d.num_classes, s.mode, s.ramp_epochs, s.ramp_alpha) == (0.9, 0.3, 3, "auto", 5.0, False)
    assert s.switch_epoch is None and s.steps_per_epoch == 1 and s.label_prior_max == 0.5
    assert s.rule.max_epochs == AutoWarmupRule.DEFAULT_MAX_EPOCHS and d.last_signals == {}
    assert d._labels_all.dtype == np.int64 and d.train_pred.dtype == torch.long
    assert d.train_pred.tolist() == [-1] * 5 and d.epoch == d.step == d.calls_in_epoch == 0
    assert [ALR(LABELS, epochs=e).schedule.rule.max_epochs for e in (1, 2, 9)] == [1, 1, 4]
    assert ALR(LABELS, warmup=3).schedule.switch_epoch == 3 and ALR(torch.tensor([1])).num_classes == 2
    for kw, msg in [
        (dict(alpha=1.5), "ALR: alpha must be in [0, 1], got 1.5"),
        (dict(ramp_epochs=-1), "ALR: ramp_epochs must be >= 0, got -1"),
        (dict(warmup=-1), "ALR: warmup must be >= 0 epochs, got -1"),
        (dict(method="sce", hparams={"sce_alpha": -1}), "ALR: sce_alpha must be a finite number >= 0, got -1"),
        (dict(method="sce", hparams={"sce_log_zero": 1.0}), "ALR: sce_log_zero must be a finite number < 0, got 1.0"),
        (dict(method="bootstrap", hparams={"bootstrap_beta": 2}), "ALR: bootstrap_beta must be in [0, 1], got 2"),
        (dict(method="gce", hparams={"gce_q": 0}), "ALR: gce_q must be in (0, 1], got 0"),
        (dict(method="elr", hparams={"elr_beta": 2}), "ALR: elr_beta must be in [0, 1], got 2"),
        (dict(sharding=Sharding(0, 2), rank=0), "ALR: give either sharding or rank/world_size/shard_blocks, not both"),
    ]:
        with pytest.raises(ValueError, match="^" + __import__("re").escape(msg) + "$"):
            ALR(LABELS, **kw)
    with pytest.raises(ValueError, match=r"^ALR: labels is empty$"):
        ALR(torch.tensor([], dtype=torch.long), 3)
    # tar shards: the blocks are kept with several ranks, dropped with one
    blocks = ALR(LABELS, rank=1, world_size=2, shard_blocks=(0, 5, 11))
    assert blocks.sharding == Sharding(1, 2, (0, 5, 11)) and blocks.global_index.tolist() == list(range(5, 11))
    assert ALR(LABELS, shard_blocks=(0, 5, 11)).sharding == Sharding(0, 1)
    # rank and world size from torch.distributed when not given; a disagreement is logged
    monkeypatch.setattr(alr_module, "_dist_world", lambda: (1, 3))
    found = ALR(LABELS)
    assert (found.rank, found.world_size) == (1, 3)
    caplog.set_level(logging.WARNING, logger="alr_fast")
    ALR(LABELS, rank=1, world_size=3)
    assert caplog.records == []
    ALR(LABELS, rank=0, world_size=3)
    assert [r.getMessage() for r in caplog.records] == ["ALR: rank 0 of 3 given, but torch.distributed says rank 1 of 3"]


def test_call_takes_any_index_form_and_its_overrides():
    ref = _obj(warmup=2, ramp_epochs=0)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 4, generator=g) * 3
    want = ref(z, torch.tensor([0, 5, 9, -1]), epoch=2)  # refinement (epoch 2 >= warmup 2)
    assert not torch.equal(ref.soft_labels, _obj().soft_labels) and ref.epoch == 0  # it wrote the bank
    pred = ref.train_pred.clone()
    assert ref.to("cpu") is ref and torch.equal(ref.train_pred, pred) and ref.device == torch.device("cpu")
    assert _obj(rank=1, world_size=2).owns(torch.tensor([0, 1, 2, 3, -1])).tolist() == [False, True, False, True, False]
    for index in ([0, 5, 9, -1], torch.tensor([0, 5, 9, -1], dtype=torch.int32)):
        o = _obj(warmup=2, ramp_epochs=0)
        assert torch.equal(o(z, index, epoch=2), want) and torch.equal(o.soft_labels, ref.soft_labels)
    o = _obj(warmup=2, ramp_epochs=0)
    o(z, [0, 5, 9, -1])  # the object's own epoch 0: warm-up, the bank is not written
    assert torch.equal(o.soft_labels, _obj().soft_labels) and o.step == 1
    o(z, [0, 5, 9, -1], step=40)
    assert o.step == 41 and o.calls_in_epoch == 2
    assert o.train_pred[[0, 5, 9]].tolist() == z.argmax(1)[:3].tolist() and o.train_pred[11] == z.argmax(1)[3]
    u = _obj(warmup=0, ramp_epochs=0, assume_unique=True)
    with pytest.raises(ValueError, match="assume_unique=True but index repeats a row"):
        u(z, [0, 5, 5, -1])
    e = _obj(method="elr", warmup=0, assume_unique=True)
    with pytest.raises(ValueError, match="^elr_loss: assume_unique=True but index repeats a row"):
        e(z, [0, 5, 5, -1])


@pytest.mark.parametrize("method", ["elr", "gce", "sce", "bootstrap"])
def test_baselines_get_the_reduction_and_the_torch_backend(method):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4, 4, generator=g) * 3
    o = _obj(method=method, warmup=0, backend="torch")
    per_row = o(z, [0, 5, 9, -1], reduction="none")
    assert per_row.shape == (4,) and per_row[3] == 0
    s = _obj(method=method, warmup=0, backend="torch")(z, [0, 5, 9, -1], reduction="sum")
    torch.testing.assert_close(s, per_row.sum())


def test_foreign_and_out_of_range_indices_on_the_host_and_on_the_device():
    r1 = _obj(rank=1, world_size=2, warmup=0)
    z = torch.randn(3, 4)
    with pytest.raises(IndexError, match=r"^ALR: rank 1 of 2 got global index 0, which rank 0 owns \(owner rule: "
                                         r"alr_fast.loss.sharding\); give each rank only its own samples "
                                         r"\(alr_fast.OwnerSampler\)$"):
        r1(z, [1, 0, 3])
    with pytest.raises(IndexError, match=r"^ALR: index 11 is out of range for 11 training samples$"):
        r1(z, [1, 11, 3])
    kernels = pytest.importorskip("alr_fast.loss.triton")
    if not kernels.HAS_FUSED_ALR:
        pytest.skip("no triton")
    # the fused path on CPU logits (the interpreter) still checks on the host by default
    dev = _obj(rank=1, world_size=2, warmup=0, backend="triton")
    with pytest.raises(IndexError, match="which rank 0 owns"):
        dev(z, [1, 0, 3])
    # unchecked: a foreign index (row 0 too) is masked and flagged on the device; its bank row is not written
    flag = _obj(rank=1, world_size=2, warmup=0, ramp_epochs=0, backend="triton", check_index=False)
    out = flag(z, [1, 0, 3], reduction="none")
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    padded = _obj(rank=1, world_size=2, warmup=0, ramp_epochs=0, backend="triton", check_index=False)
    padded(z, [1, -1, 3])
    assert torch.equal(flag.soft_labels, padded.soft_labels)  # the foreign row wrote nothing (not sample 1's row)
    assert not torch.equal(padded.soft_labels, _obj(rank=1, world_size=2).soft_labels)
    with pytest.raises(IndexError, match=r"^ALR: rank 1 of 2 was given a global index it does not own or that is out "
                                         r"of range \(>= 11\) since the last check \(alr_loss \(fused\): index .* is out "
                                         r"of range for a bank of 5 rows; its rows got NaN loss\); those rows got a NaN "
                                         r"loss and their bank rows were not touched. Give each rank only its own "
                                         r"samples \(alr_fast.OwnerSampler\)$"):
        flag.check_indices()
    # n_valid reaches the fused mean: a wrong count scales the gradient, not the loss
    a, b = (_obj(warmup=0, ramp_epochs=0, backend="triton") for _ in range(2))
    za, zb = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    la, lb = a(za, [1, 4, 6]), b(zb, [1, 4, 6], n_valid=torch.tensor([6.0]))
    la.backward()
    lb.backward()
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(zb.grad, za.grad * 3 / 6)


def test_steps_estimated_from_a_one_step_epoch():
    src = _obj(warmup=1, ramp_epochs=0, steps_per_epoch=1)
    src.end_epoch()
    dst = _obj(warmup=1, ramp_epochs=0, rank=0, world_size=2)
    dst.load_state_dict(src.state_dict())
    assert dst.steps_per_epoch == 1 and dst.step == 1  # ceil(1 * 1 / 2) = 1
