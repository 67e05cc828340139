"""Fused Triton ALR kernel (``alr_fast.loss.triton``) against an independent float64 computation.

Runs under the Triton interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU) and
unchanged on a GPU. Every case checks the loss, the logits gradient (through autograd), the updated bank rows
and the bank rows that must stay untouched. The float64 helper below is a plain per-row loop written from the
specification in ``alr_fast/loss/reference.py``; its gradient comes from float64 autograd, not from the formula the
kernel uses. GPU-only checks (races at large B, bitwise reproducibility, huge shapes, launch counts, host
syncs, CUDA graphs, torch.compile with inductor) are marked and skipped without CUDA.
"""

from __future__ import annotations

import math

import pytest
import torch

from alr_fast.loss.contract import ALRParams
from alr_fast.loss.functional import alr_loss
from alr_fast.loss.reference import alr_loss_reference

kernels = pytest.importorskip("alr_fast.loss.triton")
if not kernels.HAS_FUSED_ALR:
    pytest.skip("triton is not installed: no fused kernel", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from alr_fast.loss.triton import ALRLoss, alr_forward, fused_alr_loss, pick_config  # noqa: E402
from alr_fast.loss.triton import alr_kernels, heuristics, reduction  # noqa: E402
from alr_fast.loss.triton.rows import INTERPRETED, round_to  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def gpu_only(fn):
    """Marked ``gpu`` (``pytest -m gpu`` selects them: benchmarks/gpu_evidence.sh) and skipped without CUDA."""
    skip = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the interpreter runs programs one by one)")
    return pytest.mark.gpu(skip(fn))



ALPHA = 0.7
LAM = 0.6

# Tolerances next to the dtypes. The kernel computes in fp32 from the logits as rounded to their dtype (the
# float64 helper starts from the same rounded values), so the loss is fp32-accurate for every logits dtype;
# the gradient is stored in the logits dtype and rounded once more by the backward scaling; bank rows are
# rounded to the bank dtype, and a 1-ulp difference in a bank row read back by a later duplicate shows in
# that occurrence's loss and gradient, hence the bank term in every tolerance.
GRAD_TOL = {  # (rtol, atol) of the stored gradient
    torch.float32: (2e-5, 2e-6),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (2e-3, 1e-5),
}
BANK_TOL = {  # (rtol, atol) of bank rows: ~1 ulp of the bank dtype
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (8e-3, 1e-6),
    torch.float16: (1e-3, 1e-6),
    torch.float64: (1e-5, 1e-6),  # t_new is computed in fp32 (as in the reference), then stored in fp64
}
LOSS_TOL = (1e-5, 1e-5)  # fp32 loss


def _tol(kind: str, logits_dtype: torch.dtype, bank_dtype: torch.dtype) -> dict:
    b_rtol, b_atol = BANK_TOL[bank_dtype]
    if kind == "bank":
        return dict(rtol=b_rtol, atol=b_atol)
    rtol, atol = LOSS_TOL if kind == "loss" else GRAD_TOL[logits_dtype]
    # A bank element t_k read back after a duplicate's write can differ by 1 ulp: |dL| <= alpha*ulp*|log p_k|.
    return dict(rtol=max(rtol, b_rtol / 4), atol=atol + b_rtol * 0.1)


# ------------------------------------------------------------------------------------ independent float64
def alr_float64(logits, bank, index, *, alpha, lam, refine, reduction):
    """Per-row float64 loop from the specification: returns (loss, dloss/dlogits, bank after the call).

    Duplicates are applied in batch order (each occurrence reads the row as stored, i.e. rounded to the bank
    dtype, after the previous occurrence's write); non-finite rows get NaN loss and gradient and no write.
    """
    B, K = logits.shape
    bank_out = bank.clone()
    per_row = torch.zeros(B, dtype=torch.float64)
    grad = torch.zeros(B, K, dtype=torch.float64)
    for i in range(B):
        j = int(index[i])
        if j < 0:
            continue
        z = logits[i].detach().to(torch.float64)
        if not bool(torch.isfinite(z).all()):
            per_row[i] = math.nan
            grad[i] = math.nan
            continue
        z.requires_grad_(True)
        logp = z - torch.logsumexp(z, dim=0)
        p = logp.exp()
        t = bank_out[j].to(torch.float64)
        if refine:
            t = alpha * t + (1.0 - alpha) * p.detach()
            bank_out[j] = t.to(bank.dtype)
            row_loss = -(t * logp).sum() + lam * (-(p * logp).sum())
        else:
            row_loss = -(t * logp).sum()
        (g,) = torch.autograd.grad(row_loss, z)
        per_row[i] = row_loss.detach()
        grad[i] = g
    n_valid = int((index >= 0).sum())
    if reduction == "none":
        return per_row, grad, bank_out
    if reduction == "sum":
        return per_row.sum(), grad, bank_out
    return per_row.sum() / max(n_valid, 1), grad / max(n_valid, 1), bank_out


