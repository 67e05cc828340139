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
