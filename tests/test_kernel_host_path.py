"""The fused loss's host path and safety contract: validation once, the eager path without custom-op dispatch,
the early-exit backward, out-of-range indices, assume_unique checks, the device guard.

Runs under the Triton interpreter on CPU (tests/conftest.py) and unchanged on a GPU; GPU-only checks are skipped
without CUDA. Small shapes: each interpreted program costs ~5 ms.
"""

from __future__ import annotations

import pytest
import torch

import alr_fast.loss.functional as functional_mod
from alr_fast.loss.contract import ALRParams
from alr_fast.loss.functional import alr_loss
from alr_fast.loss.reference import alr_loss_reference

kernels = pytest.importorskip("alr_fast.loss.triton")
if not kernels.HAS_FUSED_ALR:
    pytest.skip("triton is not installed: no fused kernel", allow_module_level=True)

from alr_fast.loss.triton import alr_grad_scale, fused_alr_loss, raise_on_bad_index  # noqa: E402
from alr_fast.loss.triton import alr_kernels, autograd, heuristics, launch, reduction, rows, split_k  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")
ALPHA, LAM = 0.7, 0.5


def _case(B=12, K=7, N=30, seed=0, dtype=torch.float32, bank_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, K, generator=g) * 2).to(dtype)
    bank = torch.softmax(torch.randn(N, K, generator=g), 1).to(bank_dtype)
    index = torch.randperm(N, generator=g)[:B]
    index[B // 3] = -1
    return logits.to(DEVICE), bank.to(DEVICE), index.to(DEVICE)


# ------------------------------------------------------------------------------------------------ contract
def test_params_are_validated_once_and_frozen():
    p = ALRParams.of(0.9, 0.3, True, "mean", True)
    assert p is ALRParams.of(0.9, 0.3, True, "mean", True)  # cached: built and checked once per setting
    assert p.has_entropy and not ALRParams.of(0.9, 0.0).has_entropy and not ALRParams.of(0.9, 0.3, False).has_entropy
    with pytest.raises(AttributeError):
        p.alpha = 0.5  # frozen
    for kwargs, match in (
        (dict(alpha=1.5, lam=0.1), "alpha"),
        (dict(alpha=-0.1, lam=0.1), "alpha"),
        (dict(alpha=float("nan"), lam=0.1), "alpha"),
        (dict(alpha=0.5, lam=-1.0), "lam"),
        (dict(alpha=0.5, lam=float("inf")), "lam"),
        (dict(alpha=0.5, lam=0.1, reduction="avg"), "reduction"),
    ):
        with pytest.raises(ValueError, match=match):
            ALRParams(**kwargs)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_alr_loss_validates_its_inputs_exactly_once(backend, monkeypatch):
    """One call of alr_loss checks the tensors once, whichever backend (was three times on the fused path)."""
    calls = []
    original = functional_mod.validate_inputs

    def counting(*args, **kwargs):
        calls.append(kwargs.get("where", "alr_loss"))
        return original(*args, **kwargs)

    monkeypatch.setattr(functional_mod, "validate_inputs", counting)
    monkeypatch.setattr(autograd, "validate_inputs", counting)
    monkeypatch.setattr(launch, "validate_inputs", counting)
    logits, bank, index = _case()
    alr_loss(logits.requires_grad_(True), bank, index, alpha=ALPHA, lam=LAM, backend=backend).backward()
    assert calls == ["alr_loss"]


def test_no_import_cycle_between_functional_and_kernels():
    """The contract imports neither side; the kernels import only the contract (not functional)."""
    import ast
    import inspect

    import alr_fast.loss.contract as contract

    def imported(module):
        tree = ast.parse(inspect.getsource(module))
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }

    assert not any(m.startswith("alr_fast") for m in imported(contract))
    kernel_imports = set().union(*(imported(m) for m in (alr_kernels, autograd, heuristics, launch, reduction,
                                                         rows, split_k, kernels)))
    assert "alr_fast.loss.contract" in kernel_imports and "alr_fast.loss.functional" not in kernel_imports


