"""ELR's closed-form CPU path (``elr_loss(assume_unique=True)`` on the torch backend: alr_fast/loss/torch_fast.py
``elr_loss_unique``) against the float64 oracle (tests/baselines64.py, through tests/test_baselines.py's
``_elr_check``) and against the reference (alr_fast/loss/baselines.py), which stays the specification."""

import math

import numpy as np
import pytest
import torch

import alr_fast.loss.torch_fast as torch_fast
from alr_fast import elr_loss
from alr_fast.loss.baselines import ELR_CLAMP, ELRParams, elr_loss_reference
from baselines64 import elr_oracle
from test_baselines import _bf16_store, _elr_check, make_case


def _fast(logits, labels, bank, index, *, grad_out=None, beta=0.7, lam=3.0, refine=True, reduction="mean"):
    """(loss, grad, bank after) of the public call the trainer makes on a CPU; checks the fast path ran."""
    x, b = logits.clone().requires_grad_(True), bank.clone()
    loss = elr_loss(x, b, index, labels, beta=beta, lam=lam, refine=refine, reduction=reduction, backend="torch",
                    assume_unique=True)
    assert type(loss.grad_fn).__name__ == "_UniqueELRBackward"
    loss.backward(grad_out if grad_out is not None else torch.ones_like(loss))
    return loss.detach(), x.grad, b


def _reference(logits, labels, bank, index, *, grad_out=None, beta=0.7, lam=3.0, refine=True, reduction="mean"):
    x, b = logits.clone().requires_grad_(True), bank.clone()
    loss = elr_loss_reference(x, b, index, labels, ELRParams(beta, lam, refine, reduction, False))
    loss.backward(grad_out if grad_out is not None else torch.ones_like(loss))
    return loss.detach(), x.grad, b


def _same_as_reference(logits, labels, bank, index, **kw):
    """The fast path equals the reference: loss and gradient to the math dtype's rounding, NaN exactly where
    the reference has NaN, the bank to the last bit of its dtype."""
    loss, grad, b = _fast(logits, labels, bank, index, **kw)
    r_loss, r_grad, r_b = _reference(logits, labels, bank, index, **kw)
    assert loss.dtype == r_loss.dtype and grad.dtype == r_grad.dtype == logits.dtype
    tol = 1e-12 if logits.dtype == torch.float64 else 2e-6 if logits.dtype == torch.float32 else 1e-2
    torch.testing.assert_close(loss, r_loss, rtol=tol, atol=tol, equal_nan=True)
    torch.testing.assert_close(grad, r_grad, rtol=tol, atol=tol, equal_nan=True)
    ulp = torch.finfo(bank.dtype).eps
    torch.testing.assert_close(b, r_b, rtol=2 * ulp, atol=0.0)  # t_new's last bit may differ (fused multiply-add)
    if bank.dtype == torch.bfloat16:  # so a bf16 row differs only where t_new sits on a rounding boundary
        assert (b == r_b).double().mean() >= 0.99
    return loss, grad, b