# ------------------------------------------------------------------------------------------------- cases
def make_case(B, K, logits_dtype, bank_dtype, *, seed, scale=3.0, n_bank=None):
    """Random logits; a bank mixing one-hot rows and soft rows whose sums are not 1 (so the (sum t) p term
    is exercised); an index with two padded rows, a row appearing 3 times and one appearing twice."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, K, generator=g) * scale).to(logits_dtype)
    n = n_bank or 2 * B + 7
    soft = torch.rand(n, K, generator=g) ** 3
    soft = soft / soft.sum(1, keepdim=True) * (0.6 + 0.8 * torch.rand(n, 1, generator=g))
    onehot = torch.nn.functional.one_hot(torch.randint(0, K, (n,), generator=g), K).float()
    bank = torch.where(torch.rand(n, 1, generator=g) < 0.5, onehot, soft).to(bank_dtype)
    index = torch.randperm(n, generator=g)[:B]
    if B >= 8:
        index[B // 2] = index[1]  # row index[1] appears 3 times, in batch order 1, B//2, B-1
        index[B - 1] = index[1]
        index[3] = index[2]  # twice, adjacent
        index[0] = -1  # padded
        index[B - 3] = -5  # padded (any negative value)
    return logits.to(DEVICE), bank.to(DEVICE), index.to(DEVICE)


def run_fused(logits, bank, index, params, *, grad_output=None, **launch):
    """Fused loss and gradient (through autograd) on copies; returns (loss, grad, bank after)."""
    z = logits.clone().requires_grad_(True)
    bank = bank.clone()
    loss = fused_alr_loss(z, bank, index, params, **launch)
    go = torch.ones_like(loss) if grad_output is None else grad_output
    loss.backward(go)
    return loss.detach(), z.grad, bank


def check_against_float64(logits, bank, index, *, alpha, lam, refine, reduction, grad_output=None,
                          assume_unique=False, **launch):
    params = ALRParams(alpha, lam, refine, reduction, assume_unique)
    fused_loss, fused_grad, fused_bank = run_fused(logits, bank, index, params, grad_output=grad_output, **launch)
    ref_loss, ref_grad, ref_bank = alr_float64(
        logits.cpu(), bank.cpu(), index.cpu(), alpha=alpha, lam=lam, refine=refine, reduction=reduction
    )
    if grad_output is not None:
        go = grad_output.cpu().double()
        ref_grad = ref_grad * (go[:, None] if go.dim() else go)
    ldt, bdt = logits.dtype, bank.dtype
    assert fused_loss.dtype == torch.float32
    assert fused_loss.shape == ref_loss.shape
    torch.testing.assert_close(fused_loss.cpu().double(), ref_loss, equal_nan=True, **_tol("loss", ldt, bdt))
    assert fused_grad.dtype == ldt and fused_grad.shape == logits.shape
    torch.testing.assert_close(fused_grad.cpu().double(), ref_grad, equal_nan=True, **_tol("grad", ldt, bdt))
    # Bank: updated rows match, and every other row is bitwise untouched.
    touched = torch.zeros(bank.shape[0], dtype=torch.bool)
    if refine:
        good = (index.cpu() >= 0) & torch.isfinite(logits.cpu().float()).all(1)
        touched[index.cpu()[good]] = True
    torch.testing.assert_close(
        fused_bank.cpu()[touched].double(), ref_bank[touched].double(), **_tol("bank", ldt, bdt)
    )
    assert torch.equal(fused_bank.cpu()[~touched], bank.cpu()[~touched])
    return fused_loss, fused_grad, fused_bank


# Ks: tiny, odd, prime; 1000 fits one block; 2051 > block 512 exercises the two-sweep (online softmax) path.
K_CASES = [
    pytest.param(2, {}, id="K2"),
    pytest.param(3, {}, id="K3"),
    pytest.param(10, {}, id="K10"),
    pytest.param(37, {}, id="K37"),
    pytest.param(1000, {}, id="K1000"),
    pytest.param(2051, dict(block_k=512, rows_per_program=8), id="K2051-multisweep"),
]
LOGIT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BANK_DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("bank_dtype", BANK_DTYPES, ids=lambda d: f"bank-{str(d)[6:]}")
@pytest.mark.parametrize("logits_dtype", LOGIT_DTYPES, ids=lambda d: f"logits-{str(d)[6:]}")
@pytest.mark.parametrize("K,launch", K_CASES)
def test_matches_float64(K, launch, logits_dtype, bank_dtype):
    """Refinement with entropy, padded rows and duplicates; per-row losses with a random grad_output."""
    B = 24
    logits, bank, index = make_case(B, K, logits_dtype, bank_dtype, seed=1000 + K)
    go = torch.randn(B, generator=torch.Generator().manual_seed(K)).to(DEVICE)
    check_against_float64(
        logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, reduction="none", grad_output=go, **launch
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("refine,lam", [(True, 0.0), (True, LAM), (False, LAM)], ids=["selc", "alr", "warmup"])
@pytest.mark.parametrize(
    "K,launch",
    [
        pytest.param(37, {}, id="K37"),
        pytest.param(2051, dict(block_k=512, rows_per_program=8), id="K2051-multisweep"),
    ],
)
def test_modes_and_reductions(K, launch, refine, lam, reduction):
    """Warm-up (CE against the bank, no write, lam ignored), lam = 0 (SELC) and lam > 0, every reduction."""
    logits, bank, index = make_case(20, K, torch.float32, torch.float32, seed=7 * K + int(refine))
    go = torch.tensor(1.5, device=DEVICE) if reduction != "none" else torch.rand(20).to(DEVICE)
    _, _, new_bank = check_against_float64(
        logits, bank, index, alpha=ALPHA, lam=lam, refine=refine, reduction=reduction, grad_output=go, **launch
    )
    if not refine:
        assert torch.equal(new_bank, bank)  # warm-up never writes


@pytest.mark.parametrize("bank_dtype", [torch.float16, torch.float64], ids=lambda d: str(d)[6:])
def test_other_bank_dtypes(bank_dtype):
    """fp16 and fp64 banks are supported too (loaded to fp32, t_new rounded to the bank dtype)."""
    logits, bank, index = make_case(16, 19, torch.float32, bank_dtype, seed=2)
    check_against_float64(logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, reduction="none")


def test_multisweep_one_row_per_program():
    """The default layout for large K: one row per program, K in blocks (here K=700 in blocks of 256)."""
    logits, bank, index = make_case(12, 700, torch.bfloat16, torch.bfloat16, seed=3)
    check_against_float64(
        logits, bank, index, alpha=0.9, lam=LAM, refine=True, reduction="mean", block_k=256, rows_per_program=1
    )


@pytest.mark.parametrize("rows_per_program", [1, 2, 32])
def test_duplicates_sequential_in_batch_order(rows_per_program):
    """A row used 3 times (across program boundaries for small rows_per_program), a non-finite occurrence in
    the middle of another chain: each occurrence reads the previous write; the bank ends with the last."""
    B, K = 10, 6
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(B, K, generator=g).to(DEVICE) * 2
    bank = torch.softmax(torch.randn(8, K, generator=g), 1).to(torch.bfloat16).to(DEVICE)
    index = torch.tensor([4, 2, 4, -1, 7, 2, 4, 2, 0, -1], device=DEVICE)
    logits[5, 3] = float("inf")  # second occurrence of row 2: NaN loss, no write, drops out of the chain
    loss, grad, new_bank = check_against_float64(
        logits, bank, index, alpha=0.5, lam=LAM, refine=True, reduction="none", rows_per_program=rows_per_program
    )
    # Spelled out for row 4 (occurrences 0, 2, 6): t3 = a t2 + (1-a) p6 with t2 read back in bf16.
    p = torch.softmax(logits.double().cpu(), 1)
    t = bank[4].double().cpu()
    for i in (0, 2, 6):
        t = (0.5 * t + 0.5 * p[i]).to(torch.bfloat16).double()
    torch.testing.assert_close(new_bank[4].double().cpu(), t, rtol=8e-3, atol=1e-6)
    assert torch.isnan(loss[5]) and torch.isnan(grad[5]).all()
    assert torch.isfinite(loss[[0, 1, 2, 4, 6, 7, 8]]).all()
    assert torch.equal(loss[[3, 9]].cpu(), torch.zeros(2)) and torch.equal(grad[[3, 9]].cpu(), torch.zeros(2, K))
    # And the package reference agrees.
    ref_bank = bank.clone()
    ref = alr_loss_reference(logits, ref_bank, index, ALRParams(0.5, LAM, refine=True, reduction="none"))
    torch.testing.assert_close(loss, ref, equal_nan=True, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(new_bank.float(), ref_bank.float(), rtol=8e-3, atol=1e-6)


@pytest.mark.parametrize(
    "K,launch",
    [pytest.param(9, {}, id="K9"), pytest.param(1100, dict(block_k=256, rows_per_program=4), id="K1100-multisweep")],
)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_non_finite_rows(K, launch, reduction):
    """NaN / +inf / -inf rows: NaN loss, NaN gradient row, bank row untouched; other rows unaffected."""
    B = 12
    logits, bank, index = make_case(B, K, torch.float32, torch.float32, seed=11)
    index = torch.arange(B, device=DEVICE) * 2  # unique rows, so untouched rows are easy to state
    logits[2, K // 2] = float("nan")
    logits[5, 0] = float("inf")
    logits[7, K - 1] = -float("inf")
    loss, grad, new_bank = check_against_float64(
        logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, reduction=reduction, **launch
    )
    bad = torch.tensor([2, 5, 7])
    good = torch.tensor([i for i in range(B) if i not in (2, 5, 7)])
    assert torch.isnan(grad[bad]).all() and torch.isfinite(grad[good]).all()
    assert torch.equal(new_bank[index[bad]], bank[index[bad]])
    assert not torch.equal(new_bank[index[good]], bank[index[good]])
    if reduction == "none":
        assert torch.isnan(loss[bad]).all() and torch.isfinite(loss[good]).all()
    else:
        assert torch.isnan(loss)


@pytest.mark.parametrize("logits_dtype", LOGIT_DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize(
    "K,launch", [pytest.param(10, {}, id="K10"), pytest.param(600, dict(block_k=128, rows_per_program=4), id="K600")]
)
def test_extreme_logits(K, launch, logits_dtype):
    """Logits of +-1e4: p is exactly 0 or 1 in places; loss, gradient and bank stay finite and exact."""
    B = 8
    logits, bank, index = make_case(B, K, logits_dtype, torch.float32, seed=13)
    logits = (torch.sign(logits.float()) * 1e4).to(logits_dtype)
    logits[1, :] = 1e4  # a flat row at the extreme
    logits[4, 0] = -1e4
    loss, grad, _ = check_against_float64(
        logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, reduction="none", **launch
    )
    assert torch.isfinite(loss).all() and torch.isfinite(grad.float()).all()


def test_non_contiguous_logits():
    """Any row stride (a column slice of a wider tensor), and a column-strided view (copied by the host)."""
    B, K = 16, 37
    logits, bank, index = make_case(B, K, torch.float32, torch.float32, seed=17)
    wide = torch.randn(B, K + 13, device=DEVICE)
    wide[:, 5 : 5 + K] = logits
    sliced = wide[:, 5 : 5 + K]
    assert sliced.stride() == (K + 13, 1)
    check_against_float64(sliced, bank, index, alpha=ALPHA, lam=LAM, refine=True, reduction="none")
    transposed = logits.t().contiguous().t()
    assert transposed.stride() == (1, B)
    check_against_float64(transposed, bank, index, alpha=ALPHA, lam=LAM, refine=True, reduction="mean")


@pytest.mark.parametrize(
    "K,launch", [pytest.param(13, {}, id="K13"), pytest.param(300, dict(block_k=64, rows_per_program=2), id="K300")]
)
@pytest.mark.parametrize("refine", [True, False])
def test_poisoned_output_buffers(K, launch, refine):
    """Gradient and per-row loss buffers pre-filled with NaN: every element must be written (padded rows 0)."""
    B = 20
    logits, bank, index = make_case(B, K, torch.bfloat16, torch.float32, seed=19)
    grad = torch.full((B, K), float("nan"), dtype=logits.dtype, device=DEVICE)
    rows = torch.full((B,), float("nan"), device=DEVICE)
    bank_f = bank.clone()
    params = ALRParams(ALPHA, LAM, refine=refine, reduction="none")
    loss, g = alr_forward(logits, bank_f, index, params, grad=grad, loss_rows=rows, **launch)
    assert g is grad and loss is rows
    assert torch.isfinite(grad.float()).all() and torch.isfinite(rows).all()
    padded = index < 0
    assert torch.equal(grad[padded].float().cpu(), torch.zeros(int(padded.sum()), K))
    assert torch.equal(rows[padded].cpu(), torch.zeros(int(padded.sum())))
    ref_loss, ref_grad, _ = alr_float64(
        logits.cpu(), bank.cpu(), index.cpu(), alpha=ALPHA, lam=LAM, refine=refine, reduction="none"
    )
    torch.testing.assert_close(rows.cpu().double(), ref_loss, **_tol("loss", logits.dtype, bank.dtype))
    torch.testing.assert_close(grad.cpu().double(), ref_grad, **_tol("grad", logits.dtype, bank.dtype))


@pytest.mark.parametrize("launch", [dict(), dict(block_k=8, rows_per_program=1)], ids=["one-sweep", "two-sweep"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradient_into_the_logits_buffer(reduction, launch):
    """alr_forward(grad=logits) writes dL/dz over the logits it reads (both sweeps read a block before its
    gradient is stored); the results equal those with a separate gradient buffer."""
    B, K = 16, 21
    logits, bank, index = make_case(B, K, torch.float32, torch.float32, seed=23)
    params = ALRParams(ALPHA, LAM, reduction=reduction)
    ref_loss, ref_grad = alr_forward(logits, ref_bank := bank.clone(), index, params, **launch)
    z = logits.clone()
    bank2 = bank.clone()
    loss, grad = alr_forward(z, bank2, index, params, grad=z, **launch)
    assert grad.data_ptr() == z.data_ptr() and not torch.equal(z, logits)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
    assert torch.equal(bank2, ref_bank)


def test_assume_unique_matches_default_on_unique_index():
    B, K = 24, 50
    logits, bank, index = make_case(B, K, torch.float32, torch.bfloat16, seed=29)
    index = torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(1))[:B].to(DEVICE)
    index[4] = -1
    a = run_fused(logits, bank, index, ALRParams(ALPHA, LAM, assume_unique=False))
    b = run_fused(logits, bank, index, ALRParams(ALPHA, LAM, assume_unique=True))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_padded(reduction):
    """No valid row: loss 0 (mean divides by max(n_valid, 1)), zero gradient, bank untouched."""
    B, K = 6, 5
    logits, bank, _ = make_case(B, K, torch.float32, torch.float32, seed=31)
    index = torch.full((B,), -1, dtype=torch.long, device=DEVICE)
    loss, grad, new_bank = run_fused(logits, bank, index, ALRParams(ALPHA, LAM, reduction=reduction))
    assert torch.equal(loss.cpu(), torch.zeros(B) if reduction == "none" else torch.tensor(0.0))
    assert torch.equal(grad.cpu(), torch.zeros(B, K)) and torch.equal(new_bank, bank)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_empty_batch(reduction):
    bank = torch.rand(4, 3, device=DEVICE)
    z = torch.zeros(0, 3, device=DEVICE, requires_grad=True)
    empty_index = torch.zeros(0, dtype=torch.long, device=DEVICE)
    loss = fused_alr_loss(z, bank, empty_index, ALRParams(0.5, 0.1, reduction=reduction))
    assert loss.shape == ((0,) if reduction == "none" else ())
    loss.sum().backward()
    assert z.grad.shape == (0, 3)


# ------------------------------------------------------------------- single-launch ("last program") reduction
# "sum"/"mean" reduce inside the forward launch: each program stores a partial and takes a ticket; the program
# with the last ticket sums all partials in a fixed order and resets the counter. These tests force many
# programs (one or two rows each) and a tiny summation block, so the last program loops over several blocks.
def _counter() -> int:
    """The ticket counter the next launch on this device (and current stream) will use: must be 0."""
    return int(reduction.TICKETS.get(DEVICE))


def _unique_case(B, K, seed, *, n_pad, dtype=torch.float32):
    """Unique bank rows; ``n_pad`` padded rows (index -1) at random positions other than the first and last."""
    logits, bank, _ = make_case(B, K, dtype, torch.float32, seed=seed)
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(bank.shape[0], generator=g)[:B]
    index[1 + torch.randperm(B - 2, generator=g)[:n_pad]] = -1
    return logits, bank, index.to(DEVICE)


@pytest.fixture
def small_red_block(monkeypatch):
    """The last program sums 8 partials per loop step (instead of 128 * num_warps)."""
    monkeypatch.setattr(heuristics, "red_block", lambda num_warps: 8)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "refine,assume_unique,dups", [(True, True, False), (True, False, True), (False, False, True)],
    ids=["alr-unique", "alr-dedup", "warmup"],
)  # fmt: skip
@pytest.mark.parametrize(
    "K,launch",
    [
        pytest.param(5, dict(rows_per_program=1), id="K5-64programs"),
        pytest.param(40, dict(block_k=16, rows_per_program=2), id="K40-multisweep-32programs"),
    ],
)
def test_single_launch_reduction_many_programs(K, launch, refine, assume_unique, dups, reduction, small_red_block):
    """B=64 over 32-64 programs, padded rows (and duplicates on the duplicate-safe paths): loss, gradient
    (through the scale written by the last program) and bank match float64; the counter is back to 0."""
    B = 64
    if dups:
        logits, bank, index = make_case(B, K, torch.float32, torch.float32, seed=71 + K)  # 2 padded, duplicates
    else:
        logits, bank, index = _unique_case(B, K, seed=71 + K, n_pad=7)
    check_against_float64(
        logits, bank, index, alpha=ALPHA, lam=LAM, refine=refine, reduction=reduction, assume_unique=assume_unique,
        grad_output=torch.tensor(1.5, device=DEVICE), **launch,
    )  # fmt: skip
    assert _counter() == 0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("refine,assume_unique", [(True, True), (True, False), (False, False)])
def test_single_launch_reduction_all_padded(refine, assume_unique, reduction, small_red_block):
    """No valid row in 16 programs: loss exactly 0 (mean divides by max(n_valid, 1)), gradient exactly 0."""
    B, K = 16, 5
    logits, bank, _ = make_case(B, K, torch.float32, torch.float32, seed=73)
    index = torch.full((B,), -1, dtype=torch.long, device=DEVICE)
    bank_f = bank.clone()
    params = ALRParams(ALPHA, LAM, refine=refine, reduction=reduction, assume_unique=assume_unique)
    loss, grad = alr_forward(logits, bank_f, index, params, rows_per_program=1)
    assert loss.shape == () and torch.equal(loss.cpu(), torch.tensor(0.0))
    assert torch.equal(grad.cpu(), torch.zeros(B, K)) and torch.equal(bank_f, bank)
    assert _counter() == 0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("assume_unique", [True, False])
def test_single_launch_reduction_non_finite(assume_unique, reduction, small_red_block):
    """NaN / inf rows in the first and the last program: the reduced loss is NaN (as in the reference), every
    other row's gradient is finite, matches float64 and is already divided by n_valid for "mean"."""
    B, K = 48, 6
    logits, bank, index = _unique_case(B, K, seed=79, n_pad=5)  # rows 0 and B-1 are valid
    logits[0, 2] = float("nan")
    logits[B - 1, 0] = float("inf")
    loss, grad, _ = check_against_float64(
        logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, reduction=reduction, assume_unique=assume_unique,
        rows_per_program=1,
    )  # fmt: skip
    assert torch.isnan(loss)
    assert torch.isnan(grad[[0, B - 1]]).all() and torch.isfinite(grad[1 : B - 1]).all()
    params = ALRParams(ALPHA, LAM, reduction=reduction, assume_unique=assume_unique)
    _, g_fwd = alr_forward(logits, bank.clone(), index, params, rows_per_program=1)
    _, g_sum = alr_forward(logits, bank.clone(), index, ALRParams.of(ALPHA, LAM, True, "sum", assume_unique),
                           rows_per_program=1)  # fmt: skip
    n_valid = int((index >= 0).sum())
    want = g_sum[1 : B - 1] / (n_valid if reduction == "mean" else 1)
    torch.testing.assert_close(g_fwd[1 : B - 1], want, rtol=1e-6, atol=0)
    assert _counter() == 0


