"""Recipes: one small function per dataset returning a validated :class:`Config`, plus the per-setting values.

Source of the values: SELC's public code (github.com/MacLLL/SELC, commit 69bcf1e), the closest public code to
ALR (ALR = SELC + an entropy term; the ALR paper's code is not public). Each value below names the script it
comes from. SELC counts epochs from 1 and trains with CE while ``epoch <= es``, so its ``es`` is our
``method.warmup_epochs``.

Not published anywhere for ALR: ``method.lam`` (the entropy weight). SELC has no such term. The brief bounds
it to 0.1-1. The demo's 1.0 was measured on its data (benchmarks/results/demo_tuning.md). The 0.3 of every
other recipe is the middle of that range, **unmeasured** until those datasets are run: tune it on a
validation split (``data.val_fraction``), never on the test set.

Values that depend on the noise setting (CIFAR's warm-up) are resolved by :func:`resolve_recipe` **after**
the ``--set`` overrides, so ``--set data.noise_rate=0.8`` gets the 0.8 warm-up, while an explicit
``--set method.warmup_epochs=N`` always wins.
"""

from __future__ import annotations

from alr_fast.config import (Config, DataConfig, MethodConfig, ModelConfig, OptimConfig, TrainConfig,
                             apply_overrides, override_keys)

__all__ = ["RECIPES", "get_recipe", "resolve_recipe", "SELC_CIFAR_WARMUP", "RECIPE_SOURCES"]

SELC = "SELC code (MacLLL/SELC@69bcf1e)"

# class-conditional_noise/train_cifar_with_SELC.py, `estimated_es` (epochs of CE before the soft labels start
# moving), keyed by (dataset, SELC noise mode, rate). SELC's 'sym' draws the new label uniformly from all K
# classes (it can be the true one), i.e. our 'sym-incl'; its 'asym' is our 'asym-cifar10' / 'asym-cifar100'.
SELC_CIFAR_WARMUP = {
    ("cifar10", "sym", 0.2): 40, ("cifar10", "sym", 0.4): 30, ("cifar10", "sym", 0.6): 30,
    ("cifar10", "sym", 0.8): 40, ("cifar10", "asym", 0.4): 40,
    ("cifar100", "sym", 0.2): 30, ("cifar100", "sym", 0.4): 20, ("cifar100", "sym", 0.6): 30,
    ("cifar100", "sym", 0.8): 40, ("cifar100", "asym", 0.4): 20,
}
# instance-dependent_noise/train_cifar10_with_SELC_IDN_noise.py: `estimated_es = 40` for every IDN rate; we
# use it for the noise kinds SELC's table has no row for (instance, pair, CIFAR-N, imported noise files).
SELC_IDN_WARMUP = 40

_SELC_MODE = {"sym-incl": "sym", "asym-cifar10": "asym", "asym-cifar100": "asym"}


def _cifar_warmup(dataset: str, noise_kind: str, rate: float) -> tuple[int, str]:
    """SELC's warm-up for a CIFAR setting, and where it came from (nearest listed rate of the same kind)."""
    mode = _SELC_MODE.get(noise_kind)
    rates = sorted(r for (d, m, r) in SELC_CIFAR_WARMUP if d == dataset and m == mode)
    if not rates:
        return SELC_IDN_WARMUP, f"{SELC}, IDN script (no {noise_kind!r} row in the CIFAR table)"
    nearest = min(rates, key=lambda r: (abs(r - rate), r))
    note = "" if abs(nearest - rate) < 1e-9 else f" (nearest listed rate to {rate})"
    return SELC_CIFAR_WARMUP[(dataset, mode, nearest)], f"{SELC}, estimated_es[{dataset}_{mode}{nearest}]{note}"


