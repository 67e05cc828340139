"""Model zoo: the backbones the noisy-label literature uses, plus any torchvision / timm classifier by name.

=========================  =====================================================================  ===========
name                       what                                                                   used by
=========================  =====================================================================  ===========
small_cnn, mlp             tiny networks for the embedded digits                                  demo
preact_resnet18            CIFAR PreAct ResNet-18: 3x3 stride-1 stem, no max-pool (He et al.      DivideMix,
                           2016, "Identity mappings"); 4x4 feature maps before pooling at 32 px   ELR+
cifar_resnet34             CIFAR ResNet-34 (post-activation basic blocks, 3x3 stride-1 stem)      SELC's code
resnet50 (torchvision)     ImageNet ResNet-50; ``pretrained=PATH`` loads the user's torchvision   Clothing1M,
                           state dict and replaces the classifier                                 WebVision
inception_resnet_v2        timm's InceptionResNetV2 (optional extra ``[timm]``), no weights       mini-WebVision
any other name             a torchvision classifier (``weights=None``), else a timm model
                           (``pretrained=False``); nothing is ever downloaded
=========================  =====================================================================  ===========

torchvision's ``resnet18`` has a 7x7 stride-2 stem and a max-pool: at 32 px it leaves 1x1 feature maps,
which is why the CIFAR recipes use the CIFAR variants above.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["build_model", "load_pretrained", "PreActResNet", "CifarResNet", "CIFAR_MODELS"]


class SmallCNN(nn.Module):
    """Two strided convolutions and a two-layer head: ~33k img/s fwd+bwd on 2 CPU cores at 28x28."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, stride=2, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        side = (image_size + 1) // 2
        side = (side + 1) // 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 8 * width),
            nn.ReLU(inplace=True),
            nn.Linear(8 * width, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))


class MLP(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * image_size * image_size, 8 * width),
            nn.ReLU(inplace=True),
            nn.Linear(8 * width, num_classes),
        )

    def forward(self, x):
        return self.net(x)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv3x3, plus the identity (or a 1x1 strided projection of the
    pre-activated input when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.shortcut = (nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the identity (or 1x1 conv + BN), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _CifarResNetBase(nn.Module):
    """3x3 stride-1 stem (no max-pool), four stages of widths 64/128/256/512 with strides 1/2/2/2, global
    average pool, linear classifier. At 32 px the last stage sees 4x4 feature maps."""

    preact = False

    def __init__(self, block, depths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = None if self.preact else nn.BatchNorm2d(64)
        stages, cin = [], 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # Pre-activation nets end with the BN + ReLU the last block's output has not had yet.
        self.bn_final = nn.BatchNorm2d(512) if self.preact else None
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.conv1(x)
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn_final is not None:
            out = F.relu(self.bn_final(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class PreActResNet(_CifarResNetBase):
    preact = True

    def __init__(self, depths=(2, 2, 2, 2), num_classes: int = 10, in_channels: int = 3):
        super().__init__(PreActBlock, depths, num_classes, in_channels)


class CifarResNet(_CifarResNetBase):
    def __init__(self, depths=(3, 4, 6, 3), num_classes: int = 10, in_channels: int = 3):
        super().__init__(BasicBlock, depths, num_classes, in_channels)


CIFAR_MODELS = {
    "preact_resnet18": lambda k, c: PreActResNet((2, 2, 2, 2), k, c),
    "cifar_resnet18": lambda k, c: CifarResNet((2, 2, 2, 2), k, c),
    "cifar_resnet34": lambda k, c: CifarResNet((3, 4, 6, 3), k, c),
}


def _classifier_name(model: nn.Module) -> str:
    for name in ("fc", "classifier", "head", "heads", "last_linear"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"model.pretrained: cannot find the classifier of {type(model).__name__} (fc / classifier / head)")


def load_pretrained(model: nn.Module, path: str | Path) -> dict:
    """Load a user-supplied state dict (e.g. torchvision's ``resnet50-*.pth``) into ``model``, except its
    classifier, which keeps its fresh initialisation for the run's K classes.

    Read with ``torch.load(weights_only=True)`` (no pickled code runs). A ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper and a ``module.`` prefix (DataParallel) are accepted. Any missing or unexpected
    key, or a wrong shape, outside the classifier is an error naming the keys. Returns what was loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: {path}: no such file (a torchvision state dict, e.g. "
                                "resnet50-11ad3fa6.pth; nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-checkpoint files; re-raise with the path
        raise ValueError(f"model.pretrained: {path}: not a loadable state dict ({type(e).__name__}: {e})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model.pretrained: {path}: expected a dict of tensors (a state dict)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    head = _classifier_name(model) + "."
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = sorted(k for k in own if not k.startswith(head) and k not in body)
    unexpected = sorted(k for k in body if k not in own)
    shapes = sorted(f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in body.items()
                    if k in own and v.shape != own[k].shape)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {unexpected[:5]}")
    if shapes:
        problems.append(f"{len(shapes)} wrong shape(s) {shapes[:5]}")
    if problems:
        raise ValueError(f"model.pretrained: {path} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(body, strict=False)
    return {"path": str(path), "loaded_tensors": len(body), "classifier_replaced": head[:-1],
            "classifier_in_file": sorted(k for k in state if k.startswith(head))}


def _timm_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ValueError(f"model.name={name!r} needs timm: pip install 'alr_fast[timm]'") from None
    if not timm.is_model(name):
        raise ValueError(f"model.name: {name!r} is neither a built-in, torchvision nor timm model")
    # pretrained=False: nothing is downloaded; ImageNet weights are the user's file (model.pretrained).
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)


def build_model(name: str, *, num_classes: int, in_channels: int, image_size: int, width: int = 16,
                pretrained: str | Path | None = None) -> nn.Module:
    if name == "small_cnn":
        model = SmallCNN(in_channels, image_size, num_classes, width)
    elif name == "mlp":
        model = MLP(in_channels, image_size, num_classes, width)
    elif name in CIFAR_MODELS:
        model = CIFAR_MODELS[name](num_classes, in_channels)
    else:
        import torchvision

        if name in torchvision.models.list_models(module=torchvision.models):
            # weights=None: nothing is downloaded at run time; pretrained weights are the user's file.
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        else:
            model = _timm_model(name, num_classes, in_channels)
        _check_input_size(model, name, in_channels, image_size)
    if pretrained:
        load_pretrained(model, pretrained)
    return model


@torch.no_grad()
def _check_input_size(model: nn.Module, name: str, in_channels: int, image_size: int) -> None:
    """One forward of a single zero image at build time (eval mode, CPU, ~0.1 s for a ResNet-50 at 224 px), so
    that an input a library backbone cannot take fails here, naming the model and the size, instead of deep
    inside the first training step (e.g. InceptionResNetV2 needs at least 75 px)."""
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError as e:
        raise ValueError(
            f"model.name={name!r} cannot take {in_channels}-channel {image_size} px inputs "
            f"({str(e).splitlines()[0]}); raise --image-size (data.image_size) or pick another --model"
        ) from None
    finally:
        model.train(was_training)