def test_single_launch_reduction_consecutive_calls(small_red_block):
    """Calls with different grids and reductions reuse one counter: each one matches float64 and leaves the
    counter at 0 (a missing reset would make the next call's last ticket land on the wrong program). The same
    call repeated gives the same loss bit for bit."""
    calls = [  # (B, K, rows_per_program, reduction, refine)
        (37, 5, 1, "mean", True),
        (64, 7, 2, "sum", True),
        (9, 5, 1, "none", True),  # "none" does not touch the counter
        (9, 5, 1, "mean", False),
        (40, 5, 64, "mean", True),  # a single program
        (37, 5, 1, "mean", True),
    ]
    losses = []
    for B, K, rows, reduction, refine in calls:
        logits, bank, index = _unique_case(B, K, seed=83 + B, n_pad=3)
        loss, _, _ = check_against_float64(
            logits, bank, index, alpha=ALPHA, lam=LAM, refine=refine, reduction=reduction, assume_unique=True,
            rows_per_program=rows,
        )  # fmt: skip
        losses.append(loss)
        assert _counter() == 0
    assert torch.equal(losses[0], losses[-1])


@pytest.mark.skipif(not INTERPRETED, reason="injects a Python exception into an interpreted program")
def test_interpreter_failure_mid_grid_resets_the_counter(monkeypatch):
    """Under the interpreter the programs run inside the launch call: an exception after some programs drew
    tickets must not leave the counter non-zero for the next call."""
    logits, bank, index = _unique_case(16, 5, seed=89, n_pad=2)
    original = alr_kernels._alr_rows
    calls = {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("injected failure in program 5")
        return original(*args)

    monkeypatch.setattr(alr_kernels, "_alr_rows", failing)
    with pytest.raises(Exception, match="injected failure"):
        alr_forward(logits, bank.clone(), index, ALRParams(ALPHA, LAM, assume_unique=True), rows_per_program=1)
    monkeypatch.setattr(alr_kernels, "_alr_rows", original)
    assert _counter() == 0
    check_against_float64(logits, bank, index, alpha=ALPHA, lam=LAM, refine=True, reduction="mean",
                          assume_unique=True, rows_per_program=1)  # fmt: skip


@pytest.mark.skipif(not INTERPRETED, reason="relies on the interpreter running programs 0, 1, ... in order")
def test_only_the_last_ticket_reduces_and_resets():
    """With the counter preset to c, tickets run c .. c+n-1 and ticket n-1 is drawn by program n-1-c: that
    program alone must reduce and reset, after which the remaining c programs leave the counter at c. (A
    kernel in which every program reduces, or which keys on another ticket, ends elsewhere.)"""
    logits, bank, index = _unique_case(16, 5, seed=97, n_pad=2)
    counter = reduction.TICKETS.get(DEVICE)
    try:
        counter.fill_(5)
        alr_forward(logits, bank.clone(), index, ALRParams(ALPHA, LAM, assume_unique=True), rows_per_program=1)
        assert int(counter) == 5  # the loss itself is garbage here: programs 11..15 had not stored partials yet
    finally:
        counter.zero_()


def test_functional_backend_dispatch():
    """alr_loss(backend="triton") runs the fused kernel; "auto" picks it only for CUDA tensors."""
    assert kernels.HAS_FUSED_ALR is True
    logits, bank, index = make_case(16, 12, torch.float32, torch.float32, seed=37)
    b1, b2 = bank.clone(), bank.clone()
    z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    l1 = alr_loss(z1, b1, index, alpha=ALPHA, lam=LAM, backend="triton")
    l2 = alr_loss(z2, b2, index, alpha=ALPHA, lam=LAM, backend="torch")
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b1, b2, rtol=1e-6, atol=1e-7)
    from alr_fast.loss.functional import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    if HAS_CUDA:
        assert resolve_backend("auto", torch.device("cuda")) == "triton"


