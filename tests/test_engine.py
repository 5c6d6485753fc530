"""One pass, batches, eval mode, and the user's model left exactly as it was."""

import copy

import pytest
import torch
import torchvision
from torch import nn

import normgrad as ng
from conftest import SmallNet, randomize_batchnorm


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "inplace": [getattr(m, "inplace", None) for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks)) for m in model.modules()
        ],
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key  # bitwise
    for key in ("training", "requires_grad", "inplace", "hooks"):
        assert after[key] == before[key], key
    for a, b in zip(after["grads"], before["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)


def mixed_state_model() -> nn.Module:
    model = randomize_batchnorm(SmallNet())
    model.train()
    model.features[1].eval()  # mixed modes must come back one by one
    model.features[0].weight.requires_grad_(False)
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 7.0)
    return model


def test_model_untouched_after_success_for_every_extract():
    model = mixed_state_model()
    before = snapshot(model)
    x = torch.randn(2, 3, 20, 18)
    for extract in ng.EXTRACTS:
        layers = nn.Conv2d if extract == "layer" else ["input", "features.2", "features.7"]
        for aggregate in ng.AGGREGATES:
            ng.saliency(model, x, layers=layers, extract=extract, aggregate=aggregate)
    ng.saliency(model, x, target=ng.TrainingLoss([1, 2]), layers="features.3")
    ng.saliency(model, x, target=ng.Unit("features.7", 3, (2, 2)), layers="features.3")
    assert_untouched(model, before)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "classifier.weight")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layers=["features.2", "no.such.layer"]), "unknown layer 'no.such.layer'"),
        (dict(layers="features.2", target=99), "out of range"),
        (dict(layers="features.2", target=lambda out: 1 / 0), None),
        (dict(layers="features.2", target=ng.Unit("features.7", 99)), "channel 99"),
        (dict(layers="features.2", extract="layer"), "needs a layer with weights"),
        (dict(layers="features.2", extract="conv5x5"), "unknown extract"),
        (dict(layers="features.2", aggregate="mean"), "unknown aggregate"),
    ],
)
def test_model_untouched_after_errors(kwargs, message):
    model = mixed_state_model()
    before = snapshot(model)
    with pytest.raises(ng.NormGradError if message else ZeroDivisionError, match=message):
        ng.saliency(model, torch.randn(2, 3, 20, 18), **kwargs)
    assert_untouched(model, before)


def test_model_untouched_when_an_error_is_raised_inside_the_forward_pass():
    class Exploding(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = mixed_state_model()
    model.features[8] = nn.Sequential(model.features[8], Exploding())
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        ng.normgrad(model, torch.randn(1, 3, 20, 18), layers=["features.0", "features.7"])
    assert_untouched(model, before)


def test_one_forward_one_backward_no_weight_gradients():
    model = randomize_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10))
    calls = {"forward": 0, "backward": 0}
    weight_grads_computed = []
    param_hooks = [p.register_hook(lambda g, name=n: weight_grads_computed.append(name)) for n, p in model.named_parameters()]

    def count_forward(module, inputs, output):
        calls["forward"] += 1
        output.register_hook(lambda grad: calls.__setitem__("backward", calls["backward"] + 1))

    handle = model.register_forward_hook(count_forward)
    try:
        maps = ng.normgrad(model, torch.randn(2, 3, 64, 64), layers=nn.Conv2d)
    finally:
        handle.remove()
        for param_hook in param_hooks:
            param_hook.remove()
    assert len(maps) == 20
    assert calls == {"forward": 1, "backward": 1}
    assert weight_grads_computed == []  # autograd never computed a parameter's gradient
    assert all(p.grad is None for p in model.parameters())


def test_batch_equals_each_image_alone():
    """In float64: float32 kernels (oneDNN) round a batch and a single image differently, and a ReLU unit within
    rounding of zero then switches the gradient of everything behind it (README, correctness)."""
    model = randomize_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10)).double()
    x = torch.randn(3, 3, 48, 48, dtype=torch.double)
    layers = ["input", "layer1", "layer2.0.conv1", "layer4"]
    for extract, aggregate in [("conv1x1", "norm"), ("scaling", "positive_norm"), ("conv3x3", "max"), ("depthwise3x3", "sum")]:
        batch = ng.saliency(model, x, target=[1, 2, 3], layers=layers, extract=extract, aggregate=aggregate)
        for i in range(3):
            alone = ng.saliency(model, x[i : i + 1], target=i + 1, layers=layers, extract=extract, aggregate=aggregate)
            for layer in layers:
                torch.testing.assert_close(batch[layer][i : i + 1], alone[layer], rtol=1e-5, atol=1e-7)


def test_float32_batches_without_onednn_equal_each_image():
    """With oneDNN off, float32 convolutions are batch-invariant and so are the maps (the float32 path itself is right)."""
    model = randomize_batchnorm(torchvision.models.resnet18(weights=None, num_classes=10))
    x = torch.randn(3, 3, 48, 48)
    with torch.backends.mkldnn.flags(enabled=False):
        batch = ng.normgrad(model, x, target=[1, 2, 3], layers=["input", "layer1", "layer3"])
        for i in range(3):
            alone = ng.normgrad(model, x[i : i + 1], target=i + 1, layers=["input", "layer1", "layer3"])
            for layer in alone:
                torch.testing.assert_close(batch[layer][i : i + 1], alone[layer], rtol=1e-4, atol=1e-6)


