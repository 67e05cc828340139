"""ELR, GCE, SCE and soft bootstrapping (torch backend) against the independent float64 oracles (tests/baselines64.py),
the oracles' hand-derived gradients against finite differences, the public functions' errors and the config."""

import math

import numpy as np
import pytest
import torch

from alr_fast import bootstrap_loss, elr_loss, gce_loss, sce_loss
from alr_fast.config import METHODS, MethodConfig
from baselines64 import ELR_EPS, _softmax, bootstrap_oracle, elr_oracle, gce_oracle, sce_oracle

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5, torch.float64: 1e-9}
GRAD_TOL = {torch.float32: 2e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float64: 1e-9}
STATELESS = {
    "gce": (gce_loss, gce_oracle, {"q": 0.7}),
    "sce": (sce_loss, sce_oracle, {"alpha": 0.1, "beta": 1.0, "log_zero": -4.0}),
    "bootstrap": (bootstrap_loss, bootstrap_oracle, {"beta": 0.95}),
}


def _bf16_store(row):
    return torch.tensor(row, dtype=torch.float64).to(torch.bfloat16).double().numpy()


def make_case(b, k, *, n=None, dtype=torch.float32, seed=0, scale=3.0, pad=0, nan_rows=0, dup=False,
              bank_dtype=torch.float32):
    """logits, labels (-1 on padded rows), bank (soft rows summing to 1), index (-1 on the same padded rows)."""
    g = torch.Generator().manual_seed(seed)
    n = n or b + 5
    logits = (torch.randn(b, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, k, (b,), generator=g)
    bank = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * 2, 1).to(bank_dtype)
    index = torch.randperm(n, generator=g)[:b].clone()
    if dup and b >= 4:
        index[1] = index[0]
        index[3] = index[0]
        index[2] = index[b - 1]
    if pad:
        rows = torch.randperm(b, generator=g)[:pad]
        labels[rows] = -1
        index[rows] = -1
    if nan_rows:
        valid = torch.nonzero(labels >= 0).squeeze(1)
        for j, r in enumerate(valid[:nan_rows].tolist()):
            logits[r, j % k] = (float("nan"), float("inf"), -float("inf"))[j % 3]
    return logits, labels, bank, index


def _run(fn, x, *args, reduction, grad_out=None, **kw):
    x = x.clone().requires_grad_(True)
    loss = fn(x, *args, reduction=reduction, backend="torch", **kw)
    if grad_out is not None:
        loss.backward(grad_out)
    elif reduction == "none":
        loss.sum().backward()
    else:
        loss.backward()
    return loss.detach(), x.grad


def _close(got, want, tol):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=tol, atol=tol, equal_nan=True)