def test_module_wrapper():
    logits, bank, index = make_case(12, 7, torch.float32, torch.float32, seed=41)
    mod = ALRLoss(alpha=ALPHA, lam=LAM, reduction="sum")
    assert "lam=0.6" in repr(mod)
    b1, b2 = bank.clone(), bank.clone()
    torch.testing.assert_close(
        mod(logits, b1, index, refine=False),
        fused_alr_loss(logits, b2, index, ALRParams(ALPHA, LAM, refine=False, reduction="sum")),
    )
    with pytest.raises(ValueError, match="reduction"):
        ALRLoss(alpha=0.5, lam=0.1, reduction="avg")


def test_input_errors_name_the_argument():
    logits, bank, index = make_case(8, 5, torch.float32, torch.float32, seed=43)
    p = ALRParams(ALPHA, LAM)
    with pytest.raises(TypeError, match="float64"):
        fused_alr_loss(logits.double(), bank, index, p)
    with pytest.raises(TypeError, match="index"):
        fused_alr_loss(logits, bank, index.int(), p)
    with pytest.raises(ValueError, match="bank must have unit column stride"):
        fused_alr_loss(logits, bank.t().contiguous().t(), index, p)
    with pytest.raises(ValueError, match="distinct rows"):
        fused_alr_loss(logits, bank[:1].expand(bank.shape[0], -1), index, p)
    with pytest.raises(ValueError, match="K >= 1"):
        fused_alr_loss(logits[:, :0], bank[:, :0], index, p)
    with pytest.raises(ValueError, match="K=5 classes but bank has K=4"):
        fused_alr_loss(logits, bank[:, :4], index, p)
    with pytest.raises(ValueError, match="lam"):
        fused_alr_loss(logits, bank, index, ALRParams(0.5, -1.0))
    with pytest.raises(ValueError, match="alpha"):
        fused_alr_loss(logits, bank, index, ALRParams(1.5, 0.0))
    with pytest.raises(ValueError, match="block_k"):
        fused_alr_loss(logits, bank, index, p, block_k=48)
    with pytest.raises(TypeError, match="inplace_grad"):
        fused_alr_loss(logits, bank, index, p, inplace_grad=True)  # removed: no caller (KERNEL_NOTES)
    with pytest.raises(ValueError, match="must not require grad"):
        fused_alr_loss(logits, bank.clone().requires_grad_(True), index, p)