def demo() -> Config:
    """Embedded MNIST-5k, 60 % symmetric (inclusive) noise, small CNN, CPU: about 10 s per method.

    lam 1.0 was chosen by a one-seed sweep on this data (benchmarks/results/demo_tuning.md). The warm-up is
    ``warmup='auto'`` (refinement starts when the training accuracy on the given labels stops rising,
    alr_fast.loss.schedule.AutoWarmupRule) with lam ramped over 5 epochs: one recipe for every noise setting,
    measured by ``benchmarks/quality.py --study warmup``. ``warmup_epochs`` (4, the earlier fixed recipe) is
    used when ``--set method.warmup=fixed`` is given; ``--set method.warmup_epochs=N`` alone also means a fixed
    warm-up of N epochs. No noisy validation slice (data.val_fraction = 0).

    ``train.threads=1`` pins torch's CPU thread count: the thread count changes how CPU reductions are split
    (other bits, and after 40 epochs of memorisation another last-epoch accuracy), so an unpinned run depends on
    the machine's core count; one thread also keeps the demo fast on a shared machine. The table is bitwise
    reproducible for the same numerics record (``summary.json["numerics"]``: torch, threads, the CPU
    instruction set torch dispatched to, CPU model); benchmarks/results/demo/README.md has the measurements.
    """
    return Config(
        recipe="demo",
        data=DataConfig(dataset="mnist5k", noise_kind="sym-incl", noise_rate=0.6, noise_seed=0),
        model=ModelConfig(name="small_cnn", width=16),
        optim=OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine"),
        method=MethodConfig(name="alr", alpha=0.9, lam=1.0, warmup="auto", warmup_epochs=4, ramp_epochs=5.0),
        train=TrainConfig(epochs=40, batch_size=128, out="runs/demo", threads=1),
    )


def cifar10() -> Config:
    """CIFAR-10 as SELC's class-conditional_noise/train_cifar_with_SELC.py: ResNet-34 (CIFAR stem), SGD lr
    0.02, momentum 0.9, weight decay 1e-3, x0.1 at epochs 40 and 80, 200 epochs, batch 128, alpha 0.9, warm-up
    per noise setting (SELC_CIFAR_WARMUP). PreAct ResNet-18, DivideMix's / ELR+'s choice:
    --set model.name=preact_resnet18."""
    return Config(
        recipe="cifar10",
        data=DataConfig(dataset="cifar10", noise_kind="sym-incl", noise_rate=0.4, augment=True),
        model=ModelConfig(name="cifar_resnet34"),                       # SELC: --model resnet34 (models/resnet.py)
        optim=OptimConfig(optimizer="sgd", lr=0.02, momentum=0.9,        # SELC: --lr 0.02, SGD momentum 0.9
                          weight_decay=1e-3,                             # SELC: weight_decay=1e-3
                          schedule="step", milestones=(40, 80), gamma=0.1),  # SELC: MultiStepLR([40, 80], 0.1)
        method=MethodConfig(name="alr", alpha=0.9,                       # SELC: --alpha 0.9
                            lam=0.3,                                     # unpublished (module docstring)
                            warmup_epochs=30),                           # resolved per setting, see _per_setting
        train=TrainConfig(epochs=200, batch_size=128, out="runs/cifar10"),  # SELC: --num_epochs 200, --batch_size 128
    )


def cifar100() -> Config:
    """CIFAR-100: SELC runs the same script with --dataset cifar100 (its own warm-up table rows)."""
    cfg = cifar10()
    cfg.recipe = "cifar100"
    cfg.data.dataset = "cifar100"
    cfg.train.out = "runs/cifar100"
    return cfg


def animal10n() -> Config:
    """ANIMAL-10N as SELC's real-world_noise/train_animal10N.py: VGG-19-BN from scratch, SGD lr 0.1 *without
    momentum*, weight decay 1e-3, x0.2 at epochs 50 and 75, 100 epochs, batch 128, warm-up 40, alpha 0.9."""
    return Config(
        recipe="animal10n",
        data=DataConfig(dataset="animal10n", noise_kind="none", noise_rate=0.0, augment=True),  # SELC: flip only
        model=ModelConfig(name="vgg19_bn"),                              # SELC: vgg19_bn(pretrained=False)
        optim=OptimConfig(optimizer="sgd", lr=0.1,                       # SELC: --lr 0.1
                          momentum=0.0,                                  # SELC: optim.SGD(..., weight_decay) only
                          weight_decay=1e-3,                             # SELC: weight_decay = 1e-3
                          schedule="step", milestones=(50, 75), gamma=0.2),  # SELC: milestone [50, 75], gamma 0.2
        method=MethodConfig(name="alr", alpha=0.9, lam=0.3,              # SELC: --alpha 0.9; lam unpublished
                            warmup_epochs=40),                           # SELC: --es 40
        train=TrainConfig(epochs=100, batch_size=128, out="runs/animal10n"),  # SELC: --epoch 100, --batch 128
    )


