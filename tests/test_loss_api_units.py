"""The public loss API's plumbing, branch by branch (written after mutation testing, docs/mutation.md): the
contract's checks and their messages, backend resolution (``auto`` from the logits' device and dtype, the
baselines' refusals), that every argument of ``alr_loss``/``elr_loss``/``gce_loss``/``sce_loss``/``bootstrap_loss``
and ``ALRLoss`` reaches the backend it names (the fused path runs under the Triton interpreter on CPU, set by
tests/conftest.py), and the defaults. Tiny shapes: the whole file takes seconds."""

from __future__ import annotations

import re

import pytest
import torch

import alr_fast.loss.contract as contract
import alr_fast.loss.functional as functional
from alr_fast import alr_loss, bootstrap_loss, elr_loss, gce_loss, sce_loss
from alr_fast.loss.contract import ALRParamError, ALRParams, describe, resolve_backend, validate_fused_inputs, validate_inputs
from alr_fast.loss.reference import alr_loss_reference

kernels = pytest.importorskip("alr_fast.loss.triton")
HAS_FUSED = kernels.HAS_FUSED_ALR
needs_fused = pytest.mark.skipif(not HAS_FUSED, reason="triton is not installed: no fused kernel")


def _case(b=6, k=5, n=9, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k, generator=g, dtype=torch.float64) * 2).to(dtype)
    bank = torch.softmax(torch.randn(n, k, generator=g), 1)
    index = torch.randperm(n, generator=g)[:b]
    labels = torch.randint(0, k, (b,), generator=g)
    return logits, bank, index, labels


def _loss_grad(fn, logits, *args, **kw):
    z = logits.clone().requires_grad_(True)
    out = fn(z, *args, **kw)
    out.sum().backward()
    return out.detach(), z.grad


# --- the contract ---------------------------------------------------------------------------------------------
def test_describe_and_param_errors_carry_their_fields():
    assert describe(3) == "int" and describe(None) == "NoneType"
    assert describe(torch.zeros(2, 3, dtype=torch.bfloat16)) == "tensor of shape (2, 3) and dtype torch.bfloat16"
    e = ALRParamError("reduction", "must be one of X", "avg")
    assert (e.field, e.requirement, e.value, str(e)) == ("reduction", "must be one of X", "avg",
                                                         "alr_loss: reduction must be one of X, got 'avg'")
    assert str(ALRParamError("alpha", "must be in [0, 1]", 1.5)) == "alr_loss: alpha must be in [0, 1], got 1.5"
    for kw, field, requirement, value in [
        (dict(alpha=1.5, lam=0.0), "alpha", "must be in [0, 1]", 1.5),
        (dict(alpha=-0.1, lam=0.0), "alpha", "must be in [0, 1]", -0.1),
        (dict(alpha=0.5, lam=-1.0), "lam", "must be a finite number >= 0", -1.0),
        (dict(alpha=0.5, lam=float("inf")), "lam", "must be a finite number >= 0", float("inf")),
        (dict(alpha=0.5, lam=0.1, reduction="avg"), "reduction", f"must be one of {contract.REDUCTIONS}", "avg"),
    ]:
        with pytest.raises(ALRParamError) as err:
            ALRParams(**kw)
        assert (err.value.field, err.value.requirement, err.value.value) == (field, requirement, value)
    # the closed ends of alpha's range are allowed; flags are stored as bools
    assert ALRParams(0.0, 0.0).alpha == 0.0 and ALRParams(1.0, 0.0).alpha == 1.0
    p = ALRParams(0.5, 1, refine=0, assume_unique=1)
    assert p.assume_unique is True and p.refine is False and p.lam == 1.0 and isinstance(p.lam, float)


def test_validate_inputs_messages_and_defaults():
    logits, bank, index, _ = _case()
    validate_inputs(logits, bank, index)
    validate_inputs(logits[:, :1], bank[:, :1], index)  # K = 1 is allowed
    msg = lambda s: re.escape(s)  # noqa: E731
    with pytest.raises(ValueError, match=msg("alr_loss: logits must be a 2-D tensor [B, K], got tensor of shape "
                                             "(6,) and dtype torch.float32")):
        validate_inputs(logits[:, 0], bank, index)
    with pytest.raises(ValueError, match=msg("alr_loss: bank must be a 2-D tensor [N, K], got list")):
        validate_inputs(logits, [[0.0] * 5], index)
    with pytest.raises(ValueError, match=msg("alr_loss: bank must be a 2-D tensor [N, K], got tensor of shape (9,)")):
        validate_inputs(logits, bank[:, 0], index)
    with pytest.raises(ValueError, match=msg("ALRLoss: index must be a 1-D int64 tensor [B], got tensor of shape "
                                             "(6, 1) and dtype torch.int64")):
        validate_inputs(logits, bank, index[:, None], where="ALRLoss")
    with pytest.raises(ValueError, match=r"^alr_loss: logits \(meta\), bank \(cpu\) and index \(cpu\) must be on the "
                                         r"same device$"):
        validate_inputs(logits.to("meta"), bank, index)
    # defaults: no value check (an index >= N passes), no duplicate check
    validate_inputs(logits, bank, torch.tensor([0, 1, 2, 3, 4, 99]))
    validate_inputs(logits, bank, torch.tensor([0, 0, 1, 2, 3, 4]), check_index=True)


