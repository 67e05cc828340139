"""alr_loss (torch backend) against the independent float64 oracle, plus its contract and errors."""

import math

import numpy as np
import pytest
import torch

from alr_fast import alr_loss
from alr_fast.loss.reference import sequential_rank
from reference64 import alr_oracle

# Tolerance next to the dtype: math is fp32 inside and the oracle sees the rounded logits, so the loss is
# fp32-accurate for every dtype; the gradient comes back in the logits' dtype and carries its rounding.
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5, torch.float64: 1e-7}  # fp64: an fp32 bank rounds rows
GRAD_TOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float64: 1e-7}


def _bf16_store(row):
    return torch.tensor(row, dtype=torch.float64).to(torch.bfloat16).double().numpy()


def make_case(b, k, n, *, dtype=torch.float32, bank_dtype=torch.float32, seed=0, scale=3.0, pad=0, dup=False):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    bank = torch.zeros(n, k, dtype=bank_dtype)
    bank[torch.arange(n), labels] = 1.0
    # Make the bank soft in places so sum(t) = 1 but t is not one-hot.
    soft = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64), 1)
    mix = torch.rand(n, 1, generator=g, dtype=torch.float64) < 0.5
    bank = torch.where(mix, soft.to(bank_dtype), bank)
    index = torch.randperm(n, generator=g)[:b].clone()
    if dup and b >= 4:
        index[1] = index[0]
        index[3] = index[0]  # one row three times
        index[2] = index[b - 1]
    if pad:
        index[torch.randperm(b, generator=g)[:pad]] = -1
    return logits, bank, index


def check_against_oracle(logits, bank, index, *, alpha, lam, refine, reduction, tol, assume_unique=False):
    bank_before = bank.clone()
    x = logits.clone().requires_grad_(True)
    loss = alr_loss(x, bank, index, alpha=alpha, lam=lam, refine=refine, reduction=reduction, backend="torch",
                    assume_unique=assume_unique)
    if reduction == "none":
        loss.sum().backward()
    else:
        loss.backward()
    store = _bf16_store if bank.dtype == torch.bfloat16 else None
    ref_loss, ref_grad, ref_bank = alr_oracle(
        logits.double().numpy(), bank_before.double().numpy(), index.numpy(),
        alpha=alpha, lam=lam, refine=refine, reduction=reduction, store=store,
    )
    np.testing.assert_allclose(loss.detach().double().numpy(), ref_loss, rtol=tol, atol=tol)
    gtol = max(tol, GRAD_TOL[logits.dtype])
    np.testing.assert_allclose(x.grad.double().numpy(), ref_grad, rtol=gtol, atol=gtol)
    if bank.dtype == torch.bfloat16:
        # The oracle rounds its fp64 row to bf16 as the reference rounds its fp32 row: the stored values are the
        # same bf16 numbers except where fp32 vs fp64 arithmetic straddles a rounding tie (rare). A wrong
        # rounding (truncation, no rounding, rounding the loss's row) changes about half of the elements.
        got, want = bank.double().numpy(), ref_bank
        np.testing.assert_allclose(got, want, rtol=2**-7, atol=0)  # never more than 1 bf16 ulp apart
        assert np.mean(got == want) >= 0.99, f"only {np.mean(got == want):.1%} of bf16 bank elements match exactly"
    else:
        np.testing.assert_allclose(bank.double().numpy(), ref_bank, rtol=tol, atol=tol)
    # Rows that no valid sample touched are bit-identical.
    touched = torch.zeros(bank.shape[0], dtype=torch.bool)
    if refine:
        touched[index[index >= 0]] = True
    assert torch.equal(bank[~touched], bank_before[~touched])
    return loss, x.grad