def clothing1m() -> Config:
    """Clothing1M as SELC's real-world_noise/train_Clothing1M.py: ImageNet ResNet-50 (torchvision weights, the
    user's file: --set model.pretrained=PATH), SGD lr 0.01, momentum 0.9, weight decay 1e-3, x0.1 at epochs 10
    and 20, 40 epochs of 2,000 batches of 64 class-balanced images, warm-up 5, alpha 0.8. The model is
    selected on the clean val split (SELC selects on test; we do not)."""
    return Config(
        recipe="clothing1m",
        data=DataConfig(dataset="clothing1m", noise_kind="none", noise_rate=0.0, augment=True,
                        subset_size=2000 * 64),                          # SELC: --num_batches 2000 x --batch_size 64
        model=ModelConfig(name="resnet50"),                              # SELC: models.resnet50(pretrained=True)
        optim=OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9,        # SELC: --lr 0.01, momentum 0.9
                          weight_decay=1e-3,                             # SELC: weight_decay=1e-3
                          schedule="step", milestones=(10, 20), gamma=0.1),  # SELC: MultiStepLR([10, 20], 0.1)
        method=MethodConfig(name="alr", alpha=0.8, lam=0.3,              # SELC: --alpha 0.8; lam unpublished
                            warmup_epochs=5),                            # SELC: --es 5
        train=TrainConfig(epochs=40, batch_size=64, out="runs/clothing1m"),  # SELC: --num_epochs 40, --batch_size 64
    )


def mini_webvision() -> Config:
    """mini-WebVision (first 50 classes, Google subset) as SELC's real-world_noise/train_webvision.py:
    InceptionResNetV2 from scratch at 227 px, SGD lr 0.01, momentum 0.9, weight decay 5e-4, x0.1 at epochs 40
    and 80, 100 epochs, batch 32, warm-up 40, alpha 0.9. Evaluated on WebVision val and, with
    data.ilsvrc_val_list, ILSVRC-2012 val. Without timm: --set model.name=resnet50 (the usual alternative)."""
    return Config(
        recipe="mini-webvision",
        data=DataConfig(dataset="mini-webvision", noise_kind="none", noise_rate=0.0, augment=True,
                        image_size=227),                                 # SELC: RandomCrop(227) / CenterCrop(227)
        model=ModelConfig(name="inception_resnet_v2"),                   # SELC: InceptionResNetV2 (timm's here)
        optim=OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9,        # SELC: --lr 0.01, momentum 0.9
                          weight_decay=5e-4,                             # SELC: weight_decay=5e-4
                          schedule="step", milestones=(40, 80), gamma=0.1),  # SELC: MultiStepLR([40, 80], 0.1)
        method=MethodConfig(name="alr", alpha=0.9, lam=0.3,              # SELC: --alpha 0.9; lam unpublished
                            warmup_epochs=40),                           # SELC: --es 40
        train=TrainConfig(epochs=100, batch_size=32, out="runs/mini-webvision"),  # SELC: --num_epochs 100, bs 32
    )


def webvision() -> Config:
    """Full WebVision 1.0 (1,000 classes, 2.4M images): ResNet-50, bf16 bank. SELC publishes no full-WebVision
    script: SGD lr 0.1, cosine, 60 epochs, batch 64, warm-up 10 are assumptions (the usual ImageNet-style
    ResNet-50 schedule, shortened), not a paper's protocol."""
    cfg = mini_webvision()
    cfg.recipe = "webvision"
    cfg.data.dataset = "webvision"
    cfg.data.image_size = 0                  # the reader's default 224 px for ResNet-50
    cfg.model.name = "resnet50"
    cfg.optim = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine")
    cfg.method.warmup_epochs = 10
    cfg.method.bank_dtype = "bfloat16"
    cfg.train.epochs = 60
    cfg.train.batch_size = 64
    cfg.train.out = "runs/webvision"
    return cfg