@pytest.mark.parametrize("index,unique,error", [
    ([9], False, "index 9 is out of range for a bank of 9 rows"),        # a single entry is checked too
    ([8], False, None),                                                   # N - 1 is in range
    ([3, 3], True, "assume_unique=True but index repeats a row (the duplicate-safe path needs assume_unique=False)"),
    ([0, 5, 5], True, "repeats a row"),                                   # a repeat after the smallest entry
    ([0, 0, 2], True, "repeats a row"),                                   # a repeat of row 0
    ([-1, -1, 2], True, None),                                            # repeated padding is not a repeat
    ([3, 3], False, None),                                                # repeats are allowed without the promise
    ([7], True, None),
])
def test_check_index_values(index, unique, error):
    index = torch.tensor(index)
    logits, bank = torch.zeros(index.numel(), 3), torch.zeros(9, 3)
    if error is None:
        validate_inputs(logits, bank, index, check_index=True, assume_unique=unique)
    else:
        with pytest.raises((IndexError, ValueError), match=re.escape(error)):
            validate_inputs(logits, bank, index, check_index=True, assume_unique=unique)


def test_validate_fused_inputs_strides():
    logits, bank, _, _ = _case()
    validate_fused_inputs(logits, bank, "w")
    # one column with any column stride, one row with a zero row stride: both can be written in place
    validate_fused_inputs(logits[:, :1], torch.zeros(40).as_strided((9, 1), (3, 7)), "w")
    validate_fused_inputs(logits[:1], torch.zeros(5).as_strided((1, 5), (0, 1)), "w")
    with pytest.raises(ValueError, match=r"^w: bank must have unit column stride and distinct rows .* got strides "
                                         r"\(1, 9\)"):
        validate_fused_inputs(logits, bank.t().contiguous().t(), "w")
    with pytest.raises(ValueError, match=r"got strides \(1, 9\)"):  # two columns, column-major
        validate_fused_inputs(logits[:, :2], bank[:, :2].t().contiguous().t(), "w")
    with pytest.raises(ValueError, match=r"got strides \(0, 1\)"):
        validate_fused_inputs(logits, torch.zeros(5).as_strided((2, 5), (0, 1)), "w")
    with pytest.raises(TypeError, match=r"^w: logits dtype torch.float64 is not supported by the fused kernel \(it "
                                        r"computes in fp32\); use backend='torch' for float64$"):
        validate_fused_inputs(logits.double(), bank, "w")


