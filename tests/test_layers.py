"""Choosing layers: names, globs, module objects, types, predicates; clear errors."""

import pytest
import timm
import torch
import torchvision
from torch import nn

import normgrad as ng
from conftest import SmallNet
from normgrad.engine.default_layers import auto_layers
from normgrad.engine.describe import describe_layers


def test_selectors():
    model = SmallNet()
    names = dict(model.named_modules())
    assert [n for n, _ in ng.select_layers(model, nn.Conv2d)] == [
        "features.0",
        "features.3",
        "features.5",
        "features.7.conv1",
        "features.7.conv2",
        "features.8",
    ]
    assert [n for n, _ in ng.select_layers(model, "features.7.*")] == [
        "features.7.conv1",
        "features.7.bn1",
        "features.7.relu",
        "features.7.conv2",
        "features.7.bn2",
        "features.7.relu_out",
    ]
    assert [n for n, _ in ng.select_layers(model, [model.classifier, "input", "features.0"])] == ["classifier", "input", "features.0"]
    assert [n for n, _ in ng.select_layers(model, lambda name, m: name.endswith("bn1"))] == ["features.7.bn1"]
    assert [n for n, _ in ng.select_layers(model, ["features.0", nn.Conv2d])][:2] == ["features.0", "features.3"]
    assert ng.select_layers(model, "input") == [("input", None)]
    assert ng.select_layers(model, "features.1")[0][1] is names["features.1"]
    assert ng.layer_names(model)[:2] == ["input", "features"]


def test_type_selector_gives_all_53_resnet50_convs():
    model = torchvision.models.resnet50(weights=None)
    maps = ng.normgrad(model, torch.randn(1, 3, 32, 32), layers=nn.Conv2d)
    assert len(maps) == 53
    assert list(maps)[:2] == ["conv1", "layer1.0.conv1"]


def test_unknown_layer_lists_close_names():
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(ng.NormGradError) as info:
        ng.normgrad(model, torch.randn(1, 3, 32, 32), layers=["layer5"])
    message = str(info.value)
    assert "unknown layer 'layer5'" in message and "layer1" in message and "layer4" in message
    with pytest.raises(ng.NormGradError, match="closest names: layer3.1.conv2"):
        ng.normgrad(model, torch.randn(1, 3, 32, 32), layers="layer3.1.cnv2")


@pytest.mark.parametrize(
    "layers, message",
    [
        ([], "no layer selected"),
        (nn.LSTM, "no layer of the model matches modules of type LSTM"),
        (lambda name, m: False, "matches the predicate"),
        (nn.Conv2d(1, 1, 1), "not a submodule"),
        ([3], "cannot select a layer with 3"),
        (3, "layers must be a name"),
        ("zz*", "unknown layer 'zz\\*'"),
    ],
)
def test_selection_errors(layers, message):
    with pytest.raises(ng.NormGradError, match=message):
        ng.select_layers(SmallNet(), layers)


@pytest.mark.parametrize(
    "build, size, expected",
    [
        (lambda: torchvision.models.resnet18(), (64, 96), ["layer1", "layer2", "layer3", "layer4"]),
        (lambda: torchvision.models.vgg11(), (64, 96), ["features.9", "features.14", "features.19", "features.20"]),
        (
            lambda: torchvision.models.densenet121(),
            (64, 96),
            ["features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"],
        ),
        (
            lambda: torchvision.models.swin_transformer.SwinTransformer([4, 4], 24, [2, 2, 2, 2], [1, 2, 2, 4], [4, 4]),
            (64, 96),
            ["features.1", "features.3", "features.5", "norm"],  # stages, never the patch embedding features.0
        ),
        (lambda: timm.create_model("levit_128s", img_size=(64, 96)), (64, 96), ["stages.0", "stages.1", "stages.2"]),  # not the stem
        (
            lambda: timm.create_model("vit_tiny_patch16_224", img_size=(64, 96), depth=9),
            (64, 96),
            ["blocks.1", "blocks.3", "blocks.5", "blocks.7"],
        ),
    ],
)
def test_default_layers_follow_the_architecture(build, size, expected):
    assert ng.engine.default_layers.auto_layers(build().eval(), torch.zeros(1, 3, *size)) == expected


def test_layer_listing_shows_layouts():
    model = timm.create_model("vit_tiny_patch16_224", img_size=(64, 96), depth=2)
    infos = {info.name: info for info in ng.engine.describe.describe_layers(model, torch.zeros(1, 3, 64, 96))}
    assert infos["blocks.0"].layout_text == "(N, T, C) tokens 1 + 4×6"
    assert infos["patch_embed.proj"].layout_text == "(N, C, H, W) 4×6"
    assert infos["blocks.0.attn.q_norm"].layout_text == "no map: not on the image grid"
    assert infos["patch_embed.proj"].takes_image and not infos["blocks.0"].takes_image


def test_layers_are_described_on_the_model_device():
    """A CPU example for a model elsewhere (CUDA in practice; the meta device here): the probe runs where the model is."""
    model = torchvision.models.resnet18().to("meta")
    assert auto_layers(model, torch.randn(1, 3, 64, 96)) == ["layer1", "layer2", "layer3", "layer4"]
    infos = {info.name: info for info in describe_layers(model, torch.randn(1, 3, 64, 96))}
    assert infos["layer4"].output_shape == (1, 512, 2, 3)