def test_eval_mode_whatever_the_model_mode():
    model = randomize_batchnorm(SmallNet())
    model.features.insert(3, nn.Dropout(0.9))
    x = torch.randn(2, 3, 20, 18)
    reference = ng.normgrad(model.eval(), x, layers="features.1")
    model.train()
    for _ in range(3):
        torch.testing.assert_close(ng.normgrad(model, x, layers="features.1")["features.1"], reference["features.1"])
    assert model.training


def test_outputs_shape_dtype_device_and_order():
    model = SmallNet()
    x = torch.randn(2, 3, 20, 18)
    maps = ng.normgrad(model, x, layers=["features.7", "input", "features.0"])
    assert list(maps) == ["features.7", "input", "features.0"]
    assert maps["input"].shape == (2, 1, 20, 18)
    assert maps["features.0"].shape == (2, 1, 10, 9)
    assert all(m.dtype == torch.float32 and m.device == x.device for m in maps.values())
    half = ng.normgrad(model.double(), x.double(), layers="features.0")["features.0"]
    assert half.dtype == torch.float32


def test_works_under_no_grad_and_inference_mode():
    model = SmallNet()
    x = torch.randn(1, 3, 20, 18)
    reference = ng.normgrad(model, x, layers="features.3")["features.3"]
    with torch.no_grad():
        torch.testing.assert_close(ng.normgrad(model, x, layers="features.3")["features.3"], reference)
    with torch.inference_mode():
        x_inference = x.clone()
        torch.testing.assert_close(ng.normgrad(model, x_inference, layers="features.3")["features.3"], reference)


def test_inputs_are_not_modified():
    class InplaceInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = SmallNet()

        def forward(self, x):
            x.mul_(2.0)  # a model that scales its input in place
            return self.net(x)

    x = torch.randn(1, 3, 20, 18)
    original = x.clone()
    maps = ng.normgrad(InplaceInput(), x, layers=["input", "net.features.0"])
    assert torch.equal(x, original)
    assert maps["input"].shape == (1, 1, 20, 18)


def test_frozen_model_still_gets_maps():
    model = SmallNet().requires_grad_(False)
    maps = ng.normgrad(model, torch.randn(1, 3, 20, 18), layers=["features.0"])
    assert maps["features.0"].abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "inputs, message",
    [
        (torch.randn(3, 20, 18), "shape \\(N, C, H, W\\)"),
        (torch.randint(0, 255, (1, 3, 20, 18), dtype=torch.uint8), "float tensor"),
        ([[1.0]], "torch.Tensor"),
    ],
)
def test_bad_inputs(inputs, message):
    with pytest.raises(ng.NormGradError, match=message):
        ng.normgrad(SmallNet(), inputs, layers="features.0")


def test_layer_that_never_runs():
    model = SmallNet()
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ng.NormGradError, match="'unused' never ran"):
        ng.normgrad(model, torch.randn(1, 3, 20, 18), layers=["features.0", "unused"])


def test_shared_module_is_an_error():
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(ng.NormGradError, match="runs more than once.*'layer1.0'"):
        ng.normgrad(model, torch.randn(1, 3, 32, 32), layers="layer1.0.relu")


def test_unsupported_layout():
    class FiveD(nn.Module):
        def forward(self, x):
            return x[:, :, None]

    model = nn.Sequential(FiveD(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 4, 4))
    with pytest.raises(ng.NormGradError, match=r"outputs a 5-D tensor \(1, 3, 1, 4, 4\); supported: 2-D vectors, 3-D tokens and 4-D maps"):
        ng.normgrad(model, torch.randn(1, 3, 4, 4), layers="0")

    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(TupleOut())
    with pytest.raises(ng.NormGradError, match="outputs a tuple"):
        ng.normgrad(model, torch.randn(1, 3, 4, 4), layers="0", target=lambda out: out[0].sum((1, 2, 3)))


def test_layers_with_no_effect_on_the_objective_get_zero_maps():
    model = SmallNet()
    maps = ng.normgrad(model, torch.randn(1, 3, 20, 18), target=ng.Unit("features.3", 2), layers=["features.0", "features.8"])
    assert maps["features.0"].abs().sum() > 0
    assert torch.equal(maps["features.8"], torch.zeros_like(maps["features.8"]))


def test_deepcopied_models_agree():
    model = randomize_batchnorm(SmallNet())
    x = torch.randn(2, 3, 20, 18)
    a = ng.normgrad_selective(model, x, layers=nn.Conv2d)
    b = ng.normgrad_selective(copy.deepcopy(model), x, layers=nn.Conv2d)
    for name in a:
        torch.testing.assert_close(a[name], b[name])


def test_maps_are_plain_tensors_detached_from_any_graph():
    maps = ng.saliency(SmallNet(), torch.randn(1, 3, 20, 18), layers=["input", "features.3"], extract="conv3x3", aggregate="max")
    assert all(m.grad_fn is None and not m.requires_grad for m in maps.values())