@pytest.mark.parametrize("k", [2, 3, 10, 37, 1000])
@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_matches_float64_oracle(k, refine, reduction):
    logits, bank, index = make_case(17, k, 40, seed=k)
    check_against_oracle(logits, bank, index, alpha=0.9, lam=0.4, refine=refine, reduction=reduction,
                         tol=TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
def test_dtypes(dtype, bank_dtype):
    logits, bank, index = make_case(13, 11, 30, dtype=dtype, bank_dtype=bank_dtype, seed=5, pad=2, dup=True)
    check_against_oracle(logits, bank, index, alpha=0.8, lam=0.3, refine=True, reduction="mean", tol=TOL[dtype])


@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("refine", [True, False])
@pytest.mark.parametrize("pad", [0, 4], ids=["all-valid", "padded"])
def test_assume_unique_fast_path_matches_oracle(bank_dtype, reduction, refine, pad):
    """The torch backend's assume_unique path (no sort, no host sync) on unique indices, with padded rows and
    without (then the CPU skips the masking passes)."""
    logits, bank, index = make_case(23, 10, 50, bank_dtype=bank_dtype, seed=21, pad=pad)
    check_against_oracle(logits, bank, index, alpha=0.8, lam=0.4, refine=refine, reduction=reduction,
                         tol=TOL[torch.float32], assume_unique=True)


def test_gradient_closed_form_matches_autograd():
    # The closed form p - t - lam p (log p + H) for rows whose target sums to one.
    logits, bank, index = make_case(9, 7, 20, dtype=torch.float64, bank_dtype=torch.float64, seed=3)
    x = logits.clone().requires_grad_(True)
    bank_before = bank.clone()
    alr_loss(x, bank, index, alpha=0.7, lam=0.5, refine=True, reduction="sum", backend="torch").backward()
    p = torch.softmax(logits, 1)
    logp = torch.log_softmax(logits, 1)
    t = 0.7 * bank_before[index] + 0.3 * p
    h = -(p * logp).sum(1, keepdim=True)
    closed = p - t - 0.5 * p * (logp + h)
    torch.testing.assert_close(x.grad, closed, rtol=1e-10, atol=1e-12)


def test_padded_rows_have_no_effect():
    logits, bank, index = make_case(12, 5, 20, seed=11, pad=5)
    pad = index < 0
    logits[pad] = float("nan")  # whatever padded rows hold must not matter
    x = logits.clone().requires_grad_(True)
    before = bank.clone()
    per_row = alr_loss(x, bank, index, alpha=0.9, lam=0.2, reduction="none", backend="torch")
    per_row.sum().backward()
    assert torch.all(per_row[pad] == 0)
    assert torch.all(x.grad[pad] == 0)
    assert torch.isfinite(x.grad).all() and torch.isfinite(per_row).all()
    # mean divides by the number of valid rows
    bank2 = before.clone()
    mean = alr_loss(logits.clone(), bank2, index, alpha=0.9, lam=0.2, reduction="mean", backend="torch")
    torch.testing.assert_close(mean, per_row.sum() / (~pad).sum())
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[index[~pad]] = False
    assert torch.equal(bank[untouched], before[untouched])


def test_all_rows_padded_gives_zero():
    bank = torch.eye(4)
    x = torch.randn(3, 4, requires_grad=True)
    loss = alr_loss(x, bank, torch.full((3,), -1), alpha=0.9, lam=0.5, backend="torch")
    loss.backward()
    assert loss.item() == 0.0 and torch.all(x.grad == 0)
    assert torch.equal(bank, torch.eye(4))


def test_duplicates_are_sequential_in_batch_order():
    # Row 0 appears three times: equivalent to three single-row calls in order.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64)
    index = torch.tensor([0, 2, 0, 0])
    bank = torch.softmax(torch.randn(3, 6, generator=g, dtype=torch.float64), 1)
    seq_bank = bank.clone()
    seq_losses = []
    for i in range(4):
        seq_losses.append(alr_loss(logits[i : i + 1], seq_bank, index[i : i + 1], alpha=0.6, lam=0.3,
                                   reduction="sum", backend="torch"))
    per_row = alr_loss(logits, bank, index, alpha=0.6, lam=0.3, reduction="none", backend="torch")
    torch.testing.assert_close(per_row, torch.stack(seq_losses))
    torch.testing.assert_close(bank, seq_bank)


def test_sequential_rank():
    idx = torch.tensor([5, 3, 5, -1, 5, 3, 7, -1])
    assert sequential_rank(idx).tolist() == [0, 0, 1, 0, 2, 1, 0, 1]
    assert sequential_rank(torch.zeros(0, dtype=torch.long)).numel() == 0


def _ranks_by_loop(idx):
    """sequential_rank written out: the number of earlier positions holding the same value."""
    seen, out = {}, []
    for v in idx.tolist():
        out.append(seen.get(v, 0))
        seen[v] = seen.get(v, 0) + 1
    return out


def test_sequential_rank_keeps_batch_order_where_an_unstable_sort_would_not():
    """Many repeats of few values: torch's CPU sort without ``stable=True`` reorders equal keys at these sizes,
    which would give a later occurrence a lower rank (it would then be applied first)."""
    g = torch.Generator().manual_seed(3)
    for n in (100, 1000):
        idx = torch.randint(-1, 5, (n,), generator=g)
        assert sequential_rank(idx).tolist() == _ranks_by_loop(idx)


def test_sequential_rank_is_int64_on_the_index_device_whatever_the_default_device():
    """dtype and device come from ``index``, not from torch's defaults: the default device is set to 'meta' here,
    so a tensor created without ``device=`` would land there (as it would on a GPU run with a CPU index)."""
    for idx in (torch.tensor([4, 1, 4, -1, 1, 4, 0]), torch.zeros(0, dtype=torch.long)):
        with torch.device("meta"):
            r = sequential_rank(idx)
        assert r.device == idx.device and r.dtype == torch.int64
        assert r.tolist() == _ranks_by_loop(idx)


@pytest.mark.parametrize("refine", [False, True])
def test_extreme_logits_stay_finite(refine):
    logits, bank, index = make_case(8, 9, 16, seed=2, scale=1e4)
    loss, grad = check_against_oracle(logits, bank, index, alpha=0.9, lam=0.5, refine=refine,
                                      reduction="mean", tol=1e-4)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_non_finite_row_is_nan_and_does_not_touch_bank():
    logits, bank, index = make_case(6, 5, 10, seed=4)
    logits[1, 2] = float("inf")
    logits[4, 0] = float("nan")
    before = bank.clone()
    x = logits.clone().requires_grad_(True)
    per_row = alr_loss(x, bank, index, alpha=0.9, lam=0.3, reduction="none", backend="torch")
    per_row.sum().backward()
    for bad in (1, 4):
        assert math.isnan(per_row[bad].item())
        assert torch.isnan(x.grad[bad]).all()
        assert torch.equal(bank[index[bad]], before[index[bad]])
    good = torch.tensor([0, 2, 3, 5])
    assert torch.isfinite(per_row[good]).all() and torch.isfinite(x.grad[good]).all()
    assert not torch.equal(bank[index[good]], before[index[good]])


def test_warmup_is_plain_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 4, generator=g)
    labels = torch.randint(0, 4, (10,), generator=g)
    bank = torch.nn.functional.one_hot(labels, 4).float()
    before = bank.clone()
    loss = alr_loss(logits, bank, torch.arange(10), alpha=0.9, lam=1.0, refine=False, backend="torch")
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, labels))
    assert torch.equal(bank, before)