# --- stateless methods ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(STATELESS))
@pytest.mark.parametrize("b,k", [(1, 2), (7, 3), (33, 10), (5, 37), (9, 1000)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_stateless_matches_oracle(method, b, k, reduction):
    fn, oracle, hp = STATELESS[method]
    logits, labels, _, _ = make_case(b, k, seed=b * 131 + k, pad=b // 4)
    loss, grad = _run(fn, logits, labels, reduction=reduction, **hp)
    want_loss, want_grad, _ = oracle(logits.double().numpy(), labels.numpy(), reduction=reduction, **hp)
    _close(loss, want_loss, TOL[torch.float32])
    _close(grad, want_grad, GRAD_TOL[torch.float32])
    assert torch.all(grad[labels < 0] == 0)  # padded rows: exactly zero gradient


@pytest.mark.parametrize("method", sorted(STATELESS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_stateless_dtypes(method, dtype):
    fn, oracle, hp = STATELESS[method]
    logits, labels, _, _ = make_case(13, 11, dtype=dtype, seed=3, pad=2)
    loss, grad = _run(fn, logits, labels, reduction="mean", **hp)
    assert grad.dtype == dtype
    want_loss, want_grad, _ = oracle(logits.double().numpy(), labels.numpy(), reduction="mean", **hp)
    _close(loss, want_loss, TOL[dtype])
    _close(grad.double(), want_grad, GRAD_TOL[dtype])


@pytest.mark.parametrize("method", sorted(STATELESS))
def test_stateless_nan_rows_padding_and_incoming_gradient(method):
    """Non-finite rows: NaN loss and gradient on that row only; a random incoming gradient per row."""
    fn, oracle, hp = STATELESS[method]
    logits, labels, _, _ = make_case(17, 6, seed=11, pad=3, nan_rows=3)
    grad_out = torch.rand(17, generator=torch.Generator().manual_seed(5)) * 4 - 2
    loss, grad = _run(fn, logits, labels, reduction="none", grad_out=grad_out, **hp)
    want_loss, want_grad, _ = oracle(logits.double().numpy(), labels.numpy(), reduction="none", **hp)
    _close(loss, want_loss, TOL[torch.float32])
    _close(grad, want_grad * grad_out.double().numpy()[:, None], GRAD_TOL[torch.float32])
    bad = (labels >= 0) & ~torch.isfinite(logits).all(1)
    assert bad.sum() == 3 and torch.isnan(loss[bad]).all() and torch.isnan(grad[bad]).all()
    assert torch.isfinite(grad[~bad]).all() and torch.all(loss[labels < 0] == 0)
    # mean over valid rows only, NaN propagates
    assert math.isnan(float(fn(logits, labels, reduction="mean", backend="torch", **hp)))


@pytest.mark.parametrize("method", sorted(STATELESS))
def test_stateless_extreme_logits_and_empty_batch(method):
    fn, oracle, hp = STATELESS[method]
    logits = torch.tensor([[80.0, -80.0, 0.0], [-80.0, 80.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 0, 2])  # one confident right, one confident wrong, one uniform
    loss, grad = _run(fn, logits, labels, reduction="none", **hp)
    want_loss, want_grad, _ = oracle(logits.double().numpy(), labels.numpy(), reduction="none", **hp)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    _close(loss, want_loss, 1e-4)
    _close(grad, want_grad, 1e-5)
    all_pad = torch.full((3,), -1)
    out = fn(logits.clone().requires_grad_(True), all_pad, reduction="mean", backend="torch", **hp)
    assert float(out) == 0.0
    empty = fn(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), reduction="mean", backend="torch", **hp)
    assert float(empty) == 0.0


def test_stateless_special_cases_against_cross_entropy():
    """GCE q=1 is 1 - p_y; SCE beta=0 is alpha * CE; bootstrapping beta=1 is CE."""
    logits, labels, _, _ = make_case(9, 5, seed=2)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    p_y = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(gce_loss(logits, labels, q=1.0, reduction="none", backend="torch"), 1 - p_y)
    torch.testing.assert_close(sce_loss(logits, labels, alpha=0.3, beta=0.0, reduction="none", backend="torch"),
                               0.3 * ce)
    torch.testing.assert_close(bootstrap_loss(logits, labels, beta=1.0, reduction="none", backend="torch"), ce)
    # and GCE tends to CE as q -> 0
    torch.testing.assert_close(gce_loss(logits, labels, q=1e-6, reduction="none", backend="torch"), ce,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", sorted(STATELESS))
def test_stateless_autograd_gradcheck(method):
    """The reference's autograd gradient against finite differences (float64)."""
    fn, _, hp = STATELESS[method]
    logits, labels, _, _ = make_case(6, 5, dtype=torch.float64, seed=4, pad=1)
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: fn(z, labels, reduction="none", backend="torch", **hp), (x,))


# --- the oracles' hand-derived gradients against finite differences ------------------------------------------
def _fd(f, z, h=1e-6):
    g = np.zeros_like(z)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            g[i, j] = (f(zp) - f(zm)) / (2 * h)
    return g


@pytest.mark.parametrize("method", sorted(STATELESS))
def test_oracle_gradient_is_the_derivative(method):
    _, oracle, hp = STATELESS[method]
    rng = np.random.default_rng(7)
    z = rng.normal(size=(4, 6)) * 2
    y = np.array([0, 5, -1, 2])
    _, grad, _ = oracle(z, y, reduction="sum", **hp)
    np.testing.assert_allclose(grad, _fd(lambda zz: oracle(zz, y, reduction="sum", **hp)[0], z), atol=1e-6)


def test_elr_oracle_gradient_is_the_derivative_with_the_target_held():
    """ELR's target is detached: the gradient is the derivative of -log p_y + lam log(1 - <clamp(p), t>) with t
    held at the step's t_new. Includes a row whose probabilities hit the clamp (no gradient through those)."""
    rng = np.random.default_rng(8)
    z = rng.normal(size=(3, 5)) * 2
    z[2] = [12.0, 0.0, -1.0, 0.5, -2.0]  # p_0 > 1 - eps and some p_k < eps: clamped entries
    y = np.array([1, 4, 0])
    bank = rng.dirichlet(np.ones(5), size=6)
    idx = np.array([3, 0, 5])
    lam, beta = 3.0, 0.7
    _, grad, new_bank = elr_oracle(z, bank, idx, y, beta=beta, lam=lam, reduction="sum")
    t = new_bank[idx]
    assert np.any(_softmax(z[2])[0] > 1 - ELR_EPS)

    def f(zz):
        total = 0.0
        for i in range(3):
            p, logp = _softmax(zz[i])
            c = np.clip(p, ELR_EPS, 1 - ELR_EPS)
            total += -logp[y[i]] + lam * math.log(1 - (c * t[i]).sum())
        return total

    np.testing.assert_allclose(grad, _fd(f, z, h=1e-7), atol=2e-6)


# --- ELR ---------------------------------------------------------------------------------------------------------
def _elr_check(logits, labels, bank, index, *, beta=0.7, lam=3.0, refine=True, reduction="mean", tol=None,
               assume_unique=False, grad_out=None):
    before = bank.clone()
    loss, grad = _run(elr_loss, logits, bank, index, labels, reduction=reduction, beta=beta, lam=lam, refine=refine,
                      assume_unique=assume_unique, grad_out=grad_out)
    store = _bf16_store if bank.dtype == torch.bfloat16 else None
    want_loss, want_grad, want_bank = elr_oracle(logits.double().numpy(), before.double().numpy(), index.numpy(),
                                                 labels.numpy(), beta=beta, lam=lam, refine=refine,
                                                 reduction=reduction, store=store)
    tol = tol or TOL[logits.dtype]
    if grad_out is not None:
        want_grad = want_grad * grad_out.double().numpy()[:, None]
    _close(loss, want_loss, tol)
    _close(grad.double(), want_grad, max(tol, GRAD_TOL[logits.dtype]))
    if bank.dtype == torch.bfloat16:
        got = bank.double().numpy()
        np.testing.assert_allclose(got, want_bank, rtol=2**-7, atol=0)
        assert np.mean(got == want_bank) >= 0.99
    else:
        _close(bank, want_bank, max(tol, 1e-6))
    touched = torch.zeros(bank.shape[0], dtype=torch.bool)
    if refine:
        good = (index >= 0) & torch.isfinite(logits).all(1)
        touched[index[good]] = True
    assert torch.equal(bank[~touched], before[~touched])  # untouched rows bit-identical
    return loss, grad


@pytest.mark.parametrize("b,k", [(1, 2), (7, 3), (33, 10), (5, 37), (9, 1000)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("refine", [True, False])
def test_elr_matches_oracle(b, k, reduction, refine):
    logits, labels, bank, index = make_case(b, k, seed=b * 7 + k, pad=b // 4)
    _elr_check(logits, labels, bank, index, reduction=reduction, refine=refine)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bank_dtype", [torch.float32, torch.bfloat16])
def test_elr_dtypes_and_bf16_bank(dtype, bank_dtype):
    logits, labels, bank, index = make_case(19, 7, dtype=dtype, bank_dtype=bank_dtype, seed=21, pad=2)
    _elr_check(logits, labels, bank, index)


def test_elr_duplicates_are_sequential_in_batch_order():
    logits, labels, bank, index = make_case(12, 5, seed=9, dup=True, pad=2)
    assert len(set(index[index >= 0].tolist())) < int((index >= 0).sum())
    _elr_check(logits, labels, bank, index, reduction="none")


def test_elr_nan_rows_padding_incoming_gradient_and_assume_unique():
    logits, labels, bank, index = make_case(15, 6, seed=13, pad=3, nan_rows=2)
    grad_out = torch.rand(15, generator=torch.Generator().manual_seed(1)) * 3 - 1
    loss, grad = _elr_check(logits, labels, bank.clone(), index, reduction="none", grad_out=grad_out)
    bad = (index >= 0) & ~torch.isfinite(logits).all(1)
    assert torch.isnan(loss[bad]).all() and torch.isnan(grad[bad]).all() and torch.isfinite(grad[~bad]).all()
    # the no-sort path (assume_unique) gives the same values and bank
    _elr_check(logits, labels, bank.clone(), index, reduction="none", grad_out=grad_out, assume_unique=True)


def test_elr_edge_hyper_parameters():
    logits, labels, bank, index = make_case(8, 4, seed=17, pad=1)
    _elr_check(logits, labels, bank.clone(), index, beta=1.0)  # target frozen at the bank row
    _elr_check(logits, labels, bank.clone(), index, beta=0.0)  # target = this step's prediction
    _elr_check(logits, labels, bank.clone(), index, lam=0.0)  # cross-entropy, bank still updated
    # lam = 0 is exactly CE on the given labels
    loss = elr_loss(logits, bank.clone(), index, labels, beta=0.7, lam=0.0, reduction="none", backend="torch")
    ce = torch.nn.functional.cross_entropy(logits, labels.clamp_min(0), reduction="none")
    torch.testing.assert_close(loss, torch.where(index >= 0, ce, 0.0))


def test_elr_gradcheck_with_frozen_target():
    """beta = 1: the target does not depend on the logits, so finite differences of the whole reference apply."""
    logits, labels, bank, index = make_case(5, 4, dtype=torch.float64, seed=23, pad=1)
    bank = bank.double()
    x = logits.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: elr_loss(z, bank.clone(), index, labels, beta=1.0, lam=3.0, reduction="none", backend="torch"),
        (x,))


def test_elr_bank_is_a_running_average_over_calls():
    """Two calls on the same rows: the second reads the first's write (the EMA across steps)."""
    logits, labels, bank, index = make_case(6, 4, seed=29)
    before = bank.clone().double().numpy()
    elr_loss(logits, bank, index, labels, beta=0.7, lam=3.0, backend="torch")
    elr_loss(logits * 0.5, bank, index, labels, beta=0.7, lam=3.0, backend="torch")
    _, _, b1 = elr_oracle(logits.double().numpy(), before, index.numpy(), labels.numpy(), beta=0.7, lam=3.0)
    _, _, b2 = elr_oracle((logits * 0.5).double().numpy(), b1, index.numpy(), labels.numpy(), beta=0.7, lam=3.0)
    _close(bank, b2, 1e-6)


# --- errors ----------------------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    z, y = torch.zeros(3, 4), torch.tensor([0, 1, 4])
    with pytest.raises(IndexError, match="label 4 at row 2 is outside"):
        gce_loss(z, y, q=0.7, backend="torch")
    with pytest.raises(TypeError, match="labels dtype"):
        sce_loss(z, y.int(), alpha=0.1, beta=1.0, backend="torch")
    with pytest.raises(ValueError, match="labels has 2 entries"):
        bootstrap_loss(z, y[:2], beta=0.9, backend="torch")
    with pytest.raises(ValueError, match="q must be in"):
        gce_loss(z, y.clamp_max(3), q=0.0)
    with pytest.raises(ValueError, match="log_zero"):
        sce_loss(z, y.clamp_max(3), alpha=0.1, beta=1.0, log_zero=0.0)
    with pytest.raises(ValueError, match="beta must be in"):
        bootstrap_loss(z, y.clamp_max(3), beta=1.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        gce_loss(z, y.clamp_max(3), q=0.7, backend="cuda")
    bank, idx = torch.zeros(5, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="elr_loss: beta must be in"):
        elr_loss(z, bank, idx, y.clamp_max(3), beta=1.2, lam=3.0)
    with pytest.raises(IndexError, match="elr_loss: label 4"):
        elr_loss(z, bank, idx, y, beta=0.7, lam=3.0, backend="torch")
    with pytest.raises(IndexError, match="elr_loss: index 7 is out of range"):
        elr_loss(z, bank, torch.tensor([0, 7, 1]), y.clamp_max(3), beta=0.7, lam=3.0, backend="torch")
    # a padded ELR row's label is not checked (the trainer passes -1 there)
    elr_loss(z, bank, torch.tensor([0, -1, 1]), torch.tensor([0, -1, 3]), beta=0.7, lam=3.0, backend="torch")


def test_config_fields_and_errors():
    assert {"elr", "gce", "sce", "bootstrap"} <= set(METHODS)
    m = MethodConfig(name="elr")
    assert (m.elr_beta, m.elr_lam, m.gce_q, m.sce_alpha, m.sce_beta, m.sce_log_zero, m.bootstrap_beta) == (
        0.7, 3.0, 0.7, 0.1, 1.0, -4.0, 0.95)
    for field, value in (("gce_q", 0.0), ("elr_beta", 1.5), ("elr_lam", -1.0), ("sce_log_zero", 1.0),
                         ("bootstrap_beta", -0.1), ("sce_alpha", -1.0)):
        with pytest.raises(ValueError, match=f"config method.{field}"):
            MethodConfig(name="gce", **{field: value})


# --- the public ALR object runs them too ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["elr", "gce", "sce", "bootstrap"])
def test_alr_object_runs_each_baseline(method):
    """warmup=1: epoch 0 is cross-entropy on the given labels, epoch 1 the method's loss on the same rows as the
    functional API (global indices, padding -1); only ELR writes the bank."""
    from alr_fast import ALR

    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 5, (20,), generator=g)
    obj = ALR(labels, 5, method=method, warmup=1, hparams={"gce_q": 0.5, "elr_lam": 2.0})
    index = torch.tensor([4, 17, -1, 0, 9])
    z = torch.randn(5, 5, generator=g)
    valid_labels = torch.where(index >= 0, labels[index.clamp_min(0)], -1)
    warm = obj(z, index)
    ce = torch.nn.functional.cross_entropy(z[index >= 0], valid_labels[index >= 0])
    torch.testing.assert_close(warm, ce)
    obj.end_epoch()
    bank = obj.bank.soft.clone()
    got = obj(z, index)
    if method == "elr":
        want = elr_loss(z, bank, index, valid_labels, beta=0.7, lam=2.0, backend="torch")
        torch.testing.assert_close(obj.bank.soft, bank)  # the reference call above wrote the same rows
        assert not torch.equal(bank, torch.nn.functional.one_hot(labels, 5).float())
    else:
        fn, _, hp = STATELESS[method]
        hp = {**hp, "q": 0.5} if method == "gce" else hp
        want = fn(z, valid_labels, backend="torch", **hp)
        assert torch.equal(obj.bank.soft, torch.nn.functional.one_hot(labels, 5).float())  # no state
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="gce_q"):
        ALR(labels, 5, method="gce", hparams={"gce_q": 2.0})
    with pytest.raises(ValueError, match="unknown hparams"):
        ALR(labels, 5, method="gce", hparams={"q": 0.5})


def test_baselines_study_report_on_hand_made_rows(tmp_path):
    """benchmarks/quality.py --study baselines: the tables' cells (mean ± std over seeds, one seed marked, best in
    bold, bank columns only for ELR/ALR, which seeds each cell has) and the plot, on rows whose values are known."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    def row(arm, seed, last, best, refined=0.5, f1=0.0, noise="sym-incl@0.4"):
        return {"dataset": "digits", "noise": noise, "seed": seed, "arm": arm, "actual_rate": 0.36,
                "last_test_acc": last, "best_test_acc": best, "refined_label_acc": refined, "mislabel_f1": f1}

    runs = [row("elr", 0, 0.90, 0.91, 0.93, 0.80), row("elr", 1, 0.94, 0.93, 0.95, 0.84), row("gce", 0, 0.80, 0.95),
            row("alr", 0, 0.91, 0.90, 0.97, 0.9), row("ce", 0, 0.70, 0.75, noise="pair@0.45")]
    meta = {"command": "x", "git_sha": "abc", "date_utc": "d", "machine": "m", "device": "cpu", "torch": "t",
            "total_time_s": 60.0, "seeds": [0, 1, 2], "val_fraction": 0.1, "arms": {"elr": {}, "gce": {}}}
    md = quality.baselines_report(runs, meta)
    lines = md.splitlines()
    last = next(line for line in lines if line.startswith("| digits | sym-incl@0.4") and "92.0" in line)
    assert "| **92.0 ± 2.8** | 80.0 (1 seed) | 91.0 (1 seed) | - |" in last  # elr: mean of 0.90 and 0.94
    best = [line for line in lines if line.startswith("| digits | sym-incl@0.4")][1]
    assert "**95.0 (1 seed)**" in best and "92.0 ± 1.4" in best  # validation-selected: gce best
    bank = [line for line in lines if line.startswith("| digits | sym-incl@0.4")][2]
    assert bank == "| digits | sym-incl@0.4 | 94.0 ± 1.4 | 82.0 ± 2.8 | 97.0 (1 seed) | 90.0 (1 seed) |"
    assert "| digits | sym-incl@0.4 | 0,1 | 0 | 0 | - |" in md and "| digits | pair@0.45 | - | - | - | 0 |" in md
    quality.baselines_plot(runs, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_bench_baselines_smoke(tmp_path):
    """benchmarks/bench_baselines.py end to end at a tiny size (CPU: the eager rows only)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_baselines.py"), "--B", "8", "--K", "4",
                           "--dtypes", "fp32", "--methods", "elr", "gce", "alr", "ce", "--calls", "1", "--reps", "2", "--warmup",
                           "0", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    slug = "cuda" if torch.cuda.is_available() else "cpu"
    rows = __import__("json").loads((tmp_path / f"bench_baselines_{slug}.json").read_text())["rows"]
    want = {(m, "eager") for m in ("elr", "gce", "alr", "ce")}
    if slug == "cuda":
        want |= {("elr", "fused"), ("gce", "fused"), ("alr", "fused")}  # no fused cross-entropy row
    assert {(r["method"], r["impl"]) for r in rows} == want
    assert all(r["min_us"] <= r["median_us"] <= r["max_us"] for r in rows)
    assert "| elr | fp32 | 8 | 4 |" in (tmp_path / f"bench_baselines_{slug}.md").read_text()
