"""The public ALR object (alr_fast.ALR): values against the float64 oracle through warm-up, the lam/alpha ramp
and refinement; global-index routing and refusal on simulated ranks; re-sharding state; the export files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from alr_fast import ALR
from alr_fast.loss.schedule import AutoWarmupRule, WarmupState
from tests.reference64 import alr_oracle


def _f32(t):
    return np.asarray(t, dtype=np.float32).astype(np.float64)


def test_values_match_the_oracle_through_warmup_ramp_and_refinement():
    """Two warm-up epochs' worth of calls, then a ramped refinement: loss, gradient under a random incoming
    gradient, and bank, every step, against tests/reference64.py fed the schedule's alpha/lam written out here."""
    g = torch.Generator().manual_seed(0)
    n, k, b, spe = 13, 5, 6, 3
    labels = torch.randint(0, k, (n,), generator=g)
    alpha, lam = 0.7, 0.9
    alr = ALR(labels, k, alpha=alpha, lam=lam, warmup=1, ramp_epochs=2 / 3, ramp_alpha=True, steps_per_epoch=spe,
              backend="torch")
    bank = np.eye(k)[labels.numpy()]
    step = 0
    for epoch in range(3):
        for _ in range(spe):
            logits = (torch.randn(b, k, generator=g) * 3).requires_grad_(True)
            index = torch.randint(-1, n, (b,), generator=g)  # padding and repeats included
            index[1] = index[0] = max(int(index[0]), 0)
            upstream = torch.randn(b, generator=g, dtype=torch.float32)
            loss = alr(logits, index, reduction="none")
            (loss * upstream).sum().backward()
            refine = epoch >= 1
            r = 0.0 if not refine else min(1.0, (step - spe + 1) / 2)  # ramp over 2 steps from step 3
            a_used, l_used = 1 - r * (1 - alpha), r * lam
            ref_loss, ref_grad, bank = alr_oracle(logits.detach().numpy(), bank, index.numpy(), alpha=a_used,
                                                  lam=l_used, refine=refine, reduction="none", store=_f32)
            np.testing.assert_allclose(loss.detach().numpy(), ref_loss, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(logits.grad.numpy(), ref_grad * upstream.numpy()[:, None], rtol=1e-4,
                                       atol=1e-5)
            np.testing.assert_allclose(alr.soft_labels.numpy(), bank, rtol=1e-6, atol=1e-6)
            step += 1
        signals = alr.end_epoch()
        assert signals["phase"] == ("refine" if epoch >= 1 else "warmup")
    assert alr.epoch == 3 and alr.step == 9
    assert not np.allclose(bank, np.eye(k)[labels.numpy()])  # refinement did move the bank


def test_selc_and_ce_methods():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (8,), generator=g)
    logits = torch.randn(8, 3, generator=g)
    for method, lam_used in (("selc", 0.0), ("ce", None)):
        alr = ALR(labels, 3, method=method, lam=0.5, alpha=0.6, warmup=0, ramp_epochs=0)
        loss = alr(logits, torch.arange(8))
        if lam_used is None:  # CE never refines: cross-entropy on the given labels, bank one-hot
            ref = torch.nn.functional.cross_entropy(logits, labels)
            torch.testing.assert_close(loss, ref)
            torch.testing.assert_close(alr.soft_labels, torch.eye(3)[labels])
        else:
            ref, _, _ = alr_oracle(logits.numpy(), np.eye(3)[labels.numpy()], np.arange(8), alpha=0.6, lam=0.0,
                                   refine=True)
            assert abs(float(loss) - ref) < 1e-5