def test_selc_is_lam_zero():
    logits, bank, index = make_case(8, 6, 12, seed=8)
    check_against_oracle(logits, bank, index, alpha=0.9, lam=0.0, refine=True, reduction="mean", tol=2e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_lam_one_keeps_the_entropy_term(reduction):
    """lam = 1 (the demo's setting) against the oracle: a special case for 1 would drop or double the entropy."""
    logits, bank, index = make_case(9, 5, 14, seed=12, pad=2)
    check_against_oracle(logits, bank, index, alpha=0.7, lam=1.0, refine=True, reduction=reduction, tol=2e-5)


@pytest.mark.parametrize("refine", [False, True])
def test_mean_over_a_single_valid_row(refine):
    """One valid row among padding: the mean divides by 1 (not by the batch size, nor by a floor above 1)."""
    logits, bank, index = make_case(5, 4, 8, seed=13)
    index[[0, 1, 3, 4]] = -1
    check_against_oracle(logits, bank, index, alpha=0.8, lam=0.4, refine=refine, reduction="mean", tol=2e-5)


def test_empty_batch():
    bank = torch.eye(3)
    x = torch.zeros(0, 3, requires_grad=True)
    loss = alr_loss(x, bank, torch.zeros(0, dtype=torch.long), alpha=0.9, lam=0.1, backend="torch")
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda l, b, i: (l[0], b, i), ValueError, "logits must be a 2-D"),
        (lambda l, b, i: (l.long(), b, i), TypeError, "logits dtype"),
        (lambda l, b, i: (l, b[:, :3], i), ValueError, "K=4 classes but bank has K=3"),
        (lambda l, b, i: (l, b.long(), i), TypeError, "bank dtype"),
        (lambda l, b, i: (l, b, i.int()), TypeError, "index dtype must be torch.int64"),
        (lambda l, b, i: (l, b, i[:2]), ValueError, "index has 2 entries but logits has B=3"),
        (lambda l, b, i: (l, b, i.view(3, 1)), ValueError, "index must be a 1-D"),
        (lambda l, b, i: (l, b, torch.tensor([0, 1, 10])), IndexError, "index 10 is out of range for a bank of 5"),
        (lambda l, b, i: (l, b.requires_grad_(True), i), ValueError, "must not require grad"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, exc, match):
    logits, bank, index = torch.randn(3, 4), torch.eye(5, 4), torch.tensor([0, 1, 2])
    l, b, i = mutate(logits, bank, index)
    with pytest.raises(exc, match=match):
        alr_loss(l, b, i, alpha=0.9, lam=0.1, backend="torch")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"alpha": 1.5}, "alpha must be in"), ({"lam": -1.0}, "lam must be"), ({"reduction": "max"}, "reduction"),
     ({"backend": "cuda"}, "backend must be")],
)
def test_bad_arguments(kwargs, match):
    args = dict(alpha=0.9, lam=0.1, backend="torch")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        alr_loss(torch.randn(2, 3), torch.eye(3), torch.tensor([0, 1]), **args)


def test_auto_backend_on_cpu_is_reference():
    from alr_fast.loss.functional import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
