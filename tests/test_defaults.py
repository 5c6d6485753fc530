"""The default rule (normgrad.defaults) on the embedded model and on random ResNet, ConvNeXt, VGG and ViT models."""

import pytest
import timm
import torch
import torchvision
from torch import nn

import normgrad as ng
from normgrad.defaults import Stage, choose_layers, defaults_for, explain_defaults, input_policy, layered, probe
from normgrad.errors import NormGradError
from normgrad.models import Preprocess, load
from normgrad.registry import get_method
from test_engine import assert_untouched, snapshot


def test_the_embedded_model_gets_the_measured_default():
    loaded = load()
    defaults = defaults_for(loaded)
    assert defaults.layers == ("blocks.4", "blocks.6", "bn2")
    assert defaults.methods == {"blocks.4": "selective", "blocks.6": "scaling+sum", "bn2": "scaling+sum"}
    assert defaults.combine == "product" and defaults.preprocess.max_size == 448 and defaults.preprocess.size == 224
    assert defaults_for(loaded) is defaults  # probed once
    assert {s.name: s.stride for s in defaults.stages}["blocks.4"] == 16


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: torchvision.models.resnet18(), {"layer3": "selective", "layer4.0": "scaling+sum", "layer4": "scaling+sum"}),
        (lambda: torchvision.models.resnet50(), {"layer3": "selective", "layer4.1": "scaling+sum", "layer4": "scaling+sum"}),
        (
            lambda: timm.create_model("convnext_atto"),
            {"stages.2": "selective", "stages.3.blocks.0": "scaling+sum", "stages.3": "scaling+sum"},  # not the norm inside a downsample
        ),
    ],  # fmt: skip
)
def test_the_rule_reads_the_architecture(build, expected):
    model = build().train()  # training mode and BatchNorm statistics must survive the probe
    before = snapshot(model)
    defaults = explain_defaults(model, Preprocess())
    assert defaults.methods == expected and defaults.preprocess.max_size == 448
    strides = {s.name: s.stride for s in defaults.stages}
    assert min(strides[layer] for layer in defaults.layers) == 16 and len(defaults.layers) >= 2
    assert_untouched(model, before)


def test_a_class_token_vit_leaves_out_its_last_block_and_keeps_its_input_size():
    vit = timm.create_model("vit_tiny_patch16_224").eval()
    stages = probe(vit, torch.randn(1, 3, 224, 224))
    last = {s.name: s for s in stages}["blocks.11"]
    assert last.zero and last.stride == 16  # patch tokens after the last attention do not reach the class token
    defaults = explain_defaults(vit, Preprocess())
    assert defaults.methods == {"blocks.8": "selective", "blocks.9": "scaling+sum", "blocks.10": "scaling+sum"}
    assert defaults.preprocess.max_size is None  # a fixed position embedding: 224 only
    x = torch.randn(2, 3, 224, 224)
    maps = defaults.method(vit, x, torch.tensor([1, 2]), layers=list(defaults.layers))
    assert list(maps) == list(defaults.layers) and all(m.shape == (2, 1, 14, 14) for m in maps.values())


def test_the_default_method_equals_its_parts():
    model = torchvision.models.resnet18().eval()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    method = layered({"layer3": "selective", "layer4": "scaling+sum"})
    maps = method(model, x, target, layers=["layer4", "layer3", "layer2"])
    assert list(maps) == ["layer4", "layer3", "layer2"]
    assert torch.equal(maps["layer4"], ng.saliency(model, x, target, layers=["layer4"], extract="scaling", aggregate="sum")["layer4"])
    assert torch.equal(maps["layer3"], ng.normgrad_selective(model, x, target, layers=["layer3"])["layer3"])
    assert torch.equal(maps["layer2"], ng.normgrad_selective(model, x, target, layers=["layer2"])["layer2"])  # the fallback
    pooled = ng.saliency(model, x, target, layers=["layer4"], extract="scaling", aggregate="sum")["layer4"]
    features = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: features.setdefault("a", o.detach()))
    model(x)
    handle.remove()
    cam = torch.einsum("nchw,nc->nhw", features["a"], model.fc.weight[target]) / 4  # CAM / (h·w): 2×2 map at 64 px
    assert torch.allclose(pooled[:, 0], cam, atol=1e-5)  # at the layer before global pooling, gradient × activation is CAM
    with pytest.raises(NormGradError, match="layer names"):
        method(model, x, target, layers=[torch.nn.Conv2d])


