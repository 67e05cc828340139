"""Backbones at their recipe's input size (build + one SGD step on CPU) and pretrained-weights loading."""

from __future__ import annotations

import time

import pytest
import torch

from alr_fast.train.models import PreActResNet, build_model, load_pretrained
from alr_fast.recipes import get_recipe

# (recipe, model, input size, classes): the recipe's backbone at the recipe's training crop.
RECIPE_BACKBONES = [
    ("demo", "small_cnn", 28, 10, 1),
    ("cifar10", "cifar_resnet34", 32, 10, 3),
    ("cifar10", "preact_resnet18", 32, 10, 3),  # the documented alternative (DivideMix / ELR+)
    ("animal10n", "vgg19_bn", 64, 10, 3),
    ("clothing1m", "resnet50", 224, 14, 3),
    ("mini-webvision", "inception_resnet_v2", 227, 50, 3),
]


@pytest.mark.parametrize("recipe,name,size,k,channels", RECIPE_BACKBONES)
def test_backbone_trains_one_step_at_recipe_size(recipe, name, size, k, channels):
    cfg = get_recipe(recipe)
    if name == cfg.model.name and cfg.data.image_size:
        assert cfg.data.image_size == size
    if name == "inception_resnet_v2":
        pytest.importorskip("timm")
    torch.manual_seed(0)
    model = build_model(name, num_classes=k, in_channels=channels, image_size=size)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) or name == "small_cnn"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(2, channels, size, size), torch.tensor([0, k - 1])
    before = [p.detach().clone() for p in model.parameters()]
    t0 = time.perf_counter()
    logits = model(x)
    assert logits.shape == (2, k) and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    print(f"{name} at {size}px: forward+backward+step of batch 2 in {time.perf_counter() - t0:.2f} s (CPU)")
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert changed == len(before), f"{len(before) - changed} parameter tensors did not move"
    with torch.no_grad():
        model.eval()
        assert torch.nn.functional.cross_entropy(model(x), y).isfinite()


@pytest.mark.parametrize("name", ["preact_resnet18", "cifar_resnet34"])
def test_cifar_resnets_keep_4x4_maps_at_32px(name):
    """A CIFAR stem (3x3 stride 1, no max-pool): the last stage sees 4x4 maps, not torchvision's 1x1."""
    model = build_model(name, num_classes=10, in_channels=3, image_size=32)
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))
    model.eval()(torch.randn(1, 3, 32, 32))
    assert seen["shape"] == (1, 512, 4, 4)
    depth = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert depth == {"preact_resnet18": 17, "cifar_resnet34": 33}[name]  # stem + 2 per block


def test_preact_block_is_preactivation():
    """PreAct ResNet-18: the first conv of the first block sees BN+ReLU of the stem output, not the raw stem."""
    model = PreActResNet((2, 2, 2, 2), 10).eval()
    assert model.bn1 is None and model.bn_final is not None
    x = torch.randn(1, 3, 32, 32)
    stem = model.conv1(x)
    got = {}
    model.layer1[0].conv1.register_forward_hook(lambda m, i, o: got.update({"in": i[0]}))
    model(x)
    torch.testing.assert_close(got["in"], torch.relu(model.layer1[0].bn1(stem)))


def test_unknown_model_names_the_field():
    with pytest.raises(ValueError, match="model.name"):
        build_model("resnet_does_not_exist", num_classes=10, in_channels=3, image_size=32)


def _torchvision(name, k):
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=k)


def test_pretrained_round_trip_replaces_the_classifier(tmp_path):
    torch.manual_seed(1)
    source = _torchvision("resnet50", 1000)  # an ImageNet-shaped state dict, as torchvision publishes it
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    model = build_model("resnet50", num_classes=14, in_channels=3, image_size=224, pretrained=str(path))
    want = source.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("fc."):
            continue
        assert torch.equal(value, want[key]), key
    assert model.fc.weight.shape == (14, 2048)  # a fresh classifier for 14 classes, not the file's rows
    assert not torch.equal(model.fc.weight, want["fc.weight"][:14])
    assert model.fc.weight.abs().max() <= 1 / 2048 ** 0.5 + 1e-6  # nn.Linear's default init bound


def test_pretrained_accepts_wrappers_and_dataparallel_prefix(tmp_path):
    source = _torchvision("resnet18", 1000)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = _torchvision("resnet18", 7)
    info = load_pretrained(model, path)
    assert info["classifier_replaced"] == "fc" and info["classifier_in_file"] == ["fc.bias", "fc.weight"]
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_pretrained_wrong_shape_names_the_key(tmp_path):
    state = _torchvision("resnet18", 1000).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"wrong shape.*layer2\.0\.conv1\.weight: file \(128, 64, 5, 5\) vs "
                                         r"model \(128, 64, 3, 3\)"):
        build_model("resnet18", num_classes=10, in_channels=3, image_size=224, pretrained=str(path))


def test_pretrained_missing_and_unexpected_keys(tmp_path):
    state = _torchvision("resnet18", 1000).state_dict()
    del state["layer4.1.bn2.running_var"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \['layer4\.1\.bn2\.running_var'\]"):
        load_pretrained(_torchvision("resnet18", 10), path)
    # A ResNet-50 file into a ResNet-18: unexpected keys are named too.
    path50 = tmp_path / "r50.pth"
    torch.save(_torchvision("resnet50", 1000).state_dict(), path50)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['layer1\.0\.bn3\.bias'"):
        load_pretrained(_torchvision("resnet18", 10), path50)


def test_pretrained_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.pretrained: .*nope.pth: no such file"):
        load_pretrained(_torchvision("resnet18", 10), tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="model.pretrained: .*junk.pth: not a loadable state dict"):
        load_pretrained(_torchvision("resnet18", 10), junk)
    code = tmp_path / "code.pth"
    torch.save({"w": torch.zeros(1), "f": print}, code)  # pickled code: weights_only refuses it
    with pytest.raises(ValueError, match="not a loadable state dict"):
        load_pretrained(_torchvision("resnet18", 10), code)


def test_an_input_too_small_for_the_backbone_is_a_clear_error():
    """mini-WebVision's InceptionResNetV2 needs >= 75 px: the build says so, naming model and size, instead of
    failing inside the first training step."""
    with pytest.raises(ValueError, match=r"model.name='inception_resnet_v2' cannot take 3-channel 32 px inputs"):
        build_model("inception_resnet_v2", num_classes=10, in_channels=3, image_size=32)
    model = build_model("inception_resnet_v2", num_classes=10, in_channels=3, image_size=75)  # the smallest it takes
    assert model.training  # the probe leaves the model in training mode
