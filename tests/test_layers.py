"""Choosing layers: names, globs, module objects, types, predicates; clear errors."""

import pytest
import torch
import torchvision
from torch import nn

import normgrad as ng
from conftest import SmallNet


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