# ------------------------------------------------------------------------------------------ thin eager path
def test_eager_path_skips_the_custom_ops(monkeypatch):
    """Outside torch.compile the launches are called directly (custom-op dispatch costs host time)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("custom op called on the eager path")

    monkeypatch.setattr(autograd, "FusedALRFunction", None)
    logits, bank, index = _case()
    z = logits.clone().requires_grad_(True)
    with monkeypatch.context() as m:
        m.setattr(torch.ops.alr_fast.fused_alr_fwd, "default", forbidden, raising=False)
        loss = fused_alr_loss(z, bank.clone(), index, ALRParams(ALPHA, LAM))
    assert type(loss.grad_fn).__name__ == "_EagerFusedALRBackward"
    loss.backward()
    ref = logits.clone().requires_grad_(True)
    alr_loss_reference(ref, bank.clone(), index, ALRParams(ALPHA, LAM)).backward()
    torch.testing.assert_close(z.grad, ref.grad, rtol=1e-5, atol=1e-7)


def _noncanonical_nan_bf16(shape):
    """bf16 NaNs with a payload the kernel's rounding would canonicalise (0x7FC1 -> 0x7FC0) if it touched them."""
    return torch.full(shape, 0x7FC1, dtype=torch.int16).view(torch.bfloat16).to(DEVICE)