def test_resolve_backend_every_branch(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    with pytest.raises(ValueError, match=re.escape("alr_loss: backend must be one of ('auto', 'torch', 'triton'), "
                                                   "got 'cuda'")):
        resolve_backend("cuda", cpu)
    for available in (True, False):
        monkeypatch.setattr(contract, "fused_kernel_available", lambda a=available: a)
        assert resolve_backend("torch", cuda) == "torch"
        assert resolve_backend("auto", cpu, torch.float32) == "torch"
        assert resolve_backend("auto", cuda, torch.float64) == "torch"
        assert resolve_backend("auto", cuda, torch.bfloat16) == ("triton" if available else "torch")
        assert resolve_backend("auto", cuda) == ("triton" if available else "torch")
        if available:
            assert resolve_backend("triton", cpu) == "triton"
        else:
            with pytest.raises(RuntimeError, match=re.escape(
                    "alr_loss: backend='triton' requested but the fused kernel is not available in this install "
                    "(triton is not installed); use backend='torch'")):
                resolve_backend("triton", cpu)


# --- alr_loss ---------------------------------------------------------------------------------------------------
def test_alr_loss_auto_resolves_from_the_logits_and_defaults_to_auto(monkeypatch):
    seen = []
    real = functional.resolve_backend
    monkeypatch.setattr(functional, "resolve_backend", lambda *a: seen.append(a) or real(*a))
    logits, bank, index, _ = _case(dtype=torch.bfloat16)
    got = alr_loss(logits, bank.clone(), index, alpha=0.7, lam=0.4)  # default backend: auto
    assert seen == [("auto", torch.device("cpu"), torch.bfloat16)]
    want = alr_loss_reference(logits, bank.clone(), index, ALRParams(0.7, 0.4))
    torch.testing.assert_close(got, want)
    seen.clear()
    alr_loss(logits, bank.clone(), index, alpha=0.7, lam=0.4, backend="torch")
    assert seen == []  # a resolved backend is used as it is


def test_alr_loss_assume_unique_reaches_the_checks_and_the_fast_path(monkeypatch):
    logits, bank, index, _ = _case()
    calls = []
    real = functional.alr_loss_unique
    monkeypatch.setattr(functional, "alr_loss_unique", lambda *a: calls.append(a[3]) or real(*a))
    alr_loss(logits, bank.clone(), index, alpha=0.7, lam=0.4, backend="torch", assume_unique=True)
    assert len(calls) == 1 and calls[0].assume_unique is True
    alr_loss(logits, bank.clone(), index, alpha=0.7, lam=0.4, backend="torch")
    assert len(calls) == 1  # without the promise: the reference
    dup = index.clone()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match="assume_unique=True but index repeats a row"):
        alr_loss(logits, bank.clone(), dup, alpha=0.7, lam=0.4, backend="torch", assume_unique=True)


@needs_fused
def test_alr_loss_triton_runs_the_kernel_and_passes_n_valid_for_mean_only():
    logits, bank, index, _ = _case()
    index[2] = -1
    try:  # a flag an earlier test in this process may have left on this device: read (and reset) it first
        functional.raise_on_bad_index("triton", logits.device, bank.shape[0])
    except IndexError:
        pass
    # the kernel, not the reference: an index >= N is a NaN row there (the reference would raise)
    bad = index.clone()
    bad[0] = 99
    out = alr_loss(logits, bank.clone(), bad, alpha=0.7, lam=0.4, backend="triton", check_index=False,
                   reduction="none")
    assert torch.isnan(out[0]) and torch.isfinite(out[1:]).all()
    with pytest.raises(IndexError, match="index 99 is out of range for a bank of 9 rows"):
        functional.raise_on_bad_index("triton", logits.device, bank.shape[0])  # reads and resets the flag
    with pytest.raises(TypeError, match=r"^alr_loss: logits dtype torch.float64 is not supported by the fused kernel"):
        alr_loss(logits.double(), bank.clone(), index, alpha=0.7, lam=0.4, backend="triton")
    # n_valid is the mean's count: a wrong one scales the gradient, not the loss
    l1, g1 = _loss_grad(alr_loss, logits, bank.clone(), index, alpha=0.7, lam=0.4, backend="triton")
    l2, g2 = _loss_grad(alr_loss, logits, bank.clone(), index, alpha=0.7, lam=0.4, backend="triton",
                        n_valid=torch.tensor([10.0]))
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(g2, g1 * 5 / 10)
    for red in ("sum", "none"):  # ignored there
        l3, g3 = _loss_grad(alr_loss, logits, bank.clone(), index, alpha=0.7, lam=0.4, backend="triton",
                            reduction=red)
        l4, g4 = _loss_grad(alr_loss, logits, bank.clone(), index, alpha=0.7, lam=0.4, backend="triton",
                            reduction=red, n_valid=torch.tensor([10.0]))
        torch.testing.assert_close(l3, l4)
        torch.testing.assert_close(g3, g4)


