"""The torch fast path's bank writer on the cases the loss tests reach only on a GPU or not at all: a single
row, the first good row at bank row 0, no good row at all. Every bank row must end holding exactly what the
specification says (the row's update where the sample is good, untouched elsewhere)."""

import torch

from alr_fast.loss.torch_fast import _write_rows


def _bank(n=6, k=3, dtype=torch.float32):
    return torch.arange(n * k, dtype=torch.float32).view(n, k).to(dtype) / 10


def test_single_good_row_is_written():
    bank = _bank()
    new = torch.tensor([[7.0, 8.0, 9.0]])
    _write_rows(bank, torch.tensor([4]), torch.tensor([True]), new)
    want = _bank()
    want[4] = new[0]
    assert torch.equal(bank, want)


def test_first_good_row_at_bank_row_zero_and_a_padded_row():
    # the padded / non-finite rows are redirected to the first good row (bank row 0 here): no other bank row
    # may receive its value
    bank = _bank()
    index = torch.tensor([-1, 0, 3, 5])
    good = torch.tensor([False, True, True, False])  # row 3 of the batch: valid index, non-finite logits
    rows = torch.tensor([[9.0, 9.0, 9.0], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [9.5, 9.5, 9.5]])
    _write_rows(bank, index, good, rows)
    want = _bank()
    want[0], want[3] = rows[1], rows[2]
    assert torch.equal(bank, want)


def test_no_good_row_leaves_the_bank_untouched():
    for dtype in (torch.float32, torch.bfloat16):
        bank = _bank(dtype=dtype)
        _write_rows(bank, torch.tensor([-1, 2, -3]), torch.tensor([False, False, False]), torch.full((3, 3), 5.0))
        assert torch.equal(bank, _bank(dtype=dtype))
        _write_rows(bank, torch.tensor([0, 1]), torch.tensor([False, False]), torch.full((2, 3), 5.0))
        assert torch.equal(bank, _bank(dtype=dtype))
    _write_rows(bank, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.bool), torch.zeros(0, 3))
    assert torch.equal(bank, _bank(dtype=torch.bfloat16))


# ------------------------------------------------------------------ the fast path as a whole, dtypes and bad rows
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from alr_fast.loss.contract import ALRParams  # noqa: E402
from alr_fast.loss.torch_fast import alr_loss_unique  # noqa: E402
from reference64 import alr_oracle  # noqa: E402


def _case(dtype, b=7, k=5, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k, generator=g, dtype=torch.float64) * 3).to(dtype)
    bank = torch.softmax(torch.randn(n, k, generator=g), 1)
    index = torch.randperm(n, generator=g)[:b]
    return logits, bank, index


def _run(logits, bank, index, refine, reduction="none"):
    z = logits.clone().requires_grad_(True)
    b = bank.clone()
    loss = alr_loss_unique(z, b, index, ALRParams(0.7, 0.4, refine, reduction, True))
    loss.backward(torch.ones_like(loss))
    ref = alr_oracle(logits.double().numpy(), bank.double().numpy(), index.numpy(), alpha=0.7, lam=0.4,
                     refine=refine, reduction=reduction)
    return loss.detach(), z.grad, b, ref


