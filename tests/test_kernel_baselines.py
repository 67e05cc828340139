"""The fused baselines kernels (alr_fast/loss/triton/baselines.py, built on the ALR kernel's row helpers) against
the float64 oracles, under the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 without a
GPU): odd shapes (B <= 64: the interpreter runs programs one by one), bf16/fp16 logits, a bf16 bank, padding,
NaN/inf rows, out-of-range labels and indices, every reduction, a random incoming gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

kernels = pytest.importorskip("alr_fast.loss.triton")
if not kernels.HAS_FUSED_ALR:
    pytest.skip("triton is not installed: no fused kernel", allow_module_level=True)

from alr_fast import elr_loss  # noqa: E402
from baselines64 import elr_oracle  # noqa: E402
from test_baselines import GRAD_TOL, STATELESS, TOL, _bf16_store, _close, _run, make_case  # noqa: E402

FUSED_TOL = {torch.float32: 3e-5, torch.bfloat16: 3e-5, torch.float16: 3e-5}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: the interpreter (conftest.py)


def _dev(*tensors):
    return [t.to(DEVICE, copy=True) for t in tensors]  # copies: the originals feed the oracle


@pytest.mark.parametrize("method", sorted(STATELESS))
@pytest.mark.parametrize("b,k,dtype,reduction", [
    (1, 2, torch.float32, "mean"), (7, 3, torch.float32, "none"), (33, 10, torch.bfloat16, "sum"),
    (64, 37, torch.float16, "mean"), (5, 1000, torch.float32, "none")])
def test_stateless_fused_matches_oracle(method, b, k, dtype, reduction):
    fn, oracle, hp = STATELESS[method]
    logits, labels, _, _ = make_case(b, k, dtype=dtype, seed=b + k, pad=b // 4, nan_rows=min(2, b // 4))
    grad_out = (torch.rand(b, generator=torch.Generator().manual_seed(b)) * 2 - 0.5) if reduction == "none" else None
    x, y = _dev(logits, labels)
    x.requires_grad_(True)
    loss = fn(x, y, reduction=reduction, backend="triton", **hp)
    loss.backward(grad_out.to(DEVICE) if grad_out is not None else None)
    want_loss, want_grad, _ = oracle(logits.double().numpy(), labels.numpy(), reduction=reduction, **hp)
    if grad_out is not None:
        want_grad = want_grad * grad_out.double().numpy()[:, None]
    assert x.grad.dtype == dtype
    _close(loss.detach().cpu(), want_loss, FUSED_TOL[dtype])
    _close(x.grad.double().cpu(), want_grad, max(FUSED_TOL[dtype], GRAD_TOL[dtype]))
    assert torch.all(x.grad.cpu()[labels < 0] == 0)


@pytest.mark.parametrize("method", sorted(STATELESS))
def test_stateless_fused_out_of_range_label_is_a_nan_row(method):
    fn, _, hp = STATELESS[method]
    x, y = _dev(torch.randn(4, 3), torch.tensor([0, 3, -1, 2]))
    x.requires_grad_(True)
    loss = fn(x, y, reduction="none", backend="triton", check_index=False, **hp)
    loss.sum().backward()
    loss, grad = loss.detach().cpu(), x.grad.cpu()
    assert torch.isnan(loss[1]) and torch.isnan(grad[1]).all() and loss[2] == 0 and torch.isfinite(loss[[0, 3]]).all()
    assert torch.all(grad[2] == 0)


@pytest.mark.parametrize("b,k,dtype,bank_dtype,reduction,refine", [
    (1, 2, torch.float32, torch.float32, "mean", True), (7, 3, torch.float32, torch.bfloat16, "none", True),
    (33, 10, torch.bfloat16, torch.float32, "sum", True), (64, 37, torch.float16, torch.bfloat16, "mean", True),
    (9, 1000, torch.float32, torch.float32, "none", True), (13, 6, torch.float32, torch.float32, "mean", False)])
def test_elr_fused_matches_oracle(b, k, dtype, bank_dtype, reduction, refine):
    logits, labels, bank, index = make_case(b, k, dtype=dtype, bank_dtype=bank_dtype, seed=3 * b + k, pad=b // 4,
                                            nan_rows=min(2, b // 4))
    before = bank.clone()
    grad_out = (torch.rand(b, generator=torch.Generator().manual_seed(k)) * 2 - 0.5) if reduction == "none" else None
    x, bank_d, index_d, labels_d = _dev(logits, bank, index, labels)
    x.requires_grad_(True)
    loss = elr_loss(x, bank_d, index_d, labels_d, beta=0.7, lam=3.0, refine=refine, reduction=reduction,
                    backend="triton", assume_unique=True)
    loss.backward(grad_out.to(DEVICE) if grad_out is not None else None)
    loss, bank = loss.detach().cpu(), bank_d.cpu()
    grad = x.grad.cpu()
    store = _bf16_store if bank_dtype == torch.bfloat16 else None
    want_loss, want_grad, want_bank = elr_oracle(logits.double().numpy(), before.double().numpy(), index.numpy(),
                                                 labels.numpy(), beta=0.7, lam=3.0, refine=refine,
                                                 reduction=reduction, store=store)
    if grad_out is not None:
        want_grad = want_grad * grad_out.double().numpy()[:, None]
    tol = FUSED_TOL[dtype]
    _close(loss, want_loss, 2 * tol)
    _close(grad.double(), want_grad, max(2 * tol, GRAD_TOL[dtype]))
    got = bank.double().numpy()
    if bank_dtype == torch.bfloat16:
        np.testing.assert_allclose(got, want_bank, rtol=2**-7, atol=0)
        assert np.mean(got == want_bank) >= 0.99
    else:
        _close(bank, want_bank, 1e-6)
    touched = torch.zeros(bank.shape[0], dtype=torch.bool)
    if refine:
        touched[index[(index >= 0) & torch.isfinite(logits).all(1)]] = True
    assert torch.equal(bank[~touched], before[~touched])  # padded, NaN and untouched rows: bit-identical


def test_elr_fused_out_of_range_index_never_touches_the_bank():
    logits, labels, bank, index = make_case(6, 4, seed=1)
    index[2] = bank.shape[0] + 3
    before = bank.clone()
    z, bank_d, index_d, labels_d = _dev(logits, bank, index, labels)
    loss = elr_loss(z, bank_d, index_d, labels_d, beta=0.7, lam=3.0, reduction="none", backend="triton",
                    check_index=False, assume_unique=True).cpu()
    bank = bank_d.cpu()
    assert torch.isnan(loss[2]) and torch.isfinite(loss[[0, 1, 3, 4, 5]]).all()
    ok = torch.ones(6, dtype=torch.bool)
    ok[2] = False
    assert not torch.equal(bank[index[ok]], before[index[ok]])


def test_dispatch_and_refusals():
    z, y, bank, idx = _dev(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.softmax(torch.randn(5, 4), 1),
                           torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="repeated indices need the sequential order"):
        elr_loss(z, bank, idx, y, beta=0.7, lam=3.0, backend="triton")
    with pytest.raises(ValueError, match="float64"):
        STATELESS["gce"][0](z.double(), y, q=0.7, backend="triton")
    from alr_fast.loss.triton.baselines import MAX_K

    wide, two = _dev(torch.randn(2, MAX_K + 1), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=f"K = {MAX_K + 1} > {MAX_K} columns"):
        STATELESS["bootstrap"][0](wide, two, beta=0.9, backend="triton")
    # 'auto' on CPU tensors is the reference (bit-identical)
    fn, _, hp = STATELESS["sce"]
    zc, yc = z.cpu(), y.cpu()
    assert torch.equal(fn(zc, yc, backend="auto", **hp), fn(zc, yc, backend="torch", **hp))