def own_data() -> Config:
    """The user's own noisy dataset (``data.dataset`` = 'imagefolder' (default) or 'manifest', docs/data.md):
    ResNet-50 (any torchvision or timm classifier by name: ``--set model.name=...``; ImageNet weights from the
    user's file: ``--set model.pretrained=PATH``), 224 px (random-resized crop + flip; eval resize 256 ->
    center crop 224), SGD lr 0.01 momentum 0.9, weight decay 1e-4, cosine, 30 epochs, batch 64. The warm-up
    needs no per-dataset tuning: ``warmup='auto'`` (refinement starts when the noisy-validation accuracy stops
    rising, alr_fast/loss/schedule.py) with lam ramped over 5 epochs, as the demo recipe measured. A noisy
    validation slice of 5 % of the training rows selects the model (a ``val`` split, when the data has both
    ``val`` and ``test``, selects instead; set ``data.val_fraction=0`` then to train on every row).
    Assumptions, not a paper's protocol: the usual fine-tuning values for a pretrained ResNet-50."""
    return Config(
        recipe="own-data",
        data=DataConfig(dataset="imagefolder", noise_kind="none", noise_rate=0.0, augment=True, val_fraction=0.05),
        model=ModelConfig(name="resnet50"),
        optim=OptimConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine"),
        method=MethodConfig(name="alr", alpha=0.9, lam=0.3, warmup="auto", warmup_epochs=5, ramp_epochs=5.0),
        train=TrainConfig(epochs=30, batch_size=64, out="runs/own-data"),
    )


RECIPES = {
    "demo": demo,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "animal10n": animal10n,
    "clothing1m": clothing1m,
    "mini-webvision": mini_webvision,
    "webvision": webvision,
    "own-data": own_data,
}

RECIPE_SOURCES = {
    "demo": "measured on the embedded data (benchmarks/results/demo_tuning.md; warm-up: auto + lam ramp, "
            "benchmarks/results/quality/warmup_study.md)",
    "cifar10": f"{SELC}: class-conditional_noise/train_cifar_with_SELC.py",
    "cifar100": f"{SELC}: class-conditional_noise/train_cifar_with_SELC.py",
    "animal10n": f"{SELC}: real-world_noise/train_animal10N.py",
    "clothing1m": f"{SELC}: real-world_noise/train_Clothing1M.py",
    "mini-webvision": f"{SELC}: real-world_noise/train_webvision.py",
    "webvision": "assumption (no SELC script for full WebVision)",
    "own-data": "assumption (usual fine-tuning values; automatic warm-up + lam ramp as the demo recipe)",
}


def _per_setting(cfg: Config, explicit: set[str]) -> Config:
    """Apply the values that depend on the (overridden) noise setting, unless set explicitly."""
    if cfg.data.dataset in ("cifar10", "cifar100") and "method.warmup_epochs" not in explicit:
        kind = cfg.data.noise_kind
        if cfg.data.noise_file or cfg.data.cifar_n:
            kind = "imported"
        cfg.method.warmup_epochs, _ = _cifar_warmup(cfg.data.dataset, kind, cfg.data.noise_rate)
    return cfg


def get_recipe(name: str) -> Config:
    """The recipe's config as written (per-setting values for its default noise setting)."""
    return resolve_recipe(name)


def resolve_recipe(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Recipe ``name`` with ``section.field=value`` overrides, then the per-setting values (see module doc)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    cfg = apply_overrides(RECIPES[name](), list(overrides))
    cfg = _per_setting(cfg, override_keys(overrides))
    return apply_overrides(cfg, [])  # re-validate (e.g. warm-up < epochs)


def warmup_source(cfg: Config) -> str:
    """Where the resolved warm-up of a CIFAR config comes from (for `config` output and the README)."""
    if cfg.data.dataset not in ("cifar10", "cifar100"):
        return RECIPE_SOURCES.get(cfg.recipe, "config")
    kind = "imported" if (cfg.data.noise_file or cfg.data.cifar_n) else cfg.data.noise_kind
    return _cifar_warmup(cfg.data.dataset, kind, cfg.data.noise_rate)[1]