@needs_fused
def test_alr_loss_module_refines_and_warms_up_with_its_params():
    from alr_fast.loss.triton import ALRLoss

    logits, bank, index, _ = _case(b=7, k=4, n=11, seed=3)
    mod = ALRLoss(0.8, 0.3)  # default reduction: mean
    assert mod.params == ALRParams(0.8, 0.3, True, "mean", False)
    assert mod.warmup_params == ALRParams(0.8, 0.3, False, "mean", False)
    assert ALRLoss(0.8, 0.3, "sum", assume_unique=True).warmup_params.assume_unique is True
    assert ALRLoss(0.8, 0.3, "sum", assume_unique=True).params.assume_unique is True
    for refine in (True, False):
        b1, b2 = bank.clone(), bank.clone()
        l1, g1 = _loss_grad(mod, logits, b1, index, refine=refine)
        l2, g2 = _loss_grad(alr_loss_reference, logits, b2, index, ALRParams(0.8, 0.3, refine))
        torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b1, b2, rtol=1e-6, atol=1e-7)
        assert torch.equal(b1, bank) != refine  # refinement writes the bank, warm-up does not
    l_default, _ = _loss_grad(mod, logits, bank.clone(), index)  # forward's default: refine
    torch.testing.assert_close(l_default, alr_loss_reference(logits, bank.clone(), index, ALRParams(0.8, 0.3)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"^ALRLoss: index dtype must be torch.int64"):
        mod(logits, bank, index.int())
    with pytest.raises(TypeError, match=r"^ALRLoss: logits dtype torch.float64 is not supported"):
        mod(logits.double(), bank, index)


# --- the baselines' dispatch ------------------------------------------------------------------------------------
def test_baseline_backend_every_branch(monkeypatch):
    from alr_fast.loss.triton.baselines import MAX_K

    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=re.escape("gce_loss: backend must be one of ('auto', 'torch', 'triton'), "
                                                   "got 'cuda'")):
        functional._baseline_backend("cuda", z, "gce_loss")
    seen = []
    monkeypatch.setattr(functional, "resolve_backend", lambda *a: seen.append(a) or "torch")
    assert functional._baseline_backend("torch", z.double(), "w") == "torch" and seen == []
    assert functional._baseline_backend("auto", z, "w") == "torch"
    assert seen == [("auto", torch.device("cpu"), torch.float32)]
    monkeypatch.setattr(functional, "resolve_backend", lambda *a: "triton")  # as on a GPU
    wide = torch.zeros(2, MAX_K + 1)
    assert functional._baseline_backend("auto", z, "w") == "triton"  # default: unique
    assert functional._baseline_backend("triton", z, "w", unique=True) == "triton"
    assert functional._baseline_backend("auto", z.double(), "w") == "torch"
    assert functional._baseline_backend("auto", wide, "w") == "torch"
    assert functional._baseline_backend("auto", torch.zeros(2, MAX_K), "w") == "triton"
    assert functional._baseline_backend("auto", z, "w", unique=False) == "torch"
    for x, unique, why in [
        (z.double(), True, "logits dtype torch.float64 (the fused kernel computes in fp32)"),
        (wide, True, f"K = {MAX_K + 1} > {MAX_K} columns"),
        (z, False, "repeated indices need the sequential order (pass assume_unique=True if none repeats)"),
    ]:
        with pytest.raises(ValueError, match="^" + re.escape(f"sce_loss: backend='triton' cannot run this call: {why}; "
                                                             "use backend='torch' or 'auto'") + "$"):
            functional._baseline_backend("triton", x, "sce_loss", unique=unique)


STATELESS = {
    "gce": (gce_loss, dict(q=0.6)),
    "sce": (sce_loss, dict(alpha=0.3, beta=0.8, log_zero=-3.0)),
    "bootstrap": (bootstrap_loss, dict(beta=0.9)),
}


@pytest.mark.parametrize("method", sorted(STATELESS))
def test_stateless_wrappers_pass_every_argument(method):
    fn, hp = STATELESS[method]
    logits, _, _, labels = _case(b=7, k=4, seed=5)
    labels[3] = -1
    l_auto, g_auto = _loss_grad(fn, logits, labels, **hp)  # default backend: auto (the reference on CPU)
    l_ref, g_ref = _loss_grad(fn, logits, labels, backend="torch", **hp)
    assert torch.equal(l_auto, l_ref) and torch.equal(g_auto, g_ref)
    if HAS_FUSED:
        for red in ("mean", "sum", "none"):
            l_f, g_f = _loss_grad(fn, logits, labels, backend="triton", reduction=red, **hp)
            l_t, g_t = _loss_grad(fn, logits, labels, backend="torch", reduction=red, **hp)
            torch.testing.assert_close(l_f, l_t, rtol=3e-5, atol=3e-6)
            torch.testing.assert_close(g_f, g_t, rtol=3e-5, atol=3e-6)
        with pytest.raises(ValueError, match=f"^{method}_loss: backend='triton' cannot run this call: logits dtype"):
            fn(logits.double(), labels, backend="triton", **hp)
        # without the label check an out-of-range label is the kernel's NaN row, not an error
        bad = labels.clone()
        bad[0] = 4
        out = fn(logits, bad, backend="triton", reduction="none", check_index=False, **hp)
        assert torch.isnan(out[0]) and torch.isfinite(out[1:]).all()
    bad = labels.clone()
    bad[1] = 4
    with pytest.raises(IndexError, match=f"^{method}_loss: label 4 at row 1 is outside \\[0, 4\\)"):
        fn(logits, bad, **hp)  # checked by default
    with pytest.raises(ValueError, match=f"^{method}_loss: labels has 6 entries"):
        fn(logits, labels[:6], **hp)