def test_auto_warmup_decides_as_the_rule_on_the_signal_it_measures():
    """end_epoch measures train_acc_given from the calls' predictions and feeds it to the same rule."""
    n, k = 40, 4
    labels = torch.arange(n) % k
    alr = ALR(labels, k, warmup="auto", steps_per_epoch=1)
    rule, state = AutoWarmupRule(max_epochs=10), WarmupState()
    accs = [0.1, 0.5, 0.9, 0.925, 0.95]
    for epoch, acc in enumerate(accs):
        right = int(acc * n)
        pred = labels.clone()
        pred[right:] = (pred[right:] + 1) % k
        logits = torch.nn.functional.one_hot(pred, k).float() * 5
        alr(logits, torch.arange(n))
        signals = alr.end_epoch()
        assert signals["train_acc_given"] == pytest.approx(right / n)
        rule.observe(state, epoch, {"train_acc_given": right / n})
        assert alr.schedule.switch_epoch == state.switch_epoch
    assert state.switch_epoch == 4  # the gain fell to 0.025 <= 0.3 x 0.4
    assert alr.refine_at(4) and not alr.refine_at(3)


def _shard_objects(labels, k, world, **kw):
    return [ALR(labels, k, rank=r, world_size=world, backend="torch", **kw) for r in range(world)]