@triton.jit
def _cast_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(y_ptr + offs, round_to(x, y_ptr.dtype.element_ty), mask=offs < n)


def test_store_rounding_matches_torch_bit_for_bit():
    """round_to (used for every bf16/fp16 store) is round-to-nearest-even like torch's casts, on every
    exact bf16 tie, inf, NaN, signed zero and subnormal, under the interpreter as on a GPU."""
    ties = ((torch.arange(2**16, dtype=torch.int32) << 16) | 0x8000).view(torch.float32)  # halfway cases
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-40, -3e-39, 3.3e38])
    x = torch.cat([ties, special, torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 100])
    for dtype in (torch.bfloat16, torch.float16):
        xs = x if dtype == torch.bfloat16 else x[~((x.abs() > 65504) & torch.isfinite(x))]  # no fp16 overflow
        xs = xs.to(DEVICE)
        y = torch.empty(xs.numel(), dtype=dtype, device=DEVICE)
        _cast_kernel[(triton.cdiv(xs.numel(), 8192),)](xs, y, xs.numel(), BLOCK=8192)
        ref = xs.to(dtype)
        same = (y.view(torch.int16) == ref.view(torch.int16)) | (torch.isnan(y) & torch.isnan(ref))
        assert bool(same.all()), f"{dtype}: {int((~same).sum())} values rounded differently"


def test_pick_config():
    cpu = torch.device("cpu")
    small = pick_config(4096, 10, cpu)
    assert small.one_sweep and small.block_k == 16 and small.rows > 1  # several rows per program
    one_block = pick_config(64, 8192, cpu)
    assert one_block.one_sweep and one_block.block_k == 8192 and one_block.rows == 1
    big = pick_config(64, 262144, cpu)
    assert not big.one_sweep and big.block_k == 2048 and big.rows == 1 and big.num_warps == 16
    assert pick_config(8, 2051, cpu, block_k=512).block_k == 512