def test_elr_wrapper_passes_every_argument(monkeypatch):
    logits, bank, index, labels = _case(b=7, k=4, n=10, seed=6)
    index[4] = -1
    labels[4] = 77  # a padded row's label is never checked
    hp = dict(beta=0.6, lam=2.0)
    b_def, b_ref = bank.clone(), bank.clone()
    l_def, g_def = _loss_grad(elr_loss, logits, b_def, index, labels, **hp)  # defaults: refine, auto, sequential
    l_ref, g_ref = _loss_grad(elr_loss, logits, b_ref, index, labels, backend="torch", refine=True,
                              assume_unique=False, **hp)
    assert torch.equal(l_def, l_ref) and torch.equal(g_def, g_ref) and torch.equal(b_def, b_ref)
    assert not torch.equal(b_def, bank)  # refinement moved the bank
    b_w = bank.clone()
    elr_loss(logits, b_w, index, labels, refine=False, **hp)
    assert torch.equal(b_w, bank)  # warm-up never writes
    # a row with index 0 is a valid row: its label is checked (and named); an index >= N is named
    idx0 = torch.tensor([0, 3, 5, 7, 9, -1, 2])
    lab0 = torch.tensor([4, 0, 1, 2, 3, 0, 1])
    with pytest.raises(IndexError, match=r"^elr_loss: label 4 at row 0 is outside \[0, 4\)"):
        elr_loss(logits, bank.clone(), idx0, lab0, **hp)
    with pytest.raises(IndexError, match=r"^elr_loss: index 10 is out of range for a bank of 10 rows"):
        elr_loss(logits, bank.clone(), torch.tensor([0, 3, 5, 7, 10, -1, 2]), labels, **hp)
    dup = index.clone()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match=r"^elr_loss: assume_unique=True but index repeats a row"):
        elr_loss(logits, bank.clone(), dup, labels, assume_unique=True, **hp)
    # assume_unique skips the sequential ordering of repeats (no sort, no host sync)
    import alr_fast.loss.baselines as baselines

    def no_ordering(*a):
        raise AssertionError("the duplicate ordering ran")

    monkeypatch.setattr(baselines, "sequential_rank", no_ordering)
    elr_loss(logits, bank.clone(), index, labels, backend="torch", assume_unique=True, **hp)
    with pytest.raises(AssertionError, match="duplicate ordering"):
        elr_loss(logits, bank.clone(), index, labels, backend="torch", **hp)
    monkeypatch.undo()
    if HAS_FUSED:
        with pytest.raises(ValueError, match="^elr_loss: backend='triton' cannot run this call: repeated indices"):
            elr_loss(logits, bank.clone(), index, labels, backend="triton", **hp)
        for red in ("mean", "sum", "none"):
            for refine in (True, False):
                b_f, b_t = bank.clone(), bank.clone()
                l_f, g_f = _loss_grad(elr_loss, logits, b_f, index, labels, backend="triton", assume_unique=True,
                                      reduction=red, refine=refine, **hp)
                l_t, g_t = _loss_grad(elr_loss, logits, b_t, index, labels, backend="torch", assume_unique=True,
                                      reduction=red, refine=refine, **hp)
                torch.testing.assert_close(l_f, l_t, rtol=3e-5, atol=3e-6)
                torch.testing.assert_close(g_f, g_t, rtol=3e-5, atol=3e-6)
                torch.testing.assert_close(b_f, b_t, rtol=1e-6, atol=1e-7)
        # without the index check (check_index=False) a valid row's out-of-range label is not checked on the host:
        # the kernel gives that row a NaN loss and gradient and leaves its bank row alone
        for label in (4, -3):
            bad = labels.clone()
            bad[0] = label
            b_bad = bank.clone()
            out, g = _loss_grad(elr_loss, logits, b_bad, index, bad, backend="triton", assume_unique=True,
                                check_index=False, reduction="none", **hp)
            assert torch.isnan(out[0]) and torch.isfinite(out[1:]).all()
            assert torch.isnan(g[0]).all() and torch.isfinite(g[1:]).all()
            assert torch.equal(b_bad[index[0]], bank[index[0]]) and not torch.equal(b_bad, bank)
        with pytest.raises(ValueError, match=r"^elr_loss: bank must have unit column stride"):
            elr_loss(logits, bank.t().contiguous().t(), index, labels, backend="triton", assume_unique=True, **hp)