@pytest.mark.parametrize("refine", [False, True])
def test_float64_logits_keep_float64_math(refine):
    """fp64 logits are not rounded to fp32: loss and gradient match the float64 oracle to 1e-12 (fp32 math
    would be off by ~1e-7)."""
    logits, bank, index = _case(torch.float64)
    loss, grad, _, (ref_loss, ref_grad, _) = _run(logits, bank.double(), index, refine)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float64
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_logits_are_computed_in_float32(dtype):
    """bf16/fp16 logits: the math is fp32 from the rounded logits, so the loss matches the oracle (fed the same
    rounded logits) to fp32 accuracy; computing in the logits' dtype would be off by ~1e-2."""
    logits, bank, index = _case(dtype)
    loss, grad, b, (ref_loss, ref_grad, ref_bank) = _run(logits, bank, index, True)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(b.numpy(), ref_bank, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_one_non_finite_row_leaves_the_other_rows_alone(bad):
    """Row 2 has one non-finite logit (in the middle of the row, so neither the row's max nor its min alone
    is the whole story for -inf/inf): only that row is NaN and its bank row untouched; every other row matches
    the oracle, padded row included."""
    logits, bank, index = _case(torch.float32)
    logits[2, 3] = bad
    index[5] = -1
    loss, grad, b, (ref_loss, ref_grad, ref_bank) = _run(logits, bank, index, True)
    finite = np.isfinite(ref_loss)
    assert finite.tolist() == [True, True, False, True, True, True, True]
    assert torch.isnan(loss[2]) and torch.isnan(grad[2]).all()
    np.testing.assert_allclose(loss.numpy()[finite], ref_loss[finite], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(grad.numpy()[finite], ref_grad[finite], rtol=2e-5, atol=2e-6)
    assert loss[5] == 0 and (grad[5] == 0).all()
    np.testing.assert_allclose(b.numpy(), ref_bank, rtol=1e-5, atol=1e-6)
    assert torch.equal(b[index[2]], bank[index[2]])


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_lam_zero_and_one(lam):
    """lam 0 (SELC) and lam 1 (the demo recipe's): the entropy term is absent / weighted exactly 1."""
    logits, bank, index = _case(torch.float64, seed=3)
    z = logits.clone().requires_grad_(True)
    b = bank.double().clone()
    loss = alr_loss_unique(z, b, index, ALRParams(0.7, lam, True, "sum", True))
    loss.backward()
    ref_loss, ref_grad, ref_bank = alr_oracle(logits.numpy(), bank.double().numpy(), index.numpy(), alpha=0.7,
                                              lam=lam, refine=True, reduction="sum")
    np.testing.assert_allclose(float(loss.detach()), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(z.grad.numpy(), ref_grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b.numpy(), ref_bank, rtol=1e-12, atol=1e-12)


def test_mean_over_a_single_valid_row():
    """"mean" divides by the number of valid rows, also when that number is 1 (the rest padded)."""
    logits, bank, index = _case(torch.float64, seed=4)
    index[1:] = -1
    z = logits.clone().requires_grad_(True)
    loss = alr_loss_unique(z, bank.double().clone(), index, ALRParams(0.7, 0.4, True, "mean", True))
    loss.backward()
    ref_loss, ref_grad, _ = alr_oracle(logits.numpy(), bank.double().numpy(), index.numpy(), alpha=0.7, lam=0.4,
                                       refine=True, reduction="mean")
    np.testing.assert_allclose(float(loss.detach()), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(z.grad.numpy(), ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("refine", [False, True])
def test_device_branch_on_a_cpu(monkeypatch, reduction, refine):
    """The branch a GPU runs (masks always applied, the mean's 1/n as a device tensor, no host read), forced
    on a CPU: the same values as the oracle, with a padded row, a non-finite row and a random grad_output."""
    import alr_fast.loss.torch_fast as torch_fast

    monkeypatch.setattr(torch_fast, "_reads_are_free", lambda device: False)
    logits, bank, index = _case(torch.float32, b=8, seed=6)
    index[0] = -1
    logits[4, 1] = math.nan
    z = logits.clone().requires_grad_(True)
    b = bank.clone()
    loss = alr_loss_unique(z, b, index, ALRParams(0.7, 0.4, refine, reduction, True))
    go = torch.linspace(-1.5, 2.0, 8) if reduction == "none" else torch.tensor(0.7)
    loss.backward(go)
    ref_loss, ref_grad, ref_bank = alr_oracle(logits.double().numpy(), bank.double().numpy(), index.numpy(),
                                              alpha=0.7, lam=0.4, refine=refine, reduction=reduction)
    g = go.double().numpy()
    want = ref_grad * (g[:, None] if reduction == "none" else g)
    ok = np.isfinite(want).all(axis=1)
    assert ok.tolist() == [True, True, True, True, False, True, True, True]
    if reduction == "none":
        np.testing.assert_allclose(loss.detach().numpy(), ref_loss, rtol=2e-5, atol=2e-6)
    else:  # one NaN row makes the reduced loss NaN, as in the oracle
        assert math.isnan(float(loss.detach())) and math.isnan(ref_loss)
    np.testing.assert_allclose(z.grad.numpy()[ok], want[ok], rtol=2e-5, atol=2e-6)
    assert torch.isnan(z.grad[4]).all() and (z.grad[0] == 0).all()
    np.testing.assert_allclose(b.numpy(), ref_bank, rtol=1e-5, atol=1e-6)


def test_device_branch_mean_without_bad_rows(monkeypatch):
    """The device branch's mean over 5 valid rows of 7 (the 1/n scale applied as a tensor), finite everywhere."""
    import alr_fast.loss.torch_fast as torch_fast

    monkeypatch.setattr(torch_fast, "_reads_are_free", lambda device: False)
    logits, bank, index = _case(torch.float32, seed=7)
    index[2] = index[6] = -1
    z = logits.clone().requires_grad_(True)
    loss = alr_loss_unique(z, bank.clone(), index, ALRParams(0.7, 0.4, True, "mean", True))
    loss.backward()
    ref_loss, ref_grad, _ = alr_oracle(logits.double().numpy(), bank.double().numpy(), index.numpy(), alpha=0.7,
                                       lam=0.4, refine=True, reduction="mean")
    np.testing.assert_allclose(float(loss.detach()), ref_loss, rtol=2e-5)
    np.testing.assert_allclose(z.grad.numpy(), ref_grad, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("go", [1.0, 2.0, 0.5, -1.0, 0.0])
def test_scalar_grad_output_values(go):
    """The backward's early exit (grad_output exactly 1 on a CPU: the saved gradient is final) must not be
    taken for any other value: 2, 1/2 (what grad_accum=2 feeds), -1, 0."""
    logits, bank, index = _case(torch.float64, seed=8)
    z = logits.clone().requires_grad_(True)
    loss = alr_loss_unique(z, bank.double().clone(), index, ALRParams(0.7, 0.4, True, "mean", True))
    loss.backward(torch.tensor(go, dtype=torch.float64))
    _, ref_grad, _ = alr_oracle(logits.numpy(), bank.double().numpy(), index.numpy(), alpha=0.7, lam=0.4,
                                refine=True, reduction="mean")
    np.testing.assert_allclose(z.grad.numpy(), go * ref_grad, rtol=1e-12, atol=1e-15)