def test_backward_early_exit_leaves_the_gradient_untouched():
    """grad_output == 1: the backward launch returns without reading or writing the gradient (a write would
    canonicalise these NaN payloads); any other factor scales in place; per row only the rows != 1."""
    buf = _noncanonical_nan_bf16((6, 5))
    alr_grad_scale(buf, torch.tensor(1.0, device=DEVICE))
    assert bool((buf.view(torch.int16) == 0x7FC1).all())
    alr_grad_scale(buf, torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 0.5], device=DEVICE))
    bits = buf.view(torch.int16).cpu()
    assert bool((bits[[0, 2, 3, 4]] == 0x7FC1).all()) and bool((bits[[1, 5]] == 0x7FC0).all())
    g = torch.arange(12.0, device=DEVICE).reshape(3, 4)
    alr_grad_scale(g, torch.tensor(2.0, device=DEVICE))
    assert torch.equal(g.cpu(), torch.arange(12.0).reshape(3, 4) * 2)
    alr_grad_scale(g, torch.tensor(3.0, device=DEVICE), prev=torch.tensor(2.0, device=DEVICE))
    assert torch.equal(g.cpu(), torch.arange(12.0).reshape(3, 4) * 3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_forward_gradient_is_final_and_backward_returns_it(reduction):
    """The forward's gradient buffer is already the gradient of loss.backward() (mean: divided by n_valid):
    backward with grad_output 1 returns that very buffer, unchanged, as logits.grad (no copy, no pass)."""
    logits, bank, index = _case(seed=3)
    z = logits.clone().requires_grad_(True)
    loss = fused_alr_loss(z, bank.clone(), index, ALRParams(ALPHA, LAM, reduction=reduction))
    (saved,) = loss.grad_fn.saved_tensors
    before, ptr = saved.clone(), saved.data_ptr()
    del saved  # holding it would make autograd copy the gradient into .grad
    loss.backward(torch.ones_like(loss))
    assert z.grad.data_ptr() == ptr and torch.equal(z.grad, before)
    ref = logits.clone().requires_grad_(True)
    out = alr_loss_reference(ref, bank.clone(), index, ALRParams(ALPHA, LAM, reduction=reduction))
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(z.grad, ref.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_retained_graph_second_backward_with_another_grad_output(reduction):
    logits, bank, index = _case(seed=5)
    z = logits.clone().requires_grad_(True)
    loss = fused_alr_loss(z, bank.clone(), index, ALRParams(ALPHA, LAM, reduction=reduction))
    ref_z = logits.clone().requires_grad_(True)
    ref = alr_loss_reference(ref_z, bank.clone(), index, ALRParams(ALPHA, LAM, reduction=reduction))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        go = (torch.rand(loss.shape, generator=g) + 0.5).to(DEVICE)
        (fused,) = torch.autograd.grad(loss, z, go, retain_graph=True)
        (want,) = torch.autograd.grad(ref, ref_z, go, retain_graph=True)
        torch.testing.assert_close(fused, want, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------- bad indices
@pytest.mark.parametrize("assume_unique", [True, False])
@pytest.mark.parametrize(
    "K,launch", [pytest.param(7, {}, id="K7"), pytest.param(600, dict(block_k=128, rows_per_program=2), id="K600")]
)
def test_out_of_range_index_is_masked_and_reported(K, launch, assume_unique):
    """index >= N: no read or write outside the bank (every bank row stays exact), a NaN loss and gradient row,
    the other rows exact; raise_on_bad_index names the largest bad index once, then the flag is clear."""
    logits, bank, index = _case(B=8, K=K, N=20, seed=7)
    index = torch.tensor([3, 25, -1, 7, 20, 11, 0, 19], device=DEVICE)
    bank_before = bank.clone()
    z = logits.clone().requires_grad_(True)
    params = ALRParams(ALPHA, LAM, reduction="none", assume_unique=assume_unique)
    rows = fused_alr_loss(z, bank, index, params, **launch)
    rows.sum().backward()
    bad = torch.tensor([1, 4])
    good = torch.tensor([0, 3, 5, 6, 7])
    assert torch.isnan(rows[bad]).all() and torch.isnan(z.grad[bad]).all()
    ref_bank = bank_before.clone()
    ref = alr_loss_reference(logits[good], ref_bank, index[good], ALRParams(ALPHA, LAM, reduction="none"))
    torch.testing.assert_close(rows[good], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bank, ref_bank, rtol=1e-6, atol=1e-7)  # rows 3, 7, 11, 0, 19 updated, rest equal
    with pytest.raises(IndexError, match="index 25 is out of range for a bank of 20 rows"):
        raise_on_bad_index(DEVICE, n_rows=20)
    raise_on_bad_index(DEVICE)  # reset: nothing to report


@pytest.mark.parametrize("assume_unique", [True, False])
def test_index_equal_to_n_alone_is_reported(assume_unique):
    """The flag's boundary: index == N (the first out-of-range row) is reported even when it is the only bad
    index, and repeated (the duplicate-safe path's sorted keys hold it twice)."""
    logits, bank, _ = _case(B=6, K=5, N=20, seed=11)
    index = torch.tensor([3, 20, -1, 19, 0, 20 if not assume_unique else 7], device=DEVICE)
    rows = fused_alr_loss(logits, bank, index, ALRParams(ALPHA, LAM, reduction="none", assume_unique=assume_unique))
    assert torch.isnan(rows[1]) and torch.isfinite(rows[[0, 2, 3, 4]]).all()
    with pytest.raises(IndexError, match="index 20 is out of range"):
        raise_on_bad_index(DEVICE, n_rows=20)
    raise_on_bad_index(DEVICE)


def test_in_range_calls_leave_the_flag_clear():
    logits, bank, index = _case(seed=9)
    fused_alr_loss(logits, bank, index, ALRParams(ALPHA, LAM, assume_unique=True))
    raise_on_bad_index(DEVICE)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_check_index_detects_out_of_range_and_broken_assume_unique(backend):
    logits, bank, index = _case(seed=11)
    with pytest.raises(IndexError, match="index 30 is out of range for a bank of 30 rows"):
        alr_loss(logits, bank, torch.where(index == index[0], 30, index), alpha=ALPHA, lam=LAM, backend=backend)
    dup = index.clone()
    dup[5] = dup[0]
    with pytest.raises(ValueError, match="assume_unique=True but index repeats"):
        alr_loss(logits, bank, dup, alpha=ALPHA, lam=LAM, backend=backend, assume_unique=True, check_index=True)
    padded_twice = index.clone()
    padded_twice[[1, 2]] = -1  # repeated padding is not a duplicate
    alr_loss(logits, bank, padded_twice, alpha=ALPHA, lam=LAM, backend=backend, assume_unique=True)


# ------------------------------------------------------------------------------------------ torch backend
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_assume_unique_fast_path_equals_reference(bank_dtype, reduction, monkeypatch):
    """No sort, no host sync (sequential_rank is never called): the same loss, bank and gradient as the
    sequential reference on unique indices (to fp32 rounding; bank rows within 1 ulp of the bank dtype; NaN
    rows, zero rows and untouched bank rows exactly), with padded and non-finite rows (one of them first)."""
    import alr_fast.loss.reference as reference  # the fast path must not use its sequential machinery

    B, K, N = 40, 13, 100
    g = torch.Generator().manual_seed(17)
    logits = torch.randn(B, K, generator=g) * 3
    bank = torch.softmax(torch.randn(N, K, generator=g), 1).to(bank_dtype)
    index = torch.randperm(N, generator=g)[:B]
    index[[0, 9, 30]] = -1
    logits[1, 4] = float("nan")
    logits[20, 0] = float("inf")
    out = {}
    for fast in (False, True):
        b, z = bank.clone(), logits.clone().requires_grad_(True)
        with monkeypatch.context() as m:
            if fast:
                m.setattr(reference, "sequential_rank", None)  # would raise TypeError if called
            loss = alr_loss(z, b, index, alpha=ALPHA, lam=LAM, reduction=reduction, backend="torch",
                            check_index=False, assume_unique=fast)  # fmt: skip
        loss.sum().backward()
        out[fast] = (loss.detach(), z.grad, b)
    (ref_loss, ref_grad, ref_bank), (loss, grad, new_bank) = out[False], out[True]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.equal(torch.isnan(grad), torch.isnan(ref_grad)) and torch.equal(grad[[0, 9, 30]], ref_grad[[0, 9, 30]])
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7, equal_nan=True)
    ulp = 2**-7 if bank_dtype == torch.bfloat16 else 2**-22
    torch.testing.assert_close(new_bank.float(), ref_bank.float(), rtol=ulp, atol=0)
    written = torch.zeros(N, dtype=torch.bool)
    written[index[(index >= 0) & torch.isfinite(logits).all(1)]] = True
    assert torch.equal(new_bank[~written], bank[~written]) and not torch.equal(new_bank[written], bank[written])


def test_torch_assume_unique_fast_path_edge_batches():
    """Only padded / non-finite rows: the bank is untouched (the redirected writes rewrite a row's own value)."""
    bank = torch.softmax(torch.randn(6, 4), 1)
    before = bank.clone()
    logits = torch.randn(3, 4)
    logits[1, 0] = float("nan")
    index = torch.tensor([-1, 2, -1])
    loss = alr_loss(logits, bank, index, alpha=ALPHA, lam=LAM, backend="torch", assume_unique=True)
    assert torch.isnan(loss) and torch.equal(bank, before)
    empty = alr_loss(torch.zeros(0, 4), bank, torch.zeros(0, dtype=torch.long), alpha=ALPHA, lam=LAM,
                     backend="torch", assume_unique=True)  # fmt: skip
    assert float(empty) == 0.0 and torch.equal(bank, before)


# ---------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_gpu_tensors_on_a_non_current_device():
    """Tensors on cuda:1 while cuda:0 is current: the launches run on cuda:1 (device guard) and match."""
    logits, bank, index = _case(seed=19)
    dev = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    z = logits.to(dev).requires_grad_(True)
    b = bank.to(dev)
    loss = fused_alr_loss(z, b, index.to(dev), ALRParams(ALPHA, LAM))
    loss.backward()
    ref_z = logits.cpu().requires_grad_(True)
    ref_b = bank.cpu()
    alr_loss_reference(ref_z, ref_b, index.cpu(), ALRParams(ALPHA, LAM)).backward()
    torch.testing.assert_close(z.grad.cpu(), ref_z.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b.cpu(), ref_b, rtol=1e-6, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_gpu_forward_and_early_exit_backward_without_host_sync():
    """The trainer's call (assume_unique, check_index off): forward + backward with sync debug mode 'error'."""
    logits, bank, index = _case(B=1024, K=1000, N=4096, seed=23)
    z = logits.clone().requires_grad_(True)
    alr_loss(z, bank, index, alpha=ALPHA, lam=LAM, backend="triton", check_index=False, assume_unique=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = alr_loss(z, bank, index, alpha=ALPHA, lam=LAM, backend="triton", check_index=False,
                        assume_unique=True)  # fmt: skip
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(z.grad).all()


# ---------------------------------------------------------------------------------- "mean": valid-row count
@pytest.mark.parametrize("path", [dict(), dict(block_k=4, rows_per_program=1, split_k=-1), dict(split_k=4)],
                         ids=["one-sweep", "two-sweep", "split-k"])
@pytest.mark.parametrize("assume_unique", [True, False])
def test_mean_count_from_the_caller_or_the_prepass(path, assume_unique):
    """"mean" divides the gradient by the batch's valid-row count, taken once per call: from the caller
    (``n_valid``, any number dtype) or from the one-program pre-pass. Both give bitwise the same results and
    match the reference; the count really is read (twice the count halves the gradient, not the loss)."""
    from alr_fast.loss.triton import alr_forward

    logits, bank, index = _case(B=12, K=10, seed=17)
    index[[2, 7]] = -1  # 3 padded rows
    p = ALRParams(ALPHA, LAM, assume_unique=assume_unique)
    outs = []
    for n_valid in (None, (index >= 0).sum(), (index >= 0).sum().float().reshape(1)):
        b = bank.clone()
        loss, grad = alr_forward(logits, b, index, p, n_valid=n_valid, **path)
        outs.append((loss, grad.clone(), b))
    for loss, grad, b in outs[1:]:
        assert torch.equal(loss, outs[0][0]) and torch.equal(grad, outs[0][1]) and torch.equal(b, outs[0][2])
    z = logits.clone().requires_grad_(True)
    ref_bank = bank.clone()
    ref = alr_loss_reference(z, ref_bank, index, p)
    ref.backward()
    torch.testing.assert_close(outs[0][0], ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0][1], z.grad, rtol=1e-5, atol=1e-7)
    loss2, grad2 = alr_forward(logits, bank.clone(), index, p, n_valid=2 * (index >= 0).sum(), **path)
    assert torch.equal(loss2, outs[0][0])  # the loss is reduced by the last program from its own count
    torch.testing.assert_close(grad2 * 2, outs[0][1], rtol=1e-6, atol=0)
    through_autograd = logits.clone().requires_grad_(True)  # (autograd takes the default launch path)
    fused_alr_loss(through_autograd, bank.clone(), index, p, n_valid=(index >= 0).sum()).backward()
    torch.testing.assert_close(through_autograd.grad, outs[0][1], rtol=1e-5, atol=1e-7)


def test_mean_count_argument_is_checked():
    logits, bank, index = _case(seed=3)
    for bad in ((index >= 0), torch.ones(2, device=DEVICE), 5):
        with pytest.raises(ValueError, match="n_valid must be a one-element real tensor"):
            fused_alr_loss(logits, bank.clone(), index, ALRParams(ALPHA, LAM), n_valid=bad)


class _CountLaunches:
    """Stands in for a ``@triton.jit`` kernel in ``launch``'s namespace: counts ``kernel[grid](...)`` launches."""

    def __init__(self, kernel, name, calls):
        self.kernel, self.name, self.calls = kernel, name, calls

    def __getitem__(self, grid):
        self.calls[self.name] = self.calls.get(self.name, 0) + 1
        return self.kernel[grid]


def test_alr_object_with_the_callers_count_is_one_forward_launch(monkeypatch):
    """What the trainer does (alr_fast.ALR with ``n_valid=(idx >= 0).sum()``, assume_unique, "mean"): the fused
    forward is one launch (no counting pre-pass) and gives bitwise the results of the call without the count
    (two launches: pre-pass + forward); a wrong count reaches the kernel (the gradient halves, the loss not)."""
    from alr_fast import ALR

    calls = {}
    monkeypatch.setattr(launch, "_alr_fwd_kernel", _CountLaunches(launch._alr_fwd_kernel, "forward", calls))
    monkeypatch.setattr(launch, "count_valid_kernel", _CountLaunches(launch.count_valid_kernel, "count", calls))
    g = torch.Generator().manual_seed(29)
    labels = torch.randint(0, 6, (20,), generator=g)
    logits = torch.randn(9, 6, generator=g).to(DEVICE)
    idx = torch.randperm(20, generator=g)[:9].to(DEVICE)
    idx[[1, 5]] = -1  # padding
    outs = {}
    for name, count in (("pre-pass", None), ("caller", (idx >= 0).sum()), ("doubled", 2 * (idx >= 0).sum())):
        calls.clear()
        alr = ALR(labels, 6, warmup=0, ramp_epochs=0, backend="triton", assume_unique=True, check_index=False,
                  device=DEVICE)  # fmt: skip
        z = logits.clone().requires_grad_(True)
        loss = alr(z, idx, n_valid=count)
        outs[name] = (dict(calls), loss.detach(), alr.soft_labels.clone())
        loss.backward()
        outs[name] += (z.grad,)
    assert outs["pre-pass"][0] == {"forward": 1, "count": 1}
    assert outs["caller"][0] == outs["doubled"][0] == {"forward": 1}
    for a, b in zip(outs["caller"][1:], outs["pre-pass"][1:]):
        assert torch.equal(a, b)
    assert torch.equal(outs["doubled"][1], outs["caller"][1])  # the loss: the kernel's own count
    torch.testing.assert_close(outs["doubled"][3] * 2, outs["caller"][3], rtol=1e-6, atol=0)
    ref_z = logits.clone().requires_grad_(True)
    ref_bank = torch.nn.functional.one_hot(labels, 6).float().to(DEVICE)
    ref = alr_loss_reference(ref_z, ref_bank, idx, ALRParams(0.9, 0.3, assume_unique=True))
    ref.backward()
    torch.testing.assert_close(outs["caller"][1], ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs["caller"][3], ref_z.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(outs["caller"][2], ref_bank, rtol=1e-6, atol=1e-7)