def test_two_simulated_ranks_route_global_indices_and_refuse_foreign_ones():
    g = torch.Generator().manual_seed(2)
    n, k = 11, 4
    labels = torch.randint(0, k, (n,), generator=g)
    full = ALR(labels, k, warmup=0, ramp_epochs=0, backend="torch")
    ranks = _shard_objects(labels, k, 2, warmup=0, ramp_epochs=0)
    assert ranks[1].global_index.tolist() == [1, 3, 5, 7, 9]
    for _ in range(3):
        for r, obj in enumerate(ranks):
            index = torch.tensor([i for i in range(n) if i % 2 == r])[torch.randperm((n - r + 1) // 2, generator=g)]
            index = torch.cat([index[:4], torch.tensor([-1])])
            logits = torch.randn(len(index), k, generator=g)
            torch.testing.assert_close(obj(logits, index), full(logits, index))
    for r, obj in enumerate(ranks):
        torch.testing.assert_close(obj.soft_labels, full.soft_labels[r::2])
    with pytest.raises(IndexError, match=r"rank 1 of 2 got global index 4, which rank 0 owns"):
        ranks[1](torch.randn(2, k), torch.tensor([3, 4]))
    with pytest.raises(IndexError, match=r"index 11 is out of range for 11"):
        ranks[1](torch.randn(1, k), torch.tensor([11]))


def test_device_flag_refuses_a_foreign_index_without_a_host_check():
    """check_index=False (the CUDA default): a foreign index is sent past the end, the fused kernel (Triton
    interpreter here) masks the row and flags it, end_epoch raises naming the ownership."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (9,), generator=g)
    r1 = ALR(labels, 3, rank=1, world_size=2, warmup=0, ramp_epochs=0, backend="triton", check_index=False,
             assume_unique=True)
    before = r1.soft_labels.clone()
    loss = r1(torch.randn(3, 3, generator=g), torch.tensor([1, 2, 5]), reduction="none")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    assert torch.equal(r1.soft_labels[1], before[1])  # the row 2 // 2 = 1 (sample 3) was not written
    with pytest.raises(IndexError, match="does not own"):
        r1.end_epoch()
    r1(torch.randn(2, 3), torch.tensor([1, 3]))
    r1.end_epoch()  # the flag was reset


def _train(objs_and_index, steps, k, g):
    """Drive objects that together hold every row with the same logits per global index."""
    for _ in range(steps):
        table = torch.randn(64, k, generator=g)
        for obj, rows in objs_and_index:
            idx = rows[torch.randperm(len(rows), generator=g)[:3]]
            obj(table[idx], idx)


def test_state_dict_reshards_two_to_one_and_to_three_exactly(tmp_path):
    g = torch.Generator().manual_seed(4)
    n, k = 17, 5
    labels = torch.randint(0, k, (n,), generator=g)
    kw = dict(warmup=1, ramp_epochs=1.0, steps_per_epoch=2)
    two = _shard_objects(labels, k, 2, **kw)
    for epoch in range(3):
        _train([(o, o.global_index) for o in two], 2, k, g)
        for o in two:
            o.end_epoch()
    saved = [o.state_dict() for o in two]
    torch.save(saved, tmp_path / "alr.pt")
    saved = torch.load(tmp_path / "alr.pt")
    global_soft = torch.zeros(n, k)
    for o in two:
        global_soft[o.global_index] = o.soft_labels
    one = ALR(labels, k, backend="torch", **kw)
    one.load_state_dict(saved)
    assert torch.equal(one.soft_labels, global_soft)
    assert one.epoch == 3 and one.schedule.state_dict() == two[0].schedule.state_dict()
    three = _shard_objects(labels, k, 3, **kw)
    for o in three:
        o.load_state_dict(saved)
        assert torch.equal(o.soft_labels, global_soft[o.global_index])
        assert o.schedule.switch_epoch == 1 and o.step == 3 * 2
    with pytest.raises(ValueError, match="pass the list of all 2 ranks' states"):
        three[0].load_state_dict(saved[1])
    other = ALR(torch.roll(labels, 1), k)
    with pytest.raises(ValueError, match="given labels differ"):
        other.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"N=17, K=5 but this object has N=17, K=6"):
        ALR(labels, 6).load_state_dict(saved)


def test_gather_state_dicts_on_one_rank_and_refused_for_ranks_without_a_process_group(monkeypatch):
    # The gather across real ranks runs in tests/test_examples.py (the Lightning example's checkpoint holds every
    # rank's rows, compared there with the exported soft labels).
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 4, (9,), generator=g)
    one = ALR(labels, 4, warmup=0, ramp_epochs=0, backend="torch")
    one(torch.randn(9, 4, generator=g) * 3, torch.arange(9))
    (state,) = one.gather_state_dicts()
    assert torch.equal(state["bank"]["soft"], one.soft_labels) and state["world_size"] == 1
    fresh = ALR(labels, 4, warmup=0, ramp_epochs=0, backend="torch")
    fresh.load_state_dict(one.gather_state_dicts())
    assert torch.equal(fresh.soft_labels, one.soft_labels)
    assert not torch.equal(fresh.soft_labels, ALR(labels, 4).soft_labels)  # the call did move the rows
    # Whatever process group earlier tests in this process left behind: none, then one of another size.
    import alr_fast.loss.alr as alr_module

    monkeypatch.setattr(alr_module, "_dist_world", lambda: None)
    with pytest.raises(RuntimeError, match="rank 1 of 2 but torch.distributed is not initialised"):
        _shard_objects(labels, 4, 2)[1].gather_state_dicts()
    monkeypatch.setattr(alr_module, "_dist_world", lambda: (0, 1))
    with pytest.raises(RuntimeError, match="rank 1 of 2 but torch.distributed has 1 ranks"):
        _shard_objects(labels, 4, 2)[1].gather_state_dicts()


def test_export_writes_the_trainers_files_from_every_rank(tmp_path):
    g = torch.Generator().manual_seed(5)
    n, k = 10, 3
    labels = torch.randint(0, k, (n,), generator=g)
    full = ALR(labels, k, warmup=0, ramp_epochs=0, backend="torch")
    two = _shard_objects(labels, k, 2, warmup=0, ramp_epochs=0)
    table = torch.randn(n, k, generator=g) * 4
    for o in [full, *two]:
        o(table[o.global_index], o.global_index)
    two[1].export(tmp_path / "two", parts_only=True)
    info = two[0].export(tmp_path / "two", class_names=["a", "b", "c"])
    full.export(tmp_path / "one")
    soft = np.load(tmp_path / "two" / "soft_labels.npy")
    np.testing.assert_array_equal(soft, full.soft_labels.numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "two" / "labels.npy"), labels.numpy())
    assert (tmp_path / "two" / "refined_labels.csv").read_text() == (tmp_path / "one" / "refined_labels.csv").read_text()
    rows = list(csv.DictReader(open(tmp_path / "two" / "refined_labels.csv")))
    assert list(rows[0]) == ["global_index", "given_label", "refined_label", "confidence", "suspect_rank"]
    refined = soft.argmax(1)
    assert [int(r["refined_label"]) for r in rows] == refined.tolist()
    mass = soft[np.arange(n), labels.numpy()]
    assert int(rows[int(np.argmin(mass))]["suspect_rank"]) == 1
    assert info["num_changed"] == int((refined != labels.numpy()).sum())
    assert not (tmp_path / "two" / ".export_parts").exists()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method must be one of"):
        ALR(torch.tensor([0, 1]), 2, method="mixup")
    with pytest.raises(ValueError, match="1-D integer vector"):
        ALR(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="warmup must be 'auto' or a number"):
        ALR(torch.tensor([0, 1]), 2, warmup="late")
    with pytest.raises(ValueError, match="unknown warmup_rule parameter"):
        ALR(torch.tensor([0, 1]), 2, warmup_rule={"patients": 2})
    with pytest.raises(ValueError, match="outside"):
        ALR(torch.tensor([0, 5]), 2)
    from alr_fast.loss.sharding import Sharding

    with pytest.raises(ValueError, match="either sharding or rank/world_size/shard_blocks"):
        ALR(torch.tensor([0, 1, 1]), 2, sharding=Sharding(1, 2), world_size=2)
    with pytest.raises(TypeError, match="sharding must be an alr_fast.loss.sharding.Sharding"):
        ALR(torch.tensor([0, 1, 1]), 2, sharding=(1, 2))
    given = ALR(torch.tensor([0, 1, 1, 0, 1]), 2, sharding=Sharding(1, 2, (0, 2, 3, 5)))  # the trainer's way
    # N / W = 2.5 lies as near boundary 2 as 3: the lower is rank 1's start
    assert given.sharding == Sharding(1, 2, (0, 2, 3, 5)) and given.global_index.tolist() == [2, 3, 4]
    assert given.rank == 1 and given.world_size == 2


def test_trainer_gives_the_fused_mean_its_count_one_forward_launch_per_step(tmp_path, monkeypatch):
    """The real trainer with the fused kernel (Triton interpreter here): it passes its batch's real-row count,
    so every step's forward is one launch and no counting pre-pass runs (issue 24: one launch forward, no
    host sync). A trainer that stopped passing ``n_valid`` would show one pre-pass launch per step."""
    pytest.importorskip("triton")
    pytest.importorskip("sklearn")  # the digits data
    from alr_fast.config import apply_overrides
    from alr_fast.loss.triton import launch
    from alr_fast.recipes import get_recipe
    from alr_fast.train.trainer import train

    calls = {"forward": 0, "count": 0}

    class Count:
        def __init__(self, kernel, name):
            self.kernel, self.name = kernel, name

        def __getitem__(self, grid):
            calls[self.name] += 1
            return self.kernel[grid]

    monkeypatch.setattr(launch, "_alr_fwd_kernel", Count(launch._alr_fwd_kernel, "forward"))
    monkeypatch.setattr(launch, "count_valid_kernel", Count(launch.count_valid_kernel, "count"))
    steps = []
    loss_of_a_batch = ALR.__call__

    def counted(self, logits, index, **kwargs):
        steps.append(kwargs.get("n_valid"))
        return loss_of_a_batch(self, logits, index, **kwargs)

    monkeypatch.setattr(ALR, "__call__", counted)
    cfg = apply_overrides(get_recipe("demo"), [
        "data.dataset=digits", "train.epochs=1", "method.warmup_epochs=0", "train.batch_size=512", "model.width=4",
        "method.backend=triton", "train.progress=false", "train.tensorboard=false", "train.save_every_epoch=false",
        f"train.out={tmp_path / 'run'}",
    ])  # fmt: skip
    summary = train(cfg)
    assert summary["loss_backend"] == "triton" and len(steps) >= 2
    assert calls == {"forward": len(steps), "count": 0}, (calls, len(steps))
    assert all(isinstance(n, torch.Tensor) for n in steps)  # a device tensor: no host sync