def test_training_run_matches_reference_step_by_step():
    """10 SGD steps of a tiny linear model (2 warm-up, 8 refinement): triton and torch agree at every step."""
    torch.manual_seed(0)
    N, D, K, B = 48, 8, 5, 16
    x = torch.randn(N, D, device=DEVICE)
    labels = torch.randint(0, K, (N,), device=DEVICE)
    bank0 = torch.nn.functional.one_hot(labels, K).float()
    model0 = torch.nn.Linear(D, K).to(DEVICE)
    runs = {}
    for backend in ("torch", "triton"):
        model = torch.nn.Linear(D, K).to(DEVICE)
        model.load_state_dict(model0.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        bank = bank0.clone()
        g = torch.Generator().manual_seed(1)
        trace = []
        for step in range(10):
            idx = torch.randint(0, N, (B,), generator=g).to(DEVICE)  # with repeats, as sampling with replacement
            idx[0] = -1  # a padded slot
            loss = alr_loss(model(x[idx.clamp_min(0)]), bank, idx, alpha=0.8, lam=0.3, refine=step >= 2,
                            backend=backend)  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
            trace.append((loss.detach().clone(), model.weight.detach().clone(), bank.clone()))
        runs[backend] = trace
    for step, (ref, fused) in enumerate(zip(runs["torch"], runs["triton"])):
        for name, a, b in zip(("loss", "weight", "bank"), ref, fused):
            torch.testing.assert_close(b, a, rtol=2e-5, atol=2e-6, msg=lambda m: f"step {step} {name}: {m}")
    assert not torch.equal(runs["triton"][-1][2], bank0)  # the bank did move


def test_custom_ops_registered_and_opcheck():
    """The ops are registered (bank declared mutated) and pass torch.library.opcheck."""
    assert hasattr(torch.ops.alr_fast, "fused_alr_fwd")
    schema = torch.ops.alr_fast.fused_alr_fwd.default._schema
    assert [a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write] == ["bank"]
    logits, bank, index = make_case(8, 6, torch.float32, torch.float32, seed=47)
    for refine, reduction in ((True, "mean"), (False, "none")):
        torch.library.opcheck(
            torch.ops.alr_fast.fused_alr_fwd.default,
            (logits, bank.clone(), index, ALPHA, LAM, refine, reduction, False, 0, 0),
        )


def test_torch_compile_traces_through_the_custom_op():
    """torch.compile (aot_eager: dynamo + AOTAutograd + fake tensors, no C++ toolchain needed) gives the
    same loss, gradient and bank as eager."""
    logits, bank, index = make_case(16, 11, torch.float32, torch.float32, seed=53)

    params = ALRParams(ALPHA, LAM, reduction="mean")

    def step(z, b, i):
        return fused_alr_loss(z, b, i, params)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (step, compiled):
        z = logits.clone().requires_grad_(True)
        b = bank.clone()
        loss = fn(z, b, index)
        loss.backward()
        results.append((loss.detach(), z.grad, b))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -------------------------------------------------------------------------------------------- GPU only
@gpu_only
def test_gpu_duplicates_at_large_batch_match_reference():
    """B=16384 with heavy duplication (every bank row used ~8 times): no race, reference semantics for the
    per-row losses, the gradient (each occurrence's own t_new enters it) and the final bank."""
    B, K, N = 16384, 100, 2048
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(B, K, device="cuda", generator=g)
    bank = torch.softmax(torch.randn(N, K, device="cuda", generator=g), 1)
    index = torch.randint(0, N, (B,), device="cuda", generator=g)
    assert int(torch.bincount(index).max()) >= 8
    b1, b2 = bank.clone(), bank.clone()
    z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    l1 = fused_alr_loss(z1, b1, index, ALRParams(ALPHA, LAM, reduction="none"))
    l2 = alr_loss_reference(z2, b2, index, ALRParams(ALPHA, LAM, reduction="none"))
    go = torch.rand(B, device="cuda", generator=g)
    l1.backward(go)
    l2.backward(go)
    torch.testing.assert_close(l1, l2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b1, b2, rtol=1e-5, atol=1e-6)


@gpu_only
@pytest.mark.parametrize("K", [10, 1000, 32000])
def test_gpu_bitwise_reproducible(K):
    B, N = 4096, 1024
    g = torch.Generator(device="cuda").manual_seed(1)
    logits = torch.randn(B, K, device="cuda", generator=g, dtype=torch.bfloat16)
    bank = torch.softmax(torch.randn(N, K, device="cuda", generator=g), 1)
    index = torch.randint(0, N, (B,), device="cuda", generator=g)
    outs = [run_fused(logits, bank, index, ALRParams(ALPHA, LAM)) for _ in range(3)]
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert torch.equal(a, b)


@gpu_only
def test_gpu_large_batch_and_vocabulary():
    """B=65536 (small K) and K=262144 (small B) against the package reference."""
    for B, K in ((65536, 16), (8, 262144)):
        logits, bank, index = make_case(B, K, torch.bfloat16, torch.float32, seed=59)
        b1, b2 = bank.clone(), bank.clone()
        z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        l1 = fused_alr_loss(z1, b1, index, ALRParams(ALPHA, LAM))
        l2 = alr_loss_reference(z2, b2, index, ALRParams(ALPHA, LAM))
        l1.backward()
        l2.backward()
        torch.testing.assert_close(l1, l2, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(z1.grad.float(), z2.grad.float(), rtol=1.6e-2, atol=1e-6)
        torch.testing.assert_close(b1, b2, rtol=1e-5, atol=1e-6)


@gpu_only
def test_gpu_int64_offsets():
    """Bank with N*K > 2**31 elements (rows past the int32 range are updated), and logits whose row stride
    puts rows past 2**31 elements."""
    K = 1024
    N = (2**31) // K + 4096
    bank = torch.zeros(N, K, device="cuda", dtype=torch.bfloat16)
    index = torch.tensor([N - 1, 5, N - 4000, -1], device="cuda")
    bank[index[index >= 0]] = torch.softmax(torch.randn(3, K, device="cuda"), 1).to(torch.bfloat16)
    stride = 2**30 + 64
    storage = torch.empty(3 * stride + K, device="cuda", dtype=torch.bfloat16)
    logits = storage.as_strided((4, K), (stride, 1))
    logits.copy_(torch.randn(4, K, device="cuda"))
    rows = index[index >= 0]
    before = bank[rows].clone()
    small = bank[rows].clone()
    small_index = torch.tensor([0, 1, 2, -1], device="cuda")
    ref = alr_loss_reference(logits.contiguous(), small, small_index, ALRParams(ALPHA, LAM, reduction="none"))
    out = fused_alr_loss(logits, bank, index, ALRParams(ALPHA, LAM, reduction="none"))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bank[rows].float(), small.float(), rtol=8e-3, atol=1e-6)
    assert not torch.equal(bank[rows], before)


def _gpu_activities(fn) -> list[str]:
    """Names of the GPU activities (kernels, memsets, memcpys) during ``fn()``, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@gpu_only
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("refine,assume_unique", [(False, False), (True, True), (True, False)])
def test_gpu_launches_and_no_host_sync(refine, assume_unique, reduction):
    """No host sync on the kernel path (CUDA sync debug mode raises on one); kernel launches per call: exactly
    one GPU activity (no reduction kernel, no memset) for warm-up and assume_unique, every reduction, when the
    caller gives "mean" its valid-row count; without it, "mean" adds exactly the one-program counting pre-pass."""
    logits, bank, index = make_case(1024, 1000, torch.bfloat16, torch.float32, seed=61)
    n_valid = (index >= 0).sum()
    p = ALRParams(ALPHA, LAM, refine=refine, assume_unique=assume_unique, reduction=reduction)
    fused_alr_loss(logits, bank, index, p)  # compile and take this stream's ticket counter outside the checks
    fused_alr_loss(logits, bank, index, p, n_valid=n_valid)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused_alr_loss(logits, bank, index, p)
        fused_alr_loss(logits, bank, index, p, n_valid=n_valid)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for given in (n_valid, None):
        names = _gpu_activities(lambda: fused_alr_loss(logits, bank, index, p, n_valid=given))
        assert sum("_alr_fwd_kernel" in n for n in names) == 1, names
        counts = sum("count_valid_kernel" in n for n in names)
        assert counts == (1 if reduction == "mean" and given is None else 0), names
        if not refine or assume_unique:
            assert len(names) == 1 + counts, names  # exactly one launch per call (+ the pre-pass)
    # The step: this module launches the forward kernel and the backward scaling kernel, nothing else.
    z = logits.clone().requires_grad_(True)
    go = torch.ones(1024 if reduction == "none" else (), device="cuda")
    names = _gpu_activities(lambda: fused_alr_loss(z, bank, index, p, n_valid=n_valid).backward(go))
    ours = [n for n in names if "_alr_" in n or "count_valid" in n]
    assert len(ours) == 2 and sum("_alr_fwd_kernel" in n for n in ours) == 1, names
    assert sum("_alr_grad_scale_kernel" in n for n in ours) == 1, names
    if not refine or assume_unique:  # (torch.sort may memset its own workspace)
        assert not any("emset" in n for n in names), names


@gpu_only
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("B,K,rows", [(65536, 16, 1), (65536, 16, 0), (16384, 1000, 0), (1024, 32000, 0)])
def test_gpu_single_launch_reduction_bitwise_and_complete(B, K, rows, reduction):
    """Many programs (up to 65,536, so the last one loops over 256 blocks of partials): the reduced loss is
    bitwise identical run to run, and equals the float64 sum of the per-row losses of the same call to fp32
    accuracy (a partial missed or read stale would be off by ~1/n_programs). Two inputs alternate, so a stale
    partial from the previous call could not go unnoticed."""
    cases = []
    for seed in (101, 103):
        g = torch.Generator(device="cuda").manual_seed(seed)
        logits = (torch.randn(B, K, device="cuda", generator=g) * 3).to(torch.bfloat16)
        bank = torch.softmax(torch.randn(2 * B, K, device="cuda", generator=g), 1)
        index = torch.randperm(2 * B, device="cuda", generator=g)[:B]
        index[torch.randperm(B, device="cuda", generator=g)[: B // 10]] = -1
        per_row = ALRParams(ALPHA, LAM, reduction="none", assume_unique=True)
        rows_loss = alr_forward(logits, bank.clone(), index, per_row, rows_per_program=rows)[0]
        total = rows_loss.double().sum()
        want = total / max(int((index >= 0).sum()), 1) if reduction == "mean" else total
        cases.append((logits, bank, index, want))
    first = [None, None]
    for rep in range(6):
        logits, bank, index, want = cases[rep % 2]
        params = ALRParams(ALPHA, LAM, reduction=reduction, assume_unique=True)
        loss, _ = alr_forward(logits, bank.clone(), index, params, rows_per_program=rows)
        if first[rep % 2] is None:
            first[rep % 2] = loss.clone()
            torch.testing.assert_close(loss.double(), want, rtol=2e-6, atol=0)
        assert torch.equal(loss, first[rep % 2]), (rep, loss, first[rep % 2])
    assert int(reduction.TICKETS.get(DEVICE)) == 0


@gpu_only
def test_gpu_concurrent_streams_use_separate_counters():
    """Two streams issue single-launch reductions concurrently: each stream has its own ticket counter, and
    every result equals the result of the same call made alone. Both streams are first held by a GPU sleep,
    so their 20 launches each are queued and released together: the launches really overlap (checked with
    events: each stream's work starts before the other's ends)."""
    B, K = 16384, 100
    inputs = [_unique_case(B, K, seed=s, n_pad=100) for s in (107, 109)]
    p = ALRParams(ALPHA, LAM, refine=False, reduction="mean", assume_unique=True)
    alone = [fused_alr_loss(lg, bk, ix, p) for lg, bk, ix in inputs]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    counters = []
    for st in streams:
        st.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(st):
            counters.append(reduction.TICKETS.get(DEVICE))
    assert counters[0].data_ptr() != counters[1].data_ptr()
    results = [[], []]
    starts = [torch.cuda.Event(enable_timing=True) for _ in streams]
    ends = [torch.cuda.Event(enable_timing=True) for _ in streams]
    for j, st in enumerate(streams):
        with torch.cuda.stream(st):
            torch.cuda._sleep(200_000_000)  # ~0.1 s: both streams' launches queue up behind it
            starts[j].record(st)
    for _ in range(20):
        for j, st in enumerate(streams):
            with torch.cuda.stream(st):
                results[j].append(fused_alr_loss(*inputs[j], p))
    for j, st in enumerate(streams):
        ends[j].record(st)
        torch.cuda.current_stream().wait_stream(st)
    torch.cuda.synchronize()
    # Overlap: stream 0 started before stream 1 ended and vice versa (elapsed_time(a, b) = time from a to b).
    assert starts[0].elapsed_time(ends[1]) > 0 and starts[1].elapsed_time(ends[0]) > 0
    for j in range(2):
        for r in results[j]:
            assert torch.equal(r, alone[j])
    assert all(int(c) == 0 for c in counters)


@gpu_only
def test_gpu_cuda_graph_single_launch_reduction():
    """A captured graph with two single-launch reductions, replayed with new inputs between eager calls on
    the same counter: bitwise equal to eager, and each replay runs two kernels and no memset."""
    B, K = 4096, 100
    logits, bank, index = _unique_case(B, K, seed=113, n_pad=50)
    mean_warmup = ALRParams(ALPHA, LAM, refine=False, reduction="mean", assume_unique=True)
    sum_refine = ALRParams(ALPHA, LAM, reduction="sum", assume_unique=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up of both captured variants: compile, zeroed counter slab
        fused_alr_loss(logits, bank.clone(), index, mean_warmup)
        fused_alr_loss(logits, bank.clone(), index, sum_refine)
    torch.cuda.current_stream().wait_stream(s)
    static_logits, static_bank = logits.clone(), bank.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mean = fused_alr_loss(static_logits, static_bank, index, mean_warmup)
        total = fused_alr_loss(static_logits, static_bank, index, sum_refine)
    for seed in range(3):
        new = torch.randn(B, K, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed))
        static_logits.copy_(new)
        static_bank.copy_(bank)
        names = _gpu_activities(graph.replay)
        eager_bank = bank.clone()
        eager_mean = fused_alr_loss(new, eager_bank, index, mean_warmup)
        eager_sum = fused_alr_loss(new, eager_bank, index, sum_refine)
        torch.cuda.synchronize()
        assert torch.equal(mean, eager_mean) and torch.equal(total, eager_sum)
        assert torch.equal(static_bank, eager_bank)
        assert sum("_alr_fwd_kernel" in n for n in names) == 2 and not any("emset" in n for n in names), names
        assert sum("count_valid_kernel" in n for n in names) == 1, names  # the "mean" call's pre-pass


@gpu_only
def test_gpu_cuda_graph_and_inductor():
    logits, bank, index = make_case(256, 100, torch.float32, torch.float32, seed=67)
    eager_bank = bank.clone()
    eager = fused_alr_loss(logits, eager_bank, index, ALRParams(ALPHA, LAM))
    # CUDA graph capture and replay of the forward (bank updated in the graph).
    static_bank = bank.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fused_alr_loss(logits, static_bank.clone(), index, ALRParams(ALPHA, LAM))  # warm-up / compile
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = fused_alr_loss(logits, static_bank, index, ALRParams(ALPHA, LAM))
    static_bank.copy_(bank)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_loss, eager, rtol=0, atol=0)
    torch.testing.assert_close(static_bank, eager_bank, rtol=0, atol=0)
    # torch.compile with inductor, fullgraph.
    params = ALRParams(ALPHA, LAM)
    compiled = torch.compile(lambda z, b, i: fused_alr_loss(z, b, i, params), fullgraph=True)
    b3 = bank.clone()
    torch.testing.assert_close(compiled(logits, b3, index), eager, rtol=0, atol=0)
    torch.testing.assert_close(b3, eager_bank, rtol=0, atol=0)


def test_interpreter_flag_matches_device():
    """Interpreter on CPU (conftest sets TRITON_INTERPRET=1 there), compiled kernels on a GPU."""
    assert INTERPRETED == (not HAS_CUDA)


# ----------------------------------------------------------------------------------------------- split-K path
def _split_case(B, K, logits_dtype, bank_dtype, *, seed):
    """make_case's logits and bank with a duplicate-free index (the split path's precondition), two padded
    rows and a non-finite row."""
    logits, bank, _ = make_case(B, K, logits_dtype, bank_dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    index = torch.randperm(bank.shape[0], generator=g)[:B]
    index[0] = -1
    index[B - 2] = -3
    logits[B // 2, K // 3] = float("nan")
    return logits, bank, index.to(DEVICE)


def _forward_vs_float64(logits, bank, index, params, **launch):
    b = bank.clone()
    loss, grad = alr_forward(logits, b, index, params, **launch)
    ref_loss, ref_grad, ref_bank = alr_float64(
        logits.cpu(), bank.cpu(), index.cpu(), alpha=params.alpha, lam=params.lam, refine=params.refine,
        reduction=params.reduction,
    )
    ldt, bdt = logits.dtype, bank.dtype
    torch.testing.assert_close(loss.cpu().double(), ref_loss, equal_nan=True, **_tol("loss", ldt, bdt))
    torch.testing.assert_close(grad.cpu().double(), ref_grad, equal_nan=True, **_tol("grad", ldt, bdt))
    torch.testing.assert_close(b.cpu().double(), ref_bank.double(), **_tol("bank", ldt, bdt))
    return loss, grad, b


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("refine,lam", [(True, 0.0), (True, LAM), (False, LAM)], ids=["selc", "alr", "warmup"])
@pytest.mark.parametrize("K,chunk", [(1037, 256), (300, 512), (64, 16)], ids=["K1037-C5", "K300-C1", "K64-C4"])
def test_split_k_matches_float64(K, chunk, refine, lam, reduction):
    """Split-K (two launches, one program per row chunk): every mode and reduction, a chunk count that is not
    a power of two, one chunk larger than K, padded rows and a NaN row (NaN loss and gradient, no write)."""
    logits, bank, index = _split_case(10, K, torch.float32, torch.float32, seed=K + chunk)
    params = ALRParams(ALPHA, lam, refine, reduction, True)
    _, grad, new_bank = _forward_vs_float64(logits, bank, index, params, split_k=chunk)
    assert torch.isnan(grad[5]).all() and torch.equal(grad[0], torch.zeros_like(grad[0]))
    assert torch.equal(new_bank[index[5]], bank[index[5]])  # the NaN row's bank row is not written
    if not refine:
        assert torch.equal(new_bank, bank)


@pytest.mark.parametrize("logits_dtype,bank_dtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32)],
                         ids=["bf16-bf16", "fp16-fp32"])
def test_split_k_low_precision(logits_dtype, bank_dtype):
    logits, bank, index = _split_case(9, 700, logits_dtype, bank_dtype, seed=11)
    _forward_vs_float64(logits, bank, index, ALRParams(0.9, LAM, True, "mean", True), split_k=128)


def test_split_k_agrees_with_one_launch_kernel_and_flags_a_bad_index():
    logits, bank, index = _split_case(8, 500, torch.float32, torch.float32, seed=3)
    index[2] = bank.shape[0] + 4  # out of range: NaN row, no bank access, recorded for raise_on_bad_index
    p = ALRParams(ALPHA, LAM, True, "none", True)
    b1, b2 = bank.clone(), bank.clone()
    l1, g1 = alr_forward(logits, b1, index, p, split_k=64)
    with pytest.raises(IndexError, match=f"index {bank.shape[0] + 4} is out of range"):
        kernels.raise_on_bad_index(DEVICE)
    l2, g2 = alr_forward(logits, b2, index, p, split_k=-1)
    with pytest.raises(IndexError):
        kernels.raise_on_bad_index(DEVICE)
    assert torch.isnan(l1[2]) and torch.isnan(g1[2]).all()
    torch.testing.assert_close(l1, l2, equal_nan=True, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g1, g2, equal_nan=True, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b1, b2, rtol=1e-6, atol=1e-7)


def test_split_k_is_not_used_for_duplicate_chains():
    """Refinement without assume_unique must chain duplicates: split_k is ignored there (same results as the
    sequential float64 loop, with a row that appears three times)."""
    logits, bank, index = make_case(16, 300, torch.float32, torch.float32, seed=4)
    _forward_vs_float64(logits, bank, index, ALRParams(ALPHA, LAM, True, "mean", False), split_k=64)


def test_split_chunk_choice():
    cpu = torch.device("cpu")
    assert kernels.split_chunk(4, 300_000, cpu) == 0  # the interpreter's target is one program: never auto
    assert kernels.split_chunk(4, 300, cpu, 64) == 64
    assert kernels.split_chunk(4, 300_000, cpu, -1) == 0
    with pytest.raises(ValueError, match="split_k must be"):
        kernels.split_chunk(4, 300, cpu, 48)


@gpu_only
@pytest.mark.parametrize("B,K", [(8, 262144), (64, 32000), (300, 10007)])
def test_gpu_split_k_at_large_vocab(B, K):
    """Split-K picked by itself (few rows, K > 8192), against the one-launch kernel forced (split_k=-1) and
    against float64 on a few rows."""
    assert kernels.split_chunk(B, K, DEVICE) == heuristics.SPLIT_CHUNK
    logits, bank, index = _split_case(B, K, torch.bfloat16, torch.bfloat16, seed=B + K)
    p = ALRParams(0.9, LAM, True, "mean", True)
    outs = []
    for kw in (dict(), dict(split_k=-1)):
        b = bank.clone()
        loss, grad = alr_forward(logits, b, index, p, **kw)
        outs.append((loss, grad.float(), b.float()))
    loss, grad, b = outs[0]
    torch.testing.assert_close(loss, outs[1][0], equal_nan=True, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, outs[1][1], equal_nan=True, rtol=1.6e-2, atol=1e-5)
    torch.testing.assert_close(b, outs[1][2], rtol=8e-3, atol=1e-6)
    rows = torch.arange(min(B, 4))
    _, ref_grad, _ = alr_float64(logits[rows].cpu(), bank.cpu(), index[rows].cpu(), alpha=0.9, lam=LAM,
                                 refine=True, reduction="sum")
    n_valid = int((index >= 0).sum())
    torch.testing.assert_close(outs[0][1][rows].cpu().double() * n_valid, ref_grad, equal_nan=True,
                               **_tol("grad", torch.bfloat16, torch.bfloat16))