@pytest.mark.parametrize("b,k", [(1, 1), (3, 1), (1, 2), (7, 3), (33, 10), (5, 37), (9, 1000)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("refine", [True, False])
def test_matches_oracle_and_reference(b, k, reduction, refine):
    logits, labels, bank, index = make_case(b, k, seed=b * 11 + k, pad=b // 4)
    _elr_check(logits, labels, bank.clone(), index, reduction=reduction, refine=refine, assume_unique=True)
    _same_as_reference(logits, labels, bank, index, reduction=reduction, refine=refine)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
def test_dtypes_and_bf16_bank(dtype, bank_dtype):
    logits, labels, bank, index = make_case(21, 9, dtype=dtype, bank_dtype=bank_dtype, seed=31, pad=3)
    _elr_check(logits, labels, bank.clone(), index, assume_unique=True)
    _same_as_reference(logits, labels, bank, index)


def test_float64_keeps_float64_math():
    """fp64 logits and bank: the oracle's values to 1e-12 (fp32 math would be off by ~1e-7), bank included."""
    logits, labels, bank, index = make_case(17, 23, dtype=torch.float64, bank_dtype=torch.float64, seed=5, pad=2)
    for refine in (True, False):
        loss, grad, b = _fast(logits, labels, bank, index, reduction="none", refine=refine)
        want_loss, want_grad, want_bank = elr_oracle(logits.numpy(), bank.numpy(), index.numpy(), labels.numpy(),
                                                     beta=0.7, lam=3.0, refine=refine, reduction="none")
        np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b.numpy(), want_bank, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nan_inf_rows_padding_and_incoming_gradient(reduction):
    """NaN / +inf / -inf rows: NaN loss and gradient on those rows only, their bank rows untouched; padded rows
    0; a random incoming gradient per row ("none") or a scalar other than 1."""
    logits, labels, bank, index = make_case(19, 6, seed=41, pad=4, nan_rows=3)
    grad_out = (torch.rand(19, generator=torch.Generator().manual_seed(2)) * 4 - 2 if reduction == "none"
                else torch.tensor(0.7))
    loss, grad = _elr_check(logits, labels, bank.clone(), index, reduction=reduction, assume_unique=True,
                            grad_out=grad_out if reduction == "none" else None)
    loss, grad, b = _same_as_reference(logits, labels, bank, index, reduction=reduction, grad_out=grad_out)
    bad = (index >= 0) & ~torch.isfinite(logits).all(1)
    assert bad.sum() == 3 and torch.isnan(grad[bad]).all() and torch.isfinite(grad[~bad]).all()
    assert torch.all(grad[index < 0] == 0)
    assert torch.equal(b[index[bad]], bank[index[bad]])
    if reduction == "none":
        assert torch.isnan(loss[bad]).all() and torch.all(loss[index < 0] == 0)
    else:
        assert math.isnan(float(loss))
    if reduction != "none":  # the scalar 0.7 scales the oracle's gradient
        want = elr_oracle(logits.double().numpy(), bank.double().numpy(), index.numpy(), labels.numpy(), beta=0.7,
                          lam=3.0, reduction=reduction)[1] * 0.7
        np.testing.assert_allclose(grad.double().numpy(), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
def test_all_padded_and_empty_batch(reduction, bank_dtype):
    logits, labels, bank, index = make_case(5, 4, seed=43, bank_dtype=bank_dtype)
    labels[:] = -1
    index[:] = -1
    for refine in (True, False):
        loss, grad, b = _fast(logits, labels, bank, index, reduction=reduction, refine=refine)
        assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(grad, torch.zeros_like(grad))
        assert torch.equal(b, bank)
        loss, grad, b = _fast(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), bank,
                              torch.zeros(0, dtype=torch.long), reduction=reduction, refine=refine)
        assert loss.shape == ((0,) if reduction == "none" else ()) and float(loss.sum()) == 0.0
        assert grad.shape == (0, 4) and torch.equal(b, bank)


def _clamped_case(dtype):
    """Rows whose probabilities hit both ends of the clamp: p > 1 - eps on a confident row (right and wrong
    label), p < eps entries beside it, a row with every p inside, a padded row."""
    logits = torch.tensor([[14.0, 0.0, -1.0, 0.5, -2.0, 1.0],
                           [0.0, 15.0, -3.0, -20.0, 1.0, 2.0],
                           [0.3, -0.2, 0.1, 0.0, 0.4, -0.5],
                           [-12.0, 3.0, 2.5, 0.0, -9.0, 1.0],
                           [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dtype=torch.float64).to(dtype)
    labels = torch.tensor([0, 3, 2, 4, -1])
    index = torch.tensor([6, 0, 3, 5, -1])
    bank = torch.softmax(torch.randn(8, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64), 1)
    return logits, labels, bank.to(dtype), index


def test_clamped_entries_pass_no_gradient():
    p = torch.softmax(_clamped_case(torch.float64)[0], 1)
    assert (p > 1 - ELR_CLAMP).sum() == 2 and (p < ELR_CLAMP).sum() >= 6 and not (p[2] < ELR_CLAMP).any()
    for dtype in (torch.float64, torch.float32):
        logits, labels, bank, index = _clamped_case(dtype)
        for reduction in ("none", "mean"):
            loss, grad, b = _same_as_reference(logits, labels, bank, index, reduction=reduction)
            want_loss, want_grad, want_bank = elr_oracle(logits.double().numpy(), bank.double().numpy(),
                                                         index.numpy(), labels.numpy(), beta=0.7, lam=3.0,
                                                         reduction=reduction)
            tol = 1e-12 if dtype == torch.float64 else 2e-5
            np.testing.assert_allclose(loss.double().numpy(), want_loss, rtol=tol, atol=tol)
            np.testing.assert_allclose(grad.double().numpy(), want_grad, rtol=tol, atol=tol)
            np.testing.assert_allclose(b.double().numpy(), want_bank, rtol=tol, atol=tol)


def test_clamp_bounds_are_torch_clamps_gradient_rule():
    """``lo < p < hi`` (the fast path's mask) is ``eps <= p <= 1 - eps`` as torch.clamp's gradient has it, on
    the floats either side of both ends, in fp32 and fp64."""
    for dtype in (torch.float32, torch.float64):
        lo, hi = torch_fast._clamp_bounds(dtype)
        eps, top = torch.tensor(ELR_CLAMP, dtype=dtype), torch.tensor(1 - ELR_CLAMP, dtype=dtype)
        down, up = torch.tensor(-1.0, dtype=dtype), torch.tensor(2.0, dtype=dtype)
        p = torch.stack([torch.nextafter(eps, down), eps, torch.nextafter(eps, up), torch.nextafter(top, down), top,
                         torch.nextafter(top, up), torch.tensor(0.5, dtype=dtype), torch.tensor(0.0, dtype=dtype),
                         torch.tensor(1.0, dtype=dtype)]).requires_grad_(True)
        p.clamp(ELR_CLAMP, 1 - ELR_CLAMP).sum().backward()
        assert p.grad.tolist() == [0, 1, 1, 1, 1, 0, 1, 0, 0]
        mask = torch.ops.aten.hardtanh_backward(torch.ones_like(p), p.detach(), lo, hi)
        assert torch.equal(mask, p.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("refine", [True, False])
def test_device_branch_on_a_cpu(monkeypatch, reduction, refine):
    """The branch a GPU runs (masks applied unconditionally, the mean's 1/n a device tensor, no host read)
    forced on a CPU: the same values as the oracle and the reference, with padded and non-finite rows and an
    incoming gradient other than 1."""
    monkeypatch.setattr(torch_fast, "_reads_are_free", lambda device: False)
    logits, labels, bank, index = make_case(13, 7, seed=47, pad=2, nan_rows=1)
    grad_out = torch.linspace(-1.5, 2.0, 13) if reduction == "none" else torch.tensor(-0.6)
    loss, grad, b = _same_as_reference(logits, labels, bank, index, reduction=reduction, refine=refine,
                                       grad_out=grad_out)
    want_loss, want_grad, want_bank = elr_oracle(logits.double().numpy(), bank.double().numpy(), index.numpy(),
                                                 labels.numpy(), beta=0.7, lam=3.0, refine=refine,
                                                 reduction=reduction)
    g = grad_out.double().numpy()
    want_grad = want_grad * (g[:, None] if reduction == "none" else g)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(b.numpy(), want_bank, rtol=1e-6, atol=1e-6)
    # and without bad rows (the mean's scale as a tensor on finite values only)
    logits, labels, bank, index = make_case(11, 5, seed=53, pad=3)
    _elr_check(logits, labels, bank.clone(), index, reduction=reduction, refine=refine, assume_unique=True)


@pytest.mark.parametrize("go", [1.0, 2.0, 0.5, -1.0, 0.0])
def test_scalar_grad_output_values(go):
    """The backward's early exit (grad_output exactly 1 on a CPU) is taken for 1 only."""
    logits, labels, bank, index = make_case(9, 5, dtype=torch.float64, seed=59, pad=1)
    _, grad, _ = _fast(logits, labels, bank.double(), index, grad_out=torch.tensor(go, dtype=torch.float64))
    want = elr_oracle(logits.numpy(), bank.double().numpy(), index.numpy(), labels.numpy(), beta=0.7, lam=3.0)[1]
    np.testing.assert_allclose(grad.numpy(), go * want, rtol=1e-12, atol=1e-15)


def test_hyper_parameter_edges_and_running_average():
    """beta 1 (target frozen), beta 0 (target = this step's c / sum c), lam 0 (CE, bank still written), and two
    calls on the same rows (the second reads the first's write)."""
    logits, labels, bank, index = make_case(10, 6, seed=61, pad=2)
    for beta, lam in ((1.0, 3.0), (0.0, 3.0), (0.7, 0.0), (0.3, 1.5)):
        _elr_check(logits, labels, bank.clone(), index, beta=beta, lam=lam, assume_unique=True)
        _same_as_reference(logits, labels, bank, index, beta=beta, lam=lam)
    fast, ref = bank.clone(), bank.clone()
    for scale in (1.0, 0.5):
        elr_loss(logits * scale, fast, index, labels, beta=0.7, lam=3.0, backend="torch", assume_unique=True)
        elr_loss_reference(logits * scale, ref, index, labels, ELRParams(0.7, 3.0))
    torch.testing.assert_close(fast, ref, rtol=2e-7, atol=2e-7)
    assert not torch.equal(fast, bank)


def test_bf16_bank_rows_are_rounded_once():
    """The bank stores t_new rounded to bf16 while the loss uses the unrounded row (as the reference and the
    oracle with a bf16 store): equal to the oracle's rounded rows."""
    logits, labels, bank, index = make_case(16, 12, seed=67, bank_dtype=torch.bfloat16)
    _, _, b = _fast(logits, labels, bank, index, reduction="sum")
    _, _, want = elr_oracle(logits.double().numpy(), bank.double().numpy(), index.numpy(), labels.numpy(),
                            beta=0.7, lam=3.0, store=_bf16_store)
    got = b.double().numpy()
    np.testing.assert_allclose(got, want, rtol=2**-7, atol=0)
    assert np.mean(got == want) >= 0.99

