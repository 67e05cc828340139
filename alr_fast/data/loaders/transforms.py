"""Per-recipe image transforms, described once and built twice (DALI in :mod:`.dali`, torchvision here).

A :class:`TransformSpec` says what a sample goes through, in this order:

1. ``pad``: zero padding on every side (CIFAR's 4 px; in-memory arrays only);
2. ``resize_shorter``: resize so the shorter side is this many pixels (aspect kept, antialiased bilinear);
3. the crop to ``crop`` x ``crop``: ``crop_mode`` 'center', 'random' (uniform position) or 'random-resized'
   (area fraction in ``rrc_scale``, aspect ratio in ``rrc_ratio`` log-uniform, then resized to the crop);
4. ``flip``: horizontal flip with probability 1/2;
5. normalisation ``(x / 255 - mean) / std`` per channel, NCHW, then the requested float dtype.

Recipes (docs/datasets.md): CIFAR: pad 4 + random crop 32 + flip, eval as is. ANIMAL-10N (64 x 64
images): flip only (the resize/crop to 64 is the identity on the real data and guards against odd sizes).
Clothing1M: resize 256 -> random crop 224 -> flip; eval resize 256 -> center crop 224. WebVision /
mini-WebVision / ILSVRC val: random-resized crop 224 + flip; eval resize 256 -> center crop 224 (for
InceptionResNetV2 pass crop=299, resize=320, as DivideMix does). The user's own data (imagefolder, manifest):
the same as WebVision's, with the EXIF orientation applied (``exif_transpose``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["TransformSpec", "recipe_transform", "IMAGENET_STATS", "build_torchvision_transform"]

GENERIC_DATASETS = ("imagefolder", "manifest", "webdataset")
"""The user's own data forms (alr_fast.data.readers.generic): one transform recipe for all of them."""
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CROP_MODES = ("none", "center", "random", "random-resized")


@dataclass(frozen=True)
class TransformSpec:
    crop: int
    """Output height = width in pixels."""
    crop_mode: str = "center"
    """'none' (images must already be crop x crop), 'center', 'random' or 'random-resized'."""
    resize_shorter: int | None = None
    """Shorter side after resizing (before a center/random crop); None: no resize."""
    pad: int = 0
    """Zero padding per side before the crop (in-memory arrays only)."""
    flip: bool = False
    """Random horizontal flip."""
    mean: tuple[float, float, float] = IMAGENET_STATS[0]
    std: tuple[float, float, float] = IMAGENET_STATS[1]
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    """Area fraction range of the random-resized crop (torchvision's default)."""
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """Aspect-ratio range of the random-resized crop."""
    exif_transpose: bool = False
    """Apply the EXIF orientation tag when decoding (the user's own datasets; the benchmark datasets' published
    numbers were obtained without it)."""

    def __post_init__(self):
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"TransformSpec: crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.crop < 1 or self.pad < 0 or (self.resize_shorter is not None and self.resize_shorter < self.crop):
            raise ValueError(f"TransformSpec: need crop >= 1, pad >= 0, resize_shorter >= crop; got {self}")
        if self.crop_mode == "random-resized" and (self.resize_shorter is not None or self.pad):
            raise ValueError("TransformSpec: a random-resized crop takes the decoded image directly (no resize/pad)")

    @property
    def random(self) -> bool:
        return self.flip or self.crop_mode in ("random", "random-resized")


def recipe_transform(dataset: str, *, train: bool, crop: int | None = None, resize: int | None = None,
                     mean: tuple | None = None, std: tuple | None = None) -> TransformSpec:
    """The recipe's transform for ``dataset`` ('cifar10', 'cifar100', 'animal10n', 'clothing1m', 'webvision',
    'mini-webvision', 'ilsvrc2012'); ``mean``/``std`` default to the table's (pass ``table.mean``)."""
    from alr_fast.data.readers.cifar import CIFAR_STATS
    from alr_fast.data.readers.clothing1m import CLOTHING1M_STATS

    if dataset in ("cifar10", "cifar100"):
        m, s = CIFAR_STATS[dataset]
        spec = (TransformSpec(crop=32, crop_mode="random", pad=4, flip=True) if train
                else TransformSpec(crop=32, crop_mode="none"))
    elif dataset == "animal10n":
        m, s = IMAGENET_STATS
        size = crop or 64
        spec = TransformSpec(crop=size, crop_mode="center", resize_shorter=size, flip=train)
    elif dataset == "clothing1m":
        m, s = CLOTHING1M_STATS
        c, r = crop or 224, resize or 256
        spec = TransformSpec(crop=c, crop_mode="random" if train else "center", resize_shorter=r, flip=train)
    elif dataset in GENERIC_DATASETS:
        # The user's own data: ImageNet statistics (the usual pretrained backbones'), random-resized crop 224 +
        # flip for training, resize 256 -> center crop 224 for evaluation, EXIF orientation applied.
        m, s = IMAGENET_STATS
        c = crop or 224
        r = resize or round(c * 256 / 224)
        spec = (TransformSpec(crop=c, crop_mode="random-resized", flip=True, exif_transpose=True) if train
                else TransformSpec(crop=c, crop_mode="center", resize_shorter=r, exif_transpose=True))
    elif dataset in ("webvision", "mini-webvision", "ilsvrc2012"):
        m, s = IMAGENET_STATS
        c = crop or 224
        r = resize or round(c * 256 / 224)
        spec = (TransformSpec(crop=c, crop_mode="random-resized", flip=True) if train
                else TransformSpec(crop=c, crop_mode="center", resize_shorter=r))
    else:
        raise ValueError(f"recipe_transform: no transform recipe for dataset {dataset!r}")
    return replace(spec, mean=tuple(mean or m), std=tuple(std or s))


def build_torchvision_transform(spec: TransformSpec):
    """The same transform as a torchvision (v1, PIL) pipeline ending in a normalised float32 CHW tensor."""
    import torchvision.transforms as T

    steps = []
    if spec.pad:
        steps.append(T.Pad(spec.pad, fill=0))
    if spec.resize_shorter is not None:
        steps.append(T.Resize(spec.resize_shorter, interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    if spec.crop_mode == "center":
        steps.append(T.CenterCrop(spec.crop))
    elif spec.crop_mode == "random":
        steps.append(T.RandomCrop(spec.crop))
    elif spec.crop_mode == "random-resized":
        steps.append(T.RandomResizedCrop(spec.crop, scale=spec.rrc_scale, ratio=spec.rrc_ratio, antialias=True))
    if spec.flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)
