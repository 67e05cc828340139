"""The soft-label bank: construction, queries, state round trip, device/dtype handling."""

import pytest
import torch

from alr_fast import SoftLabelBank, alr_loss
from alr_fast.loss.sharding import Sharding


def test_init_is_one_hot_and_queries():
    labels = torch.tensor([2, 0, 1, 2])
    bank = SoftLabelBank(labels, 3)
    assert torch.equal(bank.soft, torch.nn.functional.one_hot(labels, 3).float())
    assert torch.equal(bank.refined_labels(), labels)
    bank.soft[1] = torch.tensor([0.2, 0.1, 0.7])
    bank.soft[3] = torch.tensor([0.4, 0.4, 0.2])  # a tie goes to the lowest class id
    assert bank.refined_labels().tolist() == [2, 2, 1, 0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", torch.bfloat16])
def test_state_dict_round_trip(tmp_path, dtype):
    # A refining step moves rows 0..19 (logits favour another class than the given one, alpha 0.3 so the
    # refined label flips), then the state goes through a file into a bank built from other labels. Catches:
    # a state_dict that misses soft or given, a load that keeps the fresh bank's one-hot rows, a bank update
    # written to the wrong rows (rows 20..49 must stay the one-hot given labels, bit for bit).
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (50,), generator=g)
    bank = SoftLabelBank(labels, 5, dtype=dtype)
    other = (labels[:20] + 1 + torch.randint(0, 4, (20,), generator=g)) % 5
    logits = torch.randn(20, 5, generator=g) + 8.0 * torch.nn.functional.one_hot(other, 5)
    alr_loss(logits, bank.soft, torch.arange(20), alpha=0.3, lam=0.1, refine=True, backend="torch")
    expect = 0.3 * torch.nn.functional.one_hot(labels[:20], 5).double() + 0.7 * torch.softmax(logits.double(), 1)
    tol = 1e-6 if bank.soft.dtype == torch.float32 else 2 ** -8
    torch.testing.assert_close(bank.soft[:20].double(), expect, rtol=0, atol=tol)
    assert torch.equal(bank.refined_labels()[:20], other)
    assert torch.equal(bank.soft[20:], torch.nn.functional.one_hot(labels[20:], 5).to(bank.soft.dtype))
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    fresh = SoftLabelBank(torch.zeros(50, dtype=torch.long), 5, dtype=dtype)
    fresh.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    assert torch.equal(fresh.soft, bank.soft) and torch.equal(fresh.given, labels)
    assert fresh.soft.dtype == bank.soft.dtype


def test_moves_with_to_and_wrong_shape_state_is_rejected():
    bank = SoftLabelBank(torch.tensor([0, 1]), 2).to(torch.device("cpu"))
    assert bank.soft.device.type == "cpu"
    other = SoftLabelBank(torch.tensor([0, 1, 1]), 2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        bank.load_state_dict(other.state_dict())


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.tensor([0, 3]), 3), "label 3 at global index 1 is outside"),
        ((torch.tensor([[0, 1]]), 3), "1-D integer"),
        ((torch.tensor([0.0, 1.0]), 3), "1-D integer"),
        ((torch.tensor([0, 1]), 1), "num_classes must be >= 2"),
    ],
)
def test_bad_construction(args, match):
    with pytest.raises(ValueError, match=match):
        SoftLabelBank(*args)


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be one of"):
        SoftLabelBank(torch.tensor([0]), 2, dtype="float16")
    with pytest.raises(ValueError, match=r"SoftLabelBank: dtype must be one of \['bfloat16', 'float32'\], got "
                                         r"torch.float16"):
        SoftLabelBank(torch.tensor([0]), 2, dtype=torch.float16)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_disjoint_cover_everything_and_reshard(world):
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (11,), generator=g)
    shards = [SoftLabelBank(labels, 4, sharding=Sharding(r, world)) for r in range(world)]
    owned = torch.cat([b.global_index for b in shards])
    assert sorted(owned.tolist()) == list(range(11))
    for r, b in enumerate(shards):
        assert torch.equal(b.given, labels[b.global_index])
        assert torch.equal(b.local_index(b.global_index), torch.arange(b.num_samples))
        assert b.owns(b.global_index).all() and not b.owns(torch.tensor([-1])).any()
        b.soft.copy_(torch.softmax(torch.randn(b.num_samples, 4, generator=g), 1))
    # Assemble the global bank from the shards, then re-shard onto 2 ranks and onto 1.
    full = torch.zeros(11, 4)
    for b in shards:
        full[b.global_index] = b.soft
    states = [b.state_dict() for b in shards]
    for new_world in (1, 2):
        for r in range(new_world):
            nb = SoftLabelBank(labels, 4, sharding=Sharding(r, new_world))
            nb.load_rows_from(states)
            assert torch.equal(nb.soft, full[nb.global_index])


def test_reshard_rejects_incomplete_or_mismatched():
    labels = torch.tensor([0, 1, 2, 0])
    half = SoftLabelBank(labels, 3, sharding=Sharding(0, 2)).state_dict()
    with pytest.raises(ValueError, match="cover 2 of this rank's 4 rows"):
        SoftLabelBank(labels, 3).load_rows_from([half])
    other = SoftLabelBank(torch.tensor([1, 1, 2, 0]), 3).state_dict()
    with pytest.raises(ValueError, match="given labels differ"):
        SoftLabelBank(labels, 3).load_rows_from([other])


def test_metrics_skip_unknown_clean_labels():
    from alr_fast.train.metrics import label_quality, memorisation_split

    given = torch.tensor([0, 1, 2, 3, 1])
    refined = torch.tensor([0, 2, 2, 1, 1])
    clean = torch.tensor([0, 2, -1, -1, 0])  # two unknown
    q = label_quality(given, refined, clean)
    assert q["num_clean_known"] == 3
    assert q["refined_label_acc"] == pytest.approx(2 / 3)  # rows 0, 1 right; row 4 wrong
    assert q["mislabel_precision"] == 1.0 and q["mislabel_recall"] == 0.5
    m = memorisation_split(torch.tensor([0, 2, 2, 3, 1]), given, clean)
    assert m == {"memo_true": 0.5, "memo_given": 0.5, "memo_other": 0.0}


def test_bank_and_sharding_agree_on_ownership_padding_included():
    """One rule: bank.owns is Sharding.owns (padding -1 is owned by no rank), checked against i % W == r."""
    index = torch.tensor([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, -1])
    labels = torch.zeros(11, dtype=torch.long)
    for world in (1, 2, 3):
        owners = torch.zeros(index.shape, dtype=torch.long)
        for rank in range(world):
            bank = SoftLabelBank(labels, 2, sharding=Sharding(rank, world))
            expected = torch.tensor([i >= 0 and i % world == rank for i in index.tolist()])
            assert torch.equal(bank.owns(index), expected)
            assert torch.equal(bank.owns(index), Sharding(rank, world).owns(index))
            owners += bank.owns(index).long()
        assert owners.tolist() == [0] + [1] * 11 + [0]  # every real row has exactly one owner, padding none
    with pytest.raises(TypeError, match="sharding must be a Sharding"):
        SoftLabelBank(labels, 2, sharding=(0, 1))