@pytest.mark.parametrize(
    ("build", "methods", "layers"),
    [
        (
            lambda: torchvision.models.resnet18(),
            {"layer3": "selective", "layer4.0": "scaling+sum", "layer4": "scaling+sum", "layer2": "normgrad", "layer1": "conv3x3+max"},
            ["layer1", "layer2", "layer3", "layer4.0", "layer4", "layer3.0"],  # layer3.0: the fallback
        ),
        (
            lambda: timm.create_model("convnext_atto"),
            {"stages.3.downsample.0": "selective", "stages.3.blocks.0": "scaling+sum", "stages.3": "scaling+sum", "stages.1": "bias+norm"},
            ["stages.1", "stages.2", "stages.3.downsample.0", "stages.3.blocks.0", "stages.3"],
        ),
    ],  # fmt: skip
)
def test_the_default_method_takes_one_pass_and_equals_one_pass_per_method(build, methods, layers, monkeypatch):
    model = build().eval()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    expected = {name: get_method(methods.get(name, "selective"))(model, x, target, layers=[name])[name] for name in layers}
    forwards, grads = [], []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grads.append(1) or real_grad(*a, **k))
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        maps = layered(methods)(model, x, target, layers=layers)
    finally:
        handle.remove()
    assert len(forwards) == 1 and len(grads) == 1  # one forward, one backward for five methods
    assert list(maps) == layers
    for name in layers:
        torch.testing.assert_close(maps[name], expected[name], rtol=1e-5, atol=1e-7)


def test_the_default_method_keeps_other_methods_in_their_own_calls():
    model = torchvision.models.resnet18().eval()
    x, target = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    maps = layered({"layer3": "selective", "layer4": "gradcam"})(model, x, target, layers=["layer4", "layer3"])
    assert list(maps) == ["layer4", "layer3"]
    torch.testing.assert_close(maps["layer4"], get_method("gradcam")(model, x, target, layers=["layer4"])["layer4"])
    torch.testing.assert_close(maps["layer3"], ng.normgrad_selective(model, x, target, layers=["layer3"])["layer3"])


def test_per_layer_pairs_in_one_pass_and_their_errors():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 64, 64)
    maps = ng.saliency(model, x, 3, layers=["layer2", "layer3"], per_layer={"layer3": ("scaling", "sum")})
    torch.testing.assert_close(maps["layer2"], ng.normgrad(model, x, 3, layers=["layer2"])["layer2"])  # the default pair
    torch.testing.assert_close(maps["layer3"], ng.saliency(model, x, 3, layers=["layer3"], extract="scaling", aggregate="sum")["layer3"])
    with pytest.raises(NormGradError, match=r"unknown extract 'scalling' \(did you mean 'scaling'\?\); valid extracts: scaling, conv1x1"):
        ng.saliency(model, x, 3, layers=["layer3"], per_layer={"layer3": ("scalling", "sum")})
    with pytest.raises(NormGradError, match=r"unknown aggregate 'nrm' \(did you mean 'norm'\?\); valid aggregates: norm, positive_norm"):
        ng.saliency(model, x, 3, layers=["layer3"], per_layer={"layer3": ("scaling", "nrm")})
    with pytest.raises(NormGradError, match=r"must be an \(extract, aggregate\) pair"):
        ng.saliency(model, x, 3, layers=["layer3"], per_layer={"layer3": "scaling+sum"})
    unknown = r"'layer5', which is not among the selected layers \(did you mean 'layer3'\?\); selected: layer3$"
    with pytest.raises(NormGradError, match=unknown):
        ng.saliency(model, x, 3, layers=["layer3"], per_layer={"layer5": ("scaling", "sum")})
    with pytest.raises(NormGradError, match="must map layer names"):
        ng.saliency(model, x, 3, layers=["layer3"], per_layer=[("layer3", ("scaling", "sum"))])
    with pytest.raises(NormGradError, match="extract='layer' needs a layer with weights"):  # each layer's own extract is checked
        ng.saliency(model, x, 3, layers=["layer3"], per_layer={"layer3": ("layer", "norm")})


def test_choose_layers_by_stride_and_reach():
    stages = [Stage("a", 4, 0), Stage("b", 16, 0), Stage("c", 16, 0), Stage("d", 32, 0), Stage("e", 32, 0), Stage("f", 32, 0, zero=True)]
    assert choose_layers(stages) == {"c": "selective", "d": "scaling+sum", "e": "scaling+sum"}
    assert choose_layers(stages, deep_layers=1) == {"c": "selective", "e": "scaling+sum"}
    assert choose_layers(stages, fine_stride=8) == {"a": "selective", "d": "scaling+sum", "e": "scaling+sum"}
    with pytest.raises(NormGradError, match="stride ≤ 2"):
        choose_layers(stages, fine_stride=2)
    with pytest.raises(NormGradError, match="fewer than two"):
        choose_layers([Stage("a", 16, 0), Stage("b", 32, 0, zero=True)])


def test_a_model_whose_output_depends_on_no_layer_is_refused_with_the_reason():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()  # fmt: skip
    nn.init.zeros_(model[-1].weight)  # a classifier initialised at zero, as timm does for MLP-Mixer
    with pytest.raises(NormGradError, match="does not depend on any of its block outputs .* load trained weights"):
        explain_defaults(model, Preprocess(size=32))


def test_input_policy_keeps_large_photos_up_to_twice_the_size():
    policy = input_policy(torchvision.models.resnet18().eval(), Preprocess())
    assert policy.input_size(1000, 600) == (448, 747) and policy.input_size(300, 200) == (224, 336)
    assert policy.input_size(400, 300) == (300, 400)  # kept as it is
    assert Preprocess().input_size(400, 300) == (224, 299)  # the model's size when max_size is None
