"""Synthetic label noise with named conventions, and a manifest that records exactly what was done.

Conventions (the published codebases differ, so each kind names its own; docs/datasets.md lists the kinds):

* ``sym-incl``  symmetric, inclusive (DivideMix/SELC/ELR): a random subset of ``round(rate * N)`` samples
  gets a label drawn uniformly from all K classes, so the true label can come back; the expected flip rate
  is ``rate * (K - 1) / K``.
* ``sym-excl``  symmetric, exclusive (Co-teaching/PES): the same subset, each label drawn from the K - 1
  other classes; the flip rate is ``round(rate * N) / N``.
* ``asym-cifar10``  truck->automobile (9->1), bird->airplane (2->0), deer->horse (4->7), cat<->dog (3<->5),
  applied to a global random subset of ``round(rate * N)`` samples (DivideMix/SELC convention); samples of
  other classes in the subset keep their label, so the flip rate is below ``rate``. Needs K = 10.
* ``asym-cifar100``  each sample independently moves to the next class, circularly, inside its block of 5
  consecutive class ids (0-4, 5-9, ...) with probability ``rate`` (Co-teaching/ELR convention; these blocks are
  not the real CIFAR-100 superclasses). Needs K = 100.
* ``asym-digits``  this project's map for handwritten digits, 1<->7, 3<->8, 5<->6, 4<->9 (0 and 2 keep their
  label), applied like ``asym-cifar10`` to a global random subset of ``round(rate * N)`` samples; the flip rate
  is about 0.8 * rate. Needs K = 10.
* ``pair``  each sample independently moves from class i to (i + 1) mod K with probability ``rate``.
* ``instance``  instance-dependent noise of Xia et al. (2020): a per-sample flip rate from a normal(rate, 0.1)
  truncated to [0, 1]; ``W ~ N(0, 1)`` of shape [K, D, K]; for a sample x (pixels scaled to [0, 1] and
  flattened to D values) with label y, scores = x @ W[y] with the true class excluded, softmax, scaled by the
  flip rate; the true class keeps probability 1 - rate. Depends on the pixels: generate once and save.

All randomness comes from ``numpy.random.default_rng(seed)``: the same inputs and seed give the same labels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["NOISE_KINDS", "NoiseManifest", "make_noisy_labels", "label_hash", "transition_matrix"]

NOISE_KINDS = ("none", "sym-incl", "sym-excl", "asym-cifar10", "asym-cifar100", "asym-digits", "pair", "instance")

# DivideMix's CIFAR-10 asymmetric map, as source -> target.
CIFAR10_ASYM_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
# This project's asymmetric map for handwritten digits (0-9): pairs that look alike when written.
DIGITS_ASYM_MAP = {7: 1, 1: 7, 3: 8, 8: 3, 5: 6, 6: 5, 4: 9, 9: 4}


@dataclass
class NoiseManifest:
    """What a noise generator did: enough to reproduce it and to check it."""

    kind: str
    requested_rate: float
    actual_rate: float
    """Fraction of samples whose noisy label differs from the clean one."""
    num_classes: int
    num_samples: int
    seed: int
    transition_matrix: list[list[float]]
    """Empirical T[i][j] = P(noisy = j | clean = i); rows of absent classes are all zero."""
    clean_hash: str
    noisy_hash: str
    """sha256 of the int64 little-endian label arrays."""
    convention: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


def label_hash(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i8").tobytes()).hexdigest()


def transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (clean, noisy), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _subset(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    return rng.permutation(n)[: int(round(rate * n))]


def _instance_noise(
    labels: np.ndarray, images: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    n = labels.shape[0]
    x = np.asarray(images, dtype=np.float32).reshape(n, -1)
    if x.max(initial=0.0) > 1.0:
        x = x / 255.0
    d = x.shape[1]
    # Per-sample flip rates: normal(rate, 0.1) truncated to [0, 1] by redrawing what falls outside.
    flip = rng.normal(rate, 0.1, size=n)
    outside = (flip < 0) | (flip > 1)
    while outside.any():
        flip[outside] = rng.normal(rate, 0.1, size=int(outside.sum()))
        outside = (flip < 0) | (flip > 1)
    w = rng.standard_normal((num_classes, d, num_classes)).astype(np.float32)
    noisy = labels.copy()
    u = rng.random(n)
    for y in range(num_classes):
        rows = np.nonzero(labels == y)[0]
        if rows.size == 0:
            continue
        scores = (x[rows] @ w[y]).astype(np.float64)
        scores[:, y] = -np.inf
        scores -= scores.max(axis=1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=1, keepdims=True)
        probs *= flip[rows, None]
        probs[:, y] = 1.0 - flip[rows]
        cdf = np.cumsum(probs, axis=1)
        noisy[rows] = np.minimum((cdf < u[rows, None] * cdf[:, -1:]).sum(axis=1), num_classes - 1)
    return noisy


def make_noisy_labels(
    labels,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int,
    images: np.ndarray | None = None,
) -> tuple[np.ndarray, NoiseManifest]:
    """Corrupt clean ``labels`` [N] by convention ``kind`` at ``rate``; returns (noisy int64 [N], manifest)."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"make_noisy_labels: kind must be one of {NOISE_KINDS}, got {kind!r}")
    if not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"make_noisy_labels: rate must be in [0, 1], got {rate}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"make_noisy_labels: seed must be an int, got {type(seed).__name__}")
    clean = np.asarray(labels)
    if clean.ndim != 1 or not np.issubdtype(clean.dtype, np.integer):
        raise ValueError(f"make_noisy_labels: labels must be a 1-D integer array, got {clean.dtype} {clean.shape}")
    clean = clean.astype(np.int64)
    if num_classes < 2:
        raise ValueError(f"make_noisy_labels: num_classes must be >= 2, got {num_classes}")
    if clean.size and (clean.min() < 0 or clean.max() >= num_classes):
        bad = int(np.nonzero((clean < 0) | (clean >= num_classes))[0][0])
        raise ValueError(
            f"make_noisy_labels: label {clean[bad]} at index {bad} is outside [0, {num_classes})"
        )
    n = clean.shape[0]
    rng = np.random.default_rng(int(seed))
    noisy = clean.copy()
    convention = kind

    if kind == "none":
        convention = "no noise"
    elif kind in ("sym-incl", "sym-excl"):
        idx = _subset(rng, n, rate)
        if kind == "sym-incl":
            noisy[idx] = rng.integers(0, num_classes, size=idx.size)
            convention = "round(rate*N) random samples relabelled uniformly over all K classes"
        else:
            shift = rng.integers(1, num_classes, size=idx.size)
            noisy[idx] = (clean[idx] + shift) % num_classes
            convention = "round(rate*N) random samples relabelled uniformly over the K-1 other classes"
    elif kind in ("asym-cifar10", "asym-digits"):
        if num_classes != 10:
            raise ValueError(f"make_noisy_labels: {kind} needs num_classes=10, got {num_classes}")
        idx = _subset(rng, n, rate)
        mapping = np.arange(10)
        for src, dst in (CIFAR10_ASYM_MAP if kind == "asym-cifar10" else DIGITS_ASYM_MAP).items():
            mapping[src] = dst
        noisy[idx] = mapping[clean[idx]]
        convention = ("global round(rate*N) subset; 9->1, 2->0, 4->7, 3<->5 (DivideMix/SELC)" if kind == "asym-cifar10"
                      else "global round(rate*N) subset; 1<->7, 3<->8, 5<->6, 4<->9 (alr_fast's digit map)")
    elif kind == "asym-cifar100":
        if num_classes != 100:
            raise ValueError(f"make_noisy_labels: asym-cifar100 needs num_classes=100, got {num_classes}")
        flip = rng.random(n) < rate
        block = clean // 5
        noisy[flip] = block[flip] * 5 + (clean[flip] % 5 + 1) % 5
        convention = "each sample w.p. rate -> next class circularly inside blocks of 5 ids (Co-teaching/ELR)"
    elif kind == "pair":
        flip = rng.random(n) < rate
        noisy[flip] = (clean[flip] + 1) % num_classes
        convention = "each sample w.p. rate: i -> (i+1) mod K"
    elif kind == "instance":
        if images is None:
            raise ValueError("make_noisy_labels: kind='instance' needs images (an array [N, ...] of pixels)")
        images = np.asarray(images)
        if images.shape[0] != n:
            raise ValueError(f"make_noisy_labels: images has {images.shape[0]} rows but labels has {n}")
        if n:  # no sample, no draw (like every other kind)
            noisy = _instance_noise(clean, images, float(rate), num_classes, rng)
        convention = "Xia et al. 2020 instance-dependent (truncated-normal rates, W ~ N(0,1) [K, D, K])"

    manifest = NoiseManifest(
        kind=kind,
        requested_rate=float(rate),
        actual_rate=float((noisy != clean).mean()) if n else 0.0,
        num_classes=int(num_classes),
        num_samples=int(n),
        seed=int(seed),
        transition_matrix=transition_matrix(clean, noisy, num_classes).round(6).tolist(),
        clean_hash=label_hash(clean),
        noisy_hash=label_hash(noisy),
        convention=convention,
    )
    return noisy, manifest
