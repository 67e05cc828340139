"""Noise conventions: rates, maps, determinism and the manifest."""

import json

import numpy as np
import pytest

from alr_fast.data.noise import CIFAR10_ASYM_MAP, DIGITS_ASYM_MAP, label_hash, make_noisy_labels


def clean_labels(n=20000, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


@pytest.mark.parametrize("rate", [0.2, 0.6, 0.8])
def test_sym_incl_rate_is_r_times_k_minus_1_over_k(rate):
    y = clean_labels()
    noisy, m = make_noisy_labels(y, kind="sym-incl", rate=rate, num_classes=10, seed=1)
    assert abs(m.actual_rate - rate * 9 / 10) < 0.015
    assert m.actual_rate == pytest.approx((noisy != y).mean())


@pytest.mark.parametrize("rate", [0.2, 0.45])
def test_sym_excl_flips_exactly_the_subset(rate):
    y = clean_labels()
    noisy, m = make_noisy_labels(y, kind="sym-excl", rate=rate, num_classes=10, seed=1)
    assert (noisy != y).sum() == int(round(rate * y.size))
    t = np.array(m.transition_matrix)
    assert np.allclose(np.diag(t), 1 - rate, atol=0.03)
    off = t[~np.eye(10, dtype=bool)]
    assert np.allclose(off, rate / 9, atol=0.02)


def test_asym_cifar10_follows_the_map():
    y = clean_labels()
    noisy, m = make_noisy_labels(y, kind="asym-cifar10", rate=0.4, num_classes=10, seed=3)
    changed = noisy != y
    for src, dst in zip(y[changed], noisy[changed]):
        assert CIFAR10_ASYM_MAP[int(src)] == dst
    for c in (0, 1, 6, 7, 8):
        assert np.all(noisy[y == c] == c)
    for src in CIFAR10_ASYM_MAP:
        assert abs((noisy[y == src] != src).mean() - 0.4) < 0.05
    # 5 of 10 classes are in the map: the overall rate is about half of the requested one
    assert abs(m.actual_rate - 0.2) < 0.02


def test_asym_digits_follows_its_map():
    y = clean_labels()
    noisy, m = make_noisy_labels(y, kind="asym-digits", rate=0.4, num_classes=10, seed=3)
    changed = noisy != y
    assert all(DIGITS_ASYM_MAP[int(s)] == d for s, d in zip(y[changed], noisy[changed]))
    assert np.all(noisy[y == 0] == 0) and np.all(noisy[y == 2] == 2)
    assert abs(m.actual_rate - 0.32) < 0.02


def test_asym_cifar100_moves_inside_blocks_of_five():
    y = clean_labels(50000, 100)
    noisy, m = make_noisy_labels(y, kind="asym-cifar100", rate=0.4, num_classes=100, seed=0)
    changed = noisy != y
    assert np.all(noisy[changed] // 5 == y[changed] // 5)
    assert np.all(noisy[changed] == (y[changed] // 5) * 5 + (y[changed] % 5 + 1) % 5)
    assert abs(m.actual_rate - 0.4) < 0.01


def test_pair_noise():
    y = clean_labels()
    noisy, m = make_noisy_labels(y, kind="pair", rate=0.3, num_classes=10, seed=0)
    changed = noisy != y
    assert np.all(noisy[changed] == (y[changed] + 1) % 10)
    assert abs(m.actual_rate - 0.3) < 0.015


def test_instance_noise_depends_on_images_and_is_reproducible():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 4000)
    images = rng.integers(0, 256, (4000, 1, 8, 8)).astype(np.uint8)
    a, m = make_noisy_labels(y, kind="instance", rate=0.4, num_classes=10, seed=5, images=images)
    b, _ = make_noisy_labels(y, kind="instance", rate=0.4, num_classes=10, seed=5, images=images)
    c, _ = make_noisy_labels(y, kind="instance", rate=0.4, num_classes=10, seed=5, images=255 - images)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert abs(m.actual_rate - 0.4) < 0.03
    with pytest.raises(ValueError, match="needs images"):
        make_noisy_labels(y, kind="instance", rate=0.4, num_classes=10, seed=5)


@pytest.mark.parametrize("kind", ["sym-incl", "sym-excl", "pair", "asym-cifar10"])
def test_same_seed_same_labels_different_seed_different(kind):
    y = clean_labels(5000)
    a, ma = make_noisy_labels(y, kind=kind, rate=0.5, num_classes=10, seed=7)
    b, mb = make_noisy_labels(y, kind=kind, rate=0.5, num_classes=10, seed=7)
    c, _ = make_noisy_labels(y, kind=kind, rate=0.5, num_classes=10, seed=8)
    assert np.array_equal(a, b) and ma.noisy_hash == mb.noisy_hash
    assert not np.array_equal(a, c)


def test_manifest_fields_and_save(tmp_path):
    y = clean_labels(1000)
    noisy, m = make_noisy_labels(y, kind="sym-incl", rate=0.5, num_classes=10, seed=0)
    m.save(tmp_path / "noise.json")
    d = json.loads((tmp_path / "noise.json").read_text())
    for key in ("kind", "requested_rate", "actual_rate", "transition_matrix", "seed", "noisy_hash", "clean_hash"):
        assert key in d
    assert d["noisy_hash"] == label_hash(noisy) and d["clean_hash"] == label_hash(y)
    t = np.array(d["transition_matrix"])
    assert t.shape == (10, 10) and np.allclose(t.sum(1), 1.0, atol=1e-5)


def test_input_not_modified_and_zero_rate():
    y = clean_labels(100)
    y0 = y.copy()
    noisy, m = make_noisy_labels(y, kind="sym-excl", rate=0.0, num_classes=10, seed=0)
    assert np.array_equal(y, y0) and np.array_equal(noisy, y) and m.actual_rate == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="uniform"), "kind must be one of"),
        (dict(rate=1.5), "rate must be in"),
        (dict(kind="asym-cifar10", num_classes=5), "needs num_classes=10"),
        (dict(kind="asym-cifar100"), "needs num_classes=100"),
        (dict(labels=np.array([0, 1, 12])), "label 12 at index 2 is outside"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(labels=np.array([0, 1, 2]), kind="sym-incl", rate=0.2, num_classes=10, seed=0)
    args.update(kwargs)
    labels = args.pop("labels")
    with pytest.raises(ValueError, match=match):
        make_noisy_labels(labels, **args)


def test_seed_must_be_int():
    with pytest.raises(TypeError, match="seed must be an int"):
        make_noisy_labels(np.array([0, 1]), kind="sym-incl", rate=0.2, num_classes=10, seed="1")


def _instance_oracle(labels, images, rate, k, seed):
    """Xia et al.'s instance-dependent noise written from the module docstring, one sample at a time in float64.

    Same random draws in the same order (the documented source: default_rng(seed)): the per-sample rates (normal,
    out-of-range ones redrawn), W [K, D, K], one uniform per sample. Returns (labels, ambiguous): ambiguous marks
    samples whose uniform lies within 1e-6 of a class boundary, where float32 rounding may decide either way."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    x = np.asarray(images, dtype=np.float64).reshape(n, -1)
    if n and x.max() > 1.0:
        x = x / 255.0
    flip = rng.normal(rate, 0.1, size=n)
    while True:
        bad = [i for i in range(n) if not 0.0 <= flip[i] <= 1.0]
        if not bad:
            break
        flip[bad] = rng.normal(rate, 0.1, size=len(bad))
    w = rng.standard_normal((k, x.shape[1], k))
    u = rng.random(n)
    out, ambiguous = np.array(labels, dtype=np.int64), np.zeros(n, dtype=bool)
    for i in range(n):
        y = int(labels[i])
        s = x[i] @ w[y]
        others = [j for j in range(k) if j != y]
        e = np.exp(s[others] - s[others].max())
        q = np.zeros(k)
        q[others] = flip[i] * e / e.sum()
        q[y] = 1.0 - flip[i]
        c = np.cumsum(q)
        target = u[i] * c[-1]
        out[i] = next((j for j in range(k) if c[j] >= target), k - 1)
        ambiguous[i] = np.abs(c - target).min() < 1e-6
    return out, ambiguous


@pytest.mark.parametrize("rate", [0.05, 0.4, 0.95])
@pytest.mark.parametrize("pixels", ["uint8", "unit", "small-ints"])
def test_instance_noise_matches_a_per_sample_oracle(rate, pixels):
    """Every sample's noisy label against the oracle above: rates near 0 and 1 (many truncated draws), pixels
    given as 0..255 bytes, as floats in [0, 1] whose maximum is exactly 1 (not rescaled), and as small integers
    0..2 (rescaled: the maximum is above 1). Class 0 is absent and classes 7-9 have one sample each."""
    rng = np.random.default_rng(11)
    y = np.concatenate([rng.integers(1, 7, 300), [7, 8, 9]])
    raw = rng.integers(0, 256, (y.size, 3, 4, 4))
    images = {"uint8": raw.astype(np.uint8), "unit": (raw == 255).astype(np.float64) + (raw < 255) * raw / 256.0,
              "small-ints": (raw % 3).astype(np.uint8)}[pixels]
    if pixels == "unit":
        images.flat[0] = 1.0
    noisy, m = make_noisy_labels(y, kind="instance", rate=rate, num_classes=10, seed=4, images=images)
    ref, ambiguous = _instance_oracle(y, images, rate, 10, 4)
    assert ambiguous.sum() <= 2
    np.testing.assert_array_equal(noisy[~ambiguous], ref[~ambiguous])
    assert noisy.dtype == np.int64 and m.actual_rate == float((noisy != y).mean())



def test_boundaries_and_error_texts():
    y = np.array([0, 1, 1, 0, 1])
    all_flipped, m = make_noisy_labels(y, kind="sym-excl", rate=1.0, num_classes=2, seed=0)  # rate 1, K = 2 allowed
    assert np.array_equal(all_flipped, 1 - y) and m.actual_rate == 1.0
    with pytest.raises(ValueError, match=r"label 2 at index 0 is outside \[0, 2\)"):
        make_noisy_labels(np.array([2, 0]), kind="pair", rate=0.5, num_classes=2, seed=0)
    with pytest.raises(ValueError, match=r"make_noisy_labels: num_classes must be >= 2, got 1"):
        make_noisy_labels(np.array([0, 0]), kind="pair", rate=0.5, num_classes=1, seed=0)
    with pytest.raises(ValueError, match=r"labels must be a 1-D integer array, got int64 \(2, 2\)"):
        make_noisy_labels(np.zeros((2, 2), dtype=np.int64), kind="pair", rate=0.5, num_classes=2, seed=0)
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        make_noisy_labels(y, kind="pair", rate=0.5, num_classes=2, seed="0")


def test_transition_matrix_and_hash_by_hand():
    from alr_fast.data.noise import transition_matrix

    clean = np.array([0, 0, 0, 0, 2])  # class 1 absent, class 2 seen once
    noisy = np.array([0, 1, 1, 2, 0])
    np.testing.assert_array_equal(transition_matrix(clean, noisy, 3),
                                  [[0.25, 0.5, 0.25], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # the hash is of int64 little-endian values, whatever the input's integer type
    assert label_hash(np.array([3, 1, 2], dtype=np.int32)) == label_hash(np.array([3, 1, 2], dtype=np.int64))


def test_manifest_records_each_kind_and_its_convention():
    """The manifest's fields and its convention text, per kind (the record of what was done)."""
    conventions = {
        "none": "no noise",
        "sym-incl": "round(rate*N) random samples relabelled uniformly over all K classes",
        "sym-excl": "round(rate*N) random samples relabelled uniformly over the K-1 other classes",
        "asym-cifar10": "global round(rate*N) subset; 9->1, 2->0, 4->7, 3<->5 (DivideMix/SELC)",
        "asym-digits": "global round(rate*N) subset; 1<->7, 3<->8, 5<->6, 4<->9 (alr_fast's digit map)",
        "pair": "each sample w.p. rate: i -> (i+1) mod K",
        "instance": "Xia et al. 2020 instance-dependent (truncated-normal rates, W ~ N(0,1) [K, D, K])",
        "asym-cifar100": "each sample w.p. rate -> next class circularly inside blocks of 5 ids (Co-teaching/ELR)",
    }
    for kind, text in conventions.items():
        k = 100 if kind == "asym-cifar100" else 10
        y = np.arange(40) % k
        images = np.arange(40 * 4).reshape(40, 4) % 7 if kind == "instance" else None
        noisy, m = make_noisy_labels(y, kind=kind, rate=0.5, num_classes=k, seed=np.int64(3), images=images)
        assert m.convention == text, kind
        assert (m.kind, m.requested_rate, m.num_classes, m.num_samples, m.seed) == (kind, 0.5, k, 40, 3), kind
        assert m.actual_rate == float((noisy != y).mean()) and noisy.dtype == np.int64, kind
        assert m.noisy_hash == label_hash(noisy) and m.clean_hash == label_hash(y), kind
    assert make_noisy_labels(y, kind="none", rate=0.5, num_classes=100, seed=0)[0].tolist() == y.tolist()


def test_sym_incl_draws_each_new_label_uniformly_and_small_cases():
    y = np.zeros(3000, dtype=np.int64)
    noisy, _ = make_noisy_labels(y, kind="sym-incl", rate=1.0, num_classes=3, seed=2)
    counts = np.bincount(noisy, minlength=3)  # 1000 each expected, std about 26
    assert counts.min() > 850 and counts.max() < 1150, counts
    # the manifest's matrix is rounded to 6 decimals: one of three samples moved gives 2/3 and 1/3
    _, m = make_noisy_labels(np.zeros(3, dtype=np.int64), kind="sym-excl", rate=1 / 3, num_classes=3, seed=0)
    assert sorted(m.transition_matrix[0]) == [0.0, 0.333333, 0.666667]
    _, empty = make_noisy_labels(np.zeros(0, dtype=np.int64), kind="sym-incl", rate=0.5, num_classes=3, seed=0)
    assert empty.actual_rate == 0.0 and empty.num_samples == 0
    with pytest.raises(ValueError, match=r"make_noisy_labels: kind='instance' needs images \(an array \[N, \.\.\.\] "
                                         r"of pixels\)"):
        make_noisy_labels(y[:4], kind="instance", rate=0.5, num_classes=3, seed=0)
    with pytest.raises(ValueError, match="make_noisy_labels: images has 3 rows but labels has 4"):
        make_noisy_labels(y[:4], kind="instance", rate=0.5, num_classes=3, seed=0, images=np.zeros((3, 5)))


@pytest.mark.parametrize("kind", ["none", "sym-incl", "sym-excl", "asym-digits", "pair", "instance"])
def test_no_sample_gives_no_label_and_a_zero_rate(kind):
    labels, manifest = make_noisy_labels(np.zeros(0, dtype=np.int64), kind=kind, rate=0.4, num_classes=10, seed=0,
                                         images=np.zeros((0, 4, 4), dtype=np.uint8))
    assert labels.shape == (0,) and labels.dtype == np.int64 and manifest.actual_rate == 0.0
